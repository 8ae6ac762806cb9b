import json
import os
import stat
import sys

import pytest
import torch

from cli_helpers import one_line_error, run
from mladv.cli import INTERRUPTED
from mladv.data import AdversarialDataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, one_thread):
    """A tiny_cnn trained by the CLI for one epoch on 36 phantoms of 24 px."""
    out = tmp_path_factory.mktemp("train")
    assert run(["train", "phantoms:12", "--arch", "tiny_cnn", "--image-size", "24",
                "--epochs", "1", "--out", str(out)]) == 0
    return out / "model.pt"


def test_train_then_attack_writes_lossless_tensors_and_metrics(ckpt, tmp_path, capsys):
    assert "test_acc" in json.loads((ckpt.parent / "metrics.json").read_text())
    atk_dir = tmp_path / "atk"
    with pytest.warns(UserWarning, match="PNG previews are 8-bit"):  # said once, not silent
        assert run(["attack", str(ckpt), "phantoms:12", "--steps", "2",
                    "--out", str(atk_dir), "--png-previews", "2"]) == 0
    saved = AdversarialDataset(atk_dir / "adversarial.pt").to_imageset()  # the one reader
    assert saved.images.dtype == torch.float32 and saved.images.shape[1:] == (1, 24, 24)
    assert len(saved.paths) == len(saved.labels) == len(saved) > 0
    metrics = json.loads((atk_dir / "metrics.json").read_text())
    assert metrics["metrics"]["linf_max"] <= 8 / 255 + 1e-6
    assert metrics["options"] == {"eps": 8 / 255, "seed": 0, "steps": 2}  # only what was given
    assert metrics["n_seen_in_training"] == 0  # the checkpoint's own test split: all unseen
    assert len(list((atk_dir / "previews").glob("*.png"))) == 2


def test_attack_command_runs_the_class_default(ckpt, tmp_path):
    """`mladv attack --attack mladv` and `MLAdv(model)` give the same tensor (issue 9 item 1)."""
    from mladv.attacks import MLAdv
    from mladv.data import load_source, split_imageset
    from mladv.models import load_checkpoint

    assert run(["attack", str(ckpt), "phantoms:12", "--out", str(tmp_path / "a")]) == 0
    cli_adv = AdversarialDataset(tmp_path / "a").to_imageset().images
    model, _ = load_checkpoint(ckpt)
    _, test = split_imageset(load_source("phantoms:12", 24), seed=0)
    api_adv = MLAdv(model, eps=8 / 255, seed=0)(test.images, test.labels)
    assert torch.equal(cli_adv, api_adv)
    # what the command ran before the fix is a different attack
    old = MLAdv(model, eps=8 / 255, seed=0, realism_scale=0.5, style_weight=1, origin_weight=1,
                detail_weight=1, balance="grad-norm")(test.images, test.labels)
    assert not torch.equal(cli_adv, old)



def test_rays_psnr_of_unchanged_images_is_null_in_json_and_inf_in_text(ckpt, tmp_path, capsys):
    """RayS leaves the images the model already gets wrong unchanged (its first query is the
    clean image; this checkpoint is at chance): mean PSNR inf, reported one way (null in the
    strict JSON of metrics.json, ``inf`` in the text)."""
    capsys.readouterr()
    assert run(["attack", str(ckpt), "phantoms:12", "--attack", "rays", "--option", "budget=1",
                "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "metrics.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    metrics = json.loads(text)["metrics"]
    assert metrics["psnr"] is None
    assert "PSNR inf dB, Linf " in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory, tiny_trained):
    """The conftest's trained small CNN (24 px phantoms) as a checkpoint: unlike ``ckpt`` (at
    chance, so every image is fooled at once), MLAdv's main loop leaves some of its test images
    unfooled at eps 2/255, so the refine steps change the result."""
    from mladv.data import make_phantoms
    from mladv.models import save_checkpoint

    path = tmp_path_factory.mktemp("trained") / "model.pt"
    save_checkpoint(path, tiny_trained[0], classes=make_phantoms(1, 24).classes, image_size=24)
    return path


def test_attack_command_equals_the_api_where_refine_changes_the_images(trained_ckpt, tmp_path):
    """`mladv attack --eps 2` and `MLAdv(model, eps=2/255)` give the same tensor on a case where
    refine runs: the same attack without refine gives other images."""
    from mladv.attacks import MLAdv
    from mladv.data import load_source, split_imageset
    from mladv.models import load_checkpoint

    assert run(["attack", str(trained_ckpt), "phantoms:12", "--eps", "2",
                "--out", str(tmp_path / "a")]) == 0
    cli_adv = AdversarialDataset(tmp_path / "a").to_imageset().images
    model, _ = load_checkpoint(trained_ckpt)
    _, test = split_imageset(load_source("phantoms:12", 24), seed=0)
    assert torch.equal(cli_adv, MLAdv(model, eps=2 / 255, seed=0)(test.images, test.labels))
    no_refine = MLAdv(model, eps=2 / 255, seed=0, refine=0)(test.images, test.labels)
    assert not torch.equal(cli_adv, no_refine)

def test_attack_and_augment_share_the_option_flags(ckpt, tmp_path, capsys, no_data):
    for command in ("attack", "augment"):
        assert run([command, str(ckpt), "phantoms:12", "--option", "steps=two",
                    "--out", str(tmp_path / command)]) == 2
        one_line_error(capsys, "attack 'mladv': steps must be int, got 'two'")
        assert run([command, str(ckpt), "phantoms:12", "--attack", "pgd", "--tau", "0.3",
                    "--out", str(tmp_path / command)]) == 2
        one_line_error(capsys, "attack 'pgd' has no option 'tau'")
        assert run([command, str(ckpt), "phantoms:12", "--tau", "0.3",
                    "--out", str(tmp_path / command)]) == 2
        one_line_error(capsys, "attack 'mladv': tau is eq. 2's weight of L_adv (balance='literal' "
                       "only); with balance='grad-norm' the realism terms' weight relative to "
                       "the adversarial one is realism_scale (e.g. realism_scale=0.3)")
        assert run([command, str(ckpt), "phantoms:12", "--steps", "3", "--option", "steps=2",
                    "--out", str(tmp_path / command)]) == 2
        one_line_error(capsys, "give it once, as --steps")
        assert run([command, str(ckpt), "phantoms:12", "--option", "balance=foo",
                    "--out", str(tmp_path / command)]) == 2
        one_line_error(capsys, "balance")


@pytest.mark.parametrize("command", ["attack", "augment"])
def test_attack_flags_are_declared_once_for_both_commands(command, capsys):
    from mladv.commands._attack_flags import ATTACK_FLAGS

    assert run([command, "--help"]) == 0
    text = capsys.readouterr().out
    flags = ["--attack" if k == "name" else "--" + k.replace("_", "-") for k in ATTACK_FLAGS]
    assert len(flags) == 11 and all(flag in text for flag in flags), flags
    assert "--flags" not in text and "--name" not in text


def test_option_errors_come_before_the_checkpoint_is_read(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("nope")
    assert run(["attack", str(tmp_path / "x.pt"), "phantoms:3", "--eps", "0"]) == 2
    one_line_error(capsys, "--eps")
    assert run(["attack", str(tmp_path / "x.pt"), "phantoms:3", "--option", "steps=0"]) == 2
    one_line_error(capsys, "steps must be >= 1")


def test_missing_data_folder_is_one_line_error(tmp_path, capsys):
    assert run(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "missing")


def test_garbage_checkpoint_is_one_line_without_unsafe_advice(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(os.urandom(64))
    assert run(["attack", str(tmp_path / "x.pt"), "phantoms:3", "--out", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys, "x.pt: not a mladv checkpoint (")
    assert "weights_only" not in err


def test_unknown_architecture_inside_a_checkpoint_names_the_file(tmp_path, capsys):
    torch.save({"state_dict": {}, "arch": "resnet19", "classes": ["a", "b"]}, tmp_path / "m.pt")
    assert run(["attack", str(tmp_path / "m.pt"), "phantoms:3", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "m.pt: unknown architecture 'resnet19'")


def test_unknown_attack_lists_valid_ones(ckpt, tmp_path, capsys):
    assert run(["attack", str(ckpt), "phantoms:6", "--attack", "nope",
                "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "choose one of")


def test_unknown_arch_is_reported_before_the_data_loads(tmp_path, capsys, no_data):
    assert run(["train", "phantoms:6", "--arch", "resnet19", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "unknown architecture 'resnet19'")


@pytest.mark.parametrize("size", ["0", "-5", "2", "2048"])
def test_image_size_outside_the_range_is_refused_at_parse_time(size, tmp_path, capsys, no_data):
    assert run(["train", "phantoms:6", "--image-size", size, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--image-size" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("flag", "value"), [("--lr", "0"), ("--test-size", "1.5")])
def test_training_numbers_are_checked_before_the_data_loads(flag, value, tmp_path, capsys,
                                                           no_data):
    assert run(["train", "phantoms:6", flag, value, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, f"{flag} must be")


def test_image_size_too_small_for_the_architecture(tmp_path, capsys, no_data):
    assert run(["train", "phantoms:6", "--arch", "vgg16", "--image-size", "16",
                "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "--image-size must be an integer in 32..1024 for vgg16")


@pytest.mark.parametrize("command", ["train", "attack"])
def test_out_that_is_a_file_is_refused_before_any_work(command, ckpt, tmp_path, capsys, no_data):
    (tmp_path / "taken").write_text("a file")
    args = (["train", "phantoms:6", "--arch", "tiny_cnn", "--image-size", "16"]
            if command == "train" else ["attack", str(ckpt), "phantoms:6"])
    assert run([*args, "--out", str(tmp_path / "taken")]) == 2
    one_line_error(capsys, f"--out {tmp_path / 'taken'}: is a file, not a folder")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root writes into read-only folders (see the simulated test below)")
def test_read_only_out_is_refused_before_any_work(tmp_path, capsys, no_data):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert run(["train", "phantoms:6", "--arch", "tiny_cnn", "--image-size", "16",
                    "--out", str(ro)]) == 2
    finally:
        ro.chmod(stat.S_IRWXU)
    one_line_error(capsys, f"--out {ro}: cannot write there")


def test_unwritable_out_is_refused_before_any_work(ckpt, tmp_path, capsys, monkeypatch, no_data):
    """Simulated: the probe write fails as in a read-only folder (the tests may run as root)."""
    import tempfile

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(dir))
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert run(["attack", str(ckpt), "phantoms:6", "--out", str(tmp_path / "ro")]) == 2
    one_line_error(capsys, f"--out {tmp_path / 'ro'}: cannot write there (Permission denied)")


def test_write_error_after_the_work_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    def disk_full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    assert run(["train", "phantoms:6", "--arch", "tiny_cnn", "--image-size", "16", "--epochs", "1",
                "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, f"{tmp_path / 'o' / 'model.pt'}: No space left on device")
    assert not list((tmp_path / "o").glob(".*.tmp"))


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_in_train_says_nothing_was_kept_and_exits_130(tmp_path, capsys, monkeypatch):
    from mladv.commands.train import INTERRUPTED as TRAIN_INTERRUPTED

    monkeypatch.setattr("mladv.reuse.train_classifier", _interrupt)
    assert run(["train", "phantoms:6", "--arch", "tiny_cnn", "--image-size", "16",
                "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == TRAIN_INTERRUPTED and "Traceback" not in err
    assert "no checkpoint was written" in err and "resume" not in err.replace("not resume", "")
    assert not (tmp_path / "o" / "model.pt").exists()


def test_ctrl_c_in_attack_says_it_starts_again(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mladv.crafting.craft", _interrupt)
    assert run(["attack", str(ckpt), "phantoms:12", "--out", str(tmp_path / "a")]) == 130
    assert "rerun the same command to start again" in capsys.readouterr().err


def test_ctrl_c_in_a_resumable_command_says_what_was_kept(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mladv.augment.craft_shards", _interrupt)
    assert run(["augment", str(ckpt), "phantoms:12", "--out", str(tmp_path / "g")]) == 130
    assert capsys.readouterr().err.strip() == INTERRUPTED


@pytest.mark.parametrize("command", ["train", "augment"])
def test_ctrl_c_under_torchrun_is_reported_by_rank_0_only(command, ckpt, tmp_path, capsys,
                                                          monkeypatch):
    from mladv.commands.train import INTERRUPTED as TRAIN_INTERRUPTED

    library = {"train": "mladv.reuse", "augment": "mladv.augment"}[command]
    monkeypatch.setattr(f"{library}.init_from_env", _interrupt)
    args = ([command, "phantoms:6"] if command == "train" else [command, str(ckpt), "phantoms:6"])
    expected = TRAIN_INTERRUPTED if command == "train" else INTERRUPTED
    for rank, said in (("1", ""), ("0", expected)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert run([*args, "--out", str(tmp_path / rank)]) == 130
        assert capsys.readouterr().err.strip() == said, rank


@pytest.mark.parametrize("command", ["train", "attack", "augment", "transfer"])
def test_data_help_names_the_source_presets(command, capsys):
    assert run([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    for preset in ("covid-radiography:ROOT", "covid-radiography[COVID,Normal,Viral",
                   "kermany:ROOT", "kermany[test]:ROOT", "csv:FILE", "phantoms[:N]"):
        assert preset in text, (command, preset)


def test_stale_tmp_files_of_an_interrupted_run_are_cleaned(ckpt, tmp_path):
    out = tmp_path / "atk"
    (out / "previews").mkdir(parents=True)
    stale = [out / ".adversarial.pt.k2j4_x9q.tmp", out / "previews" / ".00000.png.abcdefgh.tmp"]
    keep = [out / ".notes.tmp", out / "notes.tmp"]  # not ours: left alone
    for p in stale + keep:
        p.write_text("x")
    assert run(["attack", str(ckpt), "phantoms:12", "--steps", "1", "--out", str(out)]) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


def test_split_test_on_other_data_leaves_out_the_training_images(ckpt, tmp_path, capsys):
    from mladv.data import load_source
    from mladv.fingerprint import image_hashes
    from mladv.models import read_checkpoint

    out = tmp_path / "other"
    # phantoms:20 holds phantoms:12's images and more; its test split mixes in training images
    assert run(["attack", str(ckpt), "phantoms:20", "--steps", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["n_seen_in_training"] > 0 and f"left out {meta['n_seen_in_training']} of" in err
    saved = AdversarialDataset(out).to_imageset()
    trained_on = set(read_checkpoint(ckpt)["trained_on"])
    clean = load_source("phantoms:20", 24)
    by_hash = dict(zip(image_hashes(clean.images), range(len(clean))))
    assert len(trained_on) == 30 and len(saved) == meta["metrics"]["n"] > 0
    # every attacked image is within eps of an unseen clean image, and none of a seen one
    unseen = clean.images[[i for h, i in by_hash.items() if h not in trained_on]]
    seen = clean.images[[i for h, i in by_hash.items() if h in trained_on]]
    dist = lambda a, b: (a[:, None] - b[None]).abs().flatten(2).amax(2).amin(1)  # noqa: E731
    assert (dist(saved.images, unseen) <= 8 / 255 + 1e-6).all()
    assert (dist(saved.images, seen) > 8 / 255).all()


def test_split_test_with_nothing_unseen_is_refused(tmp_path):
    from mladv.data import choose_split, make_phantoms
    from mladv.fingerprint import image_hashes

    data = make_phantoms(8, 16, seed=0)
    ckpt = {"split": {"seed": 0, "test_size": 0.15}, "trained_on": image_hashes(data.images)}
    with pytest.raises(ValueError, match="all 3 images of DATA's test split were used to train"):
        choose_split(data, ckpt, "test", checkpoint=tmp_path / "m.pt", data="DATA")
    chosen, record = choose_split(data, {"split": {"seed": 0, "test_size": 0.15}}, "test",
                                  checkpoint=tmp_path / "m.pt", data="DATA")
    assert len(chosen) == 3 and "does not record its training images" in record["note"]


def test_train_with_local_weights_and_frozen_backbone(tmp_path, capsys):
    from mladv.models import build_model, head_name, load_checkpoint

    torch.manual_seed(7)
    net = build_model("tiny_cnn", 5).net  # a "pretrained" tiny_cnn with another head size
    torch.save(net.state_dict(), tmp_path / "w.pth")
    assert run(["train", "phantoms:6", "--arch", "tiny_cnn", "--image-size", "16", "--epochs", "1",
                "--weights", str(tmp_path / "w.pth"), "--freeze-backbone", "--lr", "0.05",
                "--out", str(tmp_path / "o")]) == 0
    model, meta = load_checkpoint(tmp_path / "o" / "model.pt")
    assert meta["weights"] == str(tmp_path / "w.pth") and meta["freeze_backbone"] is True
    head = head_name(model.net)
    for k, v in net.state_dict().items():
        same = torch.equal(model.net.state_dict()[k], v) if not k.startswith(head) else None
        assert same in (True, None), k
    assert model.net.state_dict()[f"{head}.weight"].shape[0] == 3
    torch.save(build_model("tiny_cnn", 5).net.state_dict(), tmp_path / "w.pth")  # other content
    capsys.readouterr()
    assert run(["train", "phantoms:6", "--arch", "tiny_cnn", "--image-size", "16", "--epochs", "1",
                "--weights", str(tmp_path / "w.pth"), "--freeze-backbone", "--lr", "0.05",
                "--out", str(tmp_path / "o")]) == 2  # same path, other weights: refused
    one_line_error(capsys, "holds a trained model made with other settings (weights_sha1: ")


def test_weights_errors_come_before_the_data_loads(tmp_path, capsys, no_data):
    assert run(["train", "phantoms:6", "--freeze-backbone", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "--freeze-backbone needs --weights")
    assert run(["train", "phantoms:6", "--weights", "IMAGENET_V9", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "torchvision has IMAGENET1K_V1")


def test_train_advprop_keeps_the_twin_bn_apart_from_the_model(tmp_path):
    from mladv.models import build_model, load_checkpoint, read_checkpoint

    assert run(["train", "phantoms:6", "--arch", "small_cnn", "--image-size", "16", "--epochs", "1",
                "--adv-mode", "advprop", "--adv-attack", "mladv", "--adv-eps", "2",
                "--out", str(tmp_path / "o")]) == 0
    raw = read_checkpoint(tmp_path / "o" / "model.pt")
    assert raw["adversarial"]["mode"] == "advprop" and raw["adversarial"]["attack"] == "mladv"
    assert raw["adversarial"]["eps"] == 2
    plain = build_model("small_cnn", 3).state_dict()
    assert raw["twin_bn"] and set(raw["state_dict"]) == set(plain)
    model, _ = load_checkpoint(tmp_path / "o" / "model.pt")  # plain model, no trace of the twins
    bn = next(k for k in raw["twin_bn"] if k.endswith("running_mean"))
    assert not torch.equal(raw["twin_bn"][bn], model.state_dict()[bn])


@pytest.mark.parametrize(("flags", "needle"), [
    (["--adv-mode", "sometimes"], "adversarial mode must be one of"),
    (["--adv-mode", "online", "--adv-eps", "0"], "adv_eps must be in (0, 255]"),
    (["--adv-mode", "online", "--adv-fraction", "1.5"], "fraction"),
    (["--adv-mode", "online", "--option", "steps_typo=2"], "steps_typo"),
    (["--option", "beta=2"], "--option sets the per-batch attack"),
    (["--adv-eps", "4"], "--adv-eps sets the per-batch attack: it needs --adv-mode online"),
    (["--adv-mode", "offline", "--adv-attack", "pgd"], "--adv-attack sets the per-batch"),
    (["--adv-steps", "1"], "--adv-steps sets the per-batch attack"),
])
def test_adversarial_training_flags_are_checked_before_the_data_loads(flags, needle, tmp_path,
                                                                     capsys, no_data):
    assert run(["train", "phantoms:6", *flags, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, needle)


def test_small_demo_writes_summary_and_grid(tmp_path):
    from mladv.demo import run_demo

    summary = run_demo(tmp_path, n_per_class=20, image_size=32, epochs=2, steps=3)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["attacks"].keys() == summary["attacks"].keys() == {"MLAdv", "PGD-3"}
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert all(0 <= r["success"] <= 1 for r in saved["attacks"].values())


def test_atomic_outputs_have_normal_permissions(tmp_path):
    from mladv.utils import atomic_write_json

    atomic_write_json({"a": 1}, tmp_path / "x.json")
    assert os.stat(tmp_path / "x.json").st_mode & 0o044  # group/other can read (umask allowing)
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    from mladv.utils import atomic_path

    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_train_rerun_with_the_same_settings_reuses_the_finished_model(ckpt, capsys):
    before = ckpt.read_bytes()
    assert run(["train", "phantoms:12", "--arch", "tiny_cnn", "--image-size", "24",
                "--epochs", "1", "--out", str(ckpt.parent)]) == 0
    assert ckpt.read_bytes() == before  # not trained again
    assert json.loads((ckpt.parent / "metrics.json").read_text())["reused"] is True
    assert "trained with these settings already; reused" in capsys.readouterr().err


def test_train_rerun_with_other_settings_is_refused_naming_them(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.pt").write_bytes(ckpt.read_bytes())
    assert run(["train", "phantoms:12", "--arch", "tiny_cnn", "--image-size", "24",
                "--epochs", "2", "--lr", "0.01", "--out", str(out)]) == 2
    one_line_error(capsys, "model.pt: holds a trained model made with other settings",
                   "epochs: 1 there, 2 now", "lr: 0.001 there, 0.01 now")
    assert (out / "model.pt").read_bytes() == ckpt.read_bytes()


def test_train_logs_to_stderr_and_to_log_txt(ckpt):
    lines = (ckpt.parent / "log.txt").read_text().splitlines()
    assert lines[0].endswith("phantoms:12: 30 train / 6 test images, classes "
                             "['covid_like', 'normal', 'pneumonia_like']")
    assert lines[0][:4].isdigit() and lines[0][19:21] == "  "  # YYYY-MM-DD HH:MM:SS  line
