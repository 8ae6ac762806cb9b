"""Crafting adversarial images in batches (the one loop: per-batch seeds and query counts are
options), measuring them and saving them losslessly; which images a checkpoint is attacked on
(:func:`checkpoint_and_split`) and ``mladv attack`` (:func:`attack_to_folder`)."""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from .attacks import Attack, make_attack
from .data import ImageSet, choose_split, load_source
from .distributed import is_main_process
from .figures import to_uint8
from .metrics import perturbation_norms, psnr, ssim, success_rate, total_variation
from .models import ImageClassifier, load_checkpoint, predict_logits
from .utils import (
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    output_dir,
    progress_bar,
    resolve_device,
    set_determinism,
)


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
    delta (in [0, 1] units), SSIM and PSNR to the clean image, and total variation of delta.

    Multilabel ``labels`` (``N x K``, NaN unknown; :mod:`mladv.tasks`), decisions at the model's
    ``thresholds`` (0.5 when it has none): ``clean_acc`` / ``adv_acc`` are the per-finding
    accuracies over known entries, ``success`` the share of images with at least one known
    finding whose decision changed on at least one known finding, ``flip_rate`` the share of
    all ``N x K`` decisions that changed (label-free, as the card's per-finding flip rates)."""
    labels = labels.cpu()
    if labels.dim() == 2:
        return {**_multilabel_metrics(model, clean, adv, labels), **_image_metrics(clean, adv)}
    clean_pred = predict_logits(model, clean).argmax(1)
    adv_pred = predict_logits(model, adv).argmax(1)
    return {
        "n": int(labels.shape[0]),
        "clean_acc": (clean_pred == labels).float().mean().item(),
        "adv_acc": (adv_pred == labels).float().mean().item(),
        "success": success_rate(clean_pred, adv_pred, labels, target_labels),
        **_image_metrics(clean, adv),
    }


def _image_metrics(clean: Tensor, adv: Tensor) -> dict[str, float]:
    return {**perturbation_norms(clean, adv), "ssim": ssim(clean, adv), "psnr": psnr(clean, adv),
            "tv_delta": total_variation(adv - clean)}


def _multilabel_metrics(model: nn.Module, clean: Tensor, adv: Tensor, labels: Tensor
                        ) -> dict[str, float]:
    """The multilabel part of :func:`attack_metrics` (see there)."""
    from .tasks import correct, flips, known_mask

    thresholds = getattr(model, "thresholds", None)
    z_clean, z_adv = predict_logits(model, clean), predict_logits(model, adv)
    known = known_mask(labels)
    n_known = max(1, int(known.sum()))
    changed = flips(z_clean, z_adv, "multilabel", thresholds) & known
    rows = known.any(1)
    return {
        "n": int(labels.shape[0]),
        "clean_acc": float(correct(z_clean, labels, "multilabel", thresholds).sum()) / n_known,
        "adv_acc": float(correct(z_adv, labels, "multilabel", thresholds).sum()) / n_known,
        "success": float(changed.any(1)[rows].float().mean()) if bool(rows.any()) else 0.0,
        "flip_rate": float(flips(z_clean, z_adv, "multilabel", thresholds).float().mean())
        if labels.numel() else 0.0,
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


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def checkpoint_and_split(checkpoint: Path, data: str, split: str, *, device: torch.device,
                         skip_bad: bool, note: Callable[[str], None] = _stderr
                         ) -> tuple[ImageClassifier, ImageSet, dict[str, Any]]:
    """CHECKPOINT's model on ``device`` and DATA read at the checkpoint's image size, classes
    and DICOM mode (``dicom_mode`` recorded by ``mladv train``; "voi" before it was), cut to
    ``split`` by :func:`mladv.data.choose_split` (whose record is returned; its note goes to
    ``note``, stderr by default, from the main process only)."""
    model, ckpt = load_checkpoint(checkpoint, map_location=device)
    dataset = load_source(data, ckpt["image_size"], skip_bad=skip_bad, classes=ckpt["classes"],
                          seed=(ckpt.get("split") or {}).get("seed", 0),
                          dicom_mode=ckpt.get("dicom_mode", "voi"))
    dataset, record = choose_split(dataset, ckpt, split, checkpoint=checkpoint, data=data)
    if record["note"] and is_main_process():
        note(record["note"])
    return model, dataset, record


def attack_to_folder(checkpoint: Path, data: str, name: str, options: dict[str, Any], *,
                     split: str, batch_size: int, seed: int, out: Path, png_previews: int,
                     device: str, skip_bad: bool) -> dict[str, Any]:
    """``mladv attack``: attack ``name`` with ``options`` (:func:`mladv.attacks.make_attack`
    keywords) on CHECKPOINT's model over DATA's ``split``; writes ``out/adversarial.pt``
    (float32, ``N x C x H x W``), ``out/metrics.json`` and ``png_previews`` 8-bit PNGs (lossy:
    a warning says so). Returns :func:`attack_metrics`."""
    with output_dir(out):
        set_determinism(seed)
        model, dataset, record = checkpoint_and_split(
            checkpoint, data, split, device=resolve_device(device), skip_bad=skip_bad)
        atk = make_attack(name, model, **options)
        adv = craft(atk, dataset.images, dataset.labels, batch_size=batch_size, desc=name)
        metrics = attack_metrics(model, dataset.images, adv, dataset.labels)
        if name == "targeted-finding":  # its success: the finding reached `to`, others held
            from .attacks.targeted_finding import targeted_success_rate
            metrics["targeted_success"] = targeted_success_rate(
                model, dataset.images, adv, atk.finding, atk.to)  # type: ignore[attr-defined]
        meta = {"attack": name, "options": options, "checkpoint": str(checkpoint), "data": data,
                **record}
        save_adversarial(out / "adversarial.pt", adv, dataset.labels, paths=dataset.paths,
                         groups=dataset.groups, classes=dataset.classes, meta=meta)
        atomic_write_json({**meta, "metrics": metrics}, out / "metrics.json")
        if png_previews:
            write_previews(adv[:png_previews], out / "previews")
    return metrics


def write_previews(adv: Tensor, folder: Path) -> None:
    """``folder/00000.png``, ...: 8-bit previews of ``N x 1 x H x W`` images, with a warning
    that rounding to 8 bits destroys much of an 8/255 perturbation."""
    warnings.warn("PNG previews are 8-bit: rounding destroys much of an 8/255 perturbation; "
                  "use adversarial.pt for anything but looking", stacklevel=2)
    from PIL import Image
    for i in range(adv.shape[0]):
        with atomic_path(folder / f"{i:05d}.png") as tmp:
            Image.fromarray(to_uint8(adv[i]).numpy()).save(tmp, format="PNG")
