"""Crafting adversarial images in batches, measuring them and saving them losslessly."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import Attack
from .metrics import perturbation_norms, psnr, ssim, success_rate, total_variation
from .training import predict_logits
from .utils import atomic_torch_save, progress_bar


def craft(attack: Attack, images: Tensor, labels: Tensor, *, batch_size: int = 64,
          progress: bool = True, desc: str = "attack", **call_kwargs: Tensor) -> Tensor:
    """Run ``attack`` over ``images`` in batches; returns ``N x C x H x W`` on the CPU.

    Tensor keyword arguments with a leading ``N`` dimension (``target_labels``, per-image
    ``style_images``) are sliced with the batch.
    """
    n = images.shape[0]
    bar = progress_bar(n, desc, "img", enabled=progress)
    out = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        kw = {k: (v[sl] if isinstance(v, Tensor) and v.shape[0] == n else v)
              for k, v in call_kwargs.items()}
        out.append(attack(images[sl], labels[sl], **kw).cpu())
        bar.update(min(batch_size, n - start))
    bar.close()
    return torch.cat(out) if out else images.new_empty((0, *images.shape[1:]))


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
                     paths: list[str], classes: list[str], meta: dict[str, Any]) -> None:
    """Save adversarial images as float32 (lossless: 8-bit PNG would round away an 8/255
    perturbation) with their labels, source paths, class names and how they were made."""
    atomic_torch_save({"images": adv.float().cpu(), "labels": labels.cpu(), "paths": list(paths),
                       "classes": list(classes), "meta": meta}, path)


def load_adversarial(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`save_adversarial` (``weights_only=True``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such adversarial file") from None
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read adversarial file ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict) or "images" not in obj or "labels" not in obj:
        raise ValueError(f"{path}: not an mladv adversarial file (needs images, labels)")
    return obj
