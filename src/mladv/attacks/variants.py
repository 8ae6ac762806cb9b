"""The exploratory MLAdv options measured in ``docs/method.md`` that did not become the default.

:class:`MLAdvVariant` is :class:`~mladv.attacks.MLAdv` plus the knobs the quality benchmark
(``benchmarks/mladv_quality.py``) compares: the transfer boosters of the patch-wise paper (input
diversity, flips, TI smoothing, momentum), step schedules, the two-phase pipeline of Fig. 2, a
hinged (margin) adversarial term, the after-success realism gate and ``keep``. With every knob at
its neutral value it is :class:`MLAdv` exactly (tested bit for bit). None of them beat the
default on the validation split; their table rows stay in ``docs/method.md``.

The variants run :class:`MLAdv`'s one loop (eq. 9) and plug in through its hooks: ``_start``
(the two-phase pipeline's first phase), ``_plan`` (input diversity / flips, schedules, no realism
in the second phase), ``_sample_weights`` (the after-success gate, and the bookkeeping of
``keep``), ``_direction`` (TI smoothing, momentum) and ``_adv_loss`` (the margin loss).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features import FeatureTap
from .balance import SampleWeights, per_sample_unit
from .base import full_precision
from .gama import multilabel_margin
from .mladv import MLAdv, StepPlan, logit_margin

AdvLoss = Literal["log-p", "margin"]
Realism = Literal["always", "after-success"]
Schedule = Literal["constant", "linear", "cosine"]
Keep = Literal["last", "last-adversarial"]


def gaussian_kernel(size: int) -> Tensor:
    """A ``size x size`` Gaussian (3 sigma at the border, as torchattacks' TI-FGSM), sum 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"smoothing must be 0 or an odd kernel size >= 1, got {size}")
    x = torch.linspace(-3.0, 3.0, size) if size > 1 else torch.zeros(1)
    k1 = torch.exp(-x.pow(2) / 2)
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum()


def depthwise(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve each channel of ``x`` (``N x C x H x W``) with ``kernel`` (``k x k``), zero
    padding, in ``x``'s precision even under an attack's bf16 autocast."""
    c = x.shape[1]
    with full_precision(x.device.type):
        return F.conv2d(x, kernel.to(x).expand(c, 1, *kernel.shape),
                        padding=kernel.shape[-1] // 2, groups=c)


def margin_loss(logits: Tensor, labels: Tensor, targets: Tensor | None, kappa: float) -> Tensor:
    """Hinged logit margin (Carlini & Wagner) ``max(logit_margin, -kappa)``: minimising it fools
    the model, and it is flat (zero gradient) once the sample fools the model by ``kappa``.

    Shape: logits ``N x K``, labels ``N`` -> ``N``.
    """
    return logit_margin(logits, labels, targets).clamp_min(-kappa)


def schedule_factor(kind: Schedule, t: int, steps: int) -> float:
    """Multiplier of the step size and the projection factor at step ``t`` of ``steps``:
    1 (constant), ``1 - t/T`` (linear) or ``(1 + cos(pi t/T))/2`` (cosine), never below 1/T."""
    if kind == "constant":
        return 1.0
    frac = t / steps
    value = 1.0 - frac if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return max(value, 1.0 / steps)


class Diversity(NamedTuple):
    """One step's input transform: an optional DI resize ``(side, top, left)`` and a flip."""

    resize: tuple[int, int, int] | None
    flip: bool


def transform(x: Tensor, params: Diversity | None) -> Tensor:
    """Resize ``x`` to ``side`` and zero-pad it back to its size at (top, left); flip it.

    Shape: ``N x C x H x W`` -> same.
    """
    if params is None:
        return x
    if params.resize is not None:
        side, top, left = params.resize
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        x = F.pad(small, (left, w - side - left, top, h - side - top))
    return x.flip(-1) if params.flip else x


@dataclass
class _Run:
    """One call's state: the momentum ``velocity`` (``N x C x H x W``) and, for
    ``keep="last-adversarial"``, per sample the last iterate that fooled the model (``best``)
    and whether there was one (``found``, ``N``)."""

    velocity: Tensor
    best: Tensor
    found: Tensor


class MLAdvVariant(MLAdv):
    """:class:`~mladv.attacks.MLAdv` with the exploratory options of ``docs/method.md``.

    Args (besides every :class:`MLAdv` option):
        adv_loss: ``"log-p"`` (eq. 7) or ``"margin"`` (hinged logit margin, flat once
            misclassified by ``kappa``: realism then takes over).
        kappa: the margin of ``adv_loss="margin"`` and of the gate (logit units).
        realism: ``"always"``, or ``"after-success"``: per sample, the realism terms replace the
            adversarial one once the sample is misclassified by ``kappa``.
        momentum: MI-FGSM decay mu (0 = none): ``m <- mu m + g / mean|g|``, the step uses ``m``.
        diversity: probability of the DI-FGSM input transform at each step (0 = none).
        diversity_scale: DI shrinks the image to a random side in ``[scale H, H)``, pads it back.
        smoothing: TI-FGSM: odd size of a Gaussian that smooths the gradient (0 = none).
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay of the step ``alpha``.
        gamma_schedule: the same for the projection factor ``gamma`` (default: ``schedule``).
        flip: probability of flipping the input left-right at a step.
        pre_steps: the two-phase pipeline of Fig. 2: first ``pre_steps`` Adam steps (rate
            ``pre_lr``, default ``eps / 4``) on L_hybrid, then eq. 9 with the cross-entropy
            gradient alone.
        keep: ``"last"`` iterate, or per sample the ``"last-adversarial"`` one (the last iterate
            that fooled the model; the last iterate when none did).
    """

    def __init__(self, model: nn.Module, *, adv_loss: AdvLoss = "log-p", kappa: float = 0.0,
                 realism: Realism = "always", momentum: float = 0.0, diversity: float = 0.0,
                 diversity_scale: float = 0.9, smoothing: int = 0,
                 schedule: Schedule = "constant", gamma_schedule: Schedule | None = None,
                 flip: float = 0.0, pre_steps: int = 0, pre_lr: float | None = None,
                 keep: Keep = "last", **options: Any) -> None:
        super().__init__(model, **options)
        self.adv_loss, self.kappa, self.realism, self.keep = adv_loss, kappa, realism, keep
        self.momentum, self.diversity, self.diversity_scale = momentum, diversity, diversity_scale
        self.flip = flip
        self.smoothing = gaussian_kernel(smoothing) if smoothing else None
        self.schedule, self.gamma_schedule = schedule, gamma_schedule or schedule
        self.pre_steps = pre_steps
        self.pre_lr = self.eps / 4 if pre_lr is None else float(pre_lr)
        self._check_variant_options()

    def _check_variant_options(self) -> None:
        choices = {"adv_loss": ("log-p", "margin"), "realism": ("always", "after-success"),
                   "schedule": ("constant", "linear", "cosine"),
                   "gamma_schedule": ("constant", "linear", "cosine"),
                   "keep": ("last", "last-adversarial")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("kappa", "momentum", "pre_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("diversity", "flip"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.diversity_scale <= 1:
            raise ValueError(f"diversity_scale must be in (0, 1], got {self.diversity_scale}")

    _run: _Run  # set at the start of each call's loop

    def _margin(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        """The logit margin, negative when the sample fools the model (``N``): multiclass
        :func:`~mladv.attacks.mladv.logit_margin`; multilabel minus GAMA's per-finding margin
        (:func:`~mladv.attacks.gama.multilabel_margin`: negative once a known finding is across
        its threshold, or, targeted, once every known target entry is reached)."""
        tgt = targets if self.targeted else None
        if self.multilabel:
            return -multilabel_margin(logits, labels, self.thresholds, tgt)
        return logit_margin(logits, labels, tgt)

    def _adv_loss(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        if self.adv_loss == "margin":
            if self.multilabel:
                return self._margin(logits, labels, targets).clamp_min(-self.kappa)
            return margin_loss(logits, labels, targets if self.targeted else None, self.kappa)
        return super()._adv_loss(logits, labels, targets)

    def _fooled_by(self, logits: Tensor, labels: Tensor, targets: Tensor | None,
                   kappa: float) -> Tensor:
        """``N`` bool: the sample fools the model by more than ``kappa`` (logit margin)."""
        return self._margin(logits, labels, targets) < -kappa

    # -- input diversity (DI-FGSM) and flips ---------------------------------------------------
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

    def _terms(self, x_t: Tensor, images: Tensor, labels: Tensor, targets: Tensor | None,
               grams: list[Tensor], origin: list[Tensor], realism: bool,
               transform: Callable[[Tensor], Tensor] | None = None
               ) -> tuple[Tensor, Tensor, list[tuple[str, Tensor]]]:
        """:meth:`MLAdv._terms`, with the origin reference (eq. 5) taken through the same input
        transform as the iterate."""
        if realism and self.origin_layers and transform is not None:
            origin = self._origin_features(transform(images))
        return super()._terms(x_t, images, labels, targets, grams, origin, realism, transform)

    @torch.no_grad()
    def _origin_features(self, images: Tensor) -> list[Tensor]:
        with FeatureTap(self.model, self.origin_layers) as tap:
            self.model(images)
            return [f.detach() for f in tap.outputs(self.origin_layers)]

    # -- phase 1 of the two-phase pipeline (Fig. 2) --------------------------------------------
    def _start(self, images: Tensor, labels: Tensor, targets: Tensor | None,
               grams: list[Tensor], origin: list[Tensor]) -> Tensor:
        """Adam on L_hybrid (every term, combined by ``balance``) inside the eps box."""
        if not self.pre_steps:
            return images
        delta = torch.zeros_like(images, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.pre_lr)
        factors: dict[str, Tensor] | None = None
        for t in range(self.pre_steps):
            x_t = (images + delta).clamp(0.0, 1.0)
            _, l_adv, terms = self._terms(x_t, images, labels, targets, grams, origin,
                                          self._realism_at(t))
            g, factors = self._combine(x_t, l_adv, terms, None, factors)
            delta.grad = g.detach()
            opt.step()
            with torch.no_grad():
                delta.clamp_(-self.eps, self.eps)
        return (images + delta.detach()).clamp(0.0, 1.0)

    # -- MLAdv's loop (eq. 9) with the variants' hooks -----------------------------------------
    def _loop(self, images: Tensor, labels: Tensor, targets: Tensor | None, grams: list[Tensor],
              origin: list[Tensor], x_t: Tensor, gen: torch.Generator, mask: Tensor | None
              ) -> Tensor:
        """:meth:`MLAdv._loop` from ``x_t``; returns the kept iterate (see ``keep``)."""
        found = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        self._run = _Run(torch.zeros_like(images), x_t.clone(), found)
        x_t = super()._loop(images, labels, targets, grams, origin, x_t, gen, mask)
        if self.keep == "last":
            return x_t
        with torch.no_grad():
            final = self._fooled_by(self.model(x_t), labels, targets, 0.0) | ~self._run.found
        best = self._run.best
        best[final] = x_t[final]
        return best

    def _plan(self, t: int, gen: torch.Generator, images: Tensor) -> StepPlan:
        """This step's input transform (drawn with ``gen``: DI, flips), the scheduled
        ``alpha`` and ``gamma``; phase 2 of the two-phase pipeline is eq. 9 with the
        cross-entropy gradient alone (no realism terms)."""
        di = self._diverse(gen, images.shape[-2])
        return StepPlan(
            realism=not self.pre_steps and self._realism_at(t),
            alpha=self.alpha * schedule_factor(self.schedule, t, self.steps),
            gamma=self.gamma * schedule_factor(self.gamma_schedule, t, self.steps),
            transform=None if di is None else partial(transform, params=di))

    def _sample_weights(self, x_t: Tensor, logits: Tensor, labels: Tensor,
                        targets: Tensor | None, plan: StepPlan) -> SampleWeights | None:
        """``realism="after-success"``: per sample, ``(1 - gate, gate)`` with ``gate`` 1 once
        ``x_t`` fools the model by ``kappa`` (its untransformed logits). ``keep=
        "last-adversarial"``: records the samples ``x_t`` fools. None otherwise."""
        if self.realism != "after-success" and self.keep != "last-adversarial":
            return None
        with torch.no_grad():
            plain = logits.detach() if plan.transform is None else self.model(x_t)
        if self.keep == "last-adversarial":
            fooled = self._fooled_by(plain, labels, targets, 0.0)
            self._run.best[fooled] = x_t[fooled]
            self._run.found |= fooled
        if self.realism != "after-success":
            return None
        gate = self._fooled_by(plain, labels, targets, self.kappa).float()
        return 1.0 - gate, gate

    def _direction(self, g: Tensor) -> Tensor:
        """TI smoothing, then momentum (``m <- mu m + g / mean|g|``): the direction the step
        takes. Shape: ``N x C x H x W`` -> same."""
        g, self._run.velocity = self._boost(g, self._run.velocity)
        return g

    def _boost(self, g: Tensor, velocity: Tensor) -> tuple[Tensor, Tensor]:
        """TI smoothing, then momentum: the direction the step takes, and the new velocity."""
        if self.smoothing is not None:
            g = depthwise(g, self.smoothing)
        if self.momentum > 0:
            velocity = self.momentum * velocity + per_sample_unit(g)
            g = velocity
        return g, velocity
