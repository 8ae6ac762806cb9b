"""Training and prediction loops for :class:`~mladv.models.ImageClassifier`."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import ImageSet
from .utils import model_device, progress_bar

BatchTransform = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]


def random_hflip(images: Tensor, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip each image left-right with probability 1/2 (the default "flips only" augmentation)."""
    flip = torch.rand(images.shape[0], generator=gen) < 0.5
    images = images.clone()
    images[flip] = images[flip].flip(-1)
    return images, labels


def train_classifier(model: nn.Module, data: ImageSet, *, epochs: int = 10, batch_size: int = 32,
                     lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
                     transform: BatchTransform | None = random_hflip, progress: bool = True,
                     desc: str = "train") -> list[dict[str, float]]:
    """Train ``model`` in place with AdamW and a cosine schedule; returns one dict per epoch
    (``epoch``, ``loss``, ``train_acc``). Labels may be soft (``N x K``) when a transform mixes
    images (mixup / CutMix)."""
    if len(data) == 0:
        raise ValueError("cannot train on an empty data set")
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(data) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.2)
    history = []
    bar = progress_bar(epochs * steps_per_epoch, desc, "batch", enabled=progress)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            x, y = data.images[idx], data.labels[idx]
            if transform is not None:
                x, y = transform(x, y, gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            hard = y if y.dim() == 1 else y.argmax(1)
            correct += (logits.argmax(1) == hard).sum().item()
            seen += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{total_loss / seen:.3f}")
        history.append({"epoch": epoch + 1, "loss": total_loss / seen, "train_acc": correct / seen})
    bar.close()
    model.eval()
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, batch_size: int = 128) -> Tensor:
    """Logits for ``N x C x H x W`` images, in eval mode (mode restored), on the CPU."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        out = [model(images[i:i + batch_size].to(device)).float().cpu()
               for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    return (predict_logits(model, images).argmax(1) == labels.cpu()).float().mean().item()
