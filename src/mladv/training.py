"""The training loop for :class:`~mladv.models.ImageClassifier` (prediction: ``predict_logits``
in :mod:`mladv.models`, autocast: ``amp_context`` in :mod:`mladv.utils`; both also importable
from here).

Speed and scale options: ``precision`` (``"bf16"`` autocast) and ``channels_last``, both
``"auto"`` by default in :func:`train_classifier` (on for CUDA models, off on the CPU, so CPU
results are bit-identical to the float32 loop), ``compile_model`` (``torch.compile``, off by
default), pinned memory with non-blocking copies (on by default on CUDA), and data-parallel
training (DDP) whenever ``torch.distributed`` is initialised with more than one process (e.g.
under ``torchrun``; see :mod:`mladv.distributed`).

Each batch is gathered from the in-memory images, copied to the model's device, and augmented
there by the batch transform in one call on the whole ``N x C x H x W`` tensor (its random draws
come from the CPU generator ``gen``, so a batch's augmentation does not depend on the device).

Adversarial training per batch (``online`` / ``advprop``, :mod:`mladv.adversarial_training`):
pass ``adversarial=AdversarialBatch(...)`` to :func:`train_classifier`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adversarial_training import MODES, AdversarialBatch, adversarial_from_options
from .data import ImageSet
from .distributed import all_reduce_sum, is_distributed, rank_and_world, rank_batch
from .models import predict_logits
from .tasks import Task, known_mask, masked_bce
from .utils import PRECISIONS, Precision, amp_context, model_device, progress_bar

BatchTransform = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]
TrainPrecision = Literal["fp32", "bf16", "auto"]
DEVICE_DATA_MAX_BYTES = 8 * 2**30  # data_on_device's default limit (the whole training set)
Auto = Literal["auto"]
__all__ = ["MODES", "AdversarialBatch", "BatchTransform", "Precision", "accuracy",
           "adversarial_from_options", "amp_context", "predict_logits", "random_hflip",
           "resolve_speed",
           "to_device", "train_classifier"]


def random_hflip(images: Tensor, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip each image left-right with probability 1/2 (the default "flips only" augmentation)."""
    flip = (torch.rand(images.shape[0], generator=gen) < 0.5).to(images.device)
    images = images.clone()
    images[flip] = images[flip].flip(-1)
    return images, labels


def to_device(x: Tensor, device: torch.device, *, pin_memory: bool = False,
              channels_last: bool = False) -> Tensor:
    """Move a CPU batch to ``device``: through pinned memory with a non-blocking copy when
    ``pin_memory`` (CUDA), optionally in channels_last memory format (4-d tensors only)."""
    if pin_memory and device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def resolve_speed(device: torch.device, precision: TrainPrecision = "auto",
                  channels_last: bool | Auto = "auto") -> tuple[Precision, bool]:
    """``(precision, channels_last)`` for a model on ``device``: ``"auto"`` means bf16 autocast
    and channels_last on CUDA, float32 and the default memory format elsewhere (the CPU loop's
    numbers stay those of the float32 loop). One ``ValueError`` for anything else."""
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"precision must be one of {(*PRECISIONS, 'auto')}, got {precision!r}")
    if channels_last != "auto" and not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be True, False or 'auto', got {channels_last!r}")
    cuda = device.type == "cuda"
    chosen: Precision = ("bf16" if cuda else "fp32") if precision == "auto" else precision
    return chosen, cuda if channels_last == "auto" else bool(channels_last)


def train_classifier(model: nn.Module, data: ImageSet, *, epochs: int = 10, batch_size: int = 32,
                     lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
                     transform: BatchTransform | None = random_hflip, progress: bool = True,
                     desc: str = "train", precision: TrainPrecision = "auto",
                     channels_last: bool | Auto = "auto", pin_memory: bool | None = None,
                     distributed: bool | None = None, compile_model: bool = False,
                     data_on_device: bool | None = None,
                     adversarial: AdversarialBatch | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place with AdamW and a one-cycle schedule; returns one dict per epoch
    (``epoch``, ``loss``, ``train_acc``). Labels may be soft (``N x K``) when a transform mixes
    images (mixup / CutMix).

    Args:
        precision: ``"fp32"``, ``"bf16"`` (autocast around forward and loss) or ``"auto"``
            (bf16 on CUDA, fp32 elsewhere; :func:`resolve_speed`).
        channels_last: put the model and the batches in channels_last memory format
            (``"auto"``: on CUDA only).
        compile_model: train through ``torch.compile(model)`` (same parameters; the first
            batches pay the compilation).
        data_on_device: copy all of ``data`` to the model's device once, so each batch is
            gathered there (no per-batch host copy); default: on for CUDA when the images take
            at most :data:`DEVICE_DATA_MAX_BYTES`. On the CPU it changes nothing.
        pin_memory: pinned host memory + non-blocking copies; default on for CUDA models.
        distributed: data-parallel training across the processes of the initialised default
            process group; default: on when one with more than one process exists.
        adversarial: per-batch adversarial training (``online`` / ``advprop``): after the
            transform, each batch's adversarial rows are crafted against the current weights
            (eval mode) and trained on with the clean ones; ``advprop`` trains ``model`` and the
            twin BatchNorm layers held by ``adversarial`` (save them with
            ``adversarial.checkpoint_extra()``). ``loss`` / ``train_acc`` then cover every row
            trained on, clean and adversarial. Under DDP each rank crafts its own rows.

    Distributed semantics (DDP, ``DistributedSampler``-style dealing): ``batch_size`` stays the
    *global* batch. Every rank draws the same epoch permutation and batch transforms from
    ``seed``; rank ``r`` trains on items ``r, r + W, ...`` of each global batch (padded to equal
    shapes with zero-weight repeats, :func:`mladv.distributed.rank_batch`), so each epoch covers
    every item exactly once across the ranks, and the averaged gradient equals the
    single-process gradient of that batch. For models without BatchNorm the trained weights
    equal the single-process run's up to float rounding; with BatchNorm, batch statistics are
    per rank (as usual in DDP) and the running statistics are rank 0's. Weights are identical
    on every rank, and the returned history is reduced over all ranks.
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty data set")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if hasattr(model, "task"):  # an ImageClassifier learns the set's task (attacks read it)
        setattr(model, "task", data.task)  # noqa: B010 - nn.Module's __setattr__ is typed
    device = model_device(model)
    precision, channels_last = resolve_speed(device, precision, channels_last)
    pin = device.type == "cuda" if pin_memory is None else pin_memory
    use_ddp = is_distributed() if distributed is None else distributed and is_distributed()
    rank, world = rank_and_world() if use_ddp else (0, 1)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    trained = model if adversarial is None else adversarial.bind(model)  # checks attack options
    net: nn.Module = trained
    if compile_model:
        net = torch.compile(trained)  # type: ignore[assignment]
    if use_ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(net, device_ids=[device] if device.type == "cuda" else None,
                  find_unused_parameters=adversarial is not None and adversarial.mode == "advprop")

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(data) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, pct_start=0.2,
                                                total_steps=epochs * steps_per_epoch)
    shard = (rank, world) if use_ddp else None
    on_device = (device.type == "cuda" and data.images.nbytes <= DEVICE_DATA_MAX_BYTES
                 if data_on_device is None else data_on_device)
    images, labels = ((data.images.to(device), data.labels.to(device)) if on_device
                      else (data.images, data.labels))
    history = []
    bar = progress_bar(epochs * steps_per_epoch, desc, "batch", enabled=progress and rank == 0)
    trained.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        # loss sum, correct, seen: accumulated on the device, read once per epoch (no sync per step)
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        for step, start in enumerate(range(0, len(data), batch_size)):
            idx = order[start:start + batch_size]
            x, y, weight = _local_batch(images, labels, idx, transform, gen, shard, device,
                                        pin, channels_last)
            copies = 1
            if adversarial is not None:
                n_local = x.shape[0]
                x, y, adv_mask, weight = adversarial(x, y, weight)
                copies = x.shape[0] // n_local
            with amp_context(device, precision):
                logits = net(x) if adversarial is None else adversarial.forward(net, x, adv_mask)
                loss, row = _loss_and_totals(logits, y, weight, world / (len(idx) * copies),
                                             task=data.task)
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
            sched.step()
            totals += row
            bar.update(1)
            if rank == 0 and (step % 25 == 0 or step == steps_per_epoch - 1):
                bar.set_postfix(epoch=epoch + 1,
                                loss=f"{totals[0].item() / max(totals[2].item(), 1.0):.3f}")
        total_loss, correct, seen = all_reduce_sum(totals).tolist()
        nothing = seen == 0  # multilabel: no known finding in the whole epoch
        history.append({"epoch": epoch + 1, "loss": math.nan if nothing else total_loss / seen,
                        "train_acc": math.nan if nothing else correct / seen})
    bar.close()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    trained.eval()
    return history


def _local_batch(images: Tensor, labels: Tensor, idx: Tensor, transform: BatchTransform | None,
                 gen: torch.Generator, shard: tuple[int, int] | None, device: torch.device,
                 pin: bool, channels_last: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(x, y, weight)`` on ``device``: the global batch ``images[idx]`` (gathered where the
    images are: the host, or the device for ``data_on_device``) copied to ``device``,
    augmented there by ``transform`` in one call on the whole batch, cut to rank ``r``'s share
    when ``shard = (r, world)`` (``weight``: 0 for padding repeats, None without DDP).

    Shapes: ``x`` ``n x C x H x W``, ``y`` ``n`` (or ``n x K`` soft labels after mixing)."""
    idx = idx.to(images.device)
    x = to_device(images[idx], device, pin_memory=pin)
    y = to_device(labels[idx], device, pin_memory=pin)
    if transform is not None:
        x, y = transform(x, y, gen)
    weight = None
    if shard is not None:
        local, weight = rank_batch(torch.arange(len(idx)), *shard)
        local = local.to(device)
        x, y = x[local], y[local]
        weight = weight.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y, weight


def _loss_and_totals(logits: Tensor, y: Tensor, weight: Tensor | None, scale: float, *,
                     task: Task = "multiclass") -> tuple[Tensor, Tensor]:
    """The loss to back-propagate and this step's ``(loss sum, correct, seen)`` row (float64).

    multiclass, without ``weight``: mean cross-entropy (hard ``N`` or soft ``N x K`` labels).
    With it (DDP): ``scale * sum_i w_i CE_i``, ``scale = world / (global rows)``, so the gradient
    DDP averages over ranks equals the single-process mean's.

    multilabel (``y`` ``N x K``, NaN = unknown, :func:`mladv.tasks.masked_bce`): each image's
    loss is its mean binary cross-entropy over its *known* findings,
    ``L_i = sum_k m_ik l_ik / max(1, sum_k m_ik)`` (0 for an image with none known), and the
    batch loss the mean (or the weighted sum, as above) of ``L_i`` over images; with every
    finding known this is the mean BCE over all ``N x K`` entries. ``correct`` / ``seen`` count
    known entries (``train_acc``: the per-finding accuracy at the 0.5 threshold) and the loss
    total is ``sum_i L_i * (known entries of i)`` so that ``loss / seen`` is the mean BCE per known
    entry when rows have equal counts."""
    if task == "multilabel":
        return _multilabel_loss(logits, y, weight, scale)
    hard = y if y.dim() == 1 else y.argmax(1)
    hits = logits.detach().argmax(1) == hard
    if weight is None:
        loss = F.cross_entropy(logits, y)
        row = torch.stack([loss.detach().double() * len(y), hits.sum().double(),
                           hits.new_tensor(len(y), dtype=torch.float64)])
        return loss, row
    per_sample = F.cross_entropy(logits, y, reduction="none")
    row = torch.stack([(per_sample.detach().double() * weight).sum(),
                       (hits.double() * weight).sum(), weight.sum().double()])
    return (per_sample * weight).sum() * scale, row


def _multilabel_loss(logits: Tensor, y: Tensor, weight: Tensor | None,
                     scale: float) -> tuple[Tensor, Tensor]:
    """The multilabel branch of :func:`_loss_and_totals` (see there)."""
    known = known_mask(y)
    counts = known.sum(1).to(logits.dtype)
    per_image = masked_bce(logits, y, reduction="none").sum(1) / counts.clamp(min=1)
    hits = ((logits.detach() >= 0) == (y == 1)) & known
    w = torch.ones_like(per_image) if weight is None else weight.to(per_image.dtype)
    row = torch.stack([(per_image.detach().double() * counts.double() * w.double()).sum(),
                       (hits.double().sum(1) * w.double()).sum(),
                       (counts.double() * w.double()).sum()])
    loss = per_image.mean() if weight is None else (per_image * w).sum() * scale
    return loss, row


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    return (predict_logits(model, images).argmax(1) == labels.cpu()).float().mean().item()
