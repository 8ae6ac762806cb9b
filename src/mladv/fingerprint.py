"""One fingerprint scheme for reusing finished work (shards, checkpoints, attacks, BM3D outputs).

Data and models are identified by their *content*: SHA-1 of the tensors' bytes (a model: its
state dict's names and values), so the same images reached by another path are the same data
and a retrained model is never mistaken for the old one. A reuse key that combines such
fingerprints with settings is a short SHA-256 of its JSON (:func:`key_digest`).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from torch import Tensor, nn

from .data import ImageSet


def tensor_sha1(*tensors: Tensor) -> str:
    """SHA-1 of the tensors' bytes (CPU, contiguous): identifies a data set or a model state."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_sha1(data: ImageSet) -> str:
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
