"""An on-disk uint8 image cache for data too large for RAM (a full NIH download: 112,120 images
are 22 GB as float32 at 224 px, 5.6 GB as uint8 on disk), streamed in batches.

Built once (with a progress bar), reused while its fingerprint matches::

    fingerprint = sha1( MEMMAP_VERSION || image_size || for each file, in order:
                        path || size in bytes || mtime in ns )

(names, sizes and times, not content: hashing 112,120 files' bytes would cost as much as
decoding them; a file rewritten in place with the same size within the same nanosecond is not
seen). Two files per cache in the cache folder (:func:`mladv.data.cache.cache_dir`)::

    memmap-<fingerprint>.npy    N x 1 x S x S uint8, a standard .npy (np.load(mmap_mode="r"))
    memmap-<fingerprint>.json   the sidecar: fingerprint, shape, data offset, file count;
                                written last, so a cache without it is incomplete and rebuilt

Each image is read by :func:`mladv.data.folder.read_image` and resized by
:func:`mladv.data.folder.resize_square` exactly as the in-RAM loaders do, then stored as
``round(255 x)``: an 8-bit image at its own size is stored exactly, and streams back bit for bit
as ``v / 255`` (float32, the value the in-RAM path holds). Resized or 16-bit images are rounded
to 8 bits (at most 0.5 / 255 from the in-RAM float): the price of a quarter of the bytes.

Streaming reads rows with ``os.pread`` on the .npy rather than through a memory map: pages a map
has touched count in the resident set until the kernel evicts them, so one epoch over a 5.6 GB
map shows 5.6 GB resident; ``pread`` keeps only the batch. :meth:`MemmapImages.array` still
gives the read-only ``np.memmap`` for ad-hoc use. Written by hand (no library offers a
fingerprinted uint8 image cache; numpy's .npy format is used for the file).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..utils import atomic_path, atomic_write_json
from .cache import CacheOption, cache_dir
from .dicom import DicomMode, check_dicom_mode
from .folder import DataError, read_image, resize_square

MEMMAP_VERSION = "mladv-memmap-1"  # change when the stored values change


def fingerprint(files: Sequence[str | os.PathLike[str]], image_size: int,
                dicom_mode: str = "voi") -> str:
    """The cache key of ``files`` at ``image_size`` (module doc) read in ``dicom_mode``
    ("voi" keeps the keys of caches built before the mode existed); ``DataError`` naming a file
    that cannot be stat'ed."""
    head = f"{MEMMAP_VERSION}|{image_size}" + ("" if dicom_mode == "voi" else f"|{dicom_mode}")
    h = hashlib.sha1(head.encode())
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            raise DataError(f"{f}: no such file") from None
        h.update(f"|{os.fspath(f)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def to_uint8(image: Tensor) -> np.ndarray:
    """``1 x S x S`` float in [0, 1] -> ``1 x S x S`` uint8 ``round(255 x)``."""
    return (image * 255).round().clamp(0, 255).to(torch.uint8).numpy()


@dataclass(frozen=True)
class MemmapImages:
    """A built cache: the .npy file, its shape and where its data begins."""

    path: Path
    shape: tuple[int, int, int, int]
    offset: int

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def image_bytes(self) -> int:
        return self.shape[1] * self.shape[2] * self.shape[3]

    def array(self) -> np.ndarray:
        """The whole cache as a read-only ``N x 1 x S x S`` uint8 ``np.memmap``."""
        out: np.ndarray = np.load(self.path, mmap_mode="r")
        return out

    def read(self, start: int, stop: int, fd: int | None = None) -> Tensor:
        """Images ``start:stop`` as ``n x 1 x S x S`` float32 ``v / 255`` (one ``pread``)."""
        n = stop - start
        own = fd is None
        fd = os.open(self.path, os.O_RDONLY) if fd is None else fd
        try:
            data = os.pread(fd, n * self.image_bytes, self.offset + start * self.image_bytes)
        finally:
            if own:
                os.close(fd)
        u8 = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return u8.view(n, *self.shape[1:]).to(torch.float32) / 255

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """Every image in order, ``batch_size`` at a time (``B x 1 x S x S`` float32)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for start in range(0, len(self), batch_size):
                yield self.read(start, min(start + batch_size, len(self)), fd)
        finally:
            os.close(fd)


def _load_sidecar(sidecar: Path, key: str) -> MemmapImages | None:
    try:
        meta: dict[str, Any] = json.loads(sidecar.read_text())
        npy = sidecar.with_suffix(".npy")
        shape = tuple(int(v) for v in meta["shape"])
        if (meta.get("fingerprint") != key or len(shape) != 4 or not npy.is_file()
                or npy.stat().st_size != int(meta["offset"]) + int(np.prod(shape))):
            return None
        return MemmapImages(npy, (shape[0], shape[1], shape[2], shape[3]), int(meta["offset"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_memmap(files: Sequence[str | os.PathLike[str]], image_size: int, *,
                 cache: CacheOption = None, progress: bool = True,
                 dicom_mode: DicomMode = "voi") -> MemmapImages:
    """The on-disk uint8 cache of ``files`` at ``image_size`` (module doc): reused when its
    sidecar's fingerprint matches, else built (one image in memory at a time) and written
    atomically. ``cache`` is the folder (``None``: ``$MLADV_CACHE`` or ``~/.cache/mladv``);
    ``False`` is refused (this cache is the point). ``DataError`` naming the file for an
    unreadable or too-small image. DICOM files are read in ``dicom_mode``
    (:mod:`mladv.data.dicom`), which enters the key."""
    check_dicom_mode(dicom_mode)
    folder = cache_dir(cache)
    if folder is None:
        raise DataError("the on-disk image cache needs a cache folder (cache=False or "
                        "MLADV_CACHE=off turn it off)")
    if not files:
        raise DataError("no image files to cache")
    key = fingerprint(files, image_size, dicom_mode)
    sidecar = folder / f"memmap-{key}.json"
    found = _load_sidecar(sidecar, key)
    if found is not None:
        return found
    shape = (len(files), 1, image_size, image_size)
    seq: Sequence[str | os.PathLike[str]] = files
    if progress:
        from tqdm.auto import tqdm
        seq = tqdm(files, desc=f"caching {len(files)} images on disk", unit="img", disable=None)
    npy = sidecar.with_suffix(".npy")
    with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
        offset = fh.tell()
        for f in seq:
            image = read_image(f, dicom_mode=dicom_mode)
            fh.write(to_uint8(resize_square(image, image_size, os.fspath(f))).tobytes())
    atomic_write_json({"fingerprint": key, "version": MEMMAP_VERSION, "shape": list(shape),
                       "offset": offset, "n_files": len(files), "image_size": image_size},
                      sidecar)
    return MemmapImages(npy, shape, offset)


class MemmapDataset(Dataset[tuple[Tensor, Tensor]]):
    """A ``torch`` Dataset over a :class:`MemmapImages`: item ``i`` is ``(1 x S x S`` float32
    ``v / 255``, ``labels[i])``. The file is opened lazily in each process (DataLoader workers
    each get their own descriptor; nothing big is pickled)."""

    def __init__(self, images: MemmapImages, labels: Tensor) -> None:
        if labels.shape[0] != len(images):
            raise ValueError(f"labels: {labels.shape[0]} rows for {len(images)} cached images")
        self.images = images
        self.labels = labels
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.images)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.images.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images.read(i, i + 1, self._descriptor())[0], self.labels[i]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)  # type: ignore[arg-type]
            except OSError:
                pass
