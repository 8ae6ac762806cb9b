"""The adversarial transform chain (AdvChain, Chen et al., MedIA 2022,
https://doi.org/10.1016/j.media.2022.102597): a chain of differentiable, bounded photometric and
geometric transforms whose per-image parameters take sign-gradient ascent steps on the loss.

Its output is always a plausible acquisition of the same patient (a different exposure, window,
coil / heel-effect shading, positioning, a slight breathing deformation), never pixel noise
(unless the optional noise transform is on). Written by hand: no maintained library offers these
transforms on 1-channel tensors with bounded, gradient-chosen parameters (torchvision's v2
transforms draw their parameters and are not differentiable in them; TorchIO / MONAI work on
volumes with random parameters). Built on ``torch.nn.functional.grid_sample`` / ``interpolate``.

The transforms (every bound an option, each scaled by ``severity = eps / (8/255)``):

- gamma: ``x ** exp(g)``, ``|g| <= gamma`` (per image);
- window: ``(x - 1/2)(1 + c) + 1/2 + b``, ``|c| <= contrast``, ``|b| <= brightness``;
- bias: ``x * exp(up(f))``, ``f`` a ``bias_grid x bias_grid`` control grid, ``|f| <= bias``,
  ``up`` bicubic upsampling to H x W, clipped to ``[-bias, bias]``;
- affine: ``grid_sample`` through a rotation by ``|r| <= rotation`` degrees and a zoom
  ``1 + s``, ``|s| <= scale``, about the centre, then a shift ``|t| <= translation``;
- elastic: ``grid_sample(x, id + up(d))``, ``d`` a 2 x ``elastic_grid`` x ``elastic_grid``
  displacement grid, ``|d| <= elastic``;
- noise: ``x + sigma n``, ``n ~ N(0, 1)`` per pixel, ``0 <= sigma <= noise`` (0: off).

Normalised units: ``[-1, 1]`` spans the image, so a translation of 0.04 is 2 % of the width.
Every output is clipped to [0, 1]. Algorithm (one call): draw the order of the transforms
(``order="random"``) and every parameter uniformly inside its bounds (the random chain, the
``steps=0`` control), then ``steps`` times ``theta <- clip(theta + alpha * half_range *
sign(grad_theta L), lo, hi)`` with ``L`` the cross-entropy (``loss="ce"``) or the KL divergence
``KL(p(x) || p(chain(x)))`` from the clean prediction (``loss="kl"``, AdvChain's consistency form).

Multilabel models (labels ``N x K``, NaN = unknown): ``loss="ce"`` is each image's mean binary
cross-entropy over its known findings (:func:`~mladv.attacks.multilabel.per_image_bce`), and
``loss="kl"`` the per-finding Bernoulli KL divergence
``sum_k KL(Bern(p_k) || Bern(q_k))`` over the known findings, ``p = sigmoid(z(x))`` (clean),
``q = sigmoid(z(chain(x)))`` (:func:`~mladv.attacks.multilabel.bernoulli_kl`); targeted, minus
the BCE to the ``N x K`` ``target_labels``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import known_mask
from .base import Attack, ComputeOptions, full_precision
from .multilabel import bernoulli_kl, per_image_bce

TRANSFORM_NAMES = ("gamma", "window", "bias", "affine", "elastic", "noise")
REFERENCE_EPS = 8 / 255  # eps at which the bounds are the documented defaults
MAX_SEVERITY = 4.0
ChainLoss = Literal["ce", "kl"]
Params = dict[str, Tensor]


@dataclass(frozen=True)
class ChainBounds:
    """The bounds of every chain parameter at severity 1 (the defaults: a radiologist would call
    the output a normal acquisition of the same patient). See the module docstring."""

    gamma: float = 0.2          # log-gamma: gamma in [0.82, 1.22]
    contrast: float = 0.1       # window width +- 10 %
    brightness: float = 0.05    # window level +- 0.05
    bias: float = 0.15          # smooth shading: x 0.86 .. 1.16
    bias_grid: int = 4          # control points per side of the bias field
    rotation: float = 5.0       # degrees
    scale: float = 0.05         # zoom +- 5 %
    translation: float = 0.04   # +- 2 % of the width / height
    elastic: float = 0.02       # displacement, +- 1 % of the width (0.6 px at 64 px)
    elastic_grid: int = 4       # control points per side of the displacement field
    noise: float = 0.0          # Gaussian noise sigma; 0 switches the transform off

    def scaled(self, severity: float) -> ChainBounds:
        """Every amplitude bound times ``severity`` (grid sizes unchanged)."""
        grids = {"bias_grid", "elastic_grid"}
        return replace(self, **{k: v * severity for k, v in asdict(self).items()
                                if k not in grids})

    def check(self) -> None:
        """``ValueError`` naming the first negative bound or a grid below 2 points."""
        for key, value in asdict(self).items():
            if key.endswith("_grid"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                    raise ValueError(f"{key} must be an int >= 2, got {value!r}")
            elif value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        if self.gamma > 2 or self.contrast >= 1 or self.scale >= 1:
            raise ValueError(f"bounds too large to stay an image: gamma <= 2, contrast < 1, "
                             f"scale < 1 (after scaling by severity), got {self}")

    def enabled(self) -> tuple[str, ...]:
        """The transforms with a non-zero bound, in :data:`TRANSFORM_NAMES` order."""
        on = {"gamma": self.gamma > 0, "window": self.contrast > 0 or self.brightness > 0,
              "bias": self.bias > 0, "elastic": self.elastic > 0, "noise": self.noise > 0,
              "affine": self.rotation > 0 or self.scale > 0 or self.translation > 0}
        return tuple(n for n in TRANSFORM_NAMES if on[n])

    def limits(self, name: str) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` of the parameter vector of transform ``name`` (per image: gamma 1, window
        2 (c, b), bias ``bias_grid²``, affine 4 (r, s, tx, ty), elastic ``2 elastic_grid²``,
        noise 1)."""
        if name == "noise":
            return torch.zeros(1), torch.full((1,), self.noise)
        hi = {"gamma": [self.gamma], "window": [self.contrast, self.brightness],
              "bias": [self.bias] * self.bias_grid ** 2,
              "affine": [self.rotation, self.scale, self.translation, self.translation],
              "elastic": [self.elastic] * (2 * self.elastic_grid ** 2)}[name]
        top = torch.tensor(hi, dtype=torch.float64)
        return -top, top


# -- the transforms, one per equation of the module docstring -----------------------------------
def gamma_transform(x: Tensor, g: Tensor) -> Tensor:
    """``x ** exp(g)``. Shape: x ``N x C x H x W``, g ``N x 1``."""
    return x.clamp_min(1e-6) ** g.exp().view(-1, 1, 1, 1)


def window_transform(x: Tensor, cb: Tensor) -> Tensor:
    """``(x - 1/2)(1 + c) + 1/2 + b``. Shape: cb ``N x 2`` (contrast, brightness)."""
    c, b = cb[:, 0].view(-1, 1, 1, 1), cb[:, 1].view(-1, 1, 1, 1)
    return (x - 0.5) * (1 + c) + 0.5 + b


def smooth_field(grid: Tensor, size: tuple[int, int], bound: float) -> Tensor:
    """A control grid ``N x C x k x k`` upsampled bicubically to ``N x C x H x W`` and clipped to
    ``[-bound, bound]`` (bicubic overshoots slightly between control points)."""
    up = F.interpolate(grid, size=size, mode="bicubic", align_corners=True)
    return up.clamp(-bound, bound)


def bias_transform(x: Tensor, f: Tensor, bound: float) -> Tensor:
    """``x * exp(up(f))``: smooth multiplicative shading. Shape: f ``N x k²``."""
    k = math.isqrt(f.shape[1])
    return x * smooth_field(f.view(-1, 1, k, k), (x.shape[-2], x.shape[-1]), bound).exp()


def affine_matrix(p: Tensor) -> Tensor:
    """``N x 2 x 3`` matrices from ``p = (degrees, scale, tx, ty)`` (``N x 4``): rotation by
    ``r`` and zoom ``1 + s`` about the centre, then a shift (normalised units)."""
    rad = p[:, 0] * (math.pi / 180.0)
    z = 1 + p[:, 1]
    cos, sin = rad.cos() / z, rad.sin() / z
    return torch.stack([torch.stack([cos, -sin, p[:, 2]], 1),
                        torch.stack([sin, cos, p[:, 3]], 1)], 1)


def _sample(x: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def affine_transform(x: Tensor, p: Tensor) -> Tensor:
    """Rotation / zoom / shift of each image (bilinear, border padding). Shape: p ``N x 4``."""
    grid = F.affine_grid(affine_matrix(p), list(x.shape), align_corners=False)
    return _sample(x, grid)


def elastic_transform(x: Tensor, d: Tensor, bound: float) -> Tensor:
    """``grid_sample(x, id + up(d))``: a smooth deformation whose displacement (normalised units)
    is at most ``bound`` everywhere. Shape: d ``N x 2k²``."""
    n, k = x.shape[0], math.isqrt(d.shape[1] // 2)
    field = smooth_field(d.view(n, 2, k, k), (x.shape[-2], x.shape[-1]), bound).permute(0, 2, 3, 1)
    eye = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(n, 2, 3)
    return _sample(x, F.affine_grid(eye, list(x.shape), align_corners=False) + field)


def noise_transform(x: Tensor, sigma: Tensor, field: Tensor) -> Tensor:
    """``x + sigma * n`` with a fixed standard-normal ``field`` (``N x C x H x W``)."""
    return x + sigma.view(-1, 1, 1, 1) * field


def apply_chain(x: Tensor, params: Params, order: Sequence[str], bounds: ChainBounds,
                noise: Tensor | None = None) -> Tensor:
    """The chain: each transform of ``order`` in turn, the image clipped to [0, 1] after each.

    Shape: x ``N x C x H x W`` in [0, 1], ``params[name]`` ``N x P_name`` -> ``N x C x H x W``.
    """
    for name in order:
        p = params[name]
        if name == "gamma":
            x = gamma_transform(x, p)
        elif name == "window":
            x = window_transform(x, p)
        elif name == "bias":
            x = bias_transform(x, p, bounds.bias)
        elif name == "affine":
            x = affine_transform(x, p)
        elif name == "elastic":
            x = elastic_transform(x, p, bounds.elastic)
        elif name == "noise":
            x = noise_transform(x, p, noise if noise is not None else torch.zeros_like(x))
        else:
            raise ValueError(f"unknown chain transform {name!r}; valid: {TRANSFORM_NAMES}")
        x = x.clamp(0.0, 1.0)
    return x


def sample_params(bounds: ChainBounds, n: int, gen: torch.Generator,
                  names: Sequence[str] | None = None, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> Params:
    """Every parameter of ``names`` (default: the enabled transforms) drawn uniformly inside its
    bounds, ``N x P`` each, from ``gen`` (CPU)."""
    out: Params = {}
    for name in names if names is not None else bounds.enabled():
        lo, hi = bounds.limits(name)
        u = torch.rand(n, lo.shape[0], generator=gen, dtype=torch.float64)
        out[name] = (lo + u * (hi - lo)).to(device, dtype)
    return out


def draw_order(bounds: ChainBounds, gen: torch.Generator, order: str = "random") -> list[str]:
    """The enabled transforms in a random order drawn from ``gen`` (``"fixed"``: the order of
    :data:`TRANSFORM_NAMES`)."""
    names = list(bounds.enabled())
    if order == "fixed":
        return names
    return [names[i] for i in torch.randperm(len(names), generator=gen).tolist()]


def random_chain(images: Tensor, gen: torch.Generator, bounds: ChainBounds | None = None,
                 order: str = "random") -> Tensor:
    """The random chain (the augmentation; no model, no gradient): random order, parameters
    uniform inside ``bounds`` (default :class:`ChainBounds`), every draw from ``gen``.

    Shape: ``N x C x H x W`` in [0, 1] -> the same.
    """
    b = bounds or ChainBounds()
    b.check()
    names = draw_order(b, gen, order)
    params = sample_params(b, images.shape[0], gen, dtype=images.dtype, device=images.device)
    noise = torch.randn(images.shape, generator=gen).to(images) if b.noise > 0 else None
    return apply_chain(images, params, names, b, noise)


class Chain(Attack):
    """AdvChain: bounded photometric + geometric transforms, parameters adversarially chosen.

    Args:
        model: classifier on ``N x C x H x W`` images in [0, 1].
        eps: the chain's severity: every amplitude bound is multiplied by ``eps / (8/255)``
            (``--eps 8``, the project's default, gives the bounds below; ``--eps 4`` half of
            them; at most ``32/255``). So the online grid's eps chooses the chain's bounds.
        steps: sign-gradient ascent steps on the parameters (0: the random chain control).
        alpha: step size as a fraction of each parameter's half range.
        loss: ``"ce"`` (cross-entropy with the labels) or ``"kl"`` (KL divergence from the
            clean prediction; labels unused, except that a multilabel model's unknown (NaN)
            findings are left out of the per-finding KL).
        order: ``"random"`` (a new order of the transforms per call) or ``"fixed"``.
        gamma, contrast, brightness, bias, bias_grid, rotation, scale, translation, elastic,
            elastic_grid, noise: the bounds at severity 1 (:class:`ChainBounds`).

    Shape: images ``N x C x H x W`` in [0, 1], labels ``N`` -> ``N x C x H x W`` in [0, 1].

    Examples::
        >>> atk = Chain(model, steps=1, seed=0)
        >>> x_adv = atk(images, labels)
        >>> x_rand = Chain(model, steps=0, seed=0)(images, labels)   # the random control
    """

    def __init__(self, model: nn.Module, *, eps: float = REFERENCE_EPS, steps: int = 1,
                 alpha: float = 0.5, loss: ChainLoss = "ce",
                 order: Literal["random", "fixed"] = "random",
                 gamma: float = 0.2, contrast: float = 0.1, brightness: float = 0.05,
                 bias: float = 0.15, bias_grid: int = 4, rotation: float = 5.0,
                 scale: float = 0.05, translation: float = 0.04, elastic: float = 0.02,
                 elastic_grid: int = 4, noise: float = 0.0, targeted: bool = False,
                 seed: int | None = None, **compute: Unpack[ComputeOptions]) -> None:
        super().__init__(model, eps=eps, targeted=targeted, seed=seed, **compute)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0 (0: the random chain), got {steps!r}")
        if not 0 < alpha <= 2:
            raise ValueError(f"alpha must be in (0, 2] (fraction of each half range), got {alpha}")
        if loss not in ("ce", "kl"):
            raise ValueError(f"loss must be 'ce' or 'kl', got {loss!r}")
        if order not in ("random", "fixed"):
            raise ValueError(f"order must be 'random' or 'fixed', got {order!r}")
        severity = self.eps / REFERENCE_EPS
        if severity > MAX_SEVERITY + 1e-9:
            raise ValueError(f"eps scales the chain's bounds (eps / (8/255)); at most 32/255 "
                             f"(4x the defaults), got {self.eps * 255:.4g}/255")
        base = ChainBounds(gamma, contrast, brightness, bias, bias_grid, rotation, scale,
                           translation, elastic, elastic_grid, noise)
        base.check()
        self.bounds = base.scaled(severity)
        self.bounds.check()
        self.steps, self.alpha, self.loss, self.order = steps, float(alpha), loss, order

    def _loss(self, logits: Tensor, labels: Tensor, clean: Tensor | None,
              target: Tensor | None) -> Tensor:
        """The quantity the parameters ascend (summed over the batch, so each image's
        parameters get their own gradient). ``clean``: the clean softmax (multiclass) or the
        clean logits (multilabel) for ``loss="kl"``."""
        if self.multilabel:
            if target is not None:
                return -per_image_bce(logits, target).sum()
            if self.loss == "kl" and clean is not None:
                return bernoulli_kl(clean, logits.float(), known_mask(labels)).sum()
            return per_image_bce(logits, labels).sum()
        if target is not None:
            return -F.cross_entropy(logits, target, reduction="sum")
        if self.loss == "kl" and clean is not None:
            return F.kl_div(logits.float().log_softmax(1), clean, reduction="sum")
        return F.cross_entropy(logits.float(), labels, reduction="sum")

    def parameters_for(self, images: Tensor, labels: Tensor,
                       target_labels: Tensor | None = None
                       ) -> tuple[Params, list[str], Tensor | None]:
        """``(params, order, noise field)`` of one call: random start inside the bounds, then
        ``steps`` signed steps, each clipped to the bounds (images already on the device)."""
        gen, dev, b = self.generator(), images.device, self.bounds
        names = draw_order(b, gen, self.order)
        params = sample_params(b, images.shape[0], gen, dtype=images.dtype, device=dev)
        noise = torch.randn(images.shape, generator=gen).to(images) if b.noise > 0 else None
        if self.steps == 0:
            return params, names, noise
        target = None
        if self.targeted:
            n = int(self.model(images[:1]).shape[1])
            target = target_labels if target_labels is not None else \
                self.random_targets(labels, n, gen)
        clean = None
        if self.loss == "kl":
            with torch.no_grad():
                clean = self.model(images).float()
                clean = clean if self.multilabel else clean.softmax(1)
        lims = {k: (lo.to(dev, images.dtype), hi.to(dev, images.dtype))
                for k, (lo, hi) in ((k, b.limits(k)) for k in params)}
        for _ in range(self.steps):
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            with torch.enable_grad():
                with full_precision(dev.type):
                    x = apply_chain(images, leaves, names, b, noise)
                loss = self._loss(self.model(x), labels, clean, target)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            for (k, v), g in zip(leaves.items(), grads, strict=True):
                lo, hi = lims[k]
                step = self.alpha * (hi - lo) / 2 * (g.sign() if g is not None else 0.0)
                params[k] = torch.maximum(torch.minimum(v.detach() + step, hi), lo)
        return params, names, noise

    def forward(self, images: Tensor, labels: Tensor,
                target_labels: Tensor | None = None) -> Tensor:
        """The chain at the parameters of :meth:`parameters_for`."""
        params, names, noise = self.parameters_for(images, labels, target_labels)
        with torch.no_grad(), full_precision(images.device.type):
            return apply_chain(images, params, names, self.bounds, noise)


def chain_augment(bounds: ChainBounds | None = None, order: str = "random"
                  ) -> Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]:
    """:func:`random_chain` as a batch transform ``(x, y, gen) -> (x', y)`` for
    ``train_classifier(transform=...)`` (the augmentation without adversarial steps)."""
    def transform(x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return random_chain(x, gen, bounds, order), y
    return transform
