"""FGSM, PGD and MI-FGSM on mladv's own loop, with a pluggable objective; PI-FGSM via MLAdv.

The three sign-gradient baselines are written here rather than wrapped from torchattacks because
torchattacks hard-wires cross-entropy (it cannot take the masked BCE of multi-label chest X-ray
models, its issue #70) and pins old ``requests`` / ``urllib3`` into users' environments. The
update rules are torchattacks' 3.5.1 ones operation for operation, so on single-label models the
outputs equal torchattacks' pixel for pixel (``tests/test_baselines.py``); torchattacks stays a
test-only reference. Its PIFGSM hard-wires a 3-channel kernel, so PI-FGSM is
:class:`~mladv.attacks.MLAdv` with every realism term off, which is the same update
(see :func:`pifgsm`).

Objective: ``objective(logits N x K, labels) -> scalar`` is the loss the attack ascends (default
:func:`mladv.tasks.attack_objective` of the task: the mean cross-entropy as torchattacks for a
multiclass model, the masked binary cross-entropy :func:`mladv.tasks.masked_bce` over the known
findings for a multilabel one, labels ``N x K`` with NaN = unknown); in targeted mode the attack
descends it on the target labels (``-objective(logits, targets)`` is ascended), as torchattacks
does (multilabel: ``target_labels`` ``N x K``, a label set to reach).
"""
from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, ClassVar, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import Task, attack_objective
from .base import Attack, ComputeOptions, Precision, full_precision
from .mladv import MLAdv

Objective = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """The default objective: ``mean_i -log softmax(z_i)[y_i]`` (torchattacks'
    ``nn.CrossEntropyLoss()``). Shape: logits ``N x K``, labels ``N`` -> a scalar."""
    return F.cross_entropy(logits, labels)


def objective_name(objective: Objective) -> str:
    """How a custom objective enters an attack's settings (and so its reuse key): a function by
    ``module.qualname`` (two lambdas of one scope look alike: name them), any other callable by
    its ``repr`` (a dataclass's names its fields; a default ``repr`` holds an address, so such
    work is never reused rather than wrongly reused)."""
    if isinstance(objective, (types.FunctionType, types.BuiltinFunctionType)):
        return f"{objective.__module__}.{objective.__qualname__}"
    return repr(objective)


class SignGradientAttack(Attack):
    """The shared part of :class:`FGSM`, :class:`PGD` and :class:`MIFGSM`: the objective, the
    targets, one gradient of the objective w.r.t. the images, and the L-infinity projection.

    Settings: the method's options live in ``inner_options`` and its name in ``name``, and
    :func:`mladv.fingerprint.attack_settings` records the class as ``settings_class``
    (``"TorchAttack"``): the attribute names and class name of the torchattacks wrapper these
    loops replaced, so the reuse keys of committed runs stay the same for the same settings.
    A custom objective adds ``inner_options["objective"]`` (:func:`objective_name`).
    """

    settings_class: ClassVar[str] = "TorchAttack"

    def __init__(self, model: nn.Module, *, name: str, options: dict[str, Any],
                 eps: float = 8 / 255, targeted: bool = False, seed: int | None = None,
                 objective: Objective | None = None, precision: Precision = "fp32",
                 channels_last: bool = False, task: Task | None = None) -> None:
        super().__init__(model, eps=eps, targeted=targeted, seed=seed, precision=precision,
                         channels_last=channels_last, task=task)
        if objective is not None and not callable(objective):
            raise ValueError(f"objective must be a callable (logits N x K, labels) -> scalar "
                             f"loss, got {objective!r}")
        self.name = name
        self.inner_options = dict(options)
        if objective is not None:
            self.inner_options["objective"] = objective_name(objective)
        self.objective: Objective = objective or attack_objective(self.task)

    def _labels(self, images: Tensor, labels: Tensor, target_labels: Tensor | None) -> Tensor:
        """The labels the objective sees: ``labels`` untargeted; targeted, ``target_labels`` or
        a uniformly drawn other class per image (seeded by ``seed``)."""
        if not self.targeted:
            return labels
        if target_labels is not None:
            return target_labels
        with torch.no_grad():
            n = int(self.model(images[:1]).shape[1])
        return self.random_targets(labels, n, self.generator())

    def _gradient(self, x: Tensor, labels: Tensor) -> Tensor:
        """``d cost / d x`` with ``cost = objective(model(x), labels)``, negated when targeted
        (one forward and one backward pass). Shape: ``N x C x H x W`` -> the same."""
        x = x.detach().requires_grad_(True)
        cost = self.objective(self.model(x), labels)
        if self.targeted:
            cost = -cost
        (grad,) = torch.autograd.grad(cost, x)
        return grad

    def _project(self, images: Tensor, adv: Tensor) -> Tensor:
        """``clip_[0,1](x + clip_[-eps,eps](adv - x))`` (torchattacks' two lines)."""
        delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
        return torch.clamp(images + delta, min=0, max=1).detach()


class FGSM(SignGradientAttack):
    """FGSM (Goodfellow et al., ICLR 2015, https://arxiv.org/abs/1412.6572):
    ``x_adv = clip_[0,1](x + eps * sign(∇_x J(x, y)))``, one gradient.

    Shape: images ``N x C x H x W`` in [0, 1], labels ``N`` (multilabel ``N x K``) ->
    ``N x C x H x W``.

    Examples::
        >>> x_adv = FGSM(model, eps=8/255)(images, labels)
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, targeted: bool = False,
                 seed: int | None = None, objective: Objective | None = None,
                 **compute: Unpack[ComputeOptions]) -> None:
        super().__init__(model, name="FGSM", options={}, eps=eps, targeted=targeted, seed=seed,
                         objective=objective, **compute)

    def forward(self, images: Tensor, labels: Tensor, target_labels: Tensor | None = None
                ) -> Tensor:
        grad = self._gradient(images, self._labels(images, labels, target_labels))
        with full_precision(images.device.type):
            return torch.clamp(images + self.eps * grad.sign(), min=0, max=1).detach()


class PGD(SignGradientAttack):
    """PGD (Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083), L-infinity:
    ``x_0 = clip_[0,1](x + U(-eps, eps))`` (random start), then ``steps`` times
    ``x_{t+1} = clip_[0,1](x + clip_[-eps,eps](x_t + alpha * sign(∇ J(x_t, y)) - x))``.

    The random start is drawn on the CPU from a generator seeded with ``seed``
    (``torch.empty_like(x).uniform_(-eps, eps)`` as torchattacks, which draws from the global
    generator: ``torch.manual_seed(seed)`` before torchattacks gives the same start on a CPU).

    Shape: images ``N x C x H x W`` in [0, 1], labels ``N`` (multilabel ``N x K``) ->
    ``N x C x H x W``.

    Examples::
        >>> x_adv = PGD(model, eps=8/255, alpha=2/255, steps=10, seed=0)(images, labels)
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, alpha: float = 2 / 255,
                 steps: int = 10, random_start: bool = True, targeted: bool = False,
                 seed: int | None = None, objective: Objective | None = None,
                 **compute: Unpack[ComputeOptions]) -> None:
        super().__init__(model, name="PGD", eps=eps, targeted=targeted, seed=seed,
                         objective=objective,
                         options={"alpha": alpha, "steps": steps, "random_start": random_start},
                         **compute)

    def forward(self, images: Tensor, labels: Tensor, target_labels: Tensor | None = None
                ) -> Tensor:
        y = self._labels(images, labels, target_labels)
        alpha, steps = self.inner_options["alpha"], self.inner_options["steps"]
        adv = images.clone().detach()
        with full_precision(images.device.type):
            if self.inner_options["random_start"]:
                noise = torch.empty_like(images, device="cpu").uniform_(
                    -self.eps, self.eps, generator=self.generator())
                adv = torch.clamp(adv + noise.to(images.device), min=0, max=1).detach()
        for _ in range(steps):
            grad = self._gradient(adv, y)
            with full_precision(images.device.type):
                adv = self._project(images, adv.detach() + alpha * grad.sign())
        return adv


class MIFGSM(SignGradientAttack):
    """MI-FGSM (Dong et al., CVPR 2018, https://arxiv.org/abs/1710.06081): with ``g_0 = 0``,
    ``steps`` times ``g_{t+1} = decay * g_t + ∇ J(x_t, y) / mean(|∇ J(x_t, y)|)`` (the mean
    absolute value per image, over C x H x W, as torchattacks) and
    ``x_{t+1} = clip_[0,1](x + clip_[-eps,eps](x_t + alpha * sign(g_{t+1}) - x))``.

    An image whose gradient is exactly zero (a saturated softmax) keeps a zero step here; in
    torchattacks 0 / 0 makes it NaN (the denominator is clamped to the smallest normal float,
    which changes nothing else).

    Shape: images ``N x C x H x W`` in [0, 1], labels ``N`` (multilabel ``N x K``) ->
    ``N x C x H x W``.

    Examples::
        >>> x_adv = MIFGSM(model, eps=8/255, alpha=0.8/255, steps=10)(images, labels)
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, alpha: float = 2 / 255,
                 steps: int = 10, decay: float = 1.0, targeted: bool = False,
                 seed: int | None = None, objective: Objective | None = None,
                 **compute: Unpack[ComputeOptions]) -> None:
        super().__init__(model, name="MIFGSM", eps=eps, targeted=targeted, seed=seed,
                         objective=objective,
                         options={"alpha": alpha, "steps": steps, "decay": decay}, **compute)

    def forward(self, images: Tensor, labels: Tensor, target_labels: Tensor | None = None
                ) -> Tensor:
        y = self._labels(images, labels, target_labels)
        opts = self.inner_options
        momentum = torch.zeros_like(images)
        adv = images.clone().detach()
        tiny = torch.finfo(images.dtype).tiny
        for _ in range(opts["steps"]):
            grad = self._gradient(adv, y)
            with full_precision(images.device.type):
                scale = torch.mean(torch.abs(grad), dim=(1, 2, 3), keepdim=True)
                grad = grad / scale.clamp_min(tiny)
                grad = grad + momentum * opts["decay"]
                momentum = grad
                adv = self._project(images, adv.detach() + opts["alpha"] * grad.sign())
        return adv


class TorchAttack(Attack):
    """Any torchattacks attack class under the project's base class (checks, eval mode, seeds).
    Not used by mladv itself (its FGSM / PGD / MI-FGSM are :class:`FGSM`, :class:`PGD`,
    :class:`MIFGSM`); it needs torchattacks installed (the ``dev`` extra), imported only here.

    Examples::
        >>> atk = TorchAttack(model, torchattacks.PGD, eps=8/255, alpha=2/255, steps=10)
        >>> x_adv = atk(images, labels)
    """

    def __init__(self, model: nn.Module, attack_cls: type, *, eps: float = 8 / 255,
                 targeted: bool = False, seed: int | None = None, precision: Precision = "fp32",
                 channels_last: bool = False, **kwargs: Any) -> None:
        super().__init__(model, eps=eps, targeted=targeted, seed=seed, precision=precision,
                         channels_last=channels_last)
        if self.multilabel:
            raise ValueError("TorchAttack: torchattacks hard-wires the cross-entropy, so it cannot "
                             "attack a multilabel model; use mladv's fgsm / pgd / mifgsm")
        self.inner = attack_cls(model, eps=eps, **kwargs)
        self.inner_options = dict(kwargs)  # alpha, steps, ...: the settings kept by the wrapper
        self.name = attack_cls.__name__

    def forward(self, images: Tensor, labels: Tensor, target_labels: Tensor | None = None
                ) -> Tensor:
        import contextlib
        import io
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            # torchattacks prints on every mode change; keep stdout clean for pipelines
            with contextlib.redirect_stdout(io.StringIO()):
                if self.targeted:
                    if target_labels is None:
                        n = self.model(images[:1]).shape[1]
                        target_labels = self.random_targets(labels, n, self.generator())
                    fixed = target_labels
                    self.inner.set_mode_targeted_by_function(lambda _x, _y: fixed)
                elif self.inner.targeted:
                    self.inner.set_mode_default()
            adv: Tensor = self.inner(images, labels)
            return adv


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def fgsm(model: nn.Module, *, eps: float = 8 / 255, targeted: bool = False,
         seed: int | None = None, objective: Objective | None = None,
         **compute: Unpack[ComputeOptions]) -> Attack:
    """FGSM (Goodfellow et al., 2015): :class:`FGSM`."""
    return FGSM(model, eps=eps, targeted=targeted, seed=seed, objective=objective, **compute)


def pgd(model: nn.Module, *, eps: float = 8 / 255, steps: int = 10, alpha: float | None = None,
        random_start: bool = True, targeted: bool = False, seed: int | None = None,
        objective: Objective | None = None, **compute: Unpack[ComputeOptions]) -> Attack:
    """PGD (Madry et al., 2018): :class:`PGD` with step ``alpha = eps / 4`` by default."""
    _check_steps(steps)
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return PGD(model, eps=eps, alpha=alpha or eps / 4, steps=steps, random_start=random_start,
               targeted=targeted, seed=seed, objective=objective, **compute)


def mifgsm(model: nn.Module, *, eps: float = 8 / 255, steps: int = 10, decay: float = 1.0,
           targeted: bool = False, seed: int | None = None, objective: Objective | None = None,
           **compute: Unpack[ComputeOptions]) -> Attack:
    """MI-FGSM (Dong et al., 2018): :class:`MIFGSM` with step ``eps / steps``."""
    _check_steps(steps)
    if decay < 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    return MIFGSM(model, eps=eps, alpha=eps / steps, steps=steps, decay=decay,
                  targeted=targeted, seed=seed, objective=objective, **compute)


def pifgsm(model: nn.Module, *, eps: float = 8 / 255, steps: int = 10, beta: float = 10.0,
           kernel_size: int = 3, targeted: bool = False, seed: int | None = None,
           **compute: Unpack[ComputeOptions]) -> Attack:
    """PI-FGSM (Gao et al., ECCV 2020) for any channel count: MLAdv with the realism terms off."""
    return MLAdv(model, eps=eps, steps=steps, beta=beta, kernel_size=kernel_size,
                 style_weight=0.0, origin_weight=0.0, detail_weight=0.0, projection=True,
                 refine=0, gamma=None, targeted=targeted, seed=seed, **compute)
