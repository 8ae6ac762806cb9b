"""The new-user probe's failures of issue 17 (items 1-11 and the minor ones), one test each."""
import csv
import os
import signal
import socket
import threading
import time
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from cli_helpers import one_line_error, run
from mladv.augment import _check_or_write_manifest
from mladv.data import load_source
from mladv.data.cache import decode_uint8
from mladv.data.folder import read_image
from mladv.models import build_model, pretrained_state_dict
from mladv.utils import one_line_warning, output_dir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("train")
    assert run(["train", "phantoms:12", "--arch", "tiny_cnn", "--image-size", "24",
                "--epochs", "1", "--out", str(out)]) == 0
    return out / "model.pt"


def write_csv_set(root, rows, size=20):
    """PNGs of noise under ``root`` and ``root/data.csv`` listing ``(name, label, patient)``."""
    rng = np.random.default_rng(0)
    with open(root / "data.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id"])
        for name, label, patient in rows:
            arr = rng.integers(0, 256, (size, size), dtype=np.uint8)
            Image.fromarray(arr).save(root / name)
            writer.writerow([name, label, patient])
    return root / "data.csv"


# -- 1: a download that never answers --------------------------------------------------------
@pytest.fixture()
def silent_server():
    """A local server that accepts connections and never answers (a proxy or firewall)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture()
def hanging_download(silent_server, tmp_path, monkeypatch):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(weights.value, "url",
                        f"http://127.0.0.1:{silent_server}/resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MLADV_DOWNLOAD_TIMEOUT", "1")


def test_a_download_that_never_answers_gives_up_naming_the_hub_file(hanging_download):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"no answer within 1 s.*put that file as .*"
                       r"hub.checkpoints.resnet18-f37072fd\.pth"):
        pretrained_state_dict("resnet18", "IMAGENET1K_V1")
    assert time.perf_counter() - start < 10


def test_train_with_a_hanging_download_is_one_line_before_the_data(hanging_download, tmp_path,
                                                                   capsys, no_data):
    assert run(["train", "phantoms:4", "--arch", "resnet18", "--weights", "IMAGENET1K_V1",
                "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "resnet18-f37072fd.pth", "no answer within 1 s")


# -- 2: units of the per-batch attack ---------------------------------------------------------
@pytest.mark.parametrize(("flags", "needle"), [
    (["--adv-eps", "2", "--option", "eps=0.01"], "--option eps=...: give it once, as --adv-eps"),
    (["--option", "steps=3"], "--option steps=...: give it once, as --adv-steps"),
    (["--adv-eps", "0.03"], "0.03 looks like [0, 1] units: write 7.65"),
])
def test_train_refuses_mixed_units_like_attack(flags, needle, tmp_path, capsys, no_data):
    assert run(["train", "phantoms:4", "--adv-mode", "online", *flags,
                "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, needle)


# -- 3: two runs on one --out --------------------------------------------------------------
def test_a_second_run_on_a_busy_out_is_refused_and_keeps_the_live_tmp(ckpt, tmp_path, capsys):
    out = tmp_path / "aug"
    with output_dir(out):  # the first run, still writing
        live = out / ".shard-00000.pt.abcd1234.tmp"
        live.write_bytes(b"half a shard")
        assert run(["augment", str(ckpt), "phantoms:12", "--steps", "1",
                    "--out", str(out)]) == 2
        one_line_error(capsys, str(out), "another mladv run is writing there now")
        assert live.is_file()


def test_the_lock_dies_with_its_run(tmp_path):
    with output_dir(tmp_path / "o"):
        pass
    with output_dir(tmp_path / "o"):  # the first run ended: no stale lock refuses this one
        pass


# -- 4: advprop that would be plain online ------------------------------------------------------
def test_advprop_on_a_model_without_batchnorm_is_refused(tmp_path, capsys, no_data):
    assert run(["train", "phantoms:4", "--arch", "tiny_cnn", "--adv-mode", "advprop",
                "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "--adv-mode advprop", "tiny_cnn has no BatchNorm")


def test_advprop_with_a_frozen_backbone_is_refused(tmp_path, capsys, no_data):
    weights = tmp_path / "w.pt"
    torch.save(build_model("small_cnn", 3).net.state_dict(), weights)
    assert run(["train", "phantoms:4", "--arch", "small_cnn", "--weights", str(weights),
                "--freeze-backbone", "--adv-mode", "advprop", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "--adv-mode advprop with --freeze-backbone")


# -- 5: exporting attack output keeps the patient groups --------------------------------------
def test_export_of_attack_output_writes_patient_ids_not_paths(tmp_path):
    rows = [(f"{c}{i}.png", c, f"patient-{c}{i // 2}") for c in "abc" for i in range(6)]
    data = write_csv_set(tmp_path, rows)
    assert run(["train", f"csv:{data}", "--arch", "tiny_cnn", "--image-size", "16",
                "--epochs", "1", "--out", str(tmp_path / "m")]) == 0
    assert run(["attack", str(tmp_path / "m" / "model.pt"), f"csv:{data}", "--attack", "fgsm",
                "--split", "all", "--out", str(tmp_path / "a")]) == 0
    assert run(["export", str(tmp_path / "a"), str(tmp_path / "png")]) == 0
    with open(tmp_path / "png" / "manifest.csv") as fh:
        written = {(r["source"], r["patient_id"]) for r in csv.DictReader(fh)}
    want = {(str(tmp_path / name), patient) for name, _, patient in rows}
    assert written == want


# -- 6: a one-image class ---------------------------------------------------------------------
def test_a_class_with_one_image_is_named_in_a_warning(tmp_path):
    rows = [(f"{c}{i}.png", c, f"p{c}{i}") for c in "ab" for i in range(3)]
    data = write_csv_set(tmp_path, [*rows, ("typo.png", "bb", "px")])
    with pytest.warns(UserWarning, match=r"class 'bb' \(1 image\) has fewer than two images"):
        load_source(f"csv:{data}", 16)


# -- 7: weights of another architecture ------------------------------------------------------
def test_weights_of_another_architecture_name_the_file_before_the_data(tmp_path, capsys, no_data):
    weights = tmp_path / "small.pt"
    torch.save(build_model("small_cnn", 3).net.state_dict(), weights)
    assert run(["train", "phantoms:4", "--arch", "tiny_cnn", "--weights", str(weights),
                "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, f"--weights {weights}: pretrained weights do not fit a tiny_cnn")


# -- 8: a killed export -------------------------------------------------------------------------
def test_a_resumed_export_leaves_no_tmp_of_the_killed_one(ckpt, tmp_path):
    assert run(["attack", str(ckpt), "phantoms:12", "--attack", "fgsm",
                "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "png"
    assert run(["export", str(tmp_path / "a"), str(out)]) == 0
    first = next(out.glob("*/*.png"))
    first.unlink()  # the file the killed export was writing...
    (first.parent / f".{first.name}.k1ll3d00.tmp").write_bytes(b"half a png")  # ...and its tmp
    assert run(["export", str(tmp_path / "a"), str(out)]) == 0
    assert first.is_file() and not list(out.rglob("*.tmp"))


# -- 9: EXIF orientation ----------------------------------------------------------------------
def test_exif_orientation_is_applied_by_both_readers(tmp_path):
    arr = np.zeros((24, 40), dtype=np.uint8)  # 40 wide, 24 high; a bright left edge
    arr[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    upright = read_image(tmp_path / "photo.jpg")
    assert upright.shape == (40, 24)  # shown upright: 24 wide, 40 high
    assert upright[:4].mean() > 0.9 and upright[-4:].mean() < 0.1  # left edge now on top
    assert np.array_equal(decode_uint8(tmp_path / "photo.jpg") / np.float32(255), upright)


# -- 10: the "different job" refusal --------------------------------------------------------
def test_a_different_job_names_the_differing_key(tmp_path):
    attack = {f"option_{i:02d}": "a long value that fills the line" for i in range(12)}
    _check_or_write_manifest(tmp_path, {"seed": 0, "attack": {**attack, "eps": 0.03}})
    with pytest.raises(ValueError) as exc:
        _check_or_write_manifest(tmp_path, {"seed": 0, "attack": {**attack, "eps": 0.01}})
    assert "attack.eps: 0.03 there, 0.01 now" in str(exc.value)
    assert "seed" not in str(exc.value) and "option_" not in str(exc.value)


# -- 11: a label outside the classes ------------------------------------------------------------
def test_a_label_outside_the_classes_is_the_input_checks_one_line(trained_model):
    from mladv.attacks import MLAdv

    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\].*max=3"):
        MLAdv(trained_model)(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must be class indices.*min=-1"):
        MLAdv(trained_model)(x, torch.tensor([-1, 0]))


# -- minor --------------------------------------------------------------------------------------
def test_warnings_print_without_source_lines():
    line = one_line_warning(UserWarning("PNG previews are 8-bit"), UserWarning, "/x/attack.py", 7)
    assert line == "warning: PNG previews are 8-bit\n"


def test_the_command_line_formats_warnings_in_one_line(tmp_path, monkeypatch):
    seen = []

    def command(*args, **kwargs):
        seen.append(warnings.formatwarning(UserWarning("w"), UserWarning, "f.py", 1))
        raise ValueError("stop")
    monkeypatch.setattr("mladv.reuse.load_source", command)
    assert run(["train", "phantoms:4", "--out", str(tmp_path / "o")]) == 2
    assert seen == ["warning: w\n"]


def test_loading_draws_no_progress_bar_off_a_terminal(tmp_path, capsys):
    data = write_csv_set(tmp_path, [(f"{c}{i}.png", c, f"p{c}{i}") for c in "ab" for i in (0, 1)])
    load_source(f"csv:{data}", 16, progress=True)
    assert "loading" not in capsys.readouterr().err


def test_a_data_error_leaves_no_empty_out(tmp_path, capsys):
    out = tmp_path / "new"
    assert run(["train", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert not out.exists()


def test_a_failing_run_keeps_an_out_that_was_there(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    assert run(["train", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert out.is_dir()


def test_sigterm_stops_with_one_line_and_exit_143(tmp_path, capsys, monkeypatch):
    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    monkeypatch.setattr("mladv.reuse.load_source", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert run(["train", "phantoms:4", "--out", str(tmp_path / "o")]) == 143
    err = capsys.readouterr().err
    assert err.startswith("terminated (SIGTERM); interrupted: no checkpoint") and \
        err.count("\n") == 1, err
    assert signal.getsignal(signal.SIGTERM) == before
