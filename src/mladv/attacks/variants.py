"""The exploratory MLAdv options measured in ``docs/method.md`` that did not become the default.

:class:`MLAdvVariant` is :class:`~mladv.attacks.MLAdv` plus the knobs the quality benchmark
(``benchmarks/mladv_quality.py``) compares: the transfer boosters of the patch-wise paper (input
diversity, flips, TI smoothing, momentum), step schedules, the two-phase pipeline of Fig. 2, a
hinged (margin) adversarial term, the after-success realism gate and ``keep``. With every knob at
its neutral value it is :class:`MLAdv` exactly (tested bit for bit). None of them beat the
default on the validation split; their table rows stay in ``docs/method.md``.
"""
from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .balance import per_sample_unit
from .base import full_precision
from .mladv import MLAdv, logit_margin

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

    def _adv_loss(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        if self.adv_loss == "margin":
            return margin_loss(logits, labels, targets if self.targeted else None, self.kappa)
        return super()._adv_loss(logits, labels, targets)

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
            # the origin term has no gradient at x itself: calibrate from the second step on
            realism = self.balance != "calibrated" or t > 0
            _, l_adv, terms = self._terms(x_t, images, labels, targets, grams, origin, realism)
            g, factors = self._combine(x_t, l_adv, terms, None, factors)
            delta.grad = g.detach()
            opt.step()
            with torch.no_grad():
                delta.clamp_(-self.eps, self.eps)
        return (images + delta.detach()).clamp(0.0, 1.0)

    # -- the loop (eq. 9 with the variants' options) -------------------------------------------
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
            # phase 2 of the two-phase pipeline is eq. 9 with the cross-entropy gradient alone
            realism = not self.pre_steps and (self.balance != "calibrated" or t > 0)
            x_in = x_t.detach().requires_grad_(True)
            fn = None if di is None else (lambda v, d=di: transform(v, d))
            logits, l_adv, terms = self._terms(x_in, images, labels, targets, grams, origin,
                                               bool(realism), fn)
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
            g, velocity = self._boost(g, velocity)
            x_t, amplified = self._update(
                x_t, images, g, amplified, kernel, mask,
                self.alpha * schedule_factor(self.schedule, t, self.steps),
                self.gamma * schedule_factor(self.gamma_schedule, t, self.steps))
        if self.keep == "last-adversarial":
            with torch.no_grad():
                final = self._fools(self.model(x_t), labels, targets) | ~found
            best[final] = x_t[final]
            return best
        return x_t

    def _boost(self, g: Tensor, velocity: Tensor) -> tuple[Tensor, Tensor]:
        """TI smoothing, then momentum: the direction the step takes, and the new velocity."""
        if self.smoothing is not None:
            g = depthwise(g, self.smoothing)
        if self.momentum > 0:
            velocity = self.momentum * velocity + per_sample_unit(g)
            g = velocity
        return g, velocity
