"""Loading ImageFolder layouts (PNG, JPEG, DICOM) as grayscale [0, 1] tensors, with clear errors."""
from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_EXTENSIONS = {".dcm", ".dicom"}
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


class DataError(ValueError):
    """A problem with the input data; the message names the file or folder."""


@dataclass
class ImageSet:
    """An in-memory labelled image set.

    Attributes:
        images: ``N x 1 x H x W`` float32 in [0, 1].
        labels: ``N`` int64 class indices into ``classes``.
        classes: class names, sorted as ImageFolder sorts them.
        paths: the source file of each image ("" for generated images).
        groups: a patient/group key per image (the path when none is known).
        skipped: files left out with ``skip_bad`` and why.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    paths: list[str]
    groups: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Iterable[int] | Tensor) -> ImageSet:
        idx = torch.as_tensor(list(index) if not isinstance(index, Tensor) else index,
                              dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], list(self.classes),
                        [self.paths[i] for i in idx.tolist()],
                        [self.groups[i] for i in idx.tolist()])

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, counts))


def _to_float_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> 2-D float32 array in [0, 1] (RGB averaged to luminance, 16-bit scaled)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a declared dependency
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from exc
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    if arr.ndim == 3:  # multi-frame or colour: take the first frame / average channels
        arr = arr[0] if arr.shape[0] < arr.shape[-1] else arr.mean(-1)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = arr.max() - arr
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one image file as a 2-D float32 array in [0, 1]; ``DataError`` naming the file if not."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in DICOM_EXTENSIONS:
            return _read_dicom(path)
        if suffix not in IMAGE_EXTENSIONS:
            raise DataError(f"{path}: not an image file (extension {suffix or 'none'}; expected one "
                            f"of {sorted(IMAGE_EXTENSIONS | DICOM_EXTENSIONS)})")
        with Image.open(path) as img:
            img.load()
            return _to_float_array(img)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (corrupt or not an image)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
        raise DataError(f"{path}: cannot decode image ({exc.__class__.__name__}: {exc})") from None


def resize_square(arr: np.ndarray, size: int, path: str = "") -> Tensor:
    """Resize the shorter side to ``size`` (antialiased bilinear) and centre-crop to a square.

    Refuses images smaller than ``size`` (upscaling would invent detail).
    Shape: ``H x W`` array -> ``1 x size x size`` tensor.
    """
    h, w = arr.shape
    if min(h, w) < size:
        raise DataError(f"{path}: image is {w}x{h}, smaller than the target size {size}; "
                        f"choose a smaller --image-size or drop the file")
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    if min(h, w) != size:
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (t.shape[-2] - size) // 2, (t.shape[-1] - size) // 2
    return t[0, :, top:top + size, left:left + size].clamp(0, 1).contiguous()


def _class_files(root: Path) -> tuple[list[str], dict[str, list[Path]]]:
    if not root.exists():
        raise DataError(f"{root}: data folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected an ImageFolder layout root/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders (expected root/<class>/<image files>)")
    files: dict[str, list[Path]] = {}
    for c in classes:
        found = sorted(p for p in (root / c).rglob("*") if p.is_file()
                       and not p.name.startswith(".") and p.name.lower() not in IGNORED_NAMES)
        if not found:
            raise DataError(f"{root / c}: class folder is empty")
        files[c] = found
    return classes, files


def _manifest_groups(root: Path) -> dict[str, str]:
    """``file -> patient_id`` from ``root/manifest.csv`` when it has those columns."""
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return {}
    with manifest.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "patient_id"} <= set(reader.fieldnames):
            return {}
        return {row["file"]: row["patient_id"] for row in reader if row.get("patient_id")}


def load_folder(root: str | os.PathLike[str], image_size: int = 128, *, skip_bad: bool = False,
                classes: list[str] | None = None, progress: bool = False) -> ImageSet:
    """Load ``root/<class>/<image>`` as an :class:`ImageSet` of ``image_size`` squares.

    Args:
        root: ImageFolder root (a ``manifest.csv`` with ``file`` and ``patient_id`` columns, if
            present, gives the patient groups used by :func:`stratified_split`).
        image_size: output side in pixels.
        skip_bad: leave out unreadable / too small / non-image files, listing them in
            ``ImageSet.skipped`` and in one warning, instead of raising.
        classes: expected class names (e.g. a checkpoint's); a different set is refused.
        progress: show a progress bar.

    Raises:
        DataError: naming the path, for every problem (see README, "Bad input").
    """
    root = Path(root)
    found_classes, files = _class_files(root)
    if classes is not None and list(classes) != found_classes:
        raise DataError(f"{root}: classes {found_classes} differ from the expected {list(classes)}")
    groups_by_file = _manifest_groups(root)
    items = [(c, i, p) for i, c in enumerate(found_classes) for p in files[c]]
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc=f"loading {root.name}", unit="img")
    images, labels, paths, groups, skipped = [], [], [], [], []
    for _cls, label, path in items:
        try:
            images.append(resize_square(read_image(path), image_size, str(path)))
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append((str(path), str(exc)))
            continue
        labels.append(label)
        rel = path.relative_to(root).as_posix()
        paths.append(str(path))
        groups.append(groups_by_file.get(rel, rel))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s) under {root}: "
                      + "; ".join(p for p, _ in skipped[:10])
                      + (" ..." if len(skipped) > 10 else ""), stacklevel=2)
    label_t = torch.tensor(labels, dtype=torch.long)
    empty = [c for i, c in enumerate(found_classes) if not (label_t == i).any()]
    if empty:
        raise DataError(f"{root}: no readable image left in class(es) {empty}")
    return ImageSet(torch.stack(images), label_t, found_classes, paths, groups, skipped)
