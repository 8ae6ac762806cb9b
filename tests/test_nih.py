"""The NIH ChestX-ray14 layout (``nih:ROOT``) and the multilabel CSV manifest: exact targets on
tiny generated trees, and the real nih14 sample's published counts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mladv.data import DataError, load_source
from mladv.data.nih import load_nih
from nih_helpers import require_nih14

NAN = float("nan")
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position")
# (file, folder, grey value, Finding Labels, Patient ID)
ROWS = [("00000001_000.png", "images_001", 10, "Cardiomegaly|Effusion", "1"),
        ("00000001_001.png", "images_001", 60, "No Finding", "1"),
        ("00000002_000.png", "images_002", 120, "Hernia", "2"),
        ("00000004_000.png", None, 0, "Pneumonia", "4"),  # listed, image absent
        ("00000003_000.png", "images_002", 200, "Mass|Nodule|Effusion", "3")]
# NIH's order: Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion, Emphysema, Fibrosis,
# Hernia, Infiltration, Mass, Nodule, Pleural_Thickening, Pneumonia, Pneumothorax
EXPECTED = [[0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0]]


def _png(path, value, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def nih_root(tmp_path):
    root = tmp_path / "nih"
    lines = [HEADER]
    for name, folder, value, labels, patient in ROWS:
        if folder is not None:
            _png(root / folder / "images" / name, value)
        lines.append(f"{name},{labels},0,{patient},50,M,PA")
    root.mkdir(exist_ok=True)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return root


def test_nih_layout_gives_the_hand_written_targets(nih_root):
    with pytest.warns(UserWarning, match="1 of 5 rows"):
        data = load_nih(nih_root, 8, cache=False)
    assert data.task == "multilabel" and data.labels.dtype == torch.float32
    assert data.labels.tolist() == EXPECTED
    assert data.classes[:2] == ["Atelectasis", "Cardiomegaly"] and len(data.classes) == 14


def test_nih_groups_are_patient_ids_and_images_follow_the_rows(nih_root):
    with pytest.warns(UserWarning):
        data = load_nih(nih_root, 8, cache=False)
    assert data.groups == ["1", "1", "2", "3"]
    assert [round(float(v) * 255) for v in data.images.mean(dim=(1, 2, 3))] == [10, 60, 120, 200]
    assert data.paths[2].endswith("images_002/images/00000002_000.png")


def test_nih_row_without_image_is_counted_and_listed(nih_root):
    with pytest.warns(UserWarning, match=r"1 of 5 rows .* no image .*00000004_000\.png"):
        data = load_nih(nih_root, 8, cache=False)
    assert len(data) == 4
    assert [name for name, _ in data.skipped] == ["00000004_000.png"]


def test_nih_findings_selection_keeps_every_image_in_nih_order(nih_root):
    with pytest.warns(UserWarning):
        data = load_source(f"nih[Mass,Effusion]:{nih_root}", 8)
    assert data.classes == ["Effusion", "Mass"]
    assert data.labels.tolist() == [[1, 0], [0, 0], [0, 0], [1, 1]]


def test_nih_bare_folder_is_detected(nih_root):
    with pytest.warns(UserWarning):
        assert load_source(str(nih_root), 8).task == "multilabel"


def test_nih_unknown_finding_selection_is_one_line(nih_root):
    with pytest.raises(DataError, match="no NIH finding 'Masses'; findings: ") as info:
        load_source(f"nih[Masses]:{nih_root}", 8)
    assert "\n" not in str(info.value)


def test_nih_missing_label_file_is_one_line_naming_root(tmp_path):
    _png(tmp_path / "images" / "a.png", 5)
    with pytest.raises(DataError, match=r"no NIH label file Data_Entry_2017\*\.csv") as info:
        load_nih(tmp_path, 8)
    assert str(info.value).startswith(str(tmp_path)) and "\n" not in str(info.value)


def test_nih_unknown_finding_in_label_file_names_the_line(nih_root):
    file = nih_root / "Data_Entry_2017_v2020.csv"
    file.write_text(file.read_text() + "00000009_000.png,Cardiomegally,0,9,50,M,PA\n")
    with pytest.raises(DataError, match=r"line 7: unknown finding 'Cardiomegally'"):
        load_nih(nih_root, 8)


def test_nih_same_image_name_twice_is_refused(nih_root):
    _png(nih_root / "copy" / "00000002_000.png", 1)
    with pytest.raises(DataError, match="00000002_000.png is found twice"):
        load_nih(nih_root, 8)


# -- multilabel CSV manifest --------------------------------------------------------------------
@pytest.fixture()
def images(tmp_path):
    for i, v in enumerate((20, 90, 160)):
        _png(tmp_path / "img" / f"{i}.png", v)
    return tmp_path


def _same(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == y
               for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def test_csv_finding_columns_read_one_zero_and_empty_as_unknown(images):
    file = images / "m.csv"
    file.write_text("path,patient_id,Effusion,Mass\nimg/0.png,p1,1,\nimg/1.png,p1,0,1\n"
                    "img/2.png,,,0\n")
    data = load_source(str(file), 8)
    assert data.task == "multilabel" and data.classes == ["Effusion", "Mass"]
    assert _same(data.labels.tolist(), [[1, NAN], [0, 1], [NAN, 0]])
    assert data.groups == ["p1", "p1", "img/2.png"]


def test_csv_labels_column_is_split_on_bars_with_sorted_findings(images):
    file = images / "m.csv"
    file.write_text("path,patient_id,labels\nimg/0.png,a,Mass|Effusion\nimg/1.png,b,No Finding\n"
                    "img/2.png,c,Nodule\n")
    data = load_source(f"csv:{file}", 8)
    assert data.classes == ["Effusion", "Mass", "Nodule"]
    assert data.labels.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_csv_selection_picks_finding_columns_and_keeps_every_row(images):
    file = images / "m.csv"
    file.write_text("path,patient_id,Effusion,Mass\nimg/0.png,p1,1,0\nimg/1.png,p2,0,1\n")
    data = load_source(f"csv[Mass]:{file}", 8)
    assert data.classes == ["Mass"] and data.labels.tolist() == [[0], [1]]


@pytest.mark.parametrize(("text", "message"), [
    ("path,label,labels\nimg/0.png,a,b\n", "both a 'label' .* and a 'labels'"),
    ("path,patient_id,labels,Mass\nimg/0.png,a,Mass,1\n", "both a 'labels' column and finding"),
    ("path,patient_id,Mass\nimg/0.png,a,yes\n", r"line 2: column 'Mass' holds 'yes'"),
    ("path,patient_id\nimg/0.png,a\n", "no label column"),
])
def test_ambiguous_or_bad_multilabel_csv_is_one_line(images, text, message):
    file = images / "m.csv"
    file.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_source(str(file), 8)
    assert str(info.value).startswith(str(file)) and "\n" not in str(info.value)


# -- the real sample -----------------------------------------------------------------------------
README_COUNTS = {"Pneumonia": 354, "Infiltration": 195, "Atelectasis": 142, "Effusion": 124,
                 "Consolidation": 79, "Edema": 78, "Nodule": 73, "Mass": 66,
                 "Pleural_Thickening": 60, "Cardiomegaly": 52, "Fibrosis": 50, "Pneumothorax": 39,
                 "Emphysema": 35, "Hernia": 17}


@pytest.fixture(scope="module")
def nih14():
    return load_source(f"nih:{require_nih14()}", 32)


def test_real_nih14_loads_1073_images_of_858_patients(nih14):
    assert tuple(nih14.images.shape) == (1073, 1, 32, 32) and len(set(nih14.groups)) == 858


def test_real_nih14_counts_per_finding_match_its_readme(nih14):
    counts = dict(zip(nih14.classes, nih14.labels.sum(dim=0).int().tolist(), strict=True))
    assert counts == README_COUNTS
    assert int((nih14.labels.sum(dim=1) == 0).sum()) == 383  # No Finding

