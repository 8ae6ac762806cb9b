"""Export adversarial images to an ImageFolder of 16-bit PNGs, for pipelines that read files.

8-bit PNG would round an 8/255 perturbation away; 16 bits keep every image within 0.5/65535 of
its float32 value: ``v16 = round(65535 x)``, read back as ``v16 / 65535`` by
:func:`mladv.data.read_image` (and so by ``load_source`` / ``load_folder``, and by
``torchvision.datasets.ImageFolder(root, loader=mladv.data.read_image_tensor)``).

Layout written: ``OUT/<class>/<index>_<source name>.png``, ``OUT/manifest.csv``
(``file,label,patient_id,source``: the patient groups :func:`mladv.data.load_folder` reads) and
``OUT/export.json`` (what was exported; ``sha1`` is the data's content fingerprint,
:meth:`AdversarialDataset.fingerprint`). Each file is written atomically; a rerun skips the files
already there, so an interrupted export resumes. A folder holding another export is refused.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from ..utils import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    output_dir,
    progress_bar,
)
from .adversarial import AdversarialDataset
from .folder import DataError

EXPORT_FILE = "export.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def to_uint16(image: Tensor) -> np.ndarray:
    """``1 x H x W`` float in [0, 1] -> ``H x W`` uint16, ``round(65535 x)`` (clipped to [0, 1])."""
    arr = image.detach().cpu().float().numpy()[0]
    return np.asarray(np.round(np.clip(arr, 0.0, 1.0) * 65535.0), dtype=np.uint16)


def write_png16(image: Tensor, path: str | os.PathLike[str]) -> None:
    """Write a ``1 x H x W`` [0, 1] image as a 16-bit grayscale PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint16(image)).save(tmp, format="PNG")


def file_name(index: int, source: str) -> str:
    """``000012_patient-3.png``: the index keeps names unique and in order; the source file's
    stem (made filesystem-safe) says where the image came from."""
    stem = _UNSAFE.sub("_", Path(source).stem)[:80].strip("._") if source else ""
    return f"{index:06d}_{stem}.png" if stem else f"{index:06d}.png"


def _check_classes(classes: list[str]) -> None:
    bad = [c for c in classes if not c or c in (".", "..") or "/" in c or os.sep in c]
    if bad:
        raise DataError(f"class name {bad[0]!r} cannot be a folder name")


def _claim(out: Path, record: dict[str, Any]) -> None:
    """Write ``out/export.json`` or check that the one there records the same export."""
    path = out / EXPORT_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("sha1") != record["sha1"]:
            raise DataError(f"{out}: holds an export of other images ({old.get('source', '?')}); "
                            f"use another output folder or delete this one")
        return
    if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise DataError(f"{out}: exists and is not an mladv export; choose an empty or new folder")
    atomic_write_json(record, path)


def _manifest(rows: list[tuple[str, str, str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label", "patient_id", "source"])
    writer.writerows(rows)
    return buf.getvalue()


def export_pngs(src: str | os.PathLike[str] | AdversarialDataset, out: str | os.PathLike[str],
                *, progress: bool = False) -> dict[str, Any]:
    """Export ``src`` (``mladv augment`` or ``mladv attack`` output, or an
    :class:`AdversarialDataset`) to ``out`` as 16-bit PNGs (module doc). One channel only.

    Returns ``{"out", "n", "written", "kept"}``: files written now and found from an earlier run.
    """
    data = src if isinstance(src, AdversarialDataset) else AdversarialDataset(src)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    channels = int(data.image(0).shape[0])
    if channels != 1:
        raise DataError(f"{data.root}: images have {channels} channels; the 16-bit PNG export "
                        f"writes grayscale (1 channel)")
    if data.task == "multilabel":  # before the folder is claimed
        raise DataError(f"{data.root}: multilabel targets; the PNG export writes one class "
                        "folder per image (use the .pt shards with AdversarialDataset)")
    _check_classes(data.classes)
    # locked (a second export into OUT is refused), stale .tmp files of a killed export cleaned
    with output_dir(out, option="export folder"):
        _claim(out, {"format": 1, "source": str(data.root), "n": len(data),
                     "classes": data.classes, "sha1": data.fingerprint()})
        return _write(data, out, progress)


def _write(data: AdversarialDataset, out: Path, progress: bool) -> dict[str, Any]:
    rows, written = [], 0
    bar = progress_bar(len(data), "export", "img", enabled=progress)
    try:
        for i in range(len(data)):
            label = data.classes[data.targets[i]]
            rel = f"{label}/{file_name(i, data.paths[i])}"
            if not (out / rel).is_file():
                write_png16(data.image(i), out / rel)
                written += 1
            rows.append((rel, label, data.groups[i], data.paths[i]))
            bar.update(1)
    finally:
        bar.close()
    atomic_write_text(_manifest(rows), out / "manifest.csv")
    return {"out": str(out), "n": len(data), "written": written, "kept": len(data) - written}
