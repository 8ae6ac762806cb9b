"""The public chest X-ray data sets in their published layouts, and a CSV manifest.

- **COVID-19 Radiography Database** (Kaggle, tawsifurrahman): ``ROOT/<class>/images/*.png`` with
  ``ROOT/<class>/masks/`` beside them (masks ignored) for the classes ``COVID``, ``Lung_Opacity``,
  ``Normal``, ``Viral Pneumonia``. Any subset of classes can be loaded; the paper used
  :data:`PAPER_CLASSES`. No patient ids are published, so its split is image-level.
- **Kermany pediatric pneumonia** (Mendeley / Kaggle "chest-xray-pneumonia"):
  ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (``ROOT`` may also be the folder holding
  ``chest_xray/``). The published split is kept: :func:`kermany_split` gives train (+ val) and
  test as published. Patient ids come from the published file names (``person<N>_...``,
  ``[NORMAL2-]IM-<N>-...``), so a split of the training part is patient-aware.
- **CSV manifest** for everything else: a header with ``path`` (or ``file``), ``label`` and
  optionally ``patient_id``; relative paths are relative to the CSV's folder.
- **Multilabel CSV manifest** (no ``label`` column; rule in :func:`csv_task`):
  ``path,patient_id,labels`` with one ``|``-separated column of finding names, or
  ``path,patient_id,<one column per finding>`` with 1 / 0 / empty (= unknown, NaN).
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dicom import DicomMode
from .folder import (
    DataError,
    ImageSet,
    check_folder,
    class_folders,
    list_images,
    load_files,
    load_multilabel_files,
)

COVID_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
PAPER_CLASSES = ("COVID", "Normal", "Viral Pneumonia")
KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")
KERMANY_PARTS = ("train", "val", "test")
_KERMANY_PATIENT = re.compile(r"^(person\d+|(?:NORMAL2-)?IM-\d+)[-_]", re.IGNORECASE)


def select_classes(where: str | os.PathLike[str], available: Sequence[str],
                   wanted: Sequence[str] | None) -> list[str]:
    """The classes to load, sorted as ImageFolder sorts: all of ``available``, or ``wanted``
    (each must be available; ``DataError`` naming ``where`` and the valid names otherwise)."""
    if wanted is None:
        return sorted(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise DataError(f"{where}: no class {unknown[0]!r}; classes there: {sorted(available)}")
    if len(set(wanted)) != len(wanted):
        raise DataError(f"{where}: a class is selected twice in {list(wanted)}")
    return sorted(wanted)


# -- COVID-19 Radiography Database ---------------------------------------------------------------
def is_covid_radiography(root: Path) -> bool:
    """True when every class folder of ``root`` holds ``images/`` (and at most ``masks/``)."""
    if not root.is_dir():
        return False
    classes = class_folders(root)
    return len(classes) >= 2 and all(
        "images" in (subs := class_folders(root / c)) and set(subs) <= {"images", "masks"}
        for c in classes)


def load_covid_radiography(root: str | os.PathLike[str], image_size: int = 224, *,
                           classes: Sequence[str] | None = None, skip_bad: bool = False,
                           progress: bool = False, dicom_mode: DicomMode = "voi") -> ImageSet:
    """Load the COVID-19 Radiography Database layout ``root/<class>/images/*`` (masks ignored).

    Args:
        classes: the classes to load (e.g. :data:`PAPER_CLASSES`, or a checkpoint's); all
            classes found when ``None``. Labels follow the sorted selection.
    """
    root = Path(root)
    check_folder(root, "the COVID-19 Radiography Database layout root/<class>/images/")
    if not is_covid_radiography(root):
        raise DataError(f"{root}: not the COVID-19 Radiography Database layout (expected "
                        f"root/<class>/images/ for classes like {list(COVID_CLASSES)})")
    chosen = select_classes(root, class_folders(root), classes)
    items = []
    for label, c in enumerate(chosen):
        files = list_images(root / c / "images")
        if not files:
            raise DataError(f"{root / c / 'images'}: class folder is empty")
        items += [(p, label, p.relative_to(root).as_posix()) for p in files]
    return load_files(items, chosen, image_size, where=root, skip_bad=skip_bad, progress=progress,
                      dicom_mode=dicom_mode)


# -- Kermany pediatric pneumonia ------------------------------------------------------------------
def find_kermany_root(root: Path) -> Path | None:
    """``root`` (or ``root/chest_xray``) when it holds ``train/`` and ``test/`` with ``NORMAL/``
    and ``PNEUMONIA/`` each; ``None`` otherwise."""
    for cand in (root, root / "chest_xray"):
        if all((cand / part / c).is_dir() for part in ("train", "test") for c in KERMANY_CLASSES):
            return cand
    return None


def kermany_patient(name: str) -> str | None:
    """The patient id in a published Kermany file name (``person12_virus_39.jpeg`` ->
    ``person12``, ``NORMAL2-IM-0007-0001.jpeg`` -> ``NORMAL2-IM-0007``), or ``None``."""
    match = _KERMANY_PATIENT.match(name)
    return match.group(1) if match else None


def load_kermany(root: str | os.PathLike[str], image_size: int = 224, *,
                 parts: Sequence[str] | None = None, classes: Sequence[str] | None = None,
                 skip_bad: bool = False, progress: bool = False,
                 dicom_mode: DicomMode = "voi") -> ImageSet:
    """Load parts of the Kermany layout ``root/{train,val,test}/{NORMAL,PNEUMONIA}/*``.

    Args:
        parts: published parts to join; default ``train`` plus ``val`` when present (everything
            but the published test part).
        classes: expected classes (a checkpoint's); must be ``["NORMAL", "PNEUMONIA"]``.
    """
    given = Path(root)
    check_folder(given, "the Kermany layout root/{train,val,test}/{NORMAL,PNEUMONIA}/")
    base = find_kermany_root(given)
    if base is None:
        raise DataError(f"{given}: not the Kermany layout (expected train/ and test/, each with "
                        f"NORMAL/ and PNEUMONIA/)")
    if parts is None:
        parts = [p for p in ("train", "val") if (base / p).is_dir()]
    bad = [p for p in parts if p not in KERMANY_PARTS]
    if bad or not parts:
        raise DataError(f"{given}: Kermany parts are {list(KERMANY_PARTS)}, got {list(parts)}")
    chosen = select_classes(given, KERMANY_CLASSES, classes)
    if chosen != list(KERMANY_CLASSES):
        raise DataError(f"{given}: Kermany has the classes {list(KERMANY_CLASSES)}, expected "
                        f"{list(classes or [])}")
    items = []
    for part in parts:
        for label, c in enumerate(chosen):
            folder = base / part / c
            if not folder.is_dir():
                raise DataError(f"{folder}: missing (Kermany part {part!r})")
            items += [(p, label, kermany_patient(p.name) or p.relative_to(base).as_posix())
                      for p in list_images(folder)]
    return load_files(items, chosen, image_size, where=given, skip_bad=skip_bad,
                      progress=progress, dicom_mode=dicom_mode)


def kermany_split(root: str | os.PathLike[str], image_size: int = 224, *,
                  skip_bad: bool = False, progress: bool = False,
                  dicom_mode: DicomMode = "voi") -> tuple[ImageSet, ImageSet]:
    """``(train, test)`` as published: train (+ val when present) and test."""
    train = load_kermany(root, image_size, skip_bad=skip_bad, progress=progress,
                         dicom_mode=dicom_mode)
    test = load_kermany(root, image_size, parts=["test"], skip_bad=skip_bad, progress=progress,
                        dicom_mode=dicom_mode)
    return train, test


# -- CSV manifest ----------------------------------------------------------------------------------
def _csv_rows(file: Path) -> list[tuple[int, str, str, str]]:
    """``[(line, path, label, patient_id)]`` of a manifest (``patient_id`` "" when absent),
    read by :func:`_read_manifest`."""
    fields, table = _read_manifest(file)
    path_col = "path" if "path" in fields else "file" if "file" in fields else None
    if path_col is None or "label" not in fields:
        raise DataError(f"{file}: needs a header with path,label[,patient_id] (or, "
                        f"multilabel, path,patient_id,labels or path,patient_id,<finding "
                        f"columns>) (found {','.join(fields) or 'none'})")
    rows = []
    for line, row in table:
        path, label = row.get(path_col, ""), row.get("label", "")
        if not path or not label:
            raise DataError(f"{file}, line {line}: empty {path_col} or label")
        rows.append((line, path, label, row.get("patient_id", "")))
    if not rows:
        raise DataError(f"{file}: no rows")
    return rows


def load_csv(file: str | os.PathLike[str], image_size: int = 128, *,
             classes: Sequence[str] | None = None, skip_bad: bool = False,
             progress: bool = False, dicom_mode: DicomMode = "voi") -> ImageSet:
    """Load the images a CSV manifest lists (``path,label[,patient_id]``; ``file`` is accepted
    for ``path``; relative paths start at the CSV's folder).

    Args:
        classes: the labels to load (a subset; rows with other labels are left out); all labels
            when ``None``. Classes are the sorted labels.

    Patient ids, where given, become the groups of the patient-aware split; a row without one is
    its own group. Files that do not exist are refused up front (listed with ``skip_bad``).

    A manifest without a ``label`` column is multilabel (:func:`csv_task`): it is read by
    :func:`load_multilabel_csv`, ``classes`` then selecting findings.
    """
    file = Path(file)
    if csv_task(file) == "multilabel":
        return load_multilabel_csv(file, image_size, findings=classes, skip_bad=skip_bad,
                                   progress=progress)
    rows = _csv_rows(file)
    chosen = select_classes(file, sorted({r[2] for r in rows}), classes)
    index = {c: i for i, c in enumerate(chosen)}
    kept = [r for r in rows if r[2] in index]
    items = [(Path(p) if os.path.isabs(p) else file.parent / p, index[lab], pid or p)
             for _, p, lab, pid in kept]
    missing = [(r[0], r[1]) for r, item in zip(kept, items) if not item[0].is_file()]
    if missing and not skip_bad:
        raise DataError(f"{file}: {len(missing)} listed file(s) do not exist (first: line "
                        f"{missing[0][0]}, {missing[0][1]})")
    return load_files(items, chosen, image_size, where=file, skip_bad=skip_bad, progress=progress,
                      dicom_mode=dicom_mode)


# -- Multilabel CSV manifest ----------------------------------------------------------------------
_PATH_COLUMNS = ("path", "file")
_FIXED_COLUMNS = (*_PATH_COLUMNS, "patient_id")
_CELL = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "": math.nan}
NO_FINDING = "No Finding"


def _read_manifest(file: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The stripped header and ``[(line, row)]`` of a CSV manifest (cells stripped)."""
    if not file.is_file():
        raise DataError(f"{file}: no such CSV file")
    with file.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        reader.fieldnames = fields
        rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None})
                for row in reader]
    return fields, rows


def csv_task(file: str | os.PathLike[str]) -> str:
    """Which kind of manifest ``file`` is, by its header:

    1. a ``label`` column: ``multiclass`` (``path,label[,patient_id]``; other columns ignored);
       with a ``labels`` column too it is ambiguous and refused;
    2. else a ``labels`` column: ``multilabel``, one ``|``-separated list of finding names per
       row (empty or ``No Finding`` = none; this form cannot say "unknown");
    3. else every column but ``path`` / ``file`` and ``patient_id`` is a finding column:
       ``multilabel``, cells 1 / 0 / empty (= unknown).

    A file in form 2 that also has a column of only 1 / 0 / empty cells (a finding column) is
    ambiguous and refused in one line, as is a header with no path column.
    """
    file = Path(file)
    fields, rows = _read_manifest(file)
    if not any(c in fields for c in _PATH_COLUMNS):
        raise DataError(f"{file}: needs a header with path,label[,patient_id] (or, multilabel, "
                        f"path,patient_id,labels or path,patient_id,<finding columns>) (found "
                        f"{','.join(fields) or 'none'})")
    if "label" in fields:
        if "labels" in fields:
            raise DataError(f"{file}: both a 'label' (single-label) and a 'labels' (multilabel) "
                            "column; keep one")
        return "multiclass"
    if "labels" in fields:
        extra = [c for c in fields if c not in (*_FIXED_COLUMNS, "labels")
                 and rows and all(r.get(c, "") in _CELL for _, r in rows)]
        if extra:
            raise DataError(f"{file}: both a 'labels' column and finding columns ({extra[0]!r} "
                            "holds only 1 / 0 / empty); keep one form")
    return "multilabel"


def _finding_columns(file: Path, fields: list[str], rows: list[tuple[int, dict[str, str]]],
                     wanted: Sequence[str] | None) -> tuple[list[str], list[list[float]]]:
    """Findings (column order) and per-row vectors of a manifest with finding columns."""
    names = [c for c in fields if c not in _FIXED_COLUMNS]
    if not names:
        raise DataError(f"{file}: no label column (a single-label manifest needs 'label'; a "
                        "multilabel one 'labels' or one column per finding)")
    chosen = _select_findings(file, names, wanted)
    vectors = []
    for line, row in rows:
        vector = []
        for c in chosen:
            cell = row.get(c, "")
            if cell not in _CELL:
                raise DataError(f"{file}, line {line}: column {c!r} holds {cell!r}; finding "
                                "columns hold 1, 0 or empty (= unknown)")
            vector.append(_CELL[cell])
        vectors.append(vector)
    return chosen, vectors


def _labels_column(file: Path, rows: list[tuple[int, dict[str, str]]],
                   wanted: Sequence[str] | None) -> tuple[list[str], list[list[float]]]:
    """Findings (sorted) and per-row vectors of a manifest with a ``|``-separated column."""
    sets = [{t.strip() for t in row["labels"].split("|") if t.strip()} - {NO_FINDING}
            for _, row in rows]
    names = sorted(set().union(*sets))
    if not names:
        raise DataError(f"{file}: the 'labels' column names no finding")
    chosen = _select_findings(file, names, wanted)
    return chosen, [[1.0 if c in found else 0.0 for c in chosen] for found in sets]


def _select_findings(where: Path, names: list[str], wanted: Sequence[str] | None) -> list[str]:
    """``names`` in their order, filtered by ``wanted`` (each must exist, none twice)."""
    if wanted is None:
        return names
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise DataError(f"{where}: no finding {unknown[0]!r}; findings there: {names}")
    if len(set(wanted)) != len(wanted):
        raise DataError(f"{where}: a finding is selected twice in {list(wanted)}")
    return [c for c in names if c in wanted]


def load_multilabel_csv(file: str | os.PathLike[str], image_size: int = 128, *,
                        findings: Sequence[str] | None = None, skip_bad: bool = False,
                        progress: bool = False) -> ImageSet:
    """Load a multilabel manifest (form 2 or 3 of :func:`csv_task`) as an :class:`ImageSet`
    with ``task="multilabel"``: ``labels`` ``N x K`` float32 (1 / 0 / NaN = unknown),
    ``classes`` the findings (the file's column order; sorted names for a ``labels`` column),
    ``groups`` the patient ids (the path where none). ``findings`` selects columns (every row
    is kept). Relative paths start at the CSV's folder; files that do not exist are refused up
    front (listed in ``skipped`` with ``skip_bad``).
    """
    file = Path(file)
    if csv_task(file) != "multilabel":
        raise DataError(f"{file}: has a 'label' column: a single-label manifest (use load_csv)")
    fields, rows = _read_manifest(file)
    if not rows:
        raise DataError(f"{file}: no rows")
    path_col = "path" if "path" in fields else "file"
    for line, row in rows:
        if not row.get(path_col):
            raise DataError(f"{file}, line {line}: empty {path_col}")
    chosen, vectors = (_labels_column(file, rows, findings) if "labels" in fields
                       else _finding_columns(file, fields, rows, findings))
    given = [row[path_col] for _, row in rows]
    items = [(Path(p) if os.path.isabs(p) else file.parent / p, row.get("patient_id") or p)
             for p, (_, row) in zip(given, rows)]
    missing = [(line, row[path_col]) for (line, row), (path, _) in zip(rows, items)
               if not path.is_file()]
    if missing and not skip_bad:
        raise DataError(f"{file}: {len(missing)} listed file(s) do not exist (first: line "
                        f"{missing[0][0]}, {missing[0][1]})")
    targets = np.asarray(vectors, dtype=np.float32).reshape(len(items), len(chosen))
    return load_multilabel_files(items, targets, chosen, image_size, where=file,
                                 skip_bad=skip_bad, progress=progress)
