"""Issue 25 item 9 (reliability probe) and item 5 (eps units at the boundary), item 3 on the CLI
(``--dicom-mode``): each test reproduces one probe failure, then pins the fix."""
import errno
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from cli_helpers import one_line_error, run
from mladv.data.folder import load_folder
from mladv.data.split import stratified_split
from mladv.experiment.config import load_config as load_experiment
from mladv.experiment.run import made_settings
from mladv.transfer.config import load_config as load_transfer
from mladv.units import check_eps_255
from mladv.utils import (
    LOCK_FILE,
    atomic_torch_save,
    atomic_write_json,
    lock_folder,
    output_dir,
    parse_device,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_TRAIN = ["--arch", "tiny_cnn", "--image-size", "16", "--epochs", "1", "--batch-size", "8"]


def write_yaml(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


def experiment_yaml(tmp_path, **changes):
    cfg = {"name": "t", "data": "phantoms:4", "image_size": 16, "arch": "tiny_cnn", "seeds": 1,
           "arms": ["none"], "train": {"epochs": 1, "batch_size": 8},
           "robustness": {"attacks": [], "noise_sigmas": [0.02]}, "progress": False}
    cfg.update(changes)
    return write_yaml(tmp_path / "exp.yaml", cfg)


def transfer_yaml(tmp_path, **changes):
    cfg = {"name": "t", "data": "phantoms:4", "image_size": 24, "split": {"test_size": 0.3},
           "source": {"arch": "tiny_cnn", "epochs": 1}, "targets": [{"arch": "tiny_cnn",
                                                                      "epochs": 1}],
           "attacks": [{"name": "fgsm"}], "batch_size": 8,
           "bm3d": {"max_images": 1, "workers": 1}, "progress": False}
    cfg.update(changes)
    return write_yaml(tmp_path / "transfer.yaml", cfg)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("train")
    assert run(["train", "phantoms:6", *TINY_TRAIN, "--out", str(out)]) == 0
    return out / "model.pt"


# -- 1: one lock per output folder, naming its holder -------------------------------------------
def test_a_locked_folder_names_the_holder_pid_host_command_and_start(tmp_path):
    with output_dir(tmp_path / "o"):
        with pytest.raises(ValueError) as exc:
            lock_folder(tmp_path / "o")
    text = str(exc.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in text
    assert "another mladv run is writing there now" in text and "started 20" in text


@pytest.mark.parametrize("command", ["experiment", "transfer"])
def test_a_second_study_into_a_busy_out_is_refused_naming_the_holder(command, tmp_path, capsys):
    config = (experiment_yaml if command == "experiment" else transfer_yaml)(tmp_path)
    out = tmp_path / "run"
    with output_dir(out):  # the first run, still writing
        assert run([command, str(config), "--out", str(out)]) == 2
    one_line_error(capsys, str(out), "another mladv run is writing there now",
                   f"pid {os.getpid()}")
    assert not (out / "config.yaml").exists()  # the refused run wrote nothing


@pytest.mark.parametrize("args", [["augment", "m.pt", "phantoms:4"],
                                  ["attack", "m.pt", "phantoms:4"], ["demo"]])
def test_the_other_writers_refuse_a_busy_out_naming_the_holder(args, tmp_path, capsys):
    with output_dir(tmp_path / "o"):
        assert run([*args, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "another mladv run is writing there now", f"pid {os.getpid()}")


def test_a_second_train_into_a_busy_out_is_refused_naming_the_holder(tmp_path, capsys):
    with output_dir(tmp_path / "o"):
        assert run(["train", "phantoms:4", *TINY_TRAIN, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "another mladv run is writing there now", f"pid {os.getpid()}")


def test_the_lock_of_a_dead_pid_on_this_host_is_taken_over_with_a_log_line(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now
    (tmp_path / LOCK_FILE).write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "command": "mladv x",
         "started": "2026-01-01T00:00:00+00:00"}))
    lines: list[str] = []
    fh = lock_folder(tmp_path, log=lines.append)
    try:
        assert len(lines) == 1 and f"stale lock of pid {dead.pid}" in lines[0]
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        fh.close()


# -- 2: a refused transfer rerun leaves config.yaml alone ----------------------------------------
def test_a_refused_transfer_rerun_keeps_the_config_of_the_finished_pieces(tmp_path, capsys):
    config, out = transfer_yaml(tmp_path), tmp_path / "run"
    (out / "models").mkdir(parents=True)
    (out / "config.yaml").write_text("the first run's config\n")
    from mladv.models import build_model, save_checkpoint

    save_checkpoint(out / "models" / "source-tiny_cnn.pt", build_model("tiny_cnn", 3),
                    classes=["a", "b", "c"], image_size=24, reuse_key={"epochs": 99})
    assert run(["transfer", str(config), "--out", str(out)]) == 2
    one_line_error(capsys, "epochs")
    assert (out / "config.yaml").read_text() == "the first run's config\n"


# -- 3: a class of one patient ------------------------------------------------------------------
def test_a_class_of_one_patient_is_refused_by_the_split_naming_it():
    labels = [0, 0, 1, 1, 2, 2]
    groups = ["p1", "p2", "p3", "p4", "p5", "p5"]  # class 2: two images, one patient
    with pytest.raises(ValueError, match=r"class 'viral' has images of 1 patient only "
                       r"\(2 image\(s\)\)"):
        stratified_split(labels, groups, classes=["covid", "normal", "viral"])


def one_patient_csv(tmp_path):
    from PIL import Image

    rows = [(f"{c}{i}.png", c, f"p{c}{i}") for c in "ab" for i in range(3)]
    rows += [("c0.png", "c", "pc"), ("c1.png", "c", "pc")]
    lines = ["path,label,patient_id"]
    for name, label, patient in rows:
        Image.new("L", (16, 16), 128).save(tmp_path / name)
        lines.append(f"{name},{label},{patient}")
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    return f"csv:{tmp_path / 'd.csv'}"


def test_train_refuses_a_class_of_one_patient_before_training(tmp_path, capsys):
    data = one_patient_csv(tmp_path)
    assert run(["train", data, *TINY_TRAIN, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "class 'c' has images of 1 patient only")
    assert not (tmp_path / "o" / "model.pt").exists()


def test_experiment_refuses_a_class_of_one_patient_before_training(tmp_path, capsys):
    config = experiment_yaml(tmp_path, data=one_patient_csv(tmp_path))
    assert run(["experiment", str(config), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "class 'c' has images of 1 patient only")


# -- 4: one device parser -----------------------------------------------------------------------
@pytest.mark.parametrize(("text", "device"), [("auto", "auto"), ("cpu", "cpu"), ("cpu:0", "cpu"),
                                              ("cpu:3", "cpu"), ("cuda", "cuda"),
                                              ("cuda:1", "cuda:1"), ("mps", "mps")])
def test_the_device_forms_are_accepted(text, device):
    assert parse_device(text) == device


@pytest.mark.parametrize("text", ["tpu", "gpu", "cuda:x", "mps:0", "auto:1", ""])
def test_other_device_names_are_refused_naming_the_option_and_the_forms(text):
    with pytest.raises(ValueError, match=r"^--device '.*' is not a device; use auto, cpu, cpu:N, "
                       r"cuda, cuda:N or mps$"):
        parse_device(text)


@pytest.mark.parametrize("args", [
    ["train", "phantoms:4"], ["attack", "m.pt", "phantoms:4"], ["augment", "m.pt", "phantoms:4"],
    ["experiment", "missing.yaml"], ["transfer", "missing.yaml"]])
def test_every_command_refuses_an_unknown_device_in_one_line(args, tmp_path, capsys, no_data):
    assert run([*args, "--device", "tpu", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "--device 'tpu' is not a device")


@pytest.mark.parametrize("load", [load_experiment, load_transfer])
def test_a_config_device_is_checked_naming_the_file_line_and_key(load, tmp_path):
    path = (experiment_yaml if load is load_experiment else transfer_yaml)(tmp_path, device="gpu")
    line = path.read_text().splitlines().index("device: gpu") + 1
    with pytest.raises(ValueError, match=rf":{line}: device: 'gpu' is not a device"):
        load(path)


def test_attack_on_cpu_0_reads_the_checkpoint(ckpt, tmp_path):
    assert run(["attack", str(ckpt), "phantoms:6", "--attack", "fgsm", "--device", "cpu:0",
                "--out", str(tmp_path / "a")]) == 0


# -- 5: a full disk -----------------------------------------------------------------------------
def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_file_and_the_free_space_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError) as exc:
        atomic_torch_save({"x": 1}, tmp_path / "model.pt")
    assert exc.value.filename == str(tmp_path / "model.pt")
    assert "the disk is full (" in exc.value.strerror and " MB free)" in exc.value.strerror
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temporary file


def test_a_full_quota_is_a_full_disk_too(tmp_path, monkeypatch):
    def quota(*args, **kwargs):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    monkeypatch.setattr("pathlib.Path.write_text", quota)
    with pytest.raises(OSError, match="the disk is full"):
        atomic_write_json({"a": 1}, tmp_path / "m.json")
    assert list(tmp_path.iterdir()) == []


def test_train_on_a_full_disk_is_one_line_naming_the_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "save", disk_full)
    assert run(["train", "phantoms:4", *TINY_TRAIN, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, str(tmp_path / "o" / "model.pt"), "No space left on device",
                   "MB free")
    assert not (tmp_path / "o" / "model.pt").exists()


@pytest.mark.parametrize(("command", "written"), [("attack", "adversarial.pt"),
                                                   ("augment", "shard-00000.pt")])
def test_attack_and_augment_on_a_full_disk_are_one_line(command, written, ckpt, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setattr(torch, "save", disk_full)
    assert run([command, str(ckpt), "phantoms:6", "--attack", "fgsm", "--split", "all",
                "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, str(tmp_path / "o" / written), "No space left on device", "MB free")
    assert not (tmp_path / "o" / written).exists()


# -- 6: backward passes of reused copies --------------------------------------------------------
def test_reused_copies_report_the_backward_passes_recorded_when_crafted(tmp_path):
    made = made_settings(tmp_path, {"class": "MLAdv", "backward_passes": 6.0}, crafted_now=True)
    assert made["backward_passes"] == 6.0
    fresh = {"class": "MLAdv", "backward_passes": 0.0}  # the attack of the resumed run
    assert made_settings(tmp_path, fresh, crafted_now=False)["backward_passes"] == 6.0


# -- 7: broken symbolic links ---------------------------------------------------------------------
def image_folder(root):
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (16, 16), 100 + i).save(root / c / f"{i}.png")
    return root


def test_a_broken_image_link_is_refused_naming_it(tmp_path):
    root = image_folder(tmp_path / "d")
    (root / "a" / "2.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ValueError, match=r"a/2\.png: broken symbolic link \(to .*gone\.png"):
        load_folder(root, 16, cache=False)


def test_a_broken_image_link_is_listed_as_skipped_under_skip_bad(tmp_path):
    root = image_folder(tmp_path / "d")
    (root / "a" / "2.png").symlink_to(tmp_path / "gone.png")
    with pytest.warns(UserWarning, match="skipped 1"):
        data = load_folder(root, 16, skip_bad=True, cache=False)
    assert [p for p, _ in data.skipped] == [str(root / "a" / "2.png")]
    assert "broken symbolic link" in data.skipped[0][1] and len(data) == 4


def test_a_broken_class_folder_link_is_refused_even_under_skip_bad(tmp_path):
    root = image_folder(tmp_path / "d")
    (root / "c").symlink_to(tmp_path / "gone", target_is_directory=True)
    with pytest.raises(ValueError, match=r"d/c: broken symbolic link"):
        load_folder(root, 16, skip_bad=True, cache=False)


# -- 8: duplicate YAML keys ------------------------------------------------------------------------
def test_a_key_given_twice_in_a_config_is_refused_with_file_line_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 2\n  epochs: 30\n")
    with pytest.raises(ValueError, match=rf"^{path}:4: 'epochs' given twice in one mapping \(first "
                       r"on line 3"):
        load_experiment(path)


def test_experiment_with_a_key_given_twice_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("eps: 8\neps: 4\n")
    assert run(["experiment", str(path), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, f"{path}:2: 'eps' given twice")


# -- 9: eps in 1/255 units at every entry point ---------------------------------------------------
SLIP = "eps is in 1/255 units (8 means 8/255); 0.03 looks like [0, 1] units: write 7.65"


def test_the_units_guard_says_what_to_write():
    with pytest.raises(ValueError, match=r"^--eps is in 1/255 units \(8 means 8/255\); 0\.03 "
                       r"looks like \[0, 1\] units: write 7\.65$"):
        check_eps_255(0.03, "--eps")


@pytest.mark.parametrize("value", [0.0, -1.0, 256.0, float("nan")])
def test_eps_outside_the_range_is_refused(value):
    with pytest.raises(ValueError, match=r"eps must be in \(0, 255\] \(1/255 units\)"):
        check_eps_255(value)


@pytest.mark.parametrize("value", [0.5, 1.0, 8.0, 255.0])
def test_eps_from_half_to_255_is_taken_as_given(value):
    assert check_eps_255(value) == value


@pytest.mark.parametrize("command", ["attack", "augment"])
def test_attack_flags_refuse_an_eps_in_unit_range(command, tmp_path, capsys, no_data):
    assert run([command, "m.pt", "phantoms:4", "--eps", "0.03", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "--" + SLIP)


@pytest.mark.parametrize(("load", "changes", "key"), [
    (load_transfer, {"eps": 0.03}, "eps"),
    (load_experiment, {"robustness": {"pgd_eps": [0.03]}}, "pgd_eps"),
    (load_experiment, {"robustness": {"autoattack_eps": 0.03}}, "autoattack_eps"),
    (load_experiment, {"online": {"grid": {"eps": [0.03]}}}, "online eps")])
def test_configs_refuse_an_eps_in_unit_range(load, changes, key, tmp_path):
    path = (experiment_yaml if load is load_experiment else transfer_yaml)(tmp_path, **changes)
    with pytest.raises(ValueError, match=rf"{key} is in 1/255 units .* 0\.03 looks like \[0, 1\] "
                       r"units: write 7\.65"):
        load(path)


# -- 10: --dicom-mode ----------------------------------------------------------------------------
def test_train_refuses_an_unknown_dicom_mode(tmp_path, capsys, no_data):
    assert run(["train", "phantoms:4", "--dicom-mode", "window", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "--dicom-mode 'window': use one of voi, raw")


@pytest.mark.parametrize("mode", ["voi", "raw"])
def test_train_records_the_dicom_mode_and_keys_only_raw(mode, tmp_path):
    assert run(["train", "phantoms:4", *TINY_TRAIN, "--dicom-mode", mode,
                "--out", str(tmp_path / "o")]) == 0
    saved = torch.load(tmp_path / "o" / "model.pt", weights_only=False)
    assert saved["dicom_mode"] == mode
    assert saved["reuse_key"].get("dicom_mode") == (None if mode == "voi" else "raw")


def test_the_experiment_resume_key_holds_dicom_mode_only_when_raw(tmp_path):
    voi = load_experiment(experiment_yaml(tmp_path))
    raw = load_experiment(experiment_yaml(tmp_path, dicom_mode="raw"))
    assert "dicom_mode" not in voi.resume_key() and raw.resume_key()["dicom_mode"] == "raw"


def test_the_experiment_flag_sets_the_dicom_mode(tmp_path):
    assert load_experiment(experiment_yaml(tmp_path), {"dicom_mode": "raw"}).dicom_mode == "raw"


def test_a_resumed_experiment_reports_the_backward_passes_of_its_reused_copies(tmp_path):
    config = experiment_yaml(tmp_path, arms=["ls"], mladv={"steps": 2})
    out = tmp_path / "run"
    assert run(["experiment", str(config), "--out", str(out)]) == 0
    first = json.loads((out / "seed-0" / "results" / "ls.json").read_text())
    made = first["augment"]["settings"]["backward_passes"]
    assert made > 0  # MLAdv crafted through the model
    (out / "seed-0" / "results" / "ls.json").unlink()  # as if killed after crafting, before scoring
    assert run(["experiment", str(config), "--out", str(out)]) == 0
    again = json.loads((out / "seed-0" / "results" / "ls.json").read_text())
    assert again["augment"]["settings"]["backward_passes"] == made


def test_re_cutting_a_finished_checkpoints_split_does_not_refuse_a_one_patient_class():
    """choose_split (mladv attack / evaluate --split test) re-cuts the split a checkpoint was
    trained with: a class of one patient is then put on one side as before, not refused."""
    from mladv.data import ImageSet, choose_split

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    groups = ["p1", "p2", "p3", "p4", "p5", "p5"]
    data = ImageSet(torch.rand(6, 1, 8, 8), labels, ["a", "b", "c"], [""] * 6, groups)
    chosen, _ = choose_split(data, {"split": {"seed": 0, "test_size": 0.5}}, "all",
                             checkpoint="m.pt", data="d")
    assert len(chosen) == 6
    test, _ = choose_split(data, {"split": {"seed": 0, "test_size": 0.5}}, "test",
                           checkpoint="m.pt", data="d")
    assert 0 < len(test) < 6
