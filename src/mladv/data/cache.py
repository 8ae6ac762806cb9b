"""A uint8 tensor cache of decoded images: every file decoded once, reused across arms, seeds and
runs.

An entry holds the full-size decoded 8-bit images of a list of files as one ``N x 1 x H x W``
uint8 tensor. Its key is content, not names (see :func:`cache_key`)::

    key = sha1( LOADER_VERSION || for each file, in order: len(bytes) || sha1(bytes) )

so a changed, added, removed or reordered file gives a new entry, and a copied folder reuses the
old one. Entries are written atomically (a temporary file renamed into place).

Identity with a fresh decode: :func:`mladv.data.folder.read_image` returns ``v / 255`` (float32)
for an 8-bit value ``v``; the cache stores ``v`` itself and :func:`as_float` recomputes exactly
``np.float32(v) / np.float32(255)``. The resize to ``image_size`` still runs after the cache, as
it does without one (caching *after* a float resize would round the result to 8 bits and change
it). Only sets whose files all decode to 8-bit grey of one size are cached (16-bit, DICOM and
float images, and mixed sizes, load as before, uncached).

Where: ``$MLADV_CACHE`` if set (``off`` / ``0`` / ``none`` turns the cache off), else
``~/.cache/mladv``.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..utils import atomic_torch_save

LOADER_VERSION = "mladv-u8-1"  # change when the 8-bit decode below changes
CacheOption = bool | str | os.PathLike[str] | None
_OFF = {"off", "0", "none", "false", "no"}
_EIGHT_BIT_MODES = ("L", "1", "RGB", "CMYK", "YCbCr")  # read_image: convert("L"), / 255


def cache_dir(option: CacheOption = None) -> Path | None:
    """The cache folder ``option`` asks for: a path; ``False`` -> none; ``None`` / ``True`` ->
    ``$MLADV_CACHE`` (``off`` -> none) or ``~/.cache/mladv``."""
    if option is False:
        return None
    if option is not None and option is not True:
        return Path(option)
    env = os.environ.get("MLADV_CACHE")
    if env is not None:
        return None if env.strip().lower() in _OFF or not env.strip() else Path(env)
    return Path.home() / ".cache" / "mladv"


def cache_key(paths: Sequence[str | os.PathLike[str]]) -> str:
    """The content key of ``paths`` (module doc): hex sha1 over the loader version and each
    file's byte count and sha1, in order. ``OSError`` if a file cannot be read."""
    h = hashlib.sha1(LOADER_VERSION.encode())
    for path in paths:
        data = Path(path).read_bytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(hashlib.sha1(data).digest())
    return h.hexdigest()


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation tag says (as the data preparation did, see
    ``data/README.md``): a phone photo of a film reads upright; no tag, no change."""
    return ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img


def decode_uint8(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The 2-D uint8 grey image :func:`mladv.data.folder.read_image` scales by 255, or ``None``
    when the file is not an 8-bit image that function reads that way (16-bit, float, alpha,
    palette, DICOM, unreadable): those are not cached."""
    try:
        with Image.open(path) as opened:
            opened.load()
            img = upright(opened)  # EXIF orientation, as read_image applies it
            if img.mode not in _EIGHT_BIT_MODES:
                return None
            grey = img if img.mode == "L" else img.convert("L")
            return np.asarray(grey, dtype=np.uint8).copy()
    except Exception:  # noqa: BLE001 - anything unreadable is left to the uncached loader
        return None


def decode_all(paths: Sequence[str | os.PathLike[str]]) -> Tensor | None:
    """``N x 1 x H x W`` uint8 of ``paths``, or ``None`` unless all are 8-bit of one size."""
    arrays: list[np.ndarray] = []
    for path in paths:
        arr = decode_uint8(path)
        if arr is None or (arrays and arr.shape != arrays[0].shape):
            return None
        arrays.append(arr)
    if not arrays:
        return None
    return torch.from_numpy(np.stack(arrays))[:, None]


def cached_uint8(paths: Sequence[str | os.PathLike[str]],
                 option: CacheOption = None) -> Tensor | None:
    """The decoded uint8 images of ``paths`` (``N x 1 x H x W``), from the cache when an entry
    with their content key exists, else decoded and stored; ``None`` when the cache is off or the
    files are not cacheable (the caller then decodes as usual). A cache folder that cannot be
    written only costs the reuse."""
    folder = cache_dir(option)
    if folder is None or not paths:
        return None
    try:
        key = cache_key(paths)
    except OSError:
        return None
    entry = folder / f"images-{key}.pt"
    if entry.is_file():
        try:
            images = torch.load(entry, map_location="cpu", weights_only=True)
            if (isinstance(images, Tensor) and images.dtype == torch.uint8 and images.dim() == 4
                    and images.shape[0] == len(paths)):
                return images
        except Exception:  # noqa: BLE001 - a damaged entry is rebuilt
            pass
    images = decode_all(paths)
    if images is not None:
        try:
            atomic_torch_save(images, entry)
        except OSError:
            pass
    return images


def as_float(image: Tensor) -> np.ndarray:
    """One cached ``1 x H x W`` uint8 image as ``read_image`` returns it: ``H x W`` float32
    ``v / 255`` (the same float32 division, so bit-identical)."""
    return image[0].numpy().astype(np.float32) / np.float32(255)
