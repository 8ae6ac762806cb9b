"""The two studies' configs spell the same settings alike (issue 17): the transfer config's
``split: {test_size, seed}`` and ``max_images`` as in the experiment's, old keys refused naming
the new one before any work, and ``extends: base.yaml`` so a GPU config is its CPU sibling plus
what differs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mladv.cli import main
from mladv.configbase import Strict, load_yaml_config, merge
from mladv.experiment.config import load_config as load_experiment
from mladv.transfer import load_config as load_transfer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MINI = {"name": "mini", "data": "phantoms:12", "image_size": 24, "seed": 0, "eps": 8,
        "source": {"arch": "tiny_cnn", "epochs": 1}, "targets": [{"arch": "tiny_cnn"}],
        "attacks": [{"name": "fgsm"}], "progress": False}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def mini(path: Path, **changes: Any) -> Path:
    return write(path, yaml.safe_dump({**MINI, **changes}, sort_keys=False))


# (file, split.test_size, split seed, max_images), read from each file before the rename
# (top-level test_size / seed / max_test_images)
BEFORE = [("transfer-cxr3.yaml", 0.15, 0, None), ("transfer-demo.yaml", 0.15, 0, 24),
          ("transfer-paper.yaml", 0.15, 0, None), ("transfer-paper-gpu.yaml", 0.15, 0, 200)]


@pytest.mark.parametrize("name, test_size, seed, max_images", BEFORE)
def test_each_transfer_config_splits_and_samples_as_before_the_rename(
        name: str, test_size: float, seed: int, max_images: int | None) -> None:
    cfg = load_transfer(CONFIGS / name)
    assert (cfg.split.test_size, cfg.split_seed(), cfg.max_images) == (test_size, seed, max_images)
    assert cfg.seed == seed


def test_the_split_seed_left_out_is_the_run_seed_and_is_written_so(tmp_path: Path) -> None:
    cfg = load_transfer(mini(tmp_path / "c.yaml", seed=5, split={"test_size": 0.3}))
    assert cfg.split.seed == 5 and cfg.split_seed() == 5
    assert cfg.model_dump()["split"] == {"test_size": 0.3, "seed": 5}
    own = load_transfer(mini(tmp_path / "d.yaml", seed=5, split={"seed": 2}))
    assert (own.split_seed(), own.split.test_size, own.seed) == (2, 0.15, 5)


@pytest.mark.parametrize("old, value, new", [("test_size", 0.2, "split.test_size"),
                                             ("max_test_images", 24, "max_images")])
def test_an_old_transfer_key_fails_naming_its_new_key(tmp_path: Path, old: str, value: Any,
                                                      new: str) -> None:
    path = write(tmp_path / "old.yaml", yaml.safe_dump(MINI, sort_keys=False) + f"{old}: {value}\n")
    line = len(path.read_text().splitlines())
    with pytest.raises(ValueError) as info:
        load_transfer(path)
    assert str(info.value) == f"{path}:{line}: '{old}' is now '{new}'"


def test_an_old_key_is_refused_by_the_cli_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("data was read before the old key was refused")
    monkeypatch.setattr("mladv.transfer.run.load_source", forbidden)
    path = mini(tmp_path / "old.yaml", max_test_images=24)
    with pytest.raises(SystemExit) as info:
        main(["transfer", str(path), "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("'max_test_images' is now 'max_images'") and "\n" not in err
    assert not (tmp_path / "run").exists()


class Inner(Strict):
    steps: int = 1
    lr: float = 0.1


class Outer(Strict):
    name: str = "x"
    inner: Inner = Inner()
    items: list[int] = []


def test_extends_lays_the_file_over_its_base_mapping_by_mapping(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    write(tmp_path / "base" / "b.yaml", "name: base\ninner: {steps: 3, lr: 0.5}\nitems: [1, 2]\n")
    path = write(tmp_path / "c.yaml", "extends: base/b.yaml\ninner: {steps: 4}\nitems: [7]\n")
    cfg = load_yaml_config(Outer, path)
    assert cfg.model_dump() == {"name": "base", "inner": {"steps": 4, "lr": 0.5}, "items": [7]}


def test_merge_changes_neither_input() -> None:
    base, over = {"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}
    assert merge(base, over) == {"a": {"b": 3, "c": 2}}
    assert base == {"a": {"b": 1, "c": 2}} and over == {"a": {"b": 3}}


def test_a_chain_of_bases_resolves_and_a_cycle_is_one_line(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "name: a\ninner: {lr: 0.2}\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\ninner: {steps: 2}\n")
    c = write(tmp_path / "c.yaml", "extends: b.yaml\nname: c\n")
    assert load_yaml_config(Outer, c).model_dump() == {
        "name": "c", "inner": {"steps": 2, "lr": 0.2}, "items": []}
    write(tmp_path / "a.yaml", "extends: c.yaml\n")
    with pytest.raises(ValueError) as info:
        load_yaml_config(Outer, c)
    assert str(info.value) == (f"{tmp_path / 'a.yaml'}: extends: c.yaml makes a cycle "
                               f"(c.yaml -> b.yaml -> a.yaml -> c.yaml)")


def test_a_missing_base_is_one_line_naming_the_file_that_extends_it(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "extends: nope.yaml\n")
    with pytest.raises(ValueError) as info:
        load_yaml_config(Outer, path)
    assert str(info.value) == f"{path}: extends: {tmp_path / 'nope.yaml'} does not exist"


def _differing(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys whose values differ between two resolved configs."""
    keys: set[str] = set()
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys |= _differing(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.add(f"{prefix}{key}")
    return keys


def test_the_table2_gpu_config_is_full_cpu_with_the_paper_model_and_gpu_sizes() -> None:
    gpu = load_experiment(CONFIGS / "paper-gpu.yaml").model_dump(mode="json")
    cpu = load_experiment(CONFIGS / "full-cpu.yaml").model_dump(mode="json")
    assert _differing(gpu, cpu) == {
        "name", "data", "image_size", "arch", "train.epochs", "train.batch_size",
        "augment.shard_size", "augment.batch_size", "robustness.autoattack_images",
        "robustness.batch_size", "progress"}
    assert (gpu["arch"], gpu["image_size"], gpu["train"]) == (
        "resnet50", 224, {"epochs": 30, "batch_size": 64, "lr": 0.002, "weight_decay": 0.0001,
                          "precision": "auto", "channels_last": "auto"})


def test_the_table1_gpu_config_is_the_paper_one_with_cxr3_full_and_gpu_sizes() -> None:
    gpu = load_transfer(CONFIGS / "transfer-paper-gpu.yaml").model_dump(mode="json")
    cpu = load_transfer(CONFIGS / "transfer-paper.yaml").model_dump(mode="json")
    assert _differing(gpu, cpu) == {"name", "data", "max_images", "source.batch_size",
                                    "targets", "batch_size", "bm3d.max_images", "progress"}
    assert [t["arch"] for t in gpu["targets"]] == ["resnet101", "vgg16_bn", "resnet152"]
