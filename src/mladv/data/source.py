"""One entry point for every command's ``--data`` argument (and the experiment's ``data:`` key).

A source string is one of:

- ``phantoms`` / ``phantoms:N``: the synthetic set (N images per class);
- ``covid-radiography:ROOT``: the COVID-19 Radiography Database layout; a class subset in
  brackets, e.g. ``covid-radiography[COVID,Normal,Viral Pneumonia]:ROOT`` (the paper's three);
- ``kermany:ROOT``: the Kermany layout's published training part (train + val);
  ``kermany[test]:ROOT`` its published test part (any of ``train``, ``val``, ``test``);
- ``csv:FILE``: a manifest ``path,label[,patient_id]``; brackets select labels; a manifest
  without ``label`` is multilabel (``path,patient_id,labels`` or finding columns, see
  :func:`mladv.data.presets.csv_task`), brackets then select findings;
- ``nih:ROOT``: NIH ChestX-ray14 as published (``Data_Entry_2017*.csv`` at ROOT, images anywhere
  under it), multilabel over its 14 findings; ``nih[Effusion,Mass]:ROOT`` selects findings;
- ``folder:ROOT``: a plain ImageFolder ``ROOT/<class>/<image>``;
- a bare path: a ``.csv`` file is read as ``csv:``; a folder with an NIH label file as ``nih:``;
  a folder in the COVID-19 Radiography or the Kermany layout as that preset (all three would
  load wrongly as plain ImageFolders: masks as images, ``train``/``test`` as classes); any
  other folder as ``folder:``.

``classes`` (e.g. a checkpoint's) is the class list the result must have: it selects those
classes where a source has more (COVID-19 Radiography, CSV) and is refused if it differs
otherwise.
"""
from __future__ import annotations

import re
from pathlib import Path

from .dicom import DicomMode
from .folder import DataError, ImageSet, load_folder
from .nih import find_label_file, load_nih
from .phantoms import make_phantoms
from .presets import (
    find_kermany_root,
    is_covid_radiography,
    load_covid_radiography,
    load_csv,
    load_kermany,
)

PHANTOMS = "phantoms"
PRESETS = ("covid-radiography", "kermany", "csv", "nih", "folder")
_PREFIX = re.compile(r"^(?P<name>[A-Za-z][\w-]+)(?:\[(?P<sel>[^\]]*)\])?:(?P<path>.+)$")


def parse_source(source: str) -> tuple[str, list[str] | None, str]:
    """``"covid-radiography[COVID,Normal]:/d"`` -> ``("covid-radiography", ["COVID", "Normal"],
    "/d")``; a bare path -> ``("", None, path)``. Unknown prefixes are refused in one line."""
    match = _PREFIX.match(source)
    if match is None or Path(source).exists():
        return "", None, source
    name, sel, path = match.group("name"), match.group("sel"), match.group("path")
    if name not in PRESETS:
        raise DataError(f"{source}: unknown data source {name!r}; valid: {PHANTOMS}[:N], "
                        + ", ".join(f"{p}:PATH" for p in PRESETS) + ", or a folder / .csv path")
    items = None if sel is None else [s.strip() for s in sel.split(",") if s.strip()]
    if items is not None and (not items or name == "folder"):
        raise DataError(f"{source}: " + ("empty selection in [...]" if not items else
                                         "folder: takes no [...] selection"))
    return name, items, path


def _phantom_count(source: str, default: int) -> int:
    if ":" not in source:
        return default
    text = source.split(":", 1)[1]
    if not text.isdigit() or int(text) < 1:
        raise DataError(f"{source}: expected phantoms:N with N a positive whole number of images "
                        f"per class, e.g. phantoms:200")
    return int(text)


def _detect(path: str) -> str:
    """The preset a bare path is read with (see the module doc)."""
    p = Path(path)
    if p.suffix.lower() == ".csv" and p.is_file():
        return "csv"
    if p.is_dir() and find_kermany_root(p) is not None:
        return "kermany"
    if p.is_dir() and find_label_file(p) is not None:
        return "nih"
    if is_covid_radiography(p):
        return "covid-radiography"
    return "folder"


def _merge(source: str, selected: list[str] | None, classes: list[str] | None
           ) -> list[str] | None:
    """The classes to ask a selecting preset for: the bracket selection and ``classes``
    (a checkpoint's) must agree when both are given."""
    if selected is not None and classes is not None and sorted(selected) != sorted(classes):
        raise DataError(f"{source}: selects {sorted(selected)}, expected {list(classes)}")
    return classes if classes is not None else selected


def _check_expected(source: str, data: ImageSet, classes: list[str] | None) -> ImageSet:
    if classes is not None and list(classes) != data.classes:
        raise DataError(f"{source}: classes {data.classes} differ from the expected "
                        f"{list(classes)}")
    return data


def load_source(source: str, image_size: int = 64, *, skip_bad: bool = False,
                classes: list[str] | None = None, n_per_class: int = 200, seed: int = 0,
                progress: bool = False, dicom_mode: DicomMode = "voi") -> ImageSet:
    """Load a source string (module doc) as an :class:`ImageSet` of ``image_size`` squares.

    ``dicom_mode`` (``"voi"`` / ``"raw"``, :mod:`mladv.data.dicom`) applies to DICOM files of the
    ImageFolder, COVID-19 Radiography, Kermany and (single-label) CSV sources.

    Raises:
        DataError: one line naming the source, file or folder for every problem.
    """
    if source == PHANTOMS or source.startswith(PHANTOMS + ":"):
        data = make_phantoms(_phantom_count(source, n_per_class), image_size, seed)
        return _check_expected(source, data, classes)
    name, selected, path = parse_source(source)
    name = name or _detect(path)
    kw = {"skip_bad": skip_bad, "progress": progress}
    if name == "covid-radiography":
        data = load_covid_radiography(path, image_size, classes=_merge(source, selected, classes),
                                      dicom_mode=dicom_mode, **kw)
    elif name == "csv":
        data = load_csv(path, image_size, classes=_merge(source, selected, classes),
                        dicom_mode=dicom_mode, **kw)
    elif name == "nih":
        data = load_nih(path, image_size, findings=_merge(source, selected, classes), **kw)
    elif name == "kermany":
        data = load_kermany(path, image_size, parts=selected, classes=classes,
                            dicom_mode=dicom_mode, **kw)
    else:
        data = load_folder(path, image_size, classes=classes, dicom_mode=dicom_mode, **kw)
    return _check_expected(source, data, classes)
