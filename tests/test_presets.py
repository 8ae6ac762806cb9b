"""The public data sets' published layouts (fixtures generated here, never copied data) and the
CSV manifest, through their loaders and through ``load_source``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mladv.data import (
    PAPER_CLASSES,
    DataError,
    kermany_split,
    load_covid_radiography,
    load_csv,
    load_folder,
    load_kermany,
    load_source,
    split_imageset,
)
from mladv.data.presets import kermany_patient

COVID = {"COVID": 40, "Lung_Opacity": 80, "Normal": 120, "Viral Pneumonia": 160}  # grey levels


def _img(path, value, size=(24, 20), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(value).integers(-3, 4, size[::-1])
    Image.fromarray(np.clip(value + noise, 0, 255).astype(np.uint8)).save(path, format=fmt)
    return path


@pytest.fixture()
def covid_root(tmp_path):
    """COVID-19_Radiography_Dataset/<class>/{images,masks}/<class>-<i>.png, plus the metadata
    files the Kaggle archive has beside the class folders."""
    root = tmp_path / "COVID-19_Radiography_Dataset"
    for c, value in COVID.items():
        for i in range(1, 4):
            _img(root / c / "images" / f"{c}-{i}.png", value)
            _img(root / c / "masks" / f"{c}-{i}.png", 255)  # white masks: must never load
        (root / f"{c}.metadata.xlsx").write_bytes(b"PK\x03\x04 not read")
    (root / "README.md.txt").write_text("COVID-19 Radiography Database")
    return root


def _class_means(data):
    return {c: data.images[data.labels == i].mean().item() * 255
            for i, c in enumerate(data.classes)}


def test_covid_radiography_loads_images_not_masks(covid_root):
    data = load_covid_radiography(covid_root, 16)
    assert data.classes == sorted(COVID) and len(data) == 12
    assert all("/images/" in p for p in data.paths)
    for c, mean in _class_means(data).items():
        assert abs(mean - COVID[c]) < 2, c  # each label carries its own class's images


def test_covid_radiography_class_subset_as_the_paper(covid_root):
    data = load_covid_radiography(covid_root, 16, classes=PAPER_CLASSES)
    assert data.classes == ["COVID", "Normal", "Viral Pneumonia"] and len(data) == 9
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert abs(_class_means(data)["Normal"] - COVID["Normal"]) < 2
    same = load_source(f"covid-radiography[COVID,Normal,Viral Pneumonia]:{covid_root}", 16)
    assert torch.equal(same.images, data.images) and same.classes == data.classes


def test_covid_radiography_is_detected_from_a_bare_path(covid_root):
    data = load_source(str(covid_root), 16)
    assert data.classes == sorted(COVID) and len(data) == 12
    assert all("/masks/" not in p for p in data.paths)
    # a checkpoint's classes select the subset it was trained on
    ckpt = load_source(str(covid_root), 16, classes=["COVID", "Normal", "Viral Pneumonia"])
    assert ckpt.classes == ["COVID", "Normal", "Viral Pneumonia"] and len(ckpt) == 9


def test_covid_radiography_bad_selection_is_one_line(covid_root):
    with pytest.raises(DataError, match=r"no class 'Pneumonia'; classes there: \['COVID'"):
        load_source(f"covid-radiography[COVID,Pneumonia]:{covid_root}", 16)
    with pytest.raises(DataError, match=r"selects \['COVID', 'Normal'\], expected"):
        load_source(f"covid-radiography[COVID,Normal]:{covid_root}", 16,
                    classes=list(PAPER_CLASSES))
    with pytest.raises(DataError, match="not the COVID-19 Radiography Database layout"):
        load_source(f"covid-radiography:{covid_root / 'COVID'}", 16)


def test_covid_radiography_splits_stratified(covid_root):
    train, test = split_imageset(load_source(str(covid_root), 16), test_size=0.34, seed=0)
    assert torch.bincount(test.labels).tolist() == [1, 1, 1, 1] and len(train) == 8


# -- Kermany ----------------------------------------------------------------------------------
KERMANY = {
    "train": {"NORMAL": ["IM-0001-0001", "IM-0001-0002", "NORMAL2-IM-0001-0001", "IM-0005-0001"],
              "PNEUMONIA": ["person1_bacteria_1", "person1_virus_7", "person2_bacteria_3",
                            "person3_virus_4"]},
    "val": {"NORMAL": ["NORMAL2-IM-1427-0001"], "PNEUMONIA": ["person1946_bacteria_4874"]},
    "test": {"NORMAL": ["IM-0099-0001", "NORMAL2-IM-0100-0001"],
             "PNEUMONIA": ["person100_bacteria_475", "person101_virus_187"]},
}


@pytest.fixture()
def kermany_root(tmp_path):
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (as the archive unpacks)."""
    root = tmp_path / "chest_xray"
    for part, classes in KERMANY.items():
        for c, names in classes.items():
            for name in names:
                _img(root / part / c / f"{name}.jpeg", 60 if c == "NORMAL" else 180, fmt="JPEG")
    return root


def test_kermany_patient_ids_from_published_names():
    assert kermany_patient("person12_virus_39.jpeg") == "person12"
    assert kermany_patient("IM-0115-0001.jpeg") == "IM-0115"
    assert kermany_patient("NORMAL2-IM-0007-0001.jpeg") == "NORMAL2-IM-0007"
    assert kermany_patient("scan.jpeg") is None


def test_kermany_split_keeps_the_published_parts(kermany_root):
    train, test = kermany_split(kermany_root, 16)
    assert train.classes == test.classes == ["NORMAL", "PNEUMONIA"]
    assert len(train) == 10 and len(test) == 4  # train + val, and test
    assert all("/test/" in p for p in test.paths)
    assert not any("/test/" in p for p in train.paths)
    means = _class_means(train)
    assert means["NORMAL"] < 70 and means["PNEUMONIA"] > 170


def test_kermany_through_load_source(kermany_root, tmp_path):
    train = load_source(f"kermany:{kermany_root}", 16)
    test = load_source(f"kermany[test]:{kermany_root}", 16)
    assert (len(train), len(test)) == (10, 4)
    val = load_source(f"kermany[val]:{tmp_path}", 16)  # the folder holding chest_xray/ works
    assert len(val) == 2
    bare = load_source(str(kermany_root), 16)  # detected: not classes train/test/val
    assert bare.classes == ["NORMAL", "PNEUMONIA"] and torch.equal(bare.images, train.images)
    with pytest.raises(DataError, match=r"Kermany parts are \['train', 'val', 'test'\], got"):
        load_source(f"kermany[dev]:{kermany_root}", 16)
    with pytest.raises(DataError, match="not the Kermany layout"):
        load_kermany(kermany_root / "train", 16)


def test_kermany_training_part_splits_by_patient(kermany_root):
    train = load_kermany(kermany_root, 16)
    assert train.groups.count("person1") == 2 and train.groups.count("IM-0001") == 2
    for seed in range(5):
        a, b = split_imageset(train, test_size=0.3, seed=seed)
        assert not set(a.groups) & set(b.groups)


# -- CSV manifest -------------------------------------------------------------------------------
@pytest.fixture()
def csv_file(tmp_path):
    for i in range(4):
        _img(tmp_path / "imgs" / f"n{i}.png", 50)
        _img(tmp_path / "imgs" / f"t{i}.png", 150)
        _img(tmp_path / "imgs" / f"c{i}.png", 250)
    outside = _img(tmp_path / "elsewhere" / "abs.png", 150)
    rows = ["path,label,patient_id"]
    rows += [f"imgs/n{i}.png,normal,p{i // 2}" for i in range(4)]
    rows += [f"imgs/t{i}.png,tb,q{i // 2}" for i in range(4)]
    rows += [f"imgs/c{i}.png,covid,r{i}" for i in range(4)]
    rows += [f"{outside},tb,"]  # absolute path, no patient id
    (tmp_path / "data").mkdir()
    file = tmp_path / "data" / "list.csv"
    file.write_text("\n".join(r.replace("imgs/", "../imgs/") for r in rows) + "\n")
    return file


def test_csv_manifest_loads_labels_and_patients(csv_file):
    data = load_csv(csv_file, 16)
    assert data.classes == ["covid", "normal", "tb"] and len(data) == 13
    assert torch.bincount(data.labels).tolist() == [4, 4, 5]
    means = _class_means(data)
    assert means["normal"] < means["tb"] < means["covid"]
    assert [g for g, y in zip(data.groups, data.labels.tolist()) if y == 0] == ["r0", "r1", "r2",
                                                                               "r3"]
    assert data.groups.count("p0") == 2 and data.groups[-1].endswith("abs.png")
    for seed in range(5):
        a, b = split_imageset(data, test_size=0.3, seed=seed)
        assert not set(a.groups) & set(b.groups)


def test_csv_through_load_source_and_label_selection(csv_file):
    assert len(load_source(str(csv_file), 16)) == 13
    two = load_source(f"csv[normal,tb]:{csv_file}", 16)
    assert two.classes == ["normal", "tb"] and len(two) == 9


def test_csv_problems_are_one_line(csv_file, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("image,class\nx.png,a\n")
    with pytest.raises(DataError, match=r"bad\.csv: needs a header with path,label"):
        load_csv(bad, 16)
    bad.write_text("path,label\nx.png,\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 2: empty path or label"):
        load_csv(bad, 16)
    csv_file.write_text(csv_file.read_text() + "../imgs/gone.png,tb,z\n")
    with pytest.raises(DataError, match=r"list\.csv: 1 listed file\(s\) do not exist.*gone\.png"):
        load_csv(csv_file, 16)
    with pytest.warns(UserWarning, match="skipped 1"):
        assert len(load_csv(csv_file, 16, skip_bad=True)) == 13
    with pytest.raises(DataError, match=r"nope\.csv: no such CSV file"):
        load_source(f"csv:{tmp_path / 'nope.csv'}", 16)


def test_cxr3_manifest_as_csv_equals_the_folder(cxr3_root):
    via_csv = load_source(f"csv:{cxr3_root / 'manifest.csv'}", 32)
    folder = load_folder(cxr3_root, 32)
    assert via_csv.classes == folder.classes
    order = {p: i for i, p in enumerate(folder.paths)}
    idx = [order[p] for p in via_csv.paths]
    assert torch.equal(via_csv.images, folder.images[idx])
    assert via_csv.groups == [folder.groups[i] for i in idx]


def test_plain_folders_are_not_mistaken_for_a_preset(cxr3_root):
    from mladv.data.source import _detect

    assert _detect(str(cxr3_root)) == "folder"
    assert _detect(str(cxr3_root / "manifest.csv")) == "csv"


def test_an_existing_path_with_a_colon_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for c, v in (("a", 30), ("b", 200)):
        _img(tmp_path / "csv:scans" / c / "x.png", v)
    assert load_source("csv:scans", 16).classes == ["a", "b"]  # a folder, not csv:FILE
