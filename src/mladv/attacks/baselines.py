"""torchattacks baselines behind the project's :class:`Attack` interface.

torchattacks already implements FGSM, PGD and MI-FGSM; these wrappers only give them the
project's checks, eval-mode handling and seeding. Its PIFGSM hard-wires a 3-channel kernel, so
PI-FGSM is :class:`~mladv.attacks.MLAdv` with every realism term off, which is the same update
(see :func:`pifgsm`).
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Unpack

import torch
import torchattacks
from torch import Tensor, nn

from .base import Attack, ComputeOptions, Precision
from .mladv import MLAdv


class TorchAttack(Attack):
    """Run a torchattacks attack class under the project's base class.

    Examples::
        >>> atk = TorchAttack(model, torchattacks.PGD, eps=8/255, alpha=2/255, steps=10)
        >>> x_adv = atk(images, labels)
    """

    def __init__(self, model: nn.Module, attack_cls: type, *, eps: float = 8 / 255,
                 targeted: bool = False, seed: int | None = None, precision: Precision = "fp32",
                 channels_last: bool = False, **kwargs: Any) -> None:
        super().__init__(model, eps=eps, targeted=targeted, seed=seed, precision=precision,
                         channels_last=channels_last)
        self.inner = attack_cls(model, eps=eps, **kwargs)
        self.inner_options = dict(kwargs)  # alpha, steps, ...: the settings kept by the wrapper
        self.name = attack_cls.__name__

    def forward(self, images: Tensor, labels: Tensor, target_labels: Tensor | None = None
                ) -> Tensor:
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
         seed: int | None = None, **compute: Unpack[ComputeOptions]) -> Attack:
    """FGSM (Goodfellow et al., 2015), torchattacks."""
    return TorchAttack(model, torchattacks.FGSM, eps=eps, targeted=targeted, seed=seed, **compute)


def pgd(model: nn.Module, *, eps: float = 8 / 255, steps: int = 10, alpha: float | None = None,
        random_start: bool = True, targeted: bool = False, seed: int | None = None,
        **compute: Unpack[ComputeOptions]) -> Attack:
    """PGD (Madry et al., 2018), torchattacks; step ``alpha = eps / 4`` by default."""
    _check_steps(steps)
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return TorchAttack(model, torchattacks.PGD, eps=eps, alpha=alpha or eps / 4, steps=steps,
                       random_start=random_start, targeted=targeted, seed=seed, **compute)


def mifgsm(model: nn.Module, *, eps: float = 8 / 255, steps: int = 10, decay: float = 1.0,
           targeted: bool = False, seed: int | None = None,
           **compute: Unpack[ComputeOptions]) -> Attack:
    """MI-FGSM (Dong et al., 2018), torchattacks; step ``eps / steps``."""
    _check_steps(steps)
    if decay < 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    return TorchAttack(model, torchattacks.MIFGSM, eps=eps, alpha=eps / steps, steps=steps,
                       decay=decay, targeted=targeted, seed=seed, **compute)


def pifgsm(model: nn.Module, *, eps: float = 8 / 255, steps: int = 10, beta: float = 10.0,
           kernel_size: int = 3, targeted: bool = False, seed: int | None = None,
           **compute: Unpack[ComputeOptions]) -> Attack:
    """PI-FGSM (Gao et al., ECCV 2020) for any channel count: MLAdv with the realism terms off."""
    return MLAdv(model, eps=eps, steps=steps, beta=beta, kernel_size=kernel_size,
                 style_weight=0.0, origin_weight=0.0, detail_weight=0.0, projection=True,
                 refine=0, gamma=None, targeted=targeted, seed=seed, **compute)
