"""The base class every attack shares: input checks, model mode, device, targeted mode, seeds,
and the speed options ``precision`` (bf16 autocast) and ``channels_last``."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal, TypedDict

import torch
from torch import Tensor, nn

from ..utils import model_device

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")


class ComputeOptions(TypedDict, total=False):
    """The speed options every attack takes as keywords (they live on :class:`Attack`, so each
    attack's own signature stays about its method): ``precision`` (``"fp32"`` or ``"bf16"``)
    and ``channels_last`` (bool). See :class:`Attack`."""

    precision: Precision
    channels_last: bool


@contextmanager
def channels_last_model(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """``model``'s 4-d weights in channels_last memory format inside the block; converted back
    afterwards (even on error) only if this converted them, so a model the caller already put in
    channels_last (``model.to(memory_format=torch.channels_last)``, free per call) stays so."""
    convert = enabled and any(p.dim() == 4 and not p.is_contiguous(
        memory_format=torch.channels_last) for p in model.parameters())
    if convert:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    try:
        yield model
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def full_precision(device_type: str) -> AbstractContextManager[object]:
    """Autocast off inside the block when it is on (the attack's own arithmetic on the
    perturbation -- projection, smoothing -- stays float32 under ``precision="bf16"``)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (BatchNorm must not change under attack) and restore its previous
    mode afterwards, even when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_images(images: Tensor, labels: Tensor | None = None,
                 num_classes: int | None = None) -> None:
    """Raise ``ValueError`` unless ``images`` is a float ``N x C x H x W`` tensor in [0, 1] and
    ``labels`` an integer tensor of length ``N`` with values in ``[0, num_classes)``."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape N x C x H x W, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
    if images.numel():
        lo, hi = images.min().item(), images.max().item()
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"images must lie in [0, 1] (normalise inside the model, not before the attack); "
                f"got min={lo:.4g}, max={hi:.4g}")
    if labels is not None:
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), "
                             f"got {tuple(labels.shape)}")
        if labels.is_floating_point():
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        if labels.numel() and (labels.min().item() < 0 or (
                num_classes is not None and labels.max().item() >= num_classes)):
            top = f"{num_classes - 1}" if num_classes is not None else "C - 1"
            raise ValueError(f"labels must be class indices in [0, {top}] (the model has "
                             f"{num_classes or 'C'} classes), got min={labels.min().item()}, "
                             f"max={labels.max().item()}")


class Attack:
    """Base class: ``x_adv = atk(images, labels)``.

    Subclasses implement :meth:`forward` as their paper's update rule; this class moves inputs to
    the model's device, checks them, runs the model in eval mode (restoring its mode afterwards),
    handles targeted mode and seeds.

    Args:
        model: a classifier taking ``N x C x H x W`` images in [0, 1] and returning logits.
        eps: the L-infinity budget in [0, 1] units (8/255 by default).
        targeted: if True, ``target_labels`` (or, if not given, a random other class drawn with
            ``seed``) are the classes to reach.
        seed: makes every random choice of the attack reproducible.
        precision: ``"fp32"``, or ``"bf16"``: the attack runs under
            ``torch.autocast(<device>, torch.bfloat16)``, so the model's convolutions and matmuls
            run in bf16 (CUDA; CPUs with AVX-512-BF16 / AMX, emulated and slow elsewhere). The
            images, the gradient w.r.t. them (autograd casts it back to the float32 input's
            dtype), the perturbation, its projection and the eps / [0, 1] clipping stay float32.
        channels_last: run the model with its weights and the images in channels_last memory
            format (faster convolutions on GPUs and oneDNN CPUs); the model is converted for the
            call and converted back, unless it already was in channels_last (then nothing is
            done: convert it once yourself to skip the per-call conversion). The output is
            contiguous either way.

    ``precision`` and ``channels_last`` are keywords of every attack (:class:`ComputeOptions`):
    ``make_attack("pgd", model, precision="bf16")``, ``--option precision=bf16`` on the CLI.
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, targeted: bool = False,
                 seed: int | None = None, precision: Precision = "fp32",
                 channels_last: bool = False) -> None:
        if not 0.0 < eps <= 1.0:
            raise ValueError(f"eps must be in (0, 1] (in [0, 1] image units, e.g. 8/255), "
                             f"got {eps}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be True or False, got {channels_last!r}")
        self.model = model
        self.eps = float(eps)
        self.targeted = targeted
        self.seed = seed
        self.precision: Precision = precision
        self.channels_last = channels_last

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with ``seed`` (fresh per call: equal calls, equal output)."""
        g = torch.Generator()
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g

    def _float_dtype(self) -> torch.dtype:
        """float32 (float64 for a double model); a half-precision model is one clear error:
        8/255 steps and the sign of small gradients are not reliable in 16 bits."""
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()),
                     torch.float32)
        if dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"the model's parameters are {dtype}; attacks need a float32 model: "
                             f"call model.float() first (autocast may still run it in half)")
        return torch.float64 if dtype == torch.float64 else torch.float32

    def autocast(self) -> AbstractContextManager[object]:
        """bf16 autocast on the model's device type when ``precision="bf16"``, else nothing (an
        autocast the caller opened around the attack still applies)."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def random_targets(self, labels: Tensor, num_classes: int, gen: torch.Generator) -> Tensor:
        """A uniformly drawn class different from each label (shape ``N``)."""
        if num_classes < 2:
            raise ValueError("targeted mode needs at least 2 classes")
        offset = torch.randint(1, num_classes, labels.shape, generator=gen).to(labels.device)
        return (labels + offset) % num_classes

    def __call__(self, images: Tensor, labels: Tensor, **kwargs: Any) -> Tensor:
        check_images(images, labels, getattr(self.model, "num_classes", None))
        device = self.device
        images = images.detach().to(device, self._float_dtype())
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.detach().to(device, torch.long)
        if kwargs.get("target_labels") is not None:
            kwargs["target_labels"] = kwargs["target_labels"].detach().to(device, torch.long)
            if not self.targeted:
                raise ValueError("target_labels given but the attack is untargeted: "
                                 "pass targeted=True")
        with eval_mode(self.model), channels_last_model(self.model, self.channels_last), \
                self.autocast():
            adv = self.forward(images, labels, **kwargs)
        return adv.detach().contiguous()

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:  # pragma: no cover
        """The attack's update rule: ``forward(images, labels, ...)`` -> adversarial images."""
        raise NotImplementedError

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "model")
        return f"{type(self).__name__}({keys})"
