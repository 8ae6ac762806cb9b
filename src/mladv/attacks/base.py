"""The base class every attack shares: input checks, model mode, device, targeted mode, seeds,
the task (multiclass or multilabel, :mod:`mladv.tasks`) and the speed options ``precision``
(bf16 autocast) and ``channels_last``."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal, TypedDict

import torch
from torch import Tensor, nn

from ..tasks import Task, Thresholds, check_targets, check_task
from ..utils import model_device

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")


class ComputeOptions(TypedDict, total=False):
    """The options every attack takes as keywords (they live on :class:`Attack`, so each
    attack's own signature stays about its method): the speed options ``precision``
    (``"fp32"`` or ``"bf16"``) and ``channels_last`` (bool), and the model's ``task``
    (``"multiclass"`` / ``"multilabel"``, None: the model's own). See :class:`Attack`."""

    precision: Precision
    channels_last: bool
    task: Task | None


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
                 num_classes: int | None = None, *, task: Task = "multiclass") -> None:
    """Raise ``ValueError`` (one line) unless ``images`` is a float ``N x C x H x W`` tensor in
    [0, 1] and ``labels`` fit ``task``: multiclass, an integer tensor of length ``N`` with values
    in ``[0, num_classes)``; multilabel, an ``N x K`` float tensor of 0 / 1 / NaN (unknown) with
    ``K = num_classes`` where known (:func:`mladv.tasks.check_targets`)."""
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
    if labels is None:
        return
    if check_task(task) == "multilabel":
        _check_multilabel(images, labels, num_classes)
        return
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        hint = (" (N x K labels are multilabel: a model with task='multilabel' or pass "
                "task='multilabel')" if labels.dim() == 2 else "")
        raise ValueError(f"labels must have shape ({images.shape[0]},), "
                         f"got {tuple(labels.shape)}{hint}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() and (labels.min().item() < 0 or (
            num_classes is not None and labels.max().item() >= num_classes)):
        top = f"{num_classes - 1}" if num_classes is not None else "C - 1"
        raise ValueError(f"labels must be class indices in [0, {top}] (the model has "
                         f"{num_classes or 'C'} classes), got min={labels.min().item()}, "
                         f"max={labels.max().item()}")


def _check_multilabel(images: Tensor, labels: Tensor, num_classes: int | None) -> None:
    """The multilabel half of :func:`check_images`: ``labels`` ``N x K`` float, 0 / 1 / NaN."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 2 or labels.shape[0] != images.shape[0]:
        k = num_classes if num_classes is not None else "K"
        raise ValueError(f"labels for a multilabel model must have shape {images.shape[0]} x {k} "
                         f"(one column per finding, NaN = unknown), got {tuple(labels.shape)}")
    try:
        check_targets(labels, "multilabel", num_classes or labels.shape[1])
    except ValueError as exc:
        raise ValueError(f"labels: {exc}") from None


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

        task: ``"multiclass"`` (labels ``N`` int64, softmax decisions) or ``"multilabel"``
            (labels ``N x K`` float, 0 / 1 / NaN = unknown, one sigmoid per finding; the losses
            mask the unknown entries, :mod:`mladv.tasks`); None: the model's ``task`` attribute
            (a loaded checkpoint's, an adapter's), ``"multiclass"`` where it has none. Multilabel
            decisions use the model's ``thresholds`` attribute where it has one (an adapter's
            calibrated thresholds), else 0.5 for every finding (:attr:`thresholds`).

    ``precision``, ``channels_last`` and ``task`` are keywords of every attack
    (:class:`ComputeOptions`): ``make_attack("pgd", model, precision="bf16")``,
    ``--option precision=bf16`` on the CLI.

    The task enters the attack's settings (``vars``, so its fingerprint and reuse keys) only
    when it is multilabel: a multiclass attack's settings are what they were before tasks.
    """

    #: the task; an instance attribute only when multilabel (see the class docstring)
    task: Task = "multiclass"

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, targeted: bool = False,
                 seed: int | None = None, precision: Precision = "fp32",
                 channels_last: bool = False, task: Task | None = None) -> None:
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
        resolved = check_task(str(task if task is not None
                                  else getattr(model, "task", "multiclass")))
        if resolved == "multilabel":
            self.task = resolved

    @property
    def multilabel(self) -> bool:
        """Whether the attack runs on a multilabel model (labels ``N x K``, NaN unknown)."""
        return self.task == "multilabel"

    @property
    def thresholds(self) -> Thresholds:
        """The multilabel decision thresholds: the model's ``thresholds`` attribute (probability
        per finding) where it has one, else None (0.5 for every finding)."""
        value: Thresholds = getattr(self.model, "thresholds", None)
        return value

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
        """A uniformly drawn class different from each label (shape ``N``). Multiclass only: a
        multilabel model has no "other class" to draw (refused in one line; pass
        ``target_labels`` ``N x K``, or use the ``targeted-finding`` attack to add or remove one
        finding)."""
        if self.multilabel:
            raise ValueError("targeted mode on a multilabel model needs target_labels (N x K, "
                             "0 / 1 / NaN): there is no random other class to draw; to add or "
                             "remove one finding use the 'targeted-finding' attack")
        if num_classes < 2:
            raise ValueError("targeted mode needs at least 2 classes")
        offset = torch.randint(1, num_classes, labels.shape, generator=gen).to(labels.device)
        return (labels + offset) % num_classes

    def __call__(self, images: Tensor, labels: Tensor, **kwargs: Any) -> Tensor:
        num_classes = getattr(self.model, "num_classes", None)
        check_images(images, labels, num_classes, task=self.task)
        targets = kwargs.get("target_labels")
        if targets is not None:
            if not self.targeted:
                raise ValueError("target_labels given but the attack is untargeted: "
                                 "pass targeted=True")
            if self.multilabel:
                _check_multilabel(images, targets, num_classes)
        device = self.device
        if self.multilabel and num_classes is None and images.shape[0]:
            self._check_outputs(images[:1].detach().to(device, self._float_dtype()), labels)
        dtype = self._float_dtype()
        images = images.detach().to(device, dtype)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        label_dtype = dtype if self.multilabel else torch.long  # multilabel: floats, NaN kept
        labels = labels.detach().to(device, label_dtype)
        if targets is not None:
            kwargs["target_labels"] = targets.detach().to(device, label_dtype)
        with eval_mode(self.model), channels_last_model(self.model, self.channels_last), \
                self.autocast():
            adv = self.forward(images, labels, **kwargs)
        return adv.detach().contiguous()

    def _check_outputs(self, probe: Tensor, labels: Tensor) -> None:
        """A model without ``num_classes``: one forward pass of one image tells its finding
        count; ``N x K`` labels of another ``K`` are one ``ValueError`` line before the attack."""
        with torch.no_grad(), eval_mode(self.model):
            k = int(self.model(probe).shape[-1])
        if labels.shape[1] != k:
            raise ValueError(f"labels have {labels.shape[1]} columns but the model predicts {k} "
                             f"findings: one column per finding (NaN = unknown)")

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:  # pragma: no cover
        """The attack's update rule: ``forward(images, labels, ...)`` -> adversarial images."""
        raise NotImplementedError

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "model")
        return f"{type(self).__name__}({keys})"
