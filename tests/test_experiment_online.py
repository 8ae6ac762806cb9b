"""The online / AdvProp arms of the experiment: validation-only grid search, evaluation beyond
accuracy (ECE, own-model PGD, AutoAttack), the verdict rule, the report, config errors."""
from __future__ import annotations

import json

import pytest
import torch

import mladv.experiment.selection as sel_mod
from experiment_helpers import hand_results, run_quietly
from mladv.experiment import load_config, run_experiment
from mladv.experiment.arms import ARMS, online_options
from mladv.experiment.config import validate_config
from mladv.experiment.online_report import best_classic, cost_multiplier, moonshot
from mladv.experiment.run import prepare, report_experiment
from mladv.experiment.selection import choose, select_online
from mladv.logs import quiet_log
from mladv.models import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ONLINE = {"name": "mini-online", "data": "phantoms:12", "image_size": 16, "arch": "small_cnn",
          "seeds": 2, "arms": ["none", "pgd-online", "mladv-advprop"],
          "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
          "pgd": {"steps": 2}, "mladv": {"steps": 2},
          "online": {"grid": {"eps": [1, 4]}, "selection": {"val_size": 0.25, "seed": 0}},
          "robustness": {"attacks": ["mladv"], "max_images": 6, "pgd_eps": [2, 8],
                         "autoattack_images": 3, "autoattack_square_queries": 5,
                         "noise_sigmas": [0.05]},
          "progress": False}


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    return run_quietly(tmp_path_factory, "online", ONLINE)


def test_online_arms_run_end_to_end_with_every_metric(online_run):
    out, results = online_run
    assert results["arms"] == ONLINE["arms"] and results["finished"] == results["planned"] == 6
    for r in results["runs"]:
        m = r["metrics"]
        for key in ("accuracy", "ece", "acc_mladv", "acc_pgd_2", "acc_pgd_8",
                    "acc_autoattack_2", "acc_noise_0.05"):
            assert 0.0 <= m[key] <= 1.0, (r["arm"], key)
    sel = json.loads((out / "selection" / "selection.json").read_text())
    for r in results["runs"]:
        if r["arm"] != "none":  # trained with the point chosen on validation
            chosen = sel["choices"][r["arm"]]["point"]
            assert r["online"]["chosen_on_validation"] == chosen
            assert r["online"]["eps"] == pytest.approx(chosen["eps"])
            assert r["online"]["mode"] == ARMS[r["arm"]].mode
    # the advprop checkpoint holds its twins beside a plain model state
    _, ckpt = load_checkpoint(out / "seed-0" / "models" / "mladv-advprop.pt")
    assert ckpt["adversarial"]["mode"] == "advprop" and ckpt["twin_bn"]
    assert not any("twin" in k for k in ckpt["state_dict"])
    report = (out / "report.md").read_text()
    assert "Online and AdvProp arms: the verdict" in report and "Moonshot target" in report
    assert "figures/flips_curve.png" in report and (out / "figures" / "flips_curve.png").is_file()
    assert "PARTIAL" not in report and "IN PROGRESS" not in report
    assert report.count("| yes |") == 2  # one chosen grid point per online arm


def test_selection_trains_each_point_once_and_resumes(online_run, monkeypatch):
    out, results = online_run
    files = sorted(str(p.relative_to(out / "selection"))
                   for p in (out / "selection").glob("*/*.json"))
    assert files == sorted([f"{arm}/eps{e}-steps1-fracall.json"
                            for arm in ("mladv-advprop", "pgd-online") for e in (1, 4)]
                           + ["none/flips.json"])  # 2 arms x 2 eps, and flips
    hist = json.loads((out / "selection" / "none" / "flips.json").read_text())["history"]
    assert len(hist) == ONLINE["train"]["epochs"] and all("val_accuracy" in h for h in hist)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished grid point was trained again")
    monkeypatch.setattr(sel_mod, "train_point", no_training)
    again = run_experiment(validate_config(ONLINE), out, log=quiet_log)
    key = ("pgd-online", "accuracy")
    assert again["summary"][key[0]][key[1]] == results["summary"][key[0]][key[1]]


class Poison:
    """Stands in for the test split: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the selection phase touched the test split ({name})")

    def __len__(self):
        raise AssertionError("the selection phase touched the test split (len)")


def test_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    cfg = validate_config({**ONLINE, "arms": ["none", "pgd-advprop"], "seeds": 1})
    run = prepare(cfg, tmp_path / "run", quiet_log)
    test_rows = {tuple(x.flatten().tolist()) for x in run.test.images}
    train_rows = {tuple(x.flatten().tolist()) for x in run.train.images}
    seen: list[torch.Tensor] = []
    real = sel_mod.predict_logits

    def spy(model, images, *args, **kwargs):
        seen.append(images)
        return real(model, images, *args, **kwargs)
    monkeypatch.setattr(sel_mod, "predict_logits", spy)
    run.test = Poison()
    out = select_online(run)
    assert out["choices"].keys() == {"pgd-advprop"}
    assert seen and all(tuple(x.flatten().tolist()) in train_rows
                        and tuple(x.flatten().tolist()) not in test_rows
                        for batch in seen for x in batch)
    assert out["n_train"] + out["n_val"] == len(run.train)


def test_rule_picks_the_highest_validation_accuracy_and_the_first_on_ties():
    pts = [{"point": {"eps": e}, "val_accuracy": a} for e, a in ((1, 0.80), (2, 0.85), (4, 0.85))]
    assert choose(pts, "max-val-accuracy")["point"] == {"eps": 2}
    assert choose(pts[:1], "max-val-accuracy")["point"] == {"eps": 1}
    assert choose([pts[2], pts[1]], "max-val-accuracy")["point"] == {"eps": 4}
    with pytest.raises(ValueError, match="unknown selection rule"):
        choose(pts, "min-test-error")


def test_moonshot_on_hand_numbers_better_is_met_and_a_tie_without_the_pgd_gain_is_not():
    def arm(accs, pgd2):
        return {"accuracy": accs, "acc_pgd_2": pgd2}
    results = hand_results({
        "none": arm([0.90, 0.92, 0.94], [0.1, 0.1, 0.1]),            # std 0.02
        "mladv-online": arm([0.93, 0.95, 0.97], [0.5, 0.5, 0.5]),    # +0.03 > 0.02: better
        "mladv-advprop": arm([0.89, 0.91, 0.93], [0.3, 0.3, 0.3]),   # -0.01 tie, pgd +0.2 < 0.3
        "multi-loss": arm([0.91, 0.92, 0.93], [0.1, 0.1, 0.1])})
    assert best_classic(results) == "multi-loss"
    assert [line.rsplit("Target ", 1)[1] for line in moonshot(results)] == ["MET.", "NOT met."]


def test_cost_multiplier_is_train_time_over_flips_in_the_same_seed():
    runs = [{"arm": "none", "seed": 0, "timings": {"train_wall_s": 10.0, "train_cpu_s": 20.0}},
            {"arm": "pgd-online", "seed": 0, "timings": {"train_wall_s": 30.0,
                                                         "train_cpu_s": 40.0}},
            {"arm": "multi-loss", "seed": 0, "timings": {"train_wall_s": 20.0, "train_cpu_s": 20.0,
                                                         "craft_wall_s": 5.0}}]
    results = {"seeds": [0, 1], "runs": runs}
    assert cost_multiplier(results, "pgd-online") == pytest.approx(3.0)
    assert cost_multiplier(results, "pgd-online", "cpu") == pytest.approx(2.0)
    assert cost_multiplier(results, "multi-loss") == pytest.approx(2.5)


def test_cost_multiplier_leaves_out_seeds_run_with_other_thread_counts():
    def row(arm, seed, wall, threads):
        return {"arm": arm, "seed": seed, "timings": {"train_wall_s": wall, "train_cpu_s": wall,
                                                      "torch_threads": threads}}
    runs = [row("none", 0, 10.0, 1), row("pgd-online", 0, 30.0, 1),
            row("none", 1, 10.0, 1), row("pgd-online", 1, 15.0, 2),
            row("mladv-online", 0, 15.0, 2)]
    results = {"seeds": [0, 1], "runs": runs}
    assert cost_multiplier(results, "pgd-online") == pytest.approx(3.0)
    assert cost_multiplier(results, "mladv-online") is None


def test_online_arms_take_config_options_but_not_steps_or_refine():
    opts = online_options("mladv-online", {"steps": 5}, {"steps": 5, "refine": 3, "tau": 0.2})
    assert opts == {"tau": 0.2}
    assert online_options("pgd-advprop", {"steps": 5, "alpha": 0.1}, {}) == {}
    with pytest.raises(ValueError, match="not an online arm"):
        online_options("pgd-adv", {}, {})


def test_a_run_without_the_full_method_has_no_full_method_verdict_section(online_run):
    out, _ = online_run
    md = (out / "report.md").read_text()
    assert "Online and AdvProp arms: the verdict" in md and "full method" not in md


def test_partial_report_says_so(online_run, tmp_path):
    import shutil
    out, _ = online_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "seed-1" / "results" / "mladv-advprop.json").unlink()
    results = report_experiment(validate_config(ONLINE), copy, log=quiet_log)
    assert results["finished"] == 5 and results["summary"]["mladv-advprop"]["accuracy"]["n"] == 1
    assert "PARTIAL REPORT: 5 of 6" in (copy / "report.md").read_text()
    (copy / "selection" / "selection.json").unlink()  # a grid search still running
    (copy / "selection" / "pgd-online" / "eps4-steps1-fracall.json").unlink()
    report_experiment(validate_config(ONLINE), copy, log=quiet_log)
    text = (copy / "report.md").read_text()
    assert "GRID SEARCH IN PROGRESS: 3 of 4 grid points" in text and "| yes |" not in text
    assert (copy / "figures" / "flips_curve.png").is_file()


@pytest.mark.parametrize("text, message", [
    ("online: {grid: {steps: [0]}}", "online.grid.steps"),
    ("online: {grid: {eps: [0.004]}}", "1/255 units"),
    ("online: {grid: {fraction: [1.5]}}", "online.grid.fraction"),
    ("online: {selection: {val_size: 1.5}}", "online.selection.val_size"),
    ("online: {selection: {rule: best-test}}", "unknown selection rule"),
    ("online: {grid: {epss: [1]}}", "online.grid.epss"),
    ("robustness: {pgd_eps: [0]}", "robustness.pgd_eps"),
])
def test_bad_online_options_give_one_line_at_load(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: x\narms: [none, pgd-online]\n{text}\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    line = str(err.value)
    assert "\n" not in line and message in line and f"{path}:3" in line


def test_shipped_online_configs_are_valid():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "configs"
    cpu = load_config(root / "cxr3-online.yaml")
    assert cpu.image_size == 64 and cpu.arch == "resnet18" and len(cpu.seed_list()) >= 3
    assert {"none", "pgd-online", "pgd-advprop", "mladv-online", "mladv-advprop"} <= set(cpu.arms)
    assert cpu.robustness.pgd_eps == [2, 8] and cpu.robustness.autoattack_images > 0
    gpu = load_config(root / "cxr3-online-gpu.yaml")
    chain_arms = {"chain-random", "chain-online", "chain-advprop"}  # configs/full-cpu-chain.yaml
    assert set(ARMS) - chain_arms == set(gpu.arms) and gpu.image_size == 128


def test_grid_points_survive_a_robustness_change_but_not_a_grid_change(tmp_path):
    cfg = validate_config({**ONLINE, "arms": ["none", "pgd-online"], "seeds": 1})
    select_online(prepare(cfg, tmp_path / "run", quiet_log))
    lines: list[str] = []
    more_aa = {**ONLINE["robustness"], "autoattack_images": 2}
    prepare(validate_config({**ONLINE, "arms": ["none", "pgd-online"], "robustness": more_aa}),
            tmp_path / "run", lines.append)
    assert "autoattack_images" in lines[0] and "kept" in lines[0]
    other_grid = {**ONLINE["online"], "grid": {"eps": [1, 2]}}
    with pytest.raises(ValueError, match="selection/"):
        prepare(validate_config({**ONLINE, "online": other_grid, "robustness": more_aa}),
                tmp_path / "run", quiet_log)
