"""The one home of mladv's content fingerprints.

Reusing finished work (shards, checkpoints, attacks, BM3D outputs): data and models are
identified by their *content*: SHA-1 of the tensors' bytes (a model: its state dict's names and
values), so the same images reached by another path are the same data and a retrained model is
never mistaken for the old one. A reuse key that combines such fingerprints with settings is a
short SHA-256 of its JSON (:func:`key_digest`); a file (e.g. pretrained weights) enters a key by
:func:`file_sha1`.

Single images: :func:`image_hashes` gives one short fingerprint per image (of the image
quantised to 16 bits); checkpoints record their training images this way (``trained_on``).

Attacks: :func:`attack_settings` (every hyper-parameter, JSON-able) is what a shard manifest
records, and :func:`attack_fingerprint` (those settings and the seed) is what the transfer
study's reuse key holds: one definition for both.

This module imports nothing of mladv (not even for type checking: :func:`data_sha1` takes any
object with ``images`` and ``labels``), so any module, ``mladv.data`` included, can use it
without an import cycle.
"""
from __future__ import annotations

import dataclasses
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


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha1",
                chunk: int = 1 << 20) -> str:
    """The hex ``algorithm`` digest (hashlib's name) of a file's bytes, read in ``chunk``-byte
    pieces."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_sha1(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes, read in ``chunk``-byte pieces."""
    return file_digest(path, "sha1", chunk)


def weights_sha1(weights: str | os.PathLike[str] | None) -> str | None:
    """:func:`file_sha1` of a local state-dict file given as pretrained weights; None for a
    torchvision weights name (or no weights): what a reuse key holds beside the name, so the
    same path with other content is another recipe."""
    return file_sha1(weights) if weights is not None and os.path.isfile(weights) else None


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


SCALAR = (bool, int, float, str)
_NOT_SETTINGS = ("model", "seed", "inner")  # the model, the seed (kept apart), torchattacks' copy


def _setting(value: Any) -> tuple[bool, Any]:
    """``(True, JSON-able form)`` of one attack attribute, ``(False, None)`` for what is not a
    setting (a module, a large tensor, a callable)."""
    if isinstance(value, SCALAR) or value is None:
        return True, value
    if isinstance(value, (list, tuple)) and all(isinstance(v, SCALAR) for v in value):
        return True, list(value)
    if isinstance(value, dict) and all(isinstance(v, SCALAR) for v in value.values()):
        return True, dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.asdict(value)  # e.g. the chain's bounds
        if all(isinstance(v, SCALAR) or v is None for v in fields.values()):
            return True, fields
    if isinstance(value, Tensor) and value.numel() <= 64:
        return True, value.flatten().tolist()
    return False, None


def attack_settings(attack: Any) -> dict[str, Any]:
    """An attack's JSON-able hyper-parameters: its class name (or its class's
    ``settings_class``: mladv's FGSM / PGD / MI-FGSM record ``"TorchAttack"``, the wrapper they
    replaced, so committed reuse keys hold) and ``vars`` without the model, the seed and
    torchattacks' inner object (whose options the wrapper keeps as ``inner_options``); scalars,
    lists / dicts of scalars, dataclasses of scalars, tensors of at most 64 values. A shard
    manifest records them: shards crafted with other settings are refused, not mixed."""
    out: dict[str, Any] = {"class": getattr(type(attack), "settings_class",
                                            type(attack).__name__)}
    for key, value in sorted(vars(attack).items()):
        kept, setting = _setting(value)
        if kept and key not in _NOT_SETTINGS:
            out[key] = setting
    return out


def attack_fingerprint(attack: Any) -> str:
    """:func:`key_digest` of ``{"settings": attack_settings(attack), "seed": attack.seed}``: two
    attacks that differ in any option (or seed) differ here, equal ones agree (whatever their
    device or ``repr``)."""
    return key_digest({"settings": attack_settings(attack), "seed": getattr(attack, "seed", None)})
