"""MLAdv: multi-loss hybrid adversarial function + heuristic projection (SPEC eqs. 1-10)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features import FeatureTap, conv_layers, default_origin_layer
from ..losses import adversarial_loss, detail_loss, gram_matrix, origin_loss, style_loss
from .base import Attack, check_images
from .projection import heuristic_projection, projection_kernel

Balance = Literal["grad-norm", "literal", "calibrated"]
StylePolicy = Literal["same-class", "self"]
AdvLoss = Literal["log-p", "margin"]
Realism = Literal["always", "after-success"]
Schedule = Literal["constant", "linear", "cosine"]
Keep = Literal["last", "last-adversarial"]
DetailOn = Literal["image", "delta"]


def _per_sample_mean_abs(g: Tensor) -> Tensor:
    """``mean|g|`` per sample, shaped to broadcast against ``g`` (``N x 1 x 1 x 1``)."""
    return g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))


def _per_sample_unit(g: Tensor) -> Tensor:
    """``g / mean|g|`` per sample, so that terms of very different scales weigh alike."""
    return g / _per_sample_mean_abs(g)


def gaussian_kernel(size: int) -> Tensor:
    """A ``size x size`` Gaussian (3 sigma at the border, as torchattacks' TI-FGSM), summing to 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"smoothing must be 0 or an odd kernel size >= 1, got {size}")
    x = torch.linspace(-3.0, 3.0, size) if size > 1 else torch.zeros(1)
    k1 = torch.exp(-x.pow(2) / 2)
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum()


def depthwise(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve each channel of ``x`` (``N x C x H x W``) with ``kernel`` (``k x k``), zero padding."""
    c = x.shape[1]
    return F.conv2d(x, kernel.to(x).expand(c, 1, *kernel.shape), padding=kernel.shape[-1] // 2,
                    groups=c)


def logit_margin(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Untargeted ``z_y - max_{j!=y} z_j``, targeted ``max_{j!=t} z_j - z_t``: negative when the
    sample fools the model. Shape: logits ``N x K``, labels (targets) ``N`` -> ``N``."""
    cls = labels if targets is None else targets
    own = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return own - other if targets is None else other - own


def margin_loss(logits: Tensor, labels: Tensor, targets: Tensor | None, kappa: float) -> Tensor:
    """Hinged logit margin (Carlini & Wagner) ``max(logit_margin, -kappa)``: minimising it fools
    the model, and it is flat (zero gradient) once the sample fools the model by ``kappa``.

    Shape: logits ``N x K``, labels ``N`` -> ``N``.
    """
    return logit_margin(logits, labels, targets).clamp_min(-kappa)


def same_class_partners(labels: Tensor, gen: torch.Generator) -> Tensor:
    """For each sample, the index of another sample of the same class in the batch (itself when
    it is alone in its class), drawn with ``gen``. Shape: ``N`` -> ``N``."""
    idx = torch.arange(labels.shape[0])
    labels_cpu = labels.cpu()
    partner = idx.clone()
    for c in labels_cpu.unique():
        members = idx[labels_cpu == c]
        if len(members) < 2:
            continue
        # a random non-zero shift inside the class never maps a sample to itself
        shift = torch.randint(1, len(members), (len(members),), generator=gen)
        partner[members] = members[(torch.arange(len(members)) + shift) % len(members)]
    return partner.to(labels.device)


class Diversity(NamedTuple):
    """One step's input transform: an optional DI resize ``(side, top, left)`` and a flip."""

    resize: tuple[int, int, int] | None
    flip: bool


def _schedule(kind: Schedule, t: int, steps: int) -> float:
    """Multiplier of the step size and the projection factor at step ``t`` of ``steps``:
    1 (constant), ``1 - t/T`` (linear) or ``(1 + cos(pi t/T))/2`` (cosine), never below 1/T."""
    if kind == "constant":
        return 1.0
    frac = t / steps
    value = 1.0 - frac if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return max(value, 1.0 / steps)


class MLAdv(Attack):
    r"""MLAdv (Wang, Cheng & Chen): realistic adversarial samples for data augmentation.

    Minimises the hybrid loss of eq. 2,
    ``L_hybrid = w_s L_s + w_o L_o + w_d L_d + tau L_adv`` (eqs. 4-7), with the patch-wise update
    and heuristic projection of eqs. 8-10 (step ``alpha = beta * eps / steps``, projection factor
    ``gamma``, kernel ``W_o`` of size ``kernel_size``), under the L-infinity budget ``eps``:

        g      = ∇_{x_t} L_hybrid            (balanced, see ``balance``; optional DI, TI, momentum)
        A     <- A - alpha_t sign(g);  proj = gamma_t sign(W_o * P(A));  A <- A + proj
        x_t+1  = clip_[0,1](x + clip_[-eps,eps](x_t - alpha_t sign(g) + proj - x))

    ``balance="literal"`` combines the terms exactly as eq. 2 writes them; measured on real chest
    X-rays it does not attack (SPEC "Measured"). ``"grad-norm"`` normalises each term's gradient
    per sample, ``g = g_adv/|g_adv| + tau * sum_k w_k g_k/|g_k|`` (one backward pass per term);
    ``"calibrated"`` gives the same mix with ONE backward pass per step: the per-sample factors
    ``|g_adv|/|g_k|`` are measured once (step 2, the first where the origin term has a gradient)
    and then scale the losses, detached. Step 1 is then the adversarial term alone.

    The defaults are the variant chosen by measurement on real chest X-rays, on a validation
    split (``benchmarks/mladv_quality.py``, ``docs/method.md``): the patch-wise update with a
    5 x 5 projection kernel, the detail term on the perturbation (TV of delta, as Sharif et al.
    smooth theirs) at ``tau = 0.1`` relative to the adversarial gradient, style and origin off
    (measured: they cost a backward pass each and lowered transfer), and up to 10 PGD steps for
    the few samples the big patch-wise steps leave unfooled (``refine``). That is one backward
    pass through the model per step. Switch the style / origin terms on with ``style_weight`` /
    ``origin_weight`` (``balance="calibrated"`` keeps them at about one pass per step).

    With every realism weight at 0, ``kernel_size=3, refine=0`` and ``momentum=0, diversity=0,
    flip=0, smoothing=0, adv_loss="log-p", schedule="constant", keep="last"`` the loop is
    PI-FGSM (torchattacks ``PIFGSM``); :func:`mladv.attacks.pifgsm` passes these.

    Args:
        model: classifier taking ``N x C x H x W`` images in [0, 1], returning logits.
        eps: L-infinity budget in [0, 1] units.
        steps: number of iterations T.
        beta: amplification factor; step ``alpha = beta * eps / steps``.
        gamma: projection factor (default ``alpha``).
        kernel_size: side of the projection kernel ``W_o`` (odd, >= 3).
        tau: eq. 2's weight of L_adv (``literal``); otherwise the weight of the realism terms
            relative to the adversarial one.
        style_weight, origin_weight, detail_weight: ``w_s, w_o, w_d``; 0 switches a term off.
        style_layers: ``"all-conv"``, ``"early-conv"`` (the first third), or module names (S).
        origin_layer: module name(s) of the origin layer(s) O (default: ``layer3`` of a ResNet,
            else a conv layer three quarters of the way down).
        style: the style reference x_s: ``"same-class"`` (another image of the same class in the
            batch, drawn with ``seed``), ``"self"``, or a tensor ``1 x C x H x W`` / ``N x C x H x W``.
        mask: optional region mask broadcastable to ``N x C x H x W``; delta is zero where it is 0.
        projection: apply the heuristic projection (eq. 9); False gives plain clipping.
        balance: ``"grad-norm"``, ``"calibrated"`` or ``"literal"`` (see above).
        adv_loss: ``"log-p"`` (eq. 7: ``log p_y``, i.e. minus the cross-entropy) or ``"margin"``
            (hinged logit margin, flat once misclassified by ``kappa``: realism then takes over).
        kappa: the margin of ``adv_loss="margin"`` (logit units).
        realism: ``"always"``, or ``"after-success"``: per sample, the realism terms replace the
            adversarial one once the sample is misclassified by ``kappa``.
        detail_on: ``"image"`` (eq. 6, TV of x_a) or ``"delta"`` (TV of the perturbation).
        momentum: MI-FGSM decay mu (0 = none): ``m <- mu m + g / mean|g|``, the step uses ``m``.
        diversity: probability of the DI-FGSM input transform at each step (0 = none).
        diversity_scale: DI shrinks the image to a random side in ``[scale H, H)`` and pads it back.
        smoothing: TI-FGSM: odd size of a Gaussian that smooths the gradient (0 = none).
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay of the step ``alpha``.
        gamma_schedule: the same for the projection factor ``gamma`` (default: ``schedule``).
        flip: probability of flipping the input left-right at a step (input diversity by the
            augmentation the models were trained with).
        refine: up to this many extra PGD steps (``eps/4``, no projection, no realism) for the
            samples that do not fool the model after the T steps; 0 = none.
        pre_steps: the two-phase pipeline of Fig. 2: first ``pre_steps`` Adam steps (rate
            ``pre_lr``) on L_hybrid, then the eq. 9 loop with the cross-entropy gradient alone.
        pre_lr: Adam's step in [0, 1] units (default ``eps / 4``).
        keep: ``"last"`` iterate, or per sample the ``"last-adversarial"`` one (the last iterate
            that fooled the model; the last iterate when none did).
        targeted: reach ``target_labels`` instead of leaving ``labels``.
        seed: seeds the style-partner, DI and random-target draws.

    Attributes:
        backward_passes: backward passes through the model in the last call, in whole-batch
            equivalents (a ``refine`` pass over 2 of 32 samples counts 1/16); for speed checks.

    Shape:
        images ``N x C x H x W`` in [0, 1] (C = 1 for chest X-rays; the perturbation keeps C),
        labels ``N`` -> ``N x C x H x W``.

    Examples::
        >>> atk = MLAdv(model, eps=8/255, steps=10)
        >>> x_adv = atk(images, labels)
        >>> x_adv = MLAdv(model, targeted=True)(images, labels, target_labels=targets)
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, steps: int = 10,
                 beta: float = 10.0, gamma: float | None = None, kernel_size: int = 5,
                 tau: float = 0.1, style_weight: float = 0.0, origin_weight: float = 0.0,
                 detail_weight: float = 1.0, style_layers: str | Sequence[str] = "all-conv",
                 origin_layer: str | Sequence[str] | None = None,
                 style: StylePolicy | Tensor = "same-class", mask: Tensor | None = None,
                 projection: bool = True, balance: Balance = "grad-norm",
                 adv_loss: AdvLoss = "log-p", kappa: float = 0.0, realism: Realism = "always",
                 detail_on: DetailOn = "delta", momentum: float = 0.0, diversity: float = 0.0,
                 diversity_scale: float = 0.9, smoothing: int = 0,
                 schedule: Schedule = "constant", gamma_schedule: Schedule | None = None,
                 flip: float = 0.0, refine: int = 10, pre_steps: int = 0,
                 pre_lr: float | None = None, keep: Keep = "last", targeted: bool = False,
                 seed: int | None = None) -> None:
        super().__init__(model, eps=eps, targeted=targeted, seed=seed)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps, self.beta, self.tau, self.kappa, self.refine = steps, beta, tau, kappa, refine
        self.alpha = beta * self.eps / steps
        self.gamma = self.alpha if gamma is None else float(gamma)
        self.kernel = projection_kernel(kernel_size)
        self.weights = {"style": style_weight, "origin": origin_weight, "detail": detail_weight}
        layers = self._style_layer_names(model, style_layers)
        self.style_layers = layers if style_weight > 0 else []
        self.origin_layers = self._origin_layer_names(model, origin_layer) if origin_weight > 0 else []
        self.style, self.mask, self.projection = style, mask, projection
        self.balance, self.adv_loss, self.realism, self.detail_on = balance, adv_loss, realism, detail_on
        self.momentum, self.diversity, self.diversity_scale = momentum, diversity, diversity_scale
        self.flip = flip
        self.smoothing = gaussian_kernel(smoothing) if smoothing else None
        self.schedule, self.gamma_schedule = schedule, gamma_schedule or schedule
        self.pre_steps, self.keep = pre_steps, keep
        self.pre_lr = self.eps / 4 if pre_lr is None else float(pre_lr)
        self.backward_passes = 0.0
        self._check_options()

    def _check_options(self) -> None:
        """One clear ``ValueError`` per bad option."""
        choices = {"balance": ("grad-norm", "literal", "calibrated"), "adv_loss": ("log-p", "margin"),
                   "realism": ("always", "after-success"), "detail_on": ("image", "delta"),
                   "schedule": ("constant", "linear", "cosine"),
                   "gamma_schedule": ("constant", "linear", "cosine"),
                   "keep": ("last", "last-adversarial")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if min(*self.weights.values(), self.tau, self.kappa, self.momentum, self.pre_steps,
               self.refine) < 0:
            raise ValueError("tau, kappa, momentum, pre_steps, refine and the loss weights must "
                             "be >= 0")
        if not (0 <= self.diversity <= 1 and 0 <= self.flip <= 1 and 0 < self.diversity_scale <= 1):
            raise ValueError(f"diversity and flip must be in [0, 1] and diversity_scale in (0, 1], "
                             f"got {self.diversity}, {self.flip}, {self.diversity_scale}")
        if isinstance(self.style, str) and self.style not in ("same-class", "self"):
            raise ValueError(f"style must be 'same-class', 'self' or a tensor, got {self.style!r}")

    @staticmethod
    def _origin_layer_names(model: nn.Module, layer: str | Sequence[str] | None) -> list[str]:
        if layer is None:
            return [default_origin_layer(model)]
        return [layer] if isinstance(layer, str) else list(layer)

    @staticmethod
    def _style_layer_names(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
        if layers == "all-conv":
            return conv_layers(model)
        if layers == "early-conv":
            convs = conv_layers(model)
            return convs[:max(1, len(convs) // 3)]
        if isinstance(layers, str):
            raise ValueError(f"style_layers must be 'all-conv', 'early-conv' or a list of module "
                             f"names, got {layers!r}")
        return list(layers)

    # -- references -------------------------------------------------------------------------
    def _style_reference(self, images: Tensor, labels: Tensor, style_images: Tensor | None,
                         gen: torch.Generator) -> Tensor:
        ref = style_images if style_images is not None else self.style
        if isinstance(ref, Tensor):
            check_images(ref)
            ref = ref.detach().to(images)
            if ref.shape[0] not in (1, images.shape[0]) or ref.shape[1:] != images.shape[1:]:
                raise ValueError(f"style images must have shape 1 x {tuple(images.shape[1:])} or "
                                 f"{tuple(images.shape)}, got {tuple(ref.shape)}")
            return ref
        if ref == "self":
            return images
        return images[same_class_partners(labels, gen)]

    @torch.no_grad()
    def _references(self, images: Tensor, style_ref: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Style Grams of x_s and origin features of x (no forward pass when neither is used)."""
        if not self.style_layers and not self.origin_layers:
            return [], []
        with FeatureTap(self.model, self.style_layers + self.origin_layers) as tap:
            self.model(images)
            origin = [f.detach() for f in tap.outputs(self.origin_layers)]
            if style_ref is images:
                style_feats = tap.outputs(self.style_layers)
            else:
                tap.clear()
                self.model(style_ref)
                style_feats = tap.outputs(self.style_layers)
            grams = [gram_matrix(f).detach() for f in style_feats]
        return grams, origin

    @torch.no_grad()
    def _origin_features(self, images: Tensor) -> list[Tensor]:
        with FeatureTap(self.model, self.origin_layers) as tap:
            self.model(images)
            return [f.detach() for f in tap.outputs(self.origin_layers)]

    # -- input diversity (DI-FGSM) ----------------------------------------------------------
    def _diverse(self, gen: torch.Generator, height: int) -> Diversity | None:
        """Draw this step's input transform: with probability ``diversity`` a DI resize (new
        side, top, left), with probability ``flip`` a left-right flip; None when neither."""
        resize = None
        if self.diversity > 0 and torch.rand(1, generator=gen).item() < self.diversity:
            low = max(1, int(height * self.diversity_scale))
            side = int(torch.randint(low, height, (1,), generator=gen)) if low < height else height
            top = int(torch.randint(0, height - side + 1, (1,), generator=gen))
            left = int(torch.randint(0, height - side + 1, (1,), generator=gen))
            resize = (side, top, left)
        flip = self.flip > 0 and torch.rand(1, generator=gen).item() < self.flip
        return None if resize is None and not flip else Diversity(resize, flip)

    @staticmethod
    def _transform(x: Tensor, params: Diversity | None) -> Tensor:
        """Resize ``x`` to ``side`` and zero-pad it back to its size at (top, left); flip it."""
        if params is None:
            return x
        if params.resize is not None:
            side, top, left = params.resize
            h, w = x.shape[-2:]
            small = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            x = F.pad(small, (left, w - side - left, top, h - side - top))
        return x.flip(-1) if params.flip else x

    # -- one gradient -----------------------------------------------------------------------
    def _terms(self, x_t: Tensor, images: Tensor, labels: Tensor, targets: Tensor | None,
               grams: list[Tensor], origin: list[Tensor], realism: bool,
               di: Diversity | None) -> tuple[Tensor, Tensor, list[tuple[str, Tensor]]]:
        """One forward pass: logits, the per-sample L_adv and the realism terms ``[(name, L_k)]``
        (each ``N``, unweighted). The hooks give the style / origin features of this pass."""
        style_layers = self.style_layers if realism else []
        origin_layers = self.origin_layers if realism else []
        if origin_layers and di is not None:  # the origin reference sees the same DI transform
            origin = self._origin_features(self._transform(images, di))
        with FeatureTap(self.model, style_layers + origin_layers) as tap:
            logits = self.model(self._transform(x_t, di))
            terms: list[tuple[str, Tensor]] = []
            if style_layers:
                terms.append(("style", style_loss(grams, tap.outputs(style_layers))))
            if origin_layers:
                terms.append(("origin", origin_loss(origin, tap.outputs(origin_layers))))
        if realism and self.weights["detail"] > 0:
            base = x_t - images if self.detail_on == "delta" else x_t
            terms.append(("detail", detail_loss(base)))
        tgt = targets if self.targeted else None
        l_adv = (margin_loss(logits, labels, tgt, self.kappa) if self.adv_loss == "margin"
                 else adversarial_loss(logits, labels, tgt))
        return logits, l_adv, terms

    def _grad(self, loss: Tensor, x_t: Tensor, retain: bool, through_model: bool = True,
              share: float = 1.0) -> Tensor:
        """``d loss / d x_t``; counts the backward passes through the model (``share``: the
        fraction of the batch this pass covers)."""
        self.backward_passes += share if through_model else 0.0
        return torch.autograd.grad(loss, x_t, retain_graph=retain)[0]

    def _combine(self, x_t: Tensor, l_adv: Tensor, terms: list[tuple[str, Tensor]],
                 gate: Tensor | None, factors: dict[str, Tensor] | None
                 ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """The descent direction from the terms of one forward pass (see ``balance``).

        ``gate`` (``N``, 1 where the sample already fools the model by kappa) implements
        ``realism="after-success"``: the adversarial term for the others, the realism terms for
        these. ``factors``: the calibrated per-sample term scales (``"calibrated"``; None until
        measured). Returns the direction ``N x C x H x W`` and the factors.
        """
        adv_w = torch.ones_like(l_adv) if gate is None else 1.0 - gate
        real_w = torch.ones_like(l_adv) if gate is None else gate
        if self.balance == "literal":
            total = (self.tau * adv_w * l_adv).sum() + sum(
                (self.weights[name] * real_w * t).sum() for name, t in terms)
            return self._grad(total, x_t, False), factors
        if factors is not None:  # calibrated: one backward pass
            total = (adv_w * l_adv).sum() + self.tau * sum(
                (self.weights[name] * real_w * factors[name] * t).sum() for name, t in terms)
            return self._grad(total, x_t, False), factors
        # per-term gradients: grad-norm, and the calibration step of "calibrated"
        g_adv = self._grad(l_adv.sum(), x_t, retain=bool(terms))
        scale_adv = _per_sample_mean_abs(g_adv)
        g = _per_sample_unit(g_adv) * adv_w.view(-1, 1, 1, 1)
        measured: dict[str, Tensor] = {}
        for i, (name, t) in enumerate(terms):
            g_k = self._grad(t.sum(), x_t, retain=i < len(terms) - 1, through_model=name != "detail")
            scale_k = _per_sample_mean_abs(g_k)
            g = g + self.tau * self.weights[name] * real_w.view(-1, 1, 1, 1) * g_k / scale_k
            measured[name] = (scale_adv / scale_k).flatten()
        if self.balance == "calibrated" and terms:
            factors = measured
        return g, factors

    def _fools(self, logits: Tensor, labels: Tensor, targets: Tensor | None,
               kappa: float = 0.0) -> Tensor:
        """``N`` bool: the sample fools the model by more than ``kappa`` (logit margin)."""
        return logit_margin(logits, labels, targets if self.targeted else None) < -kappa

    # -- phase 1 of the two-phase pipeline (Fig. 2) -----------------------------------------
    def _pre_phase(self, images: Tensor, labels: Tensor, targets: Tensor | None,
                   grams: list[Tensor], origin: list[Tensor]) -> Tensor:
        """Adam on L_hybrid (every term, combined by ``balance``) inside the eps box."""
        delta = torch.zeros_like(images, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.pre_lr)
        factors: dict[str, Tensor] | None = None
        for t in range(self.pre_steps):
            x_t = (images + delta).clamp(0.0, 1.0)
            # the origin term has no gradient at x itself: calibrate from the second step on
            realism = self.balance != "calibrated" or t > 0
            _, l_adv, terms = self._terms(x_t, images, labels, targets, grams, origin, realism, None)
            g, factors = self._combine(x_t, l_adv, terms, None, factors)
            delta.grad = g.detach()
            opt.step()
            with torch.no_grad():
                delta.clamp_(-self.eps, self.eps)
        return (images + delta.detach()).clamp(0.0, 1.0)

    # -- the loop (eq. 9) -------------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor, style_images: Tensor | None = None,
                target_labels: Tensor | None = None) -> Tensor:
        self.backward_passes = 0.0
        gen = self.generator()
        style_ref = self._style_reference(images, labels, style_images, gen)
        grams, origin = self._references(images, style_ref)
        targets = None
        if self.targeted and target_labels is not None:
            targets = target_labels
        elif self.targeted:
            with torch.no_grad():
                num_classes = self.model(images[:1]).shape[1]
            targets = self.random_targets(labels, num_classes, gen)
        mask = None if self.mask is None else self.mask.to(images)

        x_t = self._pre_phase(images, labels, targets, grams, origin) if self.pre_steps else images
        x_adv = self._loop(images, labels, targets, grams, origin, x_t, gen, mask)
        return self._refine(images, labels, targets, x_adv, mask) if self.refine else x_adv

    def _loop(self, images: Tensor, labels: Tensor, targets: Tensor | None, grams: list[Tensor],
              origin: list[Tensor], x_t: Tensor, gen: torch.Generator, mask: Tensor | None
              ) -> Tensor:
        """The T iterations of eq. 9 from ``x_t``; returns the kept iterate (see ``keep``)."""
        kernel = self.kernel.to(images)
        amplified = x_t - images
        velocity = torch.zeros_like(images)
        best = x_t.clone()
        found = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        factors: dict[str, Tensor] | None = None
        for t in range(self.steps):
            di = self._diverse(gen, images.shape[-2])
            # phase 2 of the two-phase pipeline is eq. 9 with the cross-entropy gradient alone;
            # "calibrated" measures its factors at step 2 (no origin gradient at x itself)
            realism = not self.pre_steps and (self.balance != "calibrated" or t > 0)
            x_in = x_t.detach().requires_grad_(True)
            logits, l_adv, terms = self._terms(x_in, images, labels, targets, grams, origin,
                                               realism, di)
            plain = None
            if self.realism == "after-success" or self.keep == "last-adversarial":
                with torch.no_grad():
                    plain = logits.detach() if di is None else self.model(x_t)
            gate = (self._fools(plain, labels, targets, self.kappa).float()
                    if plain is not None and self.realism == "after-success" else None)
            g, factors = self._combine(x_in, l_adv, terms, gate, factors)
            if self.keep == "last-adversarial" and plain is not None:
                fooled = self._fools(plain, labels, targets)
                best[fooled], found = x_t[fooled], found | fooled
            x_t, amplified, velocity = self._update(x_t, images, g, amplified, velocity, t,
                                                    kernel, mask)
        if self.keep == "last-adversarial":
            with torch.no_grad():
                final = self._fools(self.model(x_t), labels, targets) | ~found
            best[final] = x_t[final]
            return best
        return x_t

    def _refine(self, images: Tensor, labels: Tensor, targets: Tensor | None, x_adv: Tensor,
                mask: Tensor | None) -> Tensor:
        """For the samples that do not fool the model yet: up to ``refine`` PGD steps
        (``x <- clip(x - eps/4 * sign(grad L_adv))``, no projection, no realism terms), each
        sample stopping as soon as it fools the model. Costs nothing when every sample fools it."""
        x_adv = x_adv.clone()
        mask_n = None if mask is None else mask.expand_as(images)
        todo = torch.arange(images.shape[0], device=images.device)
        for _ in range(self.refine):
            with torch.no_grad():
                tgt = None if targets is None else targets[todo]
                todo = todo[~self._fools(self.model(x_adv[todo]), labels[todo], tgt)]
            if todo.numel() == 0:
                break
            x_in = x_adv[todo].requires_grad_(True)
            tgt = targets[todo] if self.targeted and targets is not None else None
            loss = adversarial_loss(self.model(x_in), labels[todo], tgt).sum()
            share = todo.numel() / images.shape[0]
            step = self.eps / 4 * self._grad(loss, x_in, False, share=share).sign()
            delta = (x_in.detach() - step - images[todo]).clamp(-self.eps, self.eps)
            if mask_n is not None:
                delta = delta * mask_n[todo]
            x_adv[todo] = (images[todo] + delta).clamp(0.0, 1.0)
        return x_adv

    def _update(self, x_t: Tensor, images: Tensor, g: Tensor, amplified: Tensor,
                velocity: Tensor, t: int, kernel: Tensor, mask: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 9 with optional TI smoothing, momentum and a step schedule."""
        if self.smoothing is not None:
            g = depthwise(g, self.smoothing)
        if self.momentum > 0:
            velocity = self.momentum * velocity + _per_sample_unit(g)
            g = velocity
        step = self.alpha * _schedule(self.schedule, t, self.steps) * g.sign()
        gamma = self.gamma * _schedule(self.gamma_schedule, t, self.steps)
        amplified = amplified - step  # we descend L_hybrid
        proj = (heuristic_projection(amplified, self.eps, gamma, kernel)
                if self.projection else torch.zeros_like(amplified))
        amplified = amplified + proj
        delta = (x_t - step + proj - images).clamp(-self.eps, self.eps)
        if mask is not None:
            delta = delta * mask
            amplified = amplified * mask
        return (images + delta).clamp(0.0, 1.0).detach(), amplified, velocity
