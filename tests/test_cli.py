import json

import pytest
import torch

from mladv.cli import main
from mladv.crafting import load_adversarial


def run(args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


def test_train_then_attack_writes_lossless_tensors_and_metrics(tmp_path, capsys):
    ckpt_dir, atk_dir = tmp_path / "train", tmp_path / "atk"
    assert run(["train", "phantoms:12", "--arch", "tiny_cnn", "--image-size", "24", "--epochs", "1",
                "--out", str(ckpt_dir)]) == 0
    assert (ckpt_dir / "model.pt").is_file()
    assert "test_acc" in json.loads((ckpt_dir / "metrics.json").read_text())
    assert run(["attack", str(ckpt_dir / "model.pt"), "phantoms:12", "--steps", "2",
                "--out", str(atk_dir), "--png-previews", "2"]) == 0
    saved = load_adversarial(atk_dir / "adversarial.pt")
    assert saved["images"].dtype == torch.float32 and saved["images"].shape[1:] == (1, 24, 24)
    assert len(saved["paths"]) == saved["labels"].shape[0] == saved["images"].shape[0]
    metrics = json.loads((atk_dir / "metrics.json").read_text())["metrics"]
    assert metrics["linf_max"] <= 8 / 255 + 1e-6
    assert len(list((atk_dir / "previews").glob("*.png"))) == 2


def test_missing_data_folder_is_one_line_error(tmp_path, capsys):
    assert run(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "missing" in err and "Traceback" not in err


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("nope")
    assert run(["attack", str(tmp_path / "x.pt"), "phantoms:3", "--out", str(tmp_path / "o")]) == 2
    assert "x.pt cannot be read" in capsys.readouterr().err


def test_unknown_attack_lists_valid_ones(tmp_path, capsys):
    run(["train", "phantoms:6", "--arch", "tiny_cnn", "--image-size", "16", "--epochs", "1",
         "--out", str(tmp_path / "t")])
    assert run(["attack", str(tmp_path / "t" / "model.pt"), "phantoms:6", "--attack", "nope",
                "--out", str(tmp_path / "o")]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_eps_out_of_range_is_refused(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("nope")
    assert run(["attack", str(tmp_path / "x.pt"), "phantoms:3", "--eps", "0"]) == 2
    assert "--eps" in capsys.readouterr().err


def test_small_demo_writes_summary_and_grid(tmp_path):
    from mladv.demo import run_demo

    summary = run_demo(tmp_path, n_per_class=20, image_size=32, epochs=2, steps=3)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["attacks"].keys() == summary["attacks"].keys() == {"MLAdv", "PGD-3"}
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert all(0 <= r["success"] <= 1 for r in saved["attacks"].values())


def test_atomic_outputs_have_normal_permissions(tmp_path):
    import os

    from mladv.utils import atomic_write_json

    atomic_write_json({"a": 1}, tmp_path / "x.json")
    assert os.stat(tmp_path / "x.json").st_mode & 0o044  # group/other can read (umask allowing)
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    from mladv.utils import atomic_path

    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))
