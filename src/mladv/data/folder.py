"""Reading images (PNG, JPEG, TIFF, DICOM) as grayscale [0, 1] arrays, and ImageFolder layouts.

Intensities are scaled by the file's **bit depth**, never stretched per image, so the same picture
stored at 8 or 16 bits loads to the same values (an 8-bit value ``v`` and its 16-bit copy
``257 v`` both give ``v / 255``):

- 8-bit images (and palette, RGB, RGBA, ...): ``v / 255`` (colour averaged to luminance, alpha
  composited on black);
- 16-bit images (PNG / TIFF mode ``I;16``): ``v / 65535``. A 12-bit image stored in a 16-bit
  PNG therefore loads dark (at most 4095/65535); that is what the file says;
- DICOM (:mod:`mladv.data.dicom`): ``dicom_mode="voi"`` runs the grayscale pipeline -- modality
  LUT, then the VOI LUT (a VOI LUT Sequence before the first window), then MONOCHROME1 /
  Presentation LUT Shape polarity -- scaled by the VOI output range; without a VOI (or with
  ``dicom_mode="raw"``) the stored range, ``v / (2**BitsStored - 1)``;
- float images must already lie in [0, 1]; 32-bit integer images are refused.
"""
from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..tasks import Task, check_targets, check_task
from .cache import CacheOption, as_float, cached_uint8, upright
from .dicom import DicomError, DicomMode, check_dicom_mode, read_dicom

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_EXTENSIONS = {".dcm", ".dicom"}
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class DataError(ValueError):
    """A problem with the input data; the message names the file or folder."""


@dataclass
class ImageSet:
    """An in-memory labelled image set, for a multiclass or a multilabel task
    (:mod:`mladv.tasks`).

    Attributes:
        images: ``N x 1 x H x W`` float32 in [0, 1].
        labels: multiclass: ``N`` int64 class indices into ``classes``; multilabel: ``N x K``
            float32, 1 / 0 per finding in ``classes``, NaN = unknown.
        classes: class names, sorted as ImageFolder sorts them; multilabel: the finding names,
            one per column of ``labels``.
        paths: the source file of each image ("" for generated images).
        groups: a patient/group key per image (the path when none is known).
        skipped: files left out with ``skip_bad`` (or, multilabel, listed rows whose image is
            absent) and why.
        task: ``"multiclass"`` (default) or ``"multilabel"``.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    paths: list[str]
    groups: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    task: Task = "multiclass"

    def __post_init__(self) -> None:
        if self.task == "multilabel":  # multiclass sets are checked where they are built
            check_targets(self.labels, self.task, len(self.classes))
        else:
            check_task(self.task)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Iterable[int] | Tensor) -> ImageSet:
        """The images at ``index``, in that order (task and classes kept)."""
        idx = torch.as_tensor(list(index) if not isinstance(index, Tensor) else index,
                              dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], list(self.classes),
                        [self.paths[i] for i in idx.tolist()],
                        [self.groups[i] for i in idx.tolist()], task=self.task)


def _to_float_array(img: Image.Image, path: Path | str = "") -> np.ndarray:
    """Any PIL mode -> 2-D float32 array in [0, 1], scaled by bit depth (see the module doc)."""
    if img.mode in SIXTEEN_BIT_MODES:
        return np.asarray(img, dtype=np.float32) / np.float32(65535)
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode == "F" and 0.0 <= lo and hi <= 1.0:
            return arr
        if img.mode == "I" and 0 <= lo and hi <= 65535 and img.format == "PNG":
            return arr / np.float32(65535)  # 16-bit PNG read as 32-bit by some Pillow versions
        raise DataError(f"{path}: {'float' if img.mode == 'F' else '32-bit integer'} image, values "
                        f"in [{lo:g}, {hi:g}]; mladv reads 8-bit, 16-bit and [0, 1] float images")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / np.float32(255)


def warn_small_classes(where: str | os.PathLike[str], classes: Sequence[str],
                       labels: Tensor) -> None:
    """Warn, naming the label, about a class with fewer than two images (a typo in a CSV label
    makes one silently): it cannot be both trained on and tested."""
    small = [f"{c!r} ({int((labels == i).sum())} image)" for i, c in enumerate(classes)
             if int((labels == i).sum()) < 2]
    if small:
        warnings.warn(f"{where}: class {', '.join(small)} has fewer than two images (a typo in "
                      "a label?)", stacklevel=3)


def read_image(path: str | os.PathLike[str], *, dicom_mode: DicomMode = "voi") -> np.ndarray:
    """Read one image file as a 2-D float32 array in [0, 1], scaled by bit depth (module doc);
    ``DataError`` naming the file if it cannot be read. ``dicom_mode`` (``"voi"`` or ``"raw"``)
    applies to DICOM files (:func:`mladv.data.dicom.read_dicom`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in DICOM_EXTENSIONS:
            return read_dicom(path, dicom_mode)
        if suffix not in IMAGE_EXTENSIONS:
            raise DataError(f"{path}: not an image file (extension {suffix or 'none'}; expected "
                            f"one of {sorted(IMAGE_EXTENSIONS | DICOM_EXTENSIONS)})")
        with Image.open(path) as img:
            img.load()
            return _to_float_array(upright(img), path)
    except DataError:
        raise
    except DicomError as exc:
        raise DataError(str(exc)) from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (corrupt or not an image)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds
        raise DataError(f"{path}: cannot decode image ({exc.__class__.__name__}: {exc})") from None


def read_image_tensor(path: str | os.PathLike[str], *, dicom_mode: DicomMode = "voi") -> Tensor:
    """:func:`read_image` as a ``1 x H x W`` float32 tensor: a 16-bit-aware ``loader`` for
    ``torchvision.datasets.ImageFolder`` (whose default PIL loader drops 16-bit PNGs to 8 bits)."""
    return torch.from_numpy(np.ascontiguousarray(read_image(path, dicom_mode=dicom_mode)))[None]


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


def check_classes(where: str | os.PathLike[str], classes: Sequence[str]) -> None:
    """A classifier needs two classes: ``DataError`` naming ``where`` otherwise."""
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class"
        raise DataError(f"{where}: {found}; a classifier needs at least two classes")


def read_squares(files: Sequence[Path], image_size: int, *, where: str | os.PathLike[str],
                 skip_bad: bool = False, progress: bool = False, cache: CacheOption = None,
                 dicom_mode: DicomMode = "voi"
                 ) -> tuple[list[Tensor], list[int], list[tuple[str, str]]]:
    """Read ``files`` as ``1 x image_size x image_size`` squares (the loop every loader shares,
    through the uint8 cache of :func:`load_files`): ``(images, kept, skipped)`` with ``kept`` the
    index into ``files`` of each image read. With ``skip_bad`` an unreadable file goes to
    ``skipped`` (path, why) and one warning names them; otherwise its ``DataError`` is raised."""
    broken = [i for i, f in enumerate(files) if is_broken_link(f)]
    if broken and not skip_bad:  # before any decoding: a missing target is not read silently
        raise DataError(broken_link_message(files[broken[0]]))
    skipped: list[tuple[str, str]] = [(str(files[i]), broken_link_message(files[i]))
                                      for i in broken]
    readable = [i for i in range(len(files)) if i not in set(broken)]
    paths_ok = [files[i] for i in readable]
    eight_bit = (cached_uint8(paths_ok, cache)
                 if all(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in paths_ok) else None)
    seq: Iterable[int] = readable
    if progress:
        from tqdm.auto import tqdm
        seq = tqdm(readable, desc=f"loading {Path(where).name}", unit="img",
                   disable=None)  # drawn on a terminal only
    images: list[Tensor] = []
    kept: list[int] = []
    for j, i in enumerate(seq):
        path = files[i]
        try:
            arr = (read_image(path, dicom_mode=dicom_mode) if eight_bit is None
                   else as_float(eight_bit[j]))
            images.append(resize_square(arr, image_size, str(path)))
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append((str(path), str(exc)))
            continue
        kept.append(i)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s) under {where}: "
                      + "; ".join(p for p, _ in skipped[:10])
                      + (" ..." if len(skipped) > 10 else ""), stacklevel=4)
    return images, kept, skipped


def load_files(items: Sequence[tuple[Path, int, str]], classes: list[str], image_size: int, *,
               where: str | os.PathLike[str], skip_bad: bool = False, progress: bool = False,
               cache: CacheOption = None, dicom_mode: DicomMode = "voi") -> ImageSet:
    """Read ``(path, label, group)`` items into an :class:`ImageSet` of ``image_size`` squares
    (the loop every loader shares). With ``skip_bad`` unreadable files are listed in
    ``ImageSet.skipped`` and one warning instead of raising. ``where`` names the source in errors.

    ``cache`` (:mod:`mladv.data.cache`, on by default; ``False`` or ``MLADV_CACHE=off`` turns it
    off): 8-bit files are decoded once into a content-keyed uint8 cache and read from it later;
    the resize runs after it as before, so the images are bit-identical either way.
    ``dicom_mode`` (``"voi"`` / ``"raw"``, :mod:`mladv.data.dicom`) applies to DICOM files.
    """
    try:
        check_dicom_mode(dicom_mode)
    except DicomError as exc:
        raise DataError(str(exc)) from None
    check_classes(where, classes)
    images, kept, skipped = read_squares([path for path, _, _ in items], image_size,
                                         where=where, skip_bad=skip_bad, progress=progress,
                                         cache=cache, dicom_mode=dicom_mode)
    labels = [items[i][1] for i in kept]
    paths = [str(items[i][0]) for i in kept]
    groups = [items[i][2] for i in kept]
    label_t = torch.tensor(labels, dtype=torch.long)
    empty = [c for i, c in enumerate(classes) if not (label_t == i).any()]
    if empty:
        raise DataError(f"{where}: no readable image left in class(es) {empty}")
    warn_small_classes(where, classes, label_t)
    return ImageSet(torch.stack(images), label_t, list(classes), paths, groups, skipped)


def load_multilabel_files(items: Sequence[tuple[Path, str]], targets: np.ndarray,
                          findings: Sequence[str], image_size: int, *,
                          where: str | os.PathLike[str], skip_bad: bool = False,
                          progress: bool = False, cache: CacheOption = None,
                          absent: Sequence[tuple[str, str]] = ()) -> ImageSet:
    """Read ``(path, group)`` items with their ``N x K`` targets (1 / 0 / NaN = unknown, one
    column per name in ``findings``) into a multilabel :class:`ImageSet` of ``image_size``
    squares, through the same reading loop and uint8 cache as :func:`load_files`. ``absent``
    (rows a loader left out, with why) is carried into ``ImageSet.skipped``."""
    if not findings:
        raise DataError(f"{where}: no finding selected; a multilabel set needs at least one")
    if targets.shape != (len(items), len(findings)):
        raise DataError(f"{where}: {targets.shape} targets for {len(items)} images and "
                        f"{len(findings)} findings")
    if not items:
        raise DataError(f"{where}: no image to load")
    images, kept, skipped = read_squares([path for path, _ in items], image_size, where=where,
                                         skip_bad=skip_bad, progress=progress, cache=cache)
    if not kept:
        raise DataError(f"{where}: no readable image")
    labels = torch.from_numpy(np.ascontiguousarray(targets[kept], dtype=np.float32))
    return ImageSet(torch.stack(images), labels, list(findings),
                    [str(items[i][0]) for i in kept], [items[i][1] for i in kept],
                    list(absent) + skipped, task="multilabel")


def is_broken_link(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a symbolic link whose target does not exist."""
    return Path(path).is_symlink() and not Path(path).exists()


def broken_link_message(path: str | os.PathLike[str]) -> str:
    """``PATH: broken symbolic link (to TARGET, which does not exist)``."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"{path}: broken symbolic link (to {target}, which does not exist)"


def list_images(folder: Path) -> list[Path]:
    """Every visible file under ``folder`` (recursively, sorted), system files left out. Broken
    symbolic links are listed too: the readers refuse them, naming the link (or, with
    ``skip_bad``, list them as skipped), instead of leaving them out silently."""
    return sorted(p for p in folder.rglob("*")
                  if (p.is_file() or is_broken_link(p)) and not p.name.startswith(".")
                  and p.name.lower() not in IGNORED_NAMES)


def check_folder(root: Path, layout: str) -> None:
    """``DataError`` naming ``root`` unless it is an existing folder."""
    if not root.exists():
        raise DataError(f"{root}: data folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected {layout})")


def class_folders(root: Path) -> list[str]:
    """The visible sub-folder names of ``root``, sorted. A broken symbolic link among them (a
    class folder whose target is gone) is one ``DataError`` naming the link, even with
    ``skip_bad``: leaving it out would change the classes."""
    entries = [d for d in root.iterdir() if not d.name.startswith(".")]
    broken = [d for d in entries if is_broken_link(d)]
    if broken:
        raise DataError(broken_link_message(sorted(broken)[0]) + "; a class folder? fix or "
                        "remove the link")
    return sorted(d.name for d in entries if d.is_dir())


def _class_files(root: Path) -> tuple[list[str], dict[str, list[Path]]]:
    check_folder(root, "an ImageFolder layout root/<class>/<image>")
    classes = class_folders(root)
    if not classes:
        raise DataError(f"{root}: no class subfolders (expected root/<class>/<image files>)")
    check_classes(root, classes)
    files: dict[str, list[Path]] = {}
    for c in classes:
        found = list_images(root / c)
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
                classes: list[str] | None = None, progress: bool = False,
                cache: CacheOption = None, dicom_mode: DicomMode = "voi") -> ImageSet:
    """Load ``root/<class>/<image>`` as an :class:`ImageSet` of ``image_size`` squares.

    Args:
        root: ImageFolder root with at least two class folders (a ``manifest.csv`` with ``file``
            and ``patient_id`` columns, if present, gives the patient groups used by
            :func:`stratified_split`).
        image_size: output side in pixels.
        skip_bad: leave out unreadable / too small / non-image files, listing them in
            ``ImageSet.skipped`` and in one warning, instead of raising.
        classes: expected class names (e.g. a checkpoint's); a different set is refused.
        progress: show a progress bar.
        cache: the uint8 decode cache (see :func:`load_files`): a folder, ``False`` (off) or
            ``None`` (``$MLADV_CACHE`` or ``~/.cache/mladv``).
        dicom_mode: ``"voi"`` (default: modality LUT, VOI LUT, polarity) or ``"raw"``
            (modality LUT and polarity only) for DICOM files (:mod:`mladv.data.dicom`).

    Raises:
        DataError: naming the path, for every problem (see README, "Bad input").
    """
    root = Path(root)
    found_classes, files = _class_files(root)
    if classes is not None and list(classes) != found_classes:
        raise DataError(f"{root}: classes {found_classes} differ from the expected {list(classes)}")
    groups_by_file = _manifest_groups(root)
    items = []
    for label, c in enumerate(found_classes):
        for path in files[c]:
            rel = path.relative_to(root).as_posix()
            items.append((path, label, groups_by_file.get(rel, rel)))
    return load_files(items, found_classes, image_size, where=root, skip_bad=skip_bad,
                      progress=progress, cache=cache, dicom_mode=dicom_mode)
