"""Crafting adversarial images in batches (the one loop: per-batch seeds and query counts are
options), measuring them and saving them losslessly."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from .attacks import Attack
from .metrics import perturbation_norms, psnr, ssim, success_rate, total_variation
from .models import predict_logits
from .utils import atomic_torch_save, progress_bar


@overload
def craft(attack: Attack, images: Tensor, labels: Tensor, *, batch_size: int = ...,
          progress: bool = ..., desc: str = ..., batch_seed: Callable[[int], int] | None = ...,
          bar: Any = ..., record_queries: Literal[False] = ..., **call_kwargs: Tensor) -> Tensor:
    ...


@overload
def craft(attack: Attack, images: Tensor, labels: Tensor, *, batch_size: int = ...,
          progress: bool = ..., desc: str = ..., batch_seed: Callable[[int], int] | None = ...,
          bar: Any = ..., record_queries: Literal[True], **call_kwargs: Tensor
          ) -> tuple[Tensor, Tensor | None]:
    ...


def craft(attack: Attack, images: Tensor, labels: Tensor, *, batch_size: int = 64,
          progress: bool = True, desc: str = "attack",
          batch_seed: Callable[[int], int] | None = None, bar: Any = None,
          record_queries: bool = False,
          **call_kwargs: Tensor) -> Tensor | tuple[Tensor, Tensor | None]:
    """Run ``attack`` over ``images`` in batches: the one crafting loop of the package.

    Options: ``batch_seed(b)`` sets ``attack.seed`` for batch ``b`` (restored afterwards), so a
    batch's result does not depend on what ran before it; ``bar`` is an open progress bar to
    advance (else one is made when ``progress``); ``record_queries`` also returns the
    ``last_queries`` of every batch when the attack keeps them (RayS), else ``None``. Tensor
    keyword arguments with a leading ``N`` dimension (``target_labels``, per-image
    ``style_images``) are sliced with the batch.

    Shape: images ``N x C x H x W`` in [0, 1], labels ``N`` -> ``N x C x H x W`` on the CPU
    (and queries ``N``).
    """
    n = images.shape[0]
    own_bar = bar is None
    if own_bar:
        bar = progress_bar(n, desc, "img", enabled=progress)
    saved = attack.seed
    out, queries = [], []
    try:
        for b, start in enumerate(range(0, n, batch_size)):
            if batch_seed is not None:
                attack.seed = batch_seed(b)
            sl = slice(start, start + batch_size)
            kw = {k: (v[sl] if isinstance(v, Tensor) and v.shape[0] == n else v)
                  for k, v in call_kwargs.items()}
            out.append(attack(images[sl], labels[sl], **kw).cpu())
            if record_queries and hasattr(attack, "last_queries"):
                queries.append(attack.last_queries.cpu())
            bar.update(out[-1].shape[0])
    finally:
        attack.seed = saved
        if own_bar:
            bar.close()
    adv = torch.cat(out) if out else images.new_empty((0, *images.shape[1:])).cpu()
    if record_queries:
        return adv, (torch.cat(queries) if queries else None)
    return adv


def attack_metrics(model: nn.Module, clean: Tensor, adv: Tensor, labels: Tensor,
                   target_labels: Tensor | None = None) -> dict[str, float]:
    """Clean / adversarial accuracy, success rate (over clean-correct images), L1 / L2 / L-inf of
    delta (in [0, 1] units), SSIM and PSNR to the clean image, and total variation of delta."""
    labels = labels.cpu()
    clean_pred = predict_logits(model, clean).argmax(1)
    adv_pred = predict_logits(model, adv).argmax(1)
    return {
        "n": int(labels.shape[0]),
        "clean_acc": (clean_pred == labels).float().mean().item(),
        "adv_acc": (adv_pred == labels).float().mean().item(),
        "success": success_rate(clean_pred, adv_pred, labels, target_labels),
        **perturbation_norms(clean, adv),
        "ssim": ssim(clean, adv),
        "psnr": psnr(clean, adv),
        "tv_delta": total_variation(adv - clean),
    }


def save_adversarial(path: str | os.PathLike[str], adv: Tensor, labels: Tensor, *,
                     paths: list[str], classes: list[str], meta: dict[str, Any],
                     groups: list[str] | None = None) -> None:
    """Save adversarial images as float32 (lossless: 8-bit PNG would round away an 8/255
    perturbation) with their labels, source paths, patient groups (kept so an export writes
    patient ids, not paths), class names and how they were made."""
    atomic_torch_save({"images": adv.float().cpu(), "labels": labels.cpu(), "paths": list(paths),
                       "classes": list(classes), "meta": meta,
                       **({"groups": list(groups)} if groups is not None else {})}, path)
