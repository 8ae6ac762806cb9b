"""Adversarial outputs others can train on: ``AdversarialDataset`` over ``mladv augment`` shards
and ``mladv attack``'s adversarial.pt, and the 16-bit PNG export (``mladv export``)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from mladv.attacks import fgsm
from mladv.augment import craft_shards, load_shards
from mladv.cli import main
from mladv.crafting import save_adversarial
from mladv.data import (
    AdversarialDataset,
    DataError,
    export_pngs,
    load_folder,
    load_source,
    make_phantoms,
    read_image_tensor,
)
from mladv.data.adversarial import shard_file
from mladv.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clean():
    data = make_phantoms(5, 16, seed=2)  # 15 images, 3 classes
    data.groups = [f"patient{i // 2}" for i in range(len(data))]  # patient ids to carry along
    data.paths = [f"/src/{c}/img{i}.png" for i, c in enumerate(data.labels.tolist())]
    return data


@pytest.fixture(scope="module")
def shards(clean, tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("aug")
    craft_shards(fgsm(build_model("tiny_cnn", 3).eval(), eps=8 / 255), clean, out, shard_size=6,
                 batch_size=4, progress=False)  # 3 shards: 6 + 6 + 3
    return out


def test_dataset_over_shards_yields_image_label_pairs(shards, clean):
    ds = AdversarialDataset(shards)
    merged = load_shards(shards)  # mladv's own reader of the same folder
    assert len(ds) == 15 and ds.classes == clean.classes
    assert ds.class_to_idx == {c: i for i, c in enumerate(clean.classes)}
    assert ds.targets == clean.labels.tolist() and ds.groups == clean.groups
    assert ds.paths == clean.paths
    for i in (0, 5, 6, 14, -1):
        image, label = ds[i]
        assert isinstance(label, int) and label == merged.labels[i].item()
        assert image.shape == (1, 16, 16) and torch.equal(image, merged.images[i])
    delta = torch.stack([ds[i][0] for i in range(15)]) - clean.images
    assert 0 < delta.abs().max() <= 8 / 255 + 1e-6  # really the adversarial copies
    with pytest.raises(IndexError, match="index 15 out of range"):
        ds[15]


def test_transforms_and_a_dataloader_like_torchvision(shards, clean):
    ds = AdversarialDataset(shards, transform=lambda x: x * 2, target_transform=lambda y: y + 10)
    image, label = ds[3]
    assert torch.equal(image, AdversarialDataset(shards)[3][0] * 2) and label == ds.targets[3] + 10
    plain = AdversarialDataset(shards)
    clean_ds = [(x, int(y)) for x, y in zip(clean.images, clean.labels)]  # as ImageFolder gives
    batches = list(DataLoader(ConcatDataset([clean_ds, plain]), batch_size=8, shuffle=True,
                              generator=torch.Generator().manual_seed(0)))
    assert sum(len(y) for _, y in batches) == 30 and batches[0][0].shape[1:] == (1, 16, 16)
    assert torch.equal(plain.to_imageset().images, load_shards(shards).images)


def test_dataset_over_attack_output(tmp_path, clean):
    adv = (clean.images + 0.01).clamp(0, 1)
    save_adversarial(tmp_path / "atk" / "adversarial.pt", adv, clean.labels, paths=clean.paths,
                     classes=clean.classes, meta={"attack": "test"})
    for src in (tmp_path / "atk", tmp_path / "atk" / "adversarial.pt"):
        ds = AdversarialDataset(src)
        assert len(ds) == 15 and ds.classes == clean.classes
        assert torch.equal(ds[7][0], adv[7]) and ds[7][1] == clean.labels[7].item()
        assert ds.groups == clean.paths  # no patient ids in attack output: the source path


def test_missing_and_damaged_shards_say_what_to_do(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    (copy / shard_file(1)).write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        AdversarialDataset(copy)
    msg = str(info.value)  # the experiment reads its adv/ shards through here too
    assert msg.startswith(f"{copy / shard_file(1)}: cannot read augment shard (")
    assert msg.endswith("delete this shard and rerun the same command ('mladv augment', or "
                        "'mladv experiment' for its adv/ folders)")
    (copy / shard_file(1)).unlink()
    with pytest.raises(DataError) as info:
        AdversarialDataset(copy)
    assert str(info.value) == (f"{copy}: 1 of 3 shards missing (first: shard-00001.pt); rerun "
                               "the same command to finish them ('mladv augment', or 'mladv "
                               "experiment' for its adv/ folders)")
    with pytest.raises(DataError, match="neither 'mladv augment' output"):
        AdversarialDataset(tmp_path)


def test_fingerprint_is_the_content_hash_of_fingerprint_py(shards, tmp_path):
    from mladv.fingerprint import data_sha1

    ds = AdversarialDataset(shards)
    # the formula export.json files written before it moved here recorded, image by image
    h = hashlib.sha1(json.dumps(ds.classes).encode())
    for i in range(len(ds)):
        h.update(ds.image(i).numpy().tobytes())
    h.update(np.asarray(ds.targets, dtype=np.int64).tobytes())
    assert ds.fingerprint() == h.hexdigest()
    merged = ds.to_imageset()  # without the class names it is data_sha1 of the same content
    names = json.dumps(ds.classes).encode()
    assert hashlib.sha1(names + merged.images.numpy().tobytes()
                        + merged.labels.numpy().tobytes()).hexdigest() == ds.fingerprint()
    assert data_sha1(merged) == hashlib.sha1(merged.images.numpy().tobytes()
                                             + merged.labels.numpy().tobytes()).hexdigest()
    save_adversarial(tmp_path / "same" / "adversarial.pt", merged.images, merged.labels,
                     paths=merged.paths, classes=merged.classes, meta={})
    assert AdversarialDataset(tmp_path / "same").fingerprint() == ds.fingerprint()  # content
    save_adversarial(tmp_path / "renamed" / "adversarial.pt", merged.images, merged.labels,
                     paths=merged.paths, classes=merged.classes[::-1], meta={})
    assert AdversarialDataset(tmp_path / "renamed").fingerprint() != ds.fingerprint()


# -- 16-bit PNG export --------------------------------------------------------------------------
def _by_index(data):
    """Index in the source (the file-name prefix) of each image load_folder returned."""
    return [int(Path(p).name[:6]) for p in data.paths]


def test_export_round_trip_is_within_one_16_bit_step(shards, clean, tmp_path):
    ds = AdversarialDataset(shards)
    summary = export_pngs(shards, tmp_path / "png")
    assert summary == {"out": str(tmp_path / "png"), "n": 15, "written": 15, "kept": 0}
    back = load_folder(tmp_path / "png", 16)  # mladv's own loader, no resampling at 16 px
    idx = _by_index(back)
    assert sorted(idx) == list(range(15)) and back.classes == ds.classes
    want = torch.stack([ds.image(i) for i in idx])
    assert (back.images - want).abs().max() <= 0.5 / 65535 + 1e-7
    # the perturbation survives: 8-bit PNG would move it by up to 0.5/255
    delta_back = back.images - clean.images[idx]
    delta = want - clean.images[idx]
    assert (delta_back - delta).abs().max() < 1 / 65535
    assert ((want * 255).round() / 255 - want).abs().max() > 100 / 65535
    assert back.labels.tolist() == [ds.targets[i] for i in idx]
    assert back.groups == [ds.groups[i] for i in idx]  # patients carried by manifest.csv
    assert load_source(str(tmp_path / "png"), 16).classes == ds.classes


def test_export_reads_in_torchvision_imagefolder(shards, tmp_path):
    from torchvision.datasets import ImageFolder

    export_pngs(shards, tmp_path / "png")
    tv = ImageFolder(str(tmp_path / "png"), loader=read_image_tensor)
    ds = AdversarialDataset(shards)
    assert tv.classes == ds.classes and len(tv) == 15
    image, label = tv[4]
    i = int(Path(tv.samples[4][0]).name[:6])
    assert label == ds.targets[i] and (image - ds.image(i)).abs().max() <= 0.5 / 65535 + 1e-7


def test_export_resumes_and_refuses_other_data(shards, clean, tmp_path):
    out = tmp_path / "png"
    export_pngs(shards, out)
    files = sorted(out.rglob("*.png"))
    files[3].unlink()
    os.utime(files[0], (1, 1))  # an old timestamp: a rewrite would change it
    assert export_pngs(shards, out)["written"] == 1
    assert files[3].is_file() and files[0].stat().st_mtime == 1
    save_adversarial(tmp_path / "other" / "adversarial.pt", clean.images, clean.labels,
                     paths=clean.paths, classes=clean.classes, meta={})
    with pytest.raises(DataError, match=r"png: holds an export of other images"):
        export_pngs(tmp_path / "other", out)
    record = json.loads((out / "export.json").read_text())
    assert record["sha1"] == AdversarialDataset(shards).fingerprint() and record["format"] == 1
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"busy: exists and is not an mladv export"):
        export_pngs(shards, tmp_path / "busy")


def test_export_command(shards, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(shards), str(tmp_path / "png")])
    assert exc.value.code == 0
    assert "exported 15 images" in capsys.readouterr().out
    assert len(list((tmp_path / "png").rglob("*.png"))) == 15
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "nothing"), str(tmp_path / "png2")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "nothing: neither 'mladv augment' output" in err
    assert "Traceback" not in err and not (tmp_path / "png2").exists()


def test_export_keeps_full_precision_values(tmp_path):
    """Every 16-bit level maps back to itself: round(65535 x) / 65535 is exact."""
    levels = torch.arange(0, 65536, dtype=torch.float64).reshape(1, 1, 256, 256) / 65535
    images = torch.cat([levels, 1 - levels]).float()
    save_adversarial(tmp_path / "a" / "adversarial.pt", images, torch.tensor([0, 1]),
                     paths=["", ""], classes=["x", "y"], meta={})
    export_pngs(tmp_path / "a", tmp_path / "png")
    back = load_folder(tmp_path / "png", 256)
    assert torch.equal(back.images[0], images[0]) and np.isclose(back.images.max(), 1.0)
