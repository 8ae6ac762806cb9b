"""The one home of mladv's content fingerprints.

Reusing finished work (shards, checkpoints, attacks, BM3D outputs): data and models are
identified by their *content*: SHA-1 of the tensors' bytes (a model: its state dict's names and
values), so the same images reached by another path are the same data and a retrained model is
never mistaken for the old one. A reuse key that combines such fingerprints with settings is a
short SHA-256 of its JSON (:func:`key_digest`); a file (e.g. pretrained weights) enters a key by
:func:`file_sha1`.

Single images: :func:`image_hashes` gives one short fingerprint per image (of the image
quantised to 16 bits); checkpoints record their training images this way (``trained_on``).

This module imports nothing of mladv (not even for type checking: :func:`data_sha1` takes any
object with ``images`` and ``labels``), so any module, ``mladv.data`` included, can use it
without an import cycle.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn


class Labelled(Protocol):
    """What :func:`data_sha1` reads of a data set (``mladv.data.ImageSet`` is one)."""

    @property
    def images(self) -> Tensor: ...

    @property
    def labels(self) -> Tensor: ...


def tensor_sha1(*tensors: Tensor) -> str:
    """SHA-1 of the tensors' bytes (CPU, contiguous): identifies a data set or a model state."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_sha1(data: Labelled) -> str:
    """An image set's fingerprint: its images (``N x C x H x W``) and labels (``N``)."""
    return tensor_sha1(data.images, data.labels)


def model_sha1(model: nn.Module) -> str:
    """SHA-1 of a model's state dict (names and values), so stale work of another model is
    never reused."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def key_digest(obj: Any) -> str:
    """16 hex digits of SHA-256 over ``obj`` as sorted JSON (non-JSON values by ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha1(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes, read in ``chunk``-byte pieces."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def image_hashes(images: Tensor) -> list[str]:
    """One short fingerprint per image of an ``N x C x H x W`` batch in [0, 1]: SHA-1 (first 16
    hex digits) of the image quantised to 16 bits, so the same file loaded at the same size gives
    the same fingerprint wherever it lies. Checkpoints record their training images this way
    (``trained_on``; the format of that record: a list of these strings, one per image)."""
    out: list[str] = []
    for part in torch.split(images.detach(), 256):
        q = (part.float().cpu().clamp(0, 1) * 65535).round().to(torch.int32).numpy()
        arr = q.astype(np.uint16)
        out.extend(hashlib.sha1(a.tobytes()).hexdigest()[:16] for a in arr)
    return out


def unseen_indices(images: Tensor, trained_on: Iterable[str]) -> list[int]:
    """Indices of the ``N x C x H x W`` ``images`` whose :func:`image_hashes` fingerprint is not
    in ``trained_on`` (a checkpoint's record of its training images), in order."""
    seen = set(trained_on)
    return [i for i, h in enumerate(image_hashes(images)) if h not in seen]
