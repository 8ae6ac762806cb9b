"""Train a model, or reuse the checkpoint a previous run left: the one train-or-reuse step of
both studies (``experiment`` and ``transfer``); and reuse any other finished piece saved with its
key (:func:`saved_with_key`).

A checkpoint is reused when it exists and, if a reuse ``key`` is given, when it was trained with
that key (saved as ``reuse_key``: settings plus the training data's fingerprint, see
:mod:`mladv.fingerprint`). Otherwise the model is trained from a fresh initialisation seeded with
``seed`` (or a pretrained backbone with a new head, see :func:`mladv.models.build_model`) and saved
atomically, so an interrupted run never leaves half a checkpoint.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .data import ImageSet
from .models import ImageClassifier, build_model, load_checkpoint, save_checkpoint
from .training import train_classifier
from .utils import set_determinism

Loader = Callable[[Path], tuple[ImageClassifier, dict[str, Any]]]


def reusable(path: Path, key: dict[str, Any] | None, load: Loader
             ) -> tuple[ImageClassifier, dict[str, Any]] | None:
    """``(model in eval mode, checkpoint)`` when ``path`` holds a checkpoint made with ``key``
    (any checkpoint when ``key`` is None), else None."""
    if not path.is_file():
        return None
    model, ckpt = load(path)
    if key is not None and ckpt.get("reuse_key") != key:
        return None
    return model.eval(), ckpt


def saved_with_key(path: Path, key: str) -> dict[str, Any] | None:
    """The dict saved at ``path`` (``torch.load(..., weights_only=True)``, on the CPU) when its
    ``key`` field equals ``key``; None when there is no file or it was made another way (the
    caller makes it again and saves it with ``key``, atomically). Finished pieces that are not
    models (adversarial images, BM3D outputs) are reused this way."""
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return dict(saved) if isinstance(saved, dict) and saved.get("key") == key else None


def train_or_reuse(path: Path, *, arch: str, data: ImageSet, image_size: int, seed: int,
                   device: torch.device, key: dict[str, Any] | None = None,
                   write: bool = True, load: Loader | None = None,
                   extra: dict[str, Any] | None = None,
                   weights: str | os.PathLike[str] | None = None, freeze_backbone: bool = False,
                   **train_kwargs: Any) -> tuple[ImageClassifier, dict[str, Any], bool]:
    """The model at ``path`` if reusable (see :func:`reusable`), else ``arch`` trained on
    ``data`` with ``train_classifier(**train_kwargs)`` from seed ``seed`` and saved there (when
    ``write``: under DDP only rank 0 writes) with ``extra`` checkpoint fields.

    ``weights`` / ``freeze_backbone`` go to :func:`mladv.models.build_model`: a pretrained
    backbone (torchvision weights name or local state-dict file) under a new head, frozen if
    asked. They do not enter the reuse test by themselves: put them in ``key``.

    Returns ``(model in eval mode, metrics, reused)``; metrics hold ``history`` (one dict per
    epoch), ``n_train``, ``train_wall_s`` and ``train_cpu_s``.
    """
    found = reusable(path, key, load or (lambda p: load_checkpoint(p, map_location=device)))
    if found is not None:
        return found[0], dict(found[1]["metrics"]), True
    wall, cpu = time.perf_counter(), time.process_time()
    set_determinism(seed)
    model = build_model(arch, len(data.classes), weights=weights,
                        freeze_backbone=freeze_backbone).to(device)
    history = train_classifier(model, data, seed=seed, **train_kwargs)
    metrics = {"history": history, "n_train": len(data),
               "train_wall_s": round(time.perf_counter() - wall, 3),
               "train_cpu_s": round(time.process_time() - cpu, 3)}
    if write:
        fields: dict[str, Any] = dict(extra or {})
        if key is not None:
            fields["reuse_key"] = key
        save_checkpoint(path, model, classes=data.classes, image_size=image_size,
                        epoch=train_kwargs.get("epochs"), metrics=metrics,
                        train_images=data.images, **fields)
    return model.eval(), metrics, False
