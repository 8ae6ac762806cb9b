"""The augmentation experiment: config validation, arms, metrics, run (resume), report, CLI."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

import mladv.experiment.run as run_mod
from experiment_helpers import hand_results, run_quietly
from mladv.attacks.registry import options_from_flags
from mladv.cli import main
from mladv.data import write_phantoms
from mladv.experiment import ARMS, FULL_METHOD, classification_metrics, load_config, run_experiment
from mladv.experiment.arms import (
    batch_transform,
    make_adversary,
    mladv_arm_options,
    mladv_default,
    rotate_batch,
)
from mladv.experiment.config import ArmOptions, validate_config
from mladv.experiment.metrics import mean_std
from mladv.experiment.report import augment_table, full_method_verdict
from mladv.logs import quiet_log
from mladv.models import build_model, save_checkpoint

MINI = {"name": "mini", "data": "phantoms:12", "image_size": 16, "arch": "tiny_cnn", "seeds": 1,
        "arms": ["none", FULL_METHOD], "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
        "pgd": {"steps": 2}, "mladv": {"steps": 2},
        "augment": {"shard_size": 10, "batch_size": 8}, "robustness": {"max_images": 4},
        "progress": False}


def _without_timings(results: dict) -> dict:
    out = json.loads(json.dumps(results))
    out.pop("compute"), out.pop("this_invocation_wall_s")
    for r in out["runs"]:
        r.pop("timings")
        for key in ("craft_wall_s", "craft_cpu_s"):
            r.get("augment", {}).pop(key, None)
    return out


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    return run_quietly(tmp_path_factory, "mini", MINI)


# -- the miniature experiment -------------------------------------------------------------------
def test_mini_experiment_has_every_metric_for_every_arm(mini_run):
    out, results = mini_run
    saved = json.loads((out / "results.json").read_text())
    assert [(r["arm"], r["seed"]) for r in saved["runs"]] == [("none", 0), (FULL_METHOD, 0)]
    expected = {"accuracy", "recall", "precision", "f1", "balanced_accuracy", "macro_f1",
                "auc_macro", "auc_covid_like",
                "auc_normal", "auc_pneumonia_like", "ece", "acc_mladv", "acc_pgd", "acc_noise_0.02",
                "acc_noise_0.05"}
    for r in saved["runs"]:
        assert set(r["metrics"]) == expected
        assert all(0.0 <= v <= 1.0 for v in r["metrics"].values())
        cm = np.asarray(r["confusion_matrix"])
        assert cm.shape == (3, 3) and cm.sum() == saved["n_test"]
        recall = [cm[i, i] / cm[i].sum() for i in range(3) if cm[i].sum()]
        assert r["metrics"]["balanced_accuracy"] == pytest.approx(sum(recall) / len(recall))
    full = next(r for r in saved["runs"] if r["arm"] == FULL_METHOD)
    assert full["n_train"] == 2 * saved["n_train"]  # x_train ∪ x'_train
    assert full["augment"]["linf_max"] <= 8 / 255 + 1e-6
    assert saved["robust_n"] == 4
    assert set(saved["summary"]) == {"none", FULL_METHOD}
    assert saved["comparisons"][0]["verdict"] == "one seed"
    assert yaml.safe_load((out / "config.yaml").read_text())["arch"] == "tiny_cnn"
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 and rows[0].startswith("arm,seed,n_train,accuracy")


def test_report_files_exist_and_embed_the_figures(mini_run):
    out, _ = mini_run
    for name in ("roc.png", "ablation.png", "accuracy.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "src=\"figures/" not in page  # self-contained
    md = (out / "report.md").read_text()
    assert "0.9641" in md and "Table 2" in md and "figures/roc.png" in md
    assert "no seed-to-seed spread" in md
    assert "Verdicts: MLAdv (full method) against each baseline" in md


def test_resume_after_interruption_gives_identical_results(mini_run, tmp_path, monkeypatch):
    _, uninterrupted = mini_run
    real, calls = run_mod.run_arm, []

    def crash_on_second_arm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "run_arm", crash_on_second_arm)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate_config(MINI), tmp_path / "run", log=quiet_log)
    assert (tmp_path / "run" / "seed-0" / "results" / "none.json").is_file()
    assert not (tmp_path / "run" / "results.json").exists()
    monkeypatch.setattr(run_mod, "run_arm", real)
    resumed = run_experiment(validate_config(MINI), tmp_path / "run", log=quiet_log)
    assert len(calls) == 2  # the finished arm was not run again
    assert _without_timings(resumed) == _without_timings(uninterrupted)
    log = (tmp_path / "run" / "log.txt").read_text()  # both sittings, appended
    assert log.count("mini: ") == 2 and "[seed 0] none: accuracy" in log


def test_rerun_with_other_settings_is_refused(mini_run, tmp_path):
    out, _ = mini_run
    shutil.copytree(out, tmp_path / "copy")
    with pytest.raises(ValueError, match=r"finished piece\(s\).*other settings "
                                         r"\(config\.train\.epochs: 2 there, 3 now\).*delete"):
        run_experiment(validate_config({**MINI, "train": {**MINI["train"], "epochs": 3}}),
                       tmp_path / "copy", log=quiet_log)


def test_rerun_after_a_config_fix_keeps_the_trained_base_model(mini_run, tmp_path):
    """The folder as a failed first run leaves it (base model trained, nothing else finished):
    a rerun with changed attack options goes on and reuses the base model; a changed training
    schedule is refused, because the base model depends on it."""
    out, _ = mini_run
    shutil.copytree(out, tmp_path / "copy")
    for extra in ("results", "adv"):
        shutil.rmtree(tmp_path / "copy" / "seed-0" / extra)
    (tmp_path / "copy" / "seed-0" / "models" / f"{FULL_METHOD}.pt").unlink()
    base = tmp_path / "copy" / "seed-0" / "models" / "base.pt"
    before = base.stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"1 finished piece\(s\) \(e\.g\. seed-0/models/base"):
        run_mod.prepare(validate_config({**MINI, "train": {**MINI["train"], "epochs": 3}}),
                        tmp_path / "copy", quiet_log)
    lines: list[str] = []
    fixed = validate_config({**MINI, "mladv": {"steps": 3}})
    run = run_mod.prepare(fixed, tmp_path / "copy", lines.append)
    assert any("mladv.steps: 2 there, 3 now" in line and "base models are kept" in line
               for line in lines)
    model, _ = run_mod.base_model(run, 0)
    assert base.stat().st_mtime_ns == before  # reused, not retrained
    again = run_mod.prepare(fixed, tmp_path / "copy", lines.append)  # run.json now says steps 3
    assert again.cfg.mladv == {"steps": 3} and len(lines) == 1


def test_checkpoint_of_another_shape_is_refused(mini_run, tmp_path):
    out, _ = mini_run
    run = run_mod.prepare(validate_config(MINI), tmp_path / "run", quiet_log)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, build_model("small_cnn", 2), classes=["a", "b"], image_size=16)
    with pytest.raises(ValueError, match=r"holds a small_cnn with 2 classes.*needs a tiny_cnn "
                                         r"with 3 classes"):
        run_mod.load_model(run, wrong)


def test_test_data_with_other_classes_is_refused(tmp_path):
    write_phantoms(tmp_path / "train", n_per_class=2, size=16)
    write_phantoms(tmp_path / "test", n_per_class=2, size=16)
    (tmp_path / "test" / "normal").rename(tmp_path / "test" / "healthy")
    cfg = validate_config({**MINI, "data": str(tmp_path / "train"),
                           "test_data": str(tmp_path / "test")})
    with pytest.raises(ValueError, match=r"classes \['covid_like', 'healthy', 'pneumonia_like'\] "
                                         r"differ from the training classes \['covid_like', "
                                         r"'normal', 'pneumonia_like'\]"):
        run_mod.load_data(cfg)


# -- metrics ------------------------------------------------------------------------------------
def test_metrics_agree_with_scikit_learn_on_a_hand_example():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    probs = np.array([[.7, .2, .1], [.3, .6, .1], [.2, .7, .1], [.1, .8, .1],
                      [.1, .1, .8], [.5, .2, .3], [.2, .3, .5]])
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    pred = probs.argmax(1)  # [0, 1, 1, 1, 2, 0, 2]: 5 of 7 right
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["recall"] == pytest.approx(recall_score(labels, pred, average="weighted"))
    assert m["recall"] == pytest.approx(m["accuracy"])  # weighted recall is accuracy
    assert m["precision"] == pytest.approx(precision_score(labels, pred, average="weighted"))
    # by hand: precision a = 1/2, b = 2/3, c = 2/2; weights 2/7, 2/7, 3/7
    assert m["precision"] == pytest.approx((2 * 0.5 + 2 * 2 / 3 + 3 * 1.0) / 7)
    assert m["f1"] == pytest.approx(f1_score(labels, pred, average="weighted"))
    assert m["auc_macro"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert m["auc_per_class"]["a"] == pytest.approx(roc_auc_score(labels == 0, probs[:, 0]))
    # class a by hand: positives score .7, .3; negatives .2 .1 .1 .5 .2 -> (5 + 4) / 10
    assert m["auc_per_class"]["a"] == pytest.approx(0.9)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]


def test_binary_auc_and_missing_class():
    m = classification_metrics([0, 1, 1, 0], np.array([[.9, .1], [.2, .8], [.6, .4], [.4, .6]]),
                               ["x", "y"])
    assert m["auc_macro"] == pytest.approx(roc_auc_score([0, 1, 1, 0], [.1, .8, .4, .6]))
    m = classification_metrics([0, 0, 1], np.full((3, 3), 1 / 3), ["a", "b", "c"])
    assert math.isnan(m["auc_per_class"]["c"]) and not math.isnan(m["auc_macro"])


def test_mean_std_is_the_sample_std_over_seeds_and_none_for_one_seed():
    assert mean_std([0.9, 0.92, 0.94])["std"] == pytest.approx(0.02)
    assert mean_std([0.9])["std"] is None


def test_the_full_method_verdicts_use_the_one_rule_with_the_full_method_as_the_arm():
    runs = hand_results({FULL_METHOD: {"accuracy": [0.90, 0.92, 0.94]},
                         "none": {"accuracy": [0.80, 0.81, 0.82]},
                         "mixup": {"accuracy": [0.91, 0.93, 0.95]},
                         "cutmix": {"accuracy": [0.99, 0.99, 0.995]}})["runs"]
    assert [full_method_verdict(runs, b)["verdict"] for b in ("none", "mixup", "cutmix")] == [
        "better", "within spread", "worse"]
    worse = full_method_verdict(runs, "cutmix")
    assert worse["full_mean"] == pytest.approx(0.92) and worse["difference"] < 0
    assert worse["sentence"] == (
        f"MLAdv ({FULL_METHOD}) vs `cutmix`: accuracy 0.9200 vs 0.9917 (-0.0717): worse; `cutmix` "
        f"was ahead by more than the seed-to-seed spread (0.0200).")


# -- arms ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arm", ["none", "rotation", "mixup", "cutmix", "trivialaugment"])
def test_transforms_keep_shape_range_and_are_seeded(arm):
    x = torch.rand(6, 1, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x_before, y_before = x.clone(), y.clone()
    tf = batch_transform(arm, ArmOptions(), 3)
    a = tf(x, y, torch.Generator().manual_seed(1))
    b = tf(x, y, torch.Generator().manual_seed(1))
    assert a[0].shape == x.shape and a[0].min() >= 0 and a[0].max() <= 1
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    if arm in ("mixup", "cutmix"):
        assert a[1].shape == (6, 3) and torch.allclose(a[1].sum(1), torch.ones(6))
    assert torch.equal(x, x_before) and torch.equal(y, y_before), "input changed in place"
    if arm != "none":  # the arm does more than flips: some image differs from both flips
        flips = torch.stack([x, x.flip(-1)])
        assert not all((flips == img).flatten(2).all(2).any() for img in a[0])


def test_rotation_by_zero_is_identity_and_by_90_moves_pixels():
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(rotate_batch(x, torch.zeros(2)), x, atol=1e-5)
    turned = rotate_batch(x, torch.full((2,), 90.0))
    assert torch.allclose(turned, x.rot90(1, (-2, -1)), atol=1e-4) \
        or torch.allclose(turned, x.rot90(-1, (-2, -1)), atol=1e-4)


def test_mladv_arms_switch_terms_and_keep_class_defaults():
    ls = mladv_arm_options(ARMS["ls"], {"steps": 3})
    assert ls["origin_weight"] == 0 and ls["detail_weight"] == 0 and ls["projection"] is False
    assert ls["style_weight"] == (mladv_default("style_weight") or 1.0) and ls["steps"] == 3
    assert ls["style_weight"] > 0  # a term the arm switches on is on, whatever the class default
    full = mladv_arm_options(ARMS[FULL_METHOD], {"origin_weight": 0.25})
    assert full["origin_weight"] == 0.25 and full["projection"] is True
    assert full["detail_weight"] == mladv_default("detail_weight")
    model = build_model("tiny_cnn", 3)
    atk = make_adversary("ls+lo", model, eps=4 / 255, seed=1, pgd_options={}, mladv_options={})
    assert atk.projection is False and atk.eps == pytest.approx(4 / 255)
    with pytest.raises(ValueError, match="does not craft"):
        make_adversary("mixup", model, eps=4 / 255, seed=1, pgd_options={}, mladv_options={})


# -- strict JSON --------------------------------------------------------------------------------
def strict_json(text: str):
    """``json.loads`` that refuses NaN / Infinity (RFC 8259 JSON has neither)."""
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_experiment_json_is_strict_with_a_nan_metric(tmp_path, monkeypatch):
    """A NaN metric (e.g. macro AUC with a class absent) is written as null, in the per-run
    result and in results.json, and the report still reads it."""
    real = run_mod.classification_metrics

    def with_nan(*args, **kwargs):
        return {**real(*args, **kwargs), "auc_macro": math.nan}
    monkeypatch.setattr(run_mod, "classification_metrics", with_nan)
    out = tmp_path / "run"
    run_experiment(validate_config({**MINI, "arms": ["none"]}), out, log=quiet_log)
    per_run = strict_json((out / "seed-0" / "results" / "none.json").read_text())
    assert per_run["clean"]["auc_macro"] is None
    results = strict_json((out / "results.json").read_text())
    assert results["runs"][0]["metrics"]["auc_macro"] is None
    assert results["summary"]["none"]["auc_macro"] == {"mean": None, "std": None, "n": 0}


def test_augment_table_shows_an_infinite_or_null_psnr_as_inf():
    """x'_train that left an image unchanged has PSNR inf: null in JSON, ``inf`` in the text."""
    crafted = {"success": 0.5, "ssim": 0.9, "l1": 1 / 255, "linf_max": 4 / 255}
    results = {"arms": ["pgd-adv", "ls"],
               "runs": [{"arm": "pgd-adv", "augment": {**crafted, "psnr": None}},
                        {"arm": "ls", "augment": {**crafted, "psnr": math.inf}}]}
    assert augment_table(results)[1] == [["pgd-adv", "0.500", "0.900", "inf", "1.00", "4.00"],
                                         ["ls", "0.500", "0.900", "inf", "1.00", "4.00"]]


# -- config errors ------------------------------------------------------------------------------
def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("trian: {epochs: 2}\n", r"c\.yaml:1: trian: unknown key"),
    ("train: {epochs: two}\n", r"c\.yaml:1: train\.epochs: Input should be a valid integer"),
    ("train: {epoch: 2}\n", r"c\.yaml:1: train\.epoch: unknown key"),
    ("arms: [none, flips]\n", r"arms: unknown arm 'flips'; valid arms: none, rotation, mixup"),
    ("mladv: {stpes: 3}\n", r"c\.yaml:1: mladv: attack 'mladv' has no option 'stpes'; it takes "),
    ("mladv: {eps: 3}\n", r"mladv: 'eps' is set by the experiment"),
    ("mladv: {steps: two}\n", r"c\.yaml:1: mladv: attack 'mladv': steps must be int, got 'two'"),
    ("mladv: {steps: 0}\n", r"mladv: attack 'mladv': .*steps"),
    ("pgd: {steps: 2.5}\n", r"pgd: attack 'pgd': steps must be int"),
    ("seeds: 2\ntrain:\n  epochs: two\n", r"c\.yaml:3: train\.epochs: Input should be"),
    ("eps: 0.03\n", r"eps: eps is in 1/255 units"),
    ("arch: resnet9000\n", r"arch: unknown architecture 'resnet9000'"),
    ("robustness: {attacks: [fgsm]}\n", r"robustness\.attacks: unknown robustness attack"),
    ("- a\n- b\n", r"expected a mapping"),
    ("train: [\n", r"c\.yaml: line \d+ not valid YAML"),
])
def test_bad_config_gives_one_error_naming_the_key(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as info:
        load_config(_write(tmp_path, text))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("section, options", [
    ("mladv", {"precision": "bf16"}), ("mladv", {"channels_last": True}),
    ("pgd", {"precision": "bf16"}), ("chain", {"precision": "bf16"}),
])
def test_config_accepts_the_options_the_cli_accepts(section, options):
    """One checker (the registry's): the compute options every attack takes are accepted."""
    assert getattr(validate_config({section: options}), section) == options


@pytest.mark.parametrize("section", ["mladv", "pgd", "chain"])
def test_config_refuses_an_unknown_option_with_the_cli_message(section):
    with pytest.raises(ValueError) as from_config:
        validate_config({section: {"speed": 3}})
    with pytest.raises(ValueError) as from_cli:
        options_from_flags(section, eps=8, seed=0, pairs=["speed=3"])
    assert str(from_config.value) == f"config: {section}: {from_cli.value}"


FULL_CPU_RESUME_KEY = {  # configs/full-cpu.yaml's key before the one checker: a run resumes on it
    "arch": "resnet18",
    "arm_options": {"central_symmetry_p": 0.5, "cutmix_alpha": 1.0, "mixup_alpha": 0.2,
                    "rotation_degrees": 15.0, "trivialaugment_bins": 31},
    "augment": {"batch_size": 32, "shard_size": 256}, "eps": 8.0, "image_size": 64,
    "mladv": {"steps": 5},
    "online": {"grid": {"eps": [1.0, 2.0], "fraction": [None], "steps": [1]},
               "selection": {"rule": "max-val-accuracy", "seed": 0, "val_size": 0.15}},
    "pgd": {"steps": 10},
    "robustness": {"attacks": ["mladv"], "autoattack_eps": 2.0, "autoattack_images": 16,
                   "autoattack_square_queries": 5000, "batch_size": 48, "ece_bins": 15,
                   "max_images": 96, "noise_sigmas": [0.05], "pgd_eps": [2.0, 8.0]},
    "split": {"seed": 0, "test_size": 0.15},
    "train": {"batch_size": 32, "epochs": 10, "lr": 0.002, "weight_decay": 0.0001},
}


def test_full_cpu_resume_key_is_unchanged():
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "configs" / "full-cpu.yaml"
    assert load_config(path).resume_key() == FULL_CPU_RESUME_KEY


def test_flags_override_the_yaml_and_are_validated(tmp_path):
    path = _write(tmp_path, "data: somewhere\nseeds: 3\n")
    cfg = load_config(path, {"data": "phantoms", "seeds": 2, "device": None})
    assert cfg.data == "phantoms" and cfg.seed_list() == [0, 1] and cfg.device == "auto"
    with pytest.raises(ValueError, match=r"c\.yaml: seeds\.constrained-int: Input should be"):
        load_config(path, {"seeds": "many"})


def test_shipped_configs_are_valid():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("demo.yaml", "cxr3.yaml", "paper.yaml"):
        cfg = load_config(root / name)
        assert FULL_METHOD in cfg.arms and "none" in cfg.arms


def _experiment_cli_error(tmp_path, capsys, text: str) -> str:
    """stderr of ``mladv experiment`` on a config holding ``text``, which must exit with 2."""
    path = _write(tmp_path, text)
    with pytest.raises(SystemExit) as exc:
        main(["experiment", str(path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    return str(capsys.readouterr().err)


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    err = _experiment_cli_error(tmp_path, capsys, "trian: 3\n")
    assert "error:" in err and "trian" in err and "Traceback" not in err


def test_cli_refuses_bad_attack_values_before_any_work(tmp_path, capsys):
    err = _experiment_cli_error(tmp_path, capsys,
                                "data: phantoms:3\narch: tiny_cnn\nmladv:\n  steps: two\n")
    assert "c.yaml:3: mladv: attack 'mladv': steps must be int, got 'two'" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()  # nothing trained or written


def test_config_without_weights_keeps_the_resume_key_of_older_runs():
    key = validate_config(MINI).resume_key()
    assert "weights" not in key and "freeze_backbone" not in key
    with_weights = validate_config({**MINI, "weights": "w.pth"}).resume_key()
    assert with_weights["weights"] == "w.pth" and with_weights["freeze_backbone"] is False


def test_freeze_backbone_without_weights_is_refused_at_load():
    with pytest.raises(ValueError, match="freeze_backbone needs weights"):
        validate_config({**MINI, "freeze_backbone": True})


def test_experiment_starts_from_a_pretrained_backbone(tmp_path):
    from mladv.models import build_model, head_name, load_checkpoint

    torch.manual_seed(3)
    net = build_model("tiny_cnn", 5).net  # "pretrained" elsewhere, with another head size
    torch.save(net.state_dict(), tmp_path / "w.pth")
    cfg = validate_config({**MINI, "arms": ["none"], "weights": str(tmp_path / "w.pth"),
                           "freeze_backbone": True})
    run_experiment(cfg, tmp_path / "run", log=quiet_log)
    model, _ = load_checkpoint(tmp_path / "run" / "seed-0" / "models" / "base.pt")
    head = head_name(model.net)
    for k, v in net.state_dict().items():
        if not k.startswith(head):
            assert torch.equal(model.net.state_dict()[k], v), k  # arrived, and stayed frozen
    assert model.net.state_dict()[f"{head}.weight"].shape[0] == 3


def test_experiment_refuses_a_missing_weights_file_before_the_data_loads(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the data was read before the error")
    monkeypatch.setattr("mladv.experiment.run.load_data", forbidden)
    cfg = validate_config({**MINI, "weights": str(tmp_path / "missing.pth")})
    with pytest.raises(ValueError, match="missing.pth"):
        run_experiment(cfg, tmp_path / "run", log=quiet_log)
