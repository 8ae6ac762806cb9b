"""Adversarial images written by ``mladv augment`` (shards) or ``mladv attack`` (adversarial.pt)
as a ``torch.utils.data.Dataset`` yielding ``(image, label)`` like torchvision's data sets.

Files are memory-mapped (``torch.load(..., mmap=True, weights_only=True)``): a data set larger
than memory is read image by image, and ``DataLoader`` workers share the pages.
"""
from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..fingerprint import tensor_sha1
from ..tasks import Task, check_targets
from .folder import DataError, ImageSet

# The layout of a shard folder, defined once: mladv.augment writes it, this module reads it.
SHARD_MANIFEST = "manifest.json"
ATTACK_FILE = "adversarial.pt"  # the file mladv attack writes (see mladv.crafting)
# Who writes shard folders (mladv.augment.craft_shards): a rerun of the same command resumes,
# crafting the shards that are not on disk.
WRITERS = "'mladv augment', or 'mladv experiment' for its adv/ folders"


def shard_file(index: int) -> str:
    """The file name of shard ``index`` in a shard folder: ``shard-00000.pt``, ..."""
    return f"shard-{index:05d}.pt"


def _load(path: Path, what: str, fix: str) -> dict[str, Any]:
    """One ``.pt`` dict, memory-mapped, with ``images`` and ``labels``; ``DataError`` naming
    the file and saying what to do (``fix``) otherwise."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file: cannot be mapped, read it whole
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same here
        raise DataError(f"{path}: cannot read {what} ({exc.__class__.__name__}); {fix}") from None
    ok = (isinstance(obj, dict) and isinstance(obj.get("images"), Tensor)
          and isinstance(obj.get("labels"), Tensor) and obj["images"].dim() == 4
          and obj["labels"].dim() in (1, 2)
          and obj["labels"].shape[:1] == obj["images"].shape[:1])
    if not ok:
        raise DataError(f"{path}: not an mladv {what} (needs N x C x H x W images and N labels, "
                        "or N x K multilabel targets)")
    return dict(obj)


def _read_shards(root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The shards of a finished ``mladv augment`` folder, in order, and its classes."""
    try:
        manifest = json.loads((root / SHARD_MANIFEST).read_text())
        num, n, classes = int(manifest["num_shards"]), int(manifest["n"]), list(manifest["classes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{root / SHARD_MANIFEST}: not an mladv augment manifest "
                        f"({exc.__class__.__name__})") from None
    missing = [k for k in range(num) if not (root / shard_file(k)).is_file()]
    if missing:
        raise DataError(f"{root}: {len(missing)} of {num} shards missing (first: "
                        f"{shard_file(missing[0])}); rerun the same command to finish them "
                        f"({WRITERS})")
    fix = f"delete this shard and rerun the same command ({WRITERS})"
    parts = [_load(root / shard_file(k), "augment shard", fix) for k in range(num)]
    total = sum(int(p["images"].shape[0]) for p in parts)
    if total != n:
        raise DataError(f"{root}: shards hold {total} images, {SHARD_MANIFEST} says {n}")
    return parts, classes


def read_adversarial_parts(src: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """``(parts, classes)`` of ``mladv augment`` output (a folder of shards) or ``mladv attack``
    output (its folder or its ``adversarial.pt``). Each part is a dict with ``images``
    (``n x C x H x W``), ``labels`` and, where recorded, ``paths`` / ``groups``."""
    root = Path(src)
    if root.is_dir() and (root / SHARD_MANIFEST).is_file():
        return _read_shards(root)
    file = root / ATTACK_FILE if root.is_dir() else root
    if not file.is_file():
        raise DataError(f"{root}: neither 'mladv augment' output ({SHARD_MANIFEST} + "
                        f"shard-*.pt) nor 'mladv attack' output ({ATTACK_FILE})")
    part = _load(file, "adversarial file", "rerun the 'mladv attack' command that wrote it")
    classes = part.get("classes")
    if not isinstance(classes, list):
        raise DataError(f"{file}: no class names recorded (needs 'classes')")
    return [part], [str(c) for c in classes]


class AdversarialDataset(Dataset[tuple[Any, Any]]):
    """``mladv augment`` / ``mladv attack`` output as a map-style data set of ``(image, label)``.

    Args:
        root: a shard folder written by ``mladv augment``, or a folder holding the
            ``adversarial.pt`` of ``mladv attack`` (or that file).
        transform: applied to each image, a ``1 x H x W`` float32 tensor in [0, 1].
        target_transform: applied to each label (an ``int``; multilabel shards: a ``K`` float
            tensor, NaN = unknown, and ``task == "multilabel"``).

    Attributes:
        classes, class_to_idx, targets: as in ``torchvision.datasets.ImageFolder``.
        paths: the clean source image of each sample ("" where none is recorded).
        groups: patient / group key of each sample (the path where none is recorded).

    Example::

        adv = AdversarialDataset("runs/augment")
        image, label = adv[0]          # 1 x H x W in [0, 1], int
        train = ConcatDataset([clean, adv])
    """

    def __init__(self, root: str | os.PathLike[str],
                 transform: Callable[[Tensor], Any] | None = None,
                 target_transform: Callable[[int], Any] | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        self.target_transform = target_transform
        parts, self.classes = read_adversarial_parts(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self._images: list[Tensor] = [p["images"] for p in parts]
        self._starts = [0]
        for images in self._images:
            self._starts.append(self._starts[-1] + int(images.shape[0]))
        if len(self) == 0:
            raise DataError(f"{self.root}: holds no images")
        multilabel = {p["labels"].dim() for p in parts} == {2}
        if multilabel:  # N x K float targets (NaN = unknown), classes = the finding names
            self.task: Task = "multilabel"
            self.target_tensor = torch.cat([p["labels"].float() for p in parts])
            try:
                check_targets(self.target_tensor, "multilabel", len(self.classes))
            except ValueError as exc:
                raise DataError(f"{self.root}: {exc}") from None
            self.targets: list[Any] = self.target_tensor.tolist()
        else:
            if any(p["labels"].dim() != 1 for p in parts):
                raise DataError(f"{self.root}: shards mix class-index and multilabel targets")
            self.task = "multiclass"
            self.targets = [int(v) for p in parts for v in p["labels"].tolist()]
            self.target_tensor = torch.tensor(self.targets, dtype=torch.int64)
            if self.targets and not 0 <= min(self.targets) <= max(self.targets) < len(
                    self.classes):
                raise DataError(f"{self.root}: labels outside the {len(self.classes)} recorded "
                                "classes")
        self.paths = [str(s) for p in parts
                      for s in (p.get("paths") or [""] * int(p["images"].shape[0]))]
        self.groups = [str(s) for p in parts for s in (p.get("groups") or [])] or [
            path or str(i) for i, path in enumerate(self.paths)]

    def __len__(self) -> int:
        return self._starts[-1]

    def image(self, index: int) -> Tensor:
        """Image ``index`` without the transform: ``C x H x W`` float32 in [0, 1] (a copy)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        part = bisect.bisect_right(self._starts, index) - 1
        return self._images[part][index - self._starts[part]].float().clone()

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image: Any = self.image(index)
        target: Any = (self.target_tensor[index].clone() if self.task == "multilabel"
                       else self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def fingerprint(self) -> str:
        """The content fingerprint (:func:`mladv.fingerprint.tensor_sha1`) of the class names
        (UTF-8 bytes of their JSON list), the images (float32 ``N x C x H x W``, as
        :meth:`image` gives them, read one file at a time) and the labels (int64 ``N``;
        multilabel: float32 ``N x K``, NaN kept): the
        same adversarial data gives the same value wherever it lies (``mladv export`` records
        it)."""
        names = torch.frombuffer(bytearray(json.dumps(self.classes).encode()), dtype=torch.uint8)
        return tensor_sha1(names, *(images.float() for images in self._images),
                           self.target_tensor)

    def to_imageset(self) -> ImageSet:
        """All images in memory as an :class:`ImageSet` (for mladv's own training functions)."""
        return ImageSet(torch.cat([im.float() for im in self._images]),
                        self.target_tensor.clone(), list(self.classes),
                        list(self.paths), list(self.groups), task=self.task)
