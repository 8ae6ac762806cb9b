"""The experiment on a multilabel data set (issue 22 items 5-7): the primary metric by task, the
selection rule on validation macro AUROC, the verdict on macro AUROC, the matched chain-random
control, settings refused for a multilabel set, ``configs/nih14-cpu.yaml``, and a tiny end-to-end
run on a multilabel ``csv:`` manifest of generated PNGs."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

from experiment_helpers import hand_results, run_quietly
from mladv.experiment import load_config
from mladv.experiment.claims import primary_metric
from mladv.experiment.config import validate_config
from mladv.experiment.report import verdicts_vs_flips
from mladv.experiment.run import prepare
from mladv.experiment.selection import choose, matched_choices
from mladv.logs import quiet_log
from nih_helpers import require_nih14

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ["Effusion", "Mass", "Nodule"]


def write_manifest(folder: Path, n: int = 48, seed: int = 0) -> Path:
    """``n`` 16 px grey PNGs (two per patient) whose findings are visible (Effusion: a bright
    bottom band, Mass: a bright centre square, Nodule: a bright top-left dot), and a multilabel
    manifest ``path,patient_id,Effusion,Mass,Nodule`` with 1 / 0 and a few empty (unknown)
    cells."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, 3)) < 0.45
    lines = ["path,patient_id," + ",".join(FINDINGS)]
    for i in range(n):
        img = rng.integers(40, 90, (16, 16)).astype(np.uint8)
        if labels[i, 0]:
            img[12:, :] = 220
        if labels[i, 1]:
            img[6:10, 6:10] = 230
        if labels[i, 2]:
            img[1:4, 1:4] = 240
        Image.fromarray(img).save(folder / f"{i}.png")
        cells = ["" if (i % 11 == 3 and k == 2) else str(int(labels[i, k])) for k in range(3)]
        lines.append(f"{i}.png,p{i // 2}," + ",".join(cells))
    file = folder / "manifest.csv"
    file.write_text("\n".join(lines) + "\n")
    return file


MlRun = tuple[Path, dict[str, Any]]
NIH14_CPU = ROOT / "configs" / "nih14-cpu.yaml"
ARMS = ["none", "chain-online", "chain-random", "pgd-advprop", "multi-loss+projection"]


def tiny_config(manifest: Path) -> dict[str, Any]:
    """``configs/nih14-cpu.yaml`` (arms, rule, matched control, eps, robustness attacks as
    written) shrunk to a smoke: the tiny manifest at 16 px, a small CNN, 2 seeds of 2 epochs,
    a 2-point grid, 2-step attacks, 8 robustness images."""
    raw: dict[str, Any] = yaml.safe_load(NIH14_CPU.read_text())
    raw.update(name="mini-multilabel", data=f"csv:{manifest}", image_size=16, arch="small_cnn",
               seeds=2, train={"epochs": 2, "batch_size": 16, "lr": 0.01},
               split={"test_size": 0.25, "seed": 0}, augment={"batch_size": 16},
               pgd={"steps": 2}, mladv={"steps": 1, "refine": 0}, progress=False)
    raw["online"]["grid"] = {"eps": [1, 8]}
    raw["online"]["selection"]["val_size"] = 0.25
    raw["robustness"].update(pgd_eps=[8], max_images=8, noise_sigmas=[0.05], batch_size=16)
    return raw


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("ml-data"))


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory: pytest.TempPathFactory,
           manifest: Path) -> tuple[Path, dict[str, Any]]:
    return run_quietly(tmp_path_factory, "ml", tiny_config(manifest))


# -- the primary metric, the rule, the verdict --------------------------------------------
def test_primary_metric_is_accuracy_for_multiclass_and_macro_auroc_for_multilabel() -> None:
    assert primary_metric("multiclass") == "accuracy"
    assert primary_metric("multilabel") == "macro_auroc"


def test_primary_metric_of_an_unknown_task_is_one_line_naming_the_task() -> None:
    with pytest.raises(ValueError, match="task must be one of") as info:
        primary_metric("regression")
    assert "\n" not in str(info.value)


def point(eps: float) -> dict[str, object]:
    return {"eps": eps, "steps": 1, "fraction": None}


def test_macro_auroc_rule_picks_the_highest_validation_macro_auroc() -> None:
    scored = [{"point": point(1), "val_macro_auroc": 0.61, "val_accuracy": 0.99},
              {"point": point(4), "val_macro_auroc": 0.74, "val_accuracy": 0.10},
              {"point": point(8), "val_macro_auroc": 0.70, "val_accuracy": 0.50}]
    assert choose(scored, "max-val-macro-auroc")["point"] == point(4)


def test_macro_auroc_rule_keeps_the_first_listed_point_on_a_tie() -> None:
    scored = [{"point": point(1), "val_macro_auroc": 0.7},
              {"point": point(8), "val_macro_auroc": 0.7 + 1e-12}]
    assert choose(scored, "max-val-macro-auroc")["point"] == point(1)


def test_macro_auroc_rule_ranks_an_undefined_score_below_every_number() -> None:
    scored = [{"point": point(1), "val_macro_auroc": math.nan},
              {"point": point(8), "val_macro_auroc": 0.2}]
    assert choose(scored, "max-val-macro-auroc")["point"] == point(8)


def test_verdict_on_macro_auroc_from_hand_written_seed_values() -> None:
    # none: mean 0.72, std 0.02; chain-online: mean 0.77 (gain 0.05 > spread 0.02): better;
    # chain-random: mean 0.73, std 0.03 (gain 0.01 <= spread 0.03): within spread;
    # pgd-advprop: mean 0.62, std 0.01 (gain -0.10 < -0.02): worse
    res = hand_results({"none": {"macro_auroc": [0.70, 0.72, 0.74]},
                        "chain-online": {"macro_auroc": [0.76, 0.77, 0.78]},
                        "chain-random": {"macro_auroc": [0.70, 0.73, 0.76]},
                        "pgd-advprop": {"macro_auroc": [0.61, 0.62, 0.63]}})
    got = {v["arm"]: v for v in verdicts_vs_flips(res["runs"], res["arms"], "macro_auroc")}
    assert {a: v["verdict"] for a, v in got.items()} == {
        "chain-online": "better", "chain-random": "within spread", "pgd-advprop": "worse"}
    assert got["chain-online"]["gain"] == pytest.approx(0.05)
    assert got["chain-online"]["spread"] == pytest.approx(0.02)
    assert got["chain-random"]["spread"] == pytest.approx(0.03)


# -- the matched control ------------------------------------------------------------------------
def test_matched_control_takes_the_point_chosen_for_its_source() -> None:
    choices = {"chain-online": {"point": point(4), "val_macro_auroc": 0.7}}
    got = matched_choices({"chain-random": "chain-online"}, choices)
    assert got == {"chain-random": {"point": point(4), "matched_to": "chain-online"}}


@pytest.mark.parametrize("matched, arms, message", [
    ({"chain-random": "chain-online"}, ["none", "chain-random"], "not in arms"),
    ({"chain-random": "pgd-advprop"}, ["chain-random", "pgd-advprop"], "different attacks"),
    ({"chain-random": "chain-random"}, ["chain-random"], "not itself a control"),
    ({"none": "chain-online"}, ["none", "chain-online"], "not an online arm"),
])
def test_a_bad_matched_pair_is_one_line_naming_it(matched: dict[str, str], arms: list[str],
                                                  message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        validate_config({"arms": arms, "online": {"matched": matched}})
    assert "online.matched" in str(info.value) and "\n" not in str(info.value)


def test_matched_chain_random_trains_at_the_severity_chain_online_chose(ml_run: MlRun) -> None:
    out, results = ml_run
    sel = json.loads((out / "selection" / "selection.json").read_text())
    assert sel["choices"]["chain-random"] == {"point": sel["choices"]["chain-online"]["point"],
                                              "matched_to": "chain-online"}
    assert not (out / "selection" / "chain-random").exists()  # never searched
    chosen = sel["choices"]["chain-online"]["point"]
    for r in results["runs"]:
        if r["arm"] == "chain-random":
            assert r["online"]["chosen_on_validation"] == chosen
            assert r["online"]["eps"] == pytest.approx(chosen["eps"])  # 1/255 units


# -- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"arms": ["none", "mixup"], "online": {}}, r"arms: \['mixup'\] mix one-hot class labels"),
    ({"online": {"selection": {"rule": "max-val-accuracy"}}},
     "online.selection.rule: max-val-accuracy does not apply"),
    ({"robustness": {"autoattack_images": 2}}, "robustness.autoattack_images"),
])
def test_settings_that_need_single_labels_are_refused_in_one_line(
        tmp_path: Path, manifest: Path, change: dict[str, Any], message: str) -> None:
    raw = {**tiny_config(manifest), **change}
    with pytest.raises(ValueError, match=message) as info:
        prepare(validate_config(raw), tmp_path / "run", quiet_log)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "run.json").exists()  # refused before anything is written


# -- end to end ---------------------------------------------------------------------------------
def test_tiny_multilabel_experiment_records_macro_auroc_per_arm_and_seed(ml_run: MlRun) -> None:
    out, results = ml_run
    assert results["task"] == "multilabel" and results["primary_metric"] == "macro_auroc"
    assert results["finished"] == results["planned"] == len(ARMS) * 2
    assert sorted((r["arm"], r["seed"]) for r in results["runs"]) == sorted(
        (a, s) for a in ARMS for s in (0, 1))
    labels = np.array([[np.nan if v is None else v for v in row]
                       for row in results["test_labels"]])
    for r in results["runs"]:
        probs = np.array(json.loads((out / f"seed-{r['seed']}" / "results" /
                                     f"{r['arm']}.json").read_text())["probs"])
        # the reference: scikit-learn's AUROC per finding over its known labels, then the mean
        aucs = [roc_auc_score(labels[known, k], probs[known, k])
                for k in range(3) if len(set(labels[known := ~np.isnan(labels[:, k]), k])) == 2]
        assert r["metrics"]["macro_auroc"] == pytest.approx(np.mean(aucs), abs=1e-5)
        for key in ("auroc_mladv", "auroc_pgd_8", "auroc_noise_0.05", "auroc_drop_mladv",
                    "flip_rate_mladv", "flip_rate_pgd_8"):
            assert key in r["metrics"], key
        assert 0.0 <= r["metrics"]["flip_rate_pgd_8"] <= 1.0


def test_multilabel_report_shows_the_verdict_and_the_per_finding_table(ml_run: MlRun) -> None:
    out, results = ml_run
    report = (out / "report.md").read_text()
    assert "Macro AUROC by arm, and the verdict against flips" in report
    assert "Per-finding AUROC" in report and all(f in report for f in FINDINGS)
    assert "matched to `chain-online`" in report
    assert {v["arm"] for v in results["verdicts"]} == set(ARMS) - {"none"}


# -- the config of the real run ----------------------------------------------------------------
def test_nih14_config_fixes_arms_seeds_rule_and_the_matched_control() -> None:
    cfg = load_config(NIH14_CPU)
    assert cfg.arms == ["none", "chain-online", "chain-random", "pgd-advprop",
                        "multi-loss+projection"]
    assert len(cfg.seed_list()) >= 3 and cfg.arch == "resnet18"
    assert cfg.online.selection.rule == "max-val-macro-auroc"
    assert cfg.online.matched == {"chain-random": "chain-online"}
    assert cfg.data == "../shared/data/nih14"
    assert (cfg.image_size, cfg.train.epochs) == (48, 4)  # the size the comment's estimate fits


def test_nih14_config_prepares_on_the_real_sample_without_refusal(tmp_path: Path) -> None:
    root = require_nih14()
    cfg = load_config(NIH14_CPU, {"data": str(root), "progress": False})
    run = prepare(cfg, tmp_path / "run", quiet_log)  # the task checks pass before any training
    assert run.train.task == "multilabel" and len(run.classes) == 14
    assert len(run.train) + len(run.test) == 1073
    assert not set(run.train.groups) & set(run.test.groups)  # patient-aware
    assert len(run.robust_index) == 96 == len(set(run.robust_index))
