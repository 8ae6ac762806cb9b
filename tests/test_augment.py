"""Sharded, resumable adversarial augmentation (mladv.augment and ``mladv augment``)."""
from __future__ import annotations

import json
import re

import pytest
import torch

import mladv.augment as augment_mod
from mladv.attacks import MLAdv, pgd
from mladv.augment import (
    craft_shards,
    derive_seed,
    load_shards,
    read_manifest,
    shard_ranges,
    shards_for_rank,
    union,
)
from mladv.cli import main
from mladv.data import make_phantoms
from mladv.data.adversarial import shard_file
from mladv.models import build_model, save_checkpoint


@pytest.fixture(scope="module")
def small_set():
    return make_phantoms(7, 16, seed=3)  # 21 images, 3 classes


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("tiny_cnn", 3).eval()


def _attack(model):
    return MLAdv(model, eps=8 / 255, steps=2, seed=0)


def test_shard_ranges_cover_every_image_once():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(0, 4) == []
    with pytest.raises(ValueError, match="shard_size"):
        shard_ranges(10, 0)


def test_ranks_partition_the_shards():
    parts = [shards_for_rank(11, r, 3) for r in range(3)]
    assert sorted(k for p in parts for k in p) == list(range(11))
    assert shards_for_rank(5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="rank"):
        shards_for_rank(5, 2, 2)


def test_derived_seeds_depend_only_on_their_keys():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, s, 0) for s in range(50)}) == 50


def test_shards_keep_true_labels_and_the_budget(tmp_path, small_set, tiny_model):
    craft_shards(_attack(tiny_model), small_set, tmp_path, shard_size=8, batch_size=4,
                 progress=False)
    adv = load_shards(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("shard-*.pt")) == [shard_file(k) for k in range(3)]
    assert torch.equal(adv.labels, small_set.labels) and adv.paths == small_set.paths
    assert adv.images.dtype == torch.float32 and adv.images.shape == small_set.images.shape
    delta = (adv.images - small_set.images).abs()
    assert delta.max() <= 8 / 255 + 1e-6 and delta.max() > 1 / 255  # perturbed, within eps
    assert read_manifest(tmp_path)["num_shards"] == 3


def test_interrupted_run_resumes_to_identical_output(tmp_path, small_set, tiny_model, monkeypatch):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    craft_shards(_attack(tiny_model), small_set, full, shard_size=5, batch_size=4, progress=False)

    real, calls = augment_mod.craft_shard, []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(augment_mod, "craft_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        craft_shards(_attack(tiny_model), small_set, resumed, shard_size=5, batch_size=4,
                     progress=False)
    monkeypatch.setattr(augment_mod, "craft_shard", real)
    done = sorted(p.name for p in resumed.glob("shard-*.pt"))
    assert done == [shard_file(0), shard_file(1)]  # no partial shard under a final name
    assert not list(resumed.glob(".*tmp"))
    first_mtime = (resumed / shard_file(0)).stat().st_mtime_ns
    craft_shards(_attack(tiny_model), small_set, resumed, shard_size=5, batch_size=4,
                 progress=False)
    assert (resumed / shard_file(0)).stat().st_mtime_ns == first_mtime  # skipped, not redone
    a, b = load_shards(full), load_shards(resumed)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_two_ranks_write_what_one_process_writes(tmp_path, small_set, tiny_model):
    one, two = tmp_path / "one", tmp_path / "two"
    craft_shards(pgd(tiny_model, steps=2), small_set, one, shard_size=4, seed=5, progress=False)
    for rank in (1, 0):  # order must not matter
        craft_shards(pgd(tiny_model, steps=2), small_set, two, shard_size=4, seed=5, rank=rank,
                     world_size=2, progress=False)
    assert torch.equal(load_shards(one).images, load_shards(two).images)


def test_folder_of_another_job_is_refused(tmp_path, small_set, tiny_model):
    craft_shards(pgd(tiny_model, steps=1), small_set, tmp_path, shard_size=8, progress=False)
    with pytest.raises(ValueError, match="different job.*attack"):
        craft_shards(pgd(tiny_model, eps=4 / 255, steps=1), small_set, tmp_path, shard_size=8,
                     progress=False)
    with pytest.raises(ValueError, match="different job.*seed"):
        craft_shards(pgd(tiny_model, steps=1), small_set, tmp_path, shard_size=8, seed=1,
                     progress=False)


def test_missing_shards_are_named(tmp_path, small_set, tiny_model):
    craft_shards(pgd(tiny_model, steps=1), small_set, tmp_path, shard_size=8, rank=0,
                 world_size=2, progress=False)
    with pytest.raises(ValueError, match="1 of 3 shards missing.*shard-00001"):
        load_shards(tmp_path)


@pytest.mark.parametrize("damage", [b"garbage", None])
def test_damaged_shard_says_delete_it_and_rerun(tmp_path, small_set, tiny_model, damage):
    craft_shards(pgd(tiny_model, steps=1), small_set, tmp_path, shard_size=8, progress=False)
    shard = tmp_path / shard_file(1)
    data = shard.read_bytes()
    shard.write_bytes(damage if damage is not None else data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError) as info:
        load_shards(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{shard}: cannot read augment shard") and "\n" not in msg
    assert msg.endswith("delete this shard and rerun the same command ('mladv augment', or "
                        "'mladv experiment' for its adv/ folders)")
    shard.unlink()  # doing what it says: the rerun crafts that shard again, identical
    craft_shards(pgd(tiny_model, steps=1), small_set, tmp_path, shard_size=8, progress=False)
    assert shard.read_bytes() and len(load_shards(tmp_path)) == len(small_set)


def test_load_shards_is_the_adversarial_dataset_reader(tmp_path, small_set, tiny_model):
    from mladv.data import AdversarialDataset

    craft_shards(pgd(tiny_model, steps=1), small_set, tmp_path, shard_size=8, progress=False)
    merged, ds = load_shards(tmp_path), AdversarialDataset(tmp_path)
    assert torch.equal(merged.images, torch.stack([ds.image(i) for i in range(len(ds))]))
    assert merged.labels.tolist() == small_set.labels.tolist() == ds.targets
    assert merged.paths == small_set.paths and merged.groups == small_set.groups
    assert merged.classes == small_set.classes


def test_union_concatenates_and_refuses_other_classes(small_set):
    both = union(small_set, small_set)
    assert len(both) == 2 * len(small_set) and both.classes == small_set.classes
    other = make_phantoms(2, 16, seed=0)
    other.classes = ["a", "b", "c"]
    with pytest.raises(ValueError, match="cannot join"):
        union(small_set, other)


def _cli(args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


def test_cli_augment_resumes_and_writes_metrics(tmp_path, tiny_model, capsys):
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, tiny_model, classes=make_phantoms(1, 16).classes, image_size=16,
                    split={"seed": 0, "test_size": 0.15})
    args = ["augment", str(ckpt), "phantoms:8", "--attack", "mladv", "--eps", "8", "--steps", "2",
            "--split", "train", "--shard-size", "8", "--no-projection", "--detail-weight", "0",
            "--option", "kernel_size=5", "--out", str(tmp_path / "aug")]
    assert _cli(args) == 0
    manifest = read_manifest(tmp_path / "aug")
    assert manifest["attack"]["projection"] is False
    assert manifest["info"]["options"]["detail_weight"] == 0.0
    assert manifest["info"]["options"]["kernel_size"] == 5
    n = manifest["n"]
    assert 0 < n < 24  # the train split only
    first = load_shards(tmp_path / "aug").images
    assert _cli(args) == 0  # rerun: everything is already there
    assert torch.equal(load_shards(tmp_path / "aug").images, first)
    assert json.loads((tmp_path / "aug" / "metrics.json").read_text())["metrics"]["linf_max"] \
        <= 8 / 255 + 1e-6


def test_cli_refuses_mladv_switches_on_other_attacks(tmp_path, tiny_model, capsys):
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, tiny_model, classes=make_phantoms(1, 16).classes, image_size=16)
    assert _cli(["augment", str(ckpt), "phantoms:3", "--attack", "pgd", "--style-weight", "0",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err  # one line naming the option and the attack
    assert re.search(r"--style-weight only apply to --attack mladv|"
                     r"attack 'pgd' has no option 'style_weight'", err) and err.count("\n") == 1
    assert _cli(["augment", str(ckpt), "phantoms:3", "--option", "oops",
                 "--out", str(tmp_path / "o")]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
