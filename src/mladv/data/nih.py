"""NIH ChestX-ray14 as the NIH publishes it: a multilabel :class:`~mladv.data.folder.ImageSet`.

Layout (a full download, or a sample such as ``../shared/data/nih14``)::

    ROOT/Data_Entry_2017_v2020.csv       (or Data_Entry_2017.csv): one row per image with the
                                         columns Image Index, Finding Labels, Patient ID, ...
    ROOT/images_001/images/*.png ... ROOT/images_012/images/*.png   (or ROOT/images/*.png)

``Finding Labels`` is a ``|``-separated list over the 14 findings of :data:`NIH_FINDINGS` (NIH's
order, alphabetical) or ``No Finding`` (an all-zero row). Images are found anywhere under ROOT by
file name: the tree is indexed once with :func:`os.scandir` (a glob per image would walk 112,120
times). Rows whose image is not there (a partial download) are left out, counted in one warning
and listed in ``ImageSet.skipped``; the patient id is the group of the patient-aware split.
NIH's labels are all known (text-mined 0 / 1, no "uncertain"), so the targets hold no NaN.
"""
from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .cache import CacheOption
from .folder import IMAGE_EXTENSIONS, DataError, ImageSet, check_folder, load_multilabel_files

NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion",
                "Emphysema", "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule",
                "Pleural_Thickening", "Pneumonia", "Pneumothorax")
NO_FINDING = "No Finding"
LABEL_FILE = "Data_Entry_2017_v2020.csv"  # preferred when several label files are present
_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


def find_label_file(root: Path) -> Path | None:
    """The ``Data_Entry_2017*.csv`` at ``root`` (:data:`LABEL_FILE` when several), or ``None``;
    ``DataError`` when several others leave the choice ambiguous."""
    if not root.is_dir():
        return None
    found = sorted(p for p in root.glob("Data_Entry_2017*.csv") if p.is_file())
    if len(found) > 1 and (root / LABEL_FILE).is_file():
        return root / LABEL_FILE
    if len(found) > 1:
        raise DataError(f"{root}: several NIH label files ({', '.join(p.name for p in found)}); "
                        "keep one")
    return found[0] if found else None


def index_images(root: Path) -> dict[str, Path]:
    """``file name -> path`` of every image file under ``root`` (recursively; hidden entries
    left out), walked once with :func:`os.scandir`. A name found twice is refused in one line
    (which copy the labels mean would be a guess)."""
    index: dict[str, Path] = {}
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(entry.path)
                elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    if entry.name in index:
                        raise DataError(f"{root}: the image name {entry.name} is found twice "
                                        f"({index[entry.name]} and {entry.path})")
                    index[entry.name] = Path(entry.path)
    return index


def select_findings(where: str | os.PathLike[str], wanted: Sequence[str] | None
                    ) -> list[str]:
    """The findings to load, in NIH's order: all, or ``wanted`` (each one of
    :data:`NIH_FINDINGS`, none twice; ``DataError`` naming ``where`` and the valid names)."""
    if wanted is None:
        return list(NIH_FINDINGS)
    unknown = [f for f in wanted if f not in NIH_FINDINGS]
    if unknown:
        raise DataError(f"{where}: no NIH finding {unknown[0]!r}; findings: {list(NIH_FINDINGS)}")
    if len(set(wanted)) != len(wanted) or not wanted:
        raise DataError(f"{where}: select each finding once, got {list(wanted)}")
    return [f for f in NIH_FINDINGS if f in wanted]


def read_nih_labels(file: Path) -> list[tuple[int, str, set[str], str]]:
    """``[(line, image name, findings, patient id)]`` of an NIH label file; ``DataError`` naming
    the file (and line) for a missing column, an empty cell or an unknown finding."""
    with file.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        reader.fieldnames = fields
        missing = [c for c in _COLUMNS if c not in fields]
        if missing:
            raise DataError(f"{file}: no column {missing[0]!r} (an NIH label file has "
                            f"{', '.join(_COLUMNS)}, ...)")
        rows = []
        for row in reader:
            name, text = (row["Image Index"] or "").strip(), (row["Finding Labels"] or "").strip()
            patient = (row["Patient ID"] or "").strip()
            if not name or not text or not patient:
                raise DataError(f"{file}, line {reader.line_num}: empty Image Index, Finding "
                                "Labels or Patient ID")
            found = {t.strip() for t in text.split("|") if t.strip()}
            if found != {NO_FINDING}:
                unknown = sorted(found - set(NIH_FINDINGS))
                if unknown:
                    raise DataError(f"{file}, line {reader.line_num}: unknown finding "
                                    f"{unknown[0]!r} (NIH's are {list(NIH_FINDINGS)} or "
                                    f"{NO_FINDING!r})")
            rows.append((reader.line_num, name, found - {NO_FINDING}, patient))
    if not rows:
        raise DataError(f"{file}: no rows")
    return rows


def load_nih(root: str | os.PathLike[str], image_size: int = 224, *,
             findings: Sequence[str] | None = None, skip_bad: bool = False,
             progress: bool = False, cache: CacheOption = None) -> ImageSet:
    """Load the NIH ChestX-ray14 layout (module doc) as a multilabel :class:`ImageSet`.

    Args:
        root: the folder holding ``Data_Entry_2017*.csv`` and the images (at any depth).
        image_size: output side in pixels (see :func:`~mladv.data.folder.resize_square`).
        findings: the columns to keep (NIH names, e.g. ``["Effusion", "Mass"]``), in NIH's
            order; all 14 when ``None``. Every listed image is kept, its other findings ignored.
        skip_bad: leave out unreadable files (listed in ``skipped``) instead of raising.
        cache: the uint8 decode cache (:func:`~mladv.data.folder.load_files`).

    Returns:
        ``ImageSet`` with ``task="multilabel"``, ``labels`` ``N x K`` float32 in {0, 1},
        ``classes`` the findings, ``groups`` the patient ids, in the label file's row order.
    """
    root = Path(root)
    check_folder(root, "the NIH layout: Data_Entry_2017*.csv and the images under it")
    label_file = find_label_file(root)
    if label_file is None:
        raise DataError(f"{root}: no NIH label file Data_Entry_2017*.csv there (the NIH layout "
                        "has Data_Entry_2017_v2020.csv beside images_001/ ... or images/)")
    chosen = select_findings(root, findings)
    rows = read_nih_labels(label_file)
    index = index_images(root)
    items: list[tuple[Path, str]] = []
    vectors: list[list[float]] = []
    absent: list[tuple[str, str]] = []
    for line, name, found, patient in rows:
        path = index.get(name)
        if path is None:
            absent.append((name, f"{label_file.name}, line {line}: no image {name} under {root}"))
            continue
        items.append((path, patient))
        vectors.append([1.0 if f in found else 0.0 for f in chosen])
    if absent:
        warnings.warn(f"{root}: {len(absent)} of {len(rows)} rows of {label_file.name} have no "
                      f"image under {root} (left out; first: {absent[0][0]})", stacklevel=2)
    if not items:
        raise DataError(f"{root}: none of the {len(rows)} images {label_file.name} lists is "
                        "under it")
    targets = np.asarray(vectors, dtype=np.float32).reshape(len(items), len(chosen))
    return load_multilabel_files(items, targets, chosen, image_size, where=root,
                                 skip_bad=skip_bad, progress=progress, cache=cache,
                                 absent=absent)
