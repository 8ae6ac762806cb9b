"""``mladv evaluate``: the report card of our checkpoints and of torchvision state dicts."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math

import pytest
import torch
import torchvision

from mladv.cli import main
from mladv.evaluate import (
    auroc,
    card_blocks,
    macro_f1,
    model_from_state_dict,
    options_record,
    per_class,
    report_card,
    trained_families,
)
from mladv.models import load_checkpoint
from mladv.robustness import SHIFT_SEVERITIES, SHIFT_TRANSFORMS, RobustnessOptions

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--max-images", "6", "--pgd-eps", "2", "--pgd-steps", "2", "--no-mladv",
         "--min-eps-images", "0", "--bootstrap", "20"]


def run(args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, one_thread):
    """A tiny_cnn trained by the CLI for one epoch on 36 phantoms of 24 px."""
    out = tmp_path_factory.mktemp("train")
    assert run(["train", "phantoms:12", "--arch", "tiny_cnn", "--image-size", "24",
                "--epochs", "1", "--out", str(out)]) == 0
    return out / "model.pt"


def test_macro_f1_is_the_unweighted_mean_of_per_class_f1():
    pred, labels = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    # class 0: P 1/2 R 1/2 F1 1/2; class 1: P 1 R 1/2 F1 2/3; class 2: P 2/3 R 1 F1 4/5
    assert macro_f1(pred, labels, 3) == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    assert macro_f1(pred, labels, 4) == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 4)


def test_card_text_formats_numbers_through_the_one_formatter():
    """Four decimals as before ``reporting.fmt`` took over; a NaN (AutoAttack with no image
    left) reads ``n/a``, as in every other report; the CI and the column's image count beside
    each number; the card opens with the scored-images line."""
    opts = options_record(RobustnessOptions(attacks=(), pgd_eps=(2.0,), pgd_options={"steps": 10},
                                            autoattack_images=16, square_queries=100,
                                            noise_sigmas=(), shift_severities=(0.5, 1.0)))
    card = {"n": 12, "n_robust": 6, "classes": ["a", "b"], "seed": 0, "options": opts,
            "scored": "12 of 40 images scored: why.",
            "metrics": {"accuracy": 0.83333, "macro_f1": 0.8, "ece": 0.04321,
                        "acc_pgd_2": 0.5, "acc_autoattack_2": math.nan,
                        "shift_gamma_0.5": 0.9, "shift_gamma_1": 0.8},
            "sizes": {"accuracy": 12, "acc_pgd_2": 6},
            "ci": {"accuracy": {"low": 0.5, "high": 0.91666}}}
    blocks = card_blocks(card)
    assert blocks[1] == ("p", "12 of 40 images scored: why.")
    tables = [b[2] for b in blocks if b[0] == "table"]
    aa = (f"AutoAttack standard (Croce & Hein 2020, pyautoattack "
          f"{importlib.metadata.version('pyautoattack')}), seed 0, Square 100 queries (not the "
          "standard 5000) at 2/255")
    assert tables == [[["accuracy (clean)", "0.8333", "[0.500, 0.917]", "12"],
                       ["macro-F1", "0.8000", "", ""], ["ECE (15 bins)", "0.0432", "", ""],
                       ["PGD-10 at 2/255", "0.5000", "", "6"], [aa, "n/a", "", ""]],
                      [["gamma", "0.9000", "0.8000"]]]


def test_report_card_holds_every_number(tiny_trained):
    model, x, y = tiny_trained
    card = report_card(model, x[::10], y[::10], ["a", "b", "c"],
                       RobustnessOptions(attacks=("mladv",), pgd_eps=(2.0, 8.0),
                                         pgd_options={"steps": 2}, mladv_options={"steps": 1},
                                         max_images=6, autoattack_images=2, square_queries=5,
                                         bm3d_images=2, acquisition_shift=True,
                                         noise_sigmas=(0.1,), min_eps_images=2,
                                         min_eps_steps=2, bootstrap=20))
    m = card["metrics"]
    accuracies = {"acc_pgd_2", "acc_pgd_8", "acc_mladv", "acc_chain", "acc_autoattack_2",
                  "acc_noise_0.1", "acc_bm3d_clean", "acc_bm3d_pgd_8"} | {
        f"shift_{t}_{s:g}" for t in SHIFT_TRANSFORMS for s in SHIFT_SEVERITIES}
    assert set(m) == {"accuracy", "macro_f1", "ece", "auroc", "acc_shift_mean",
                      "median_min_eps"} | accuracies
    assert (card["n"], card["n_robust"], card["n_autoattack"]) == (12, 6, 2)
    assert set(card["ci"]) == {"accuracy", "auroc"} | {
        k for k in accuracies if not k.startswith("shift_")}  # per severity: tables only
    assert card["sizes"]["acc_pgd_2"] == 6 and card["sizes"]["acc_bm3d_clean"] == 2
    assert card["sizes"]["acc_noise_0.1"] == 12 and card["sizes"]["acc_autoattack_2"] == 2
    assert set(card["per_class"]) == {"a", "b", "c"}
    assert all(0.0 <= v <= 1.0 for k, v in m.items() if k != "median_min_eps")


def test_the_card_s_numbers_are_the_robustness_report_s(tiny_trained):
    """One evaluation path: every number the card shows of mladv.robustness is the report's,
    for the same options and seed (the card adds macro-F1 and AUROC only)."""
    from mladv.robustness import robustness_report
    model, x, y = tiny_trained
    x, y = x[::10], y[::10]  # 4 images per class (the first 12 are all of class 0)
    opts = RobustnessOptions(attacks=(), pgd_eps=(2.0,), pgd_options={"steps": 2}, max_images=6,
                             subset_seed=3, autoattack_images=3, square_queries=5,
                             noise_sigmas=(0.1,))
    card = report_card(model, x, y, ["a", "b", "c"], opts, seed=3)
    report = robustness_report(model, x, y, opts, seed=3, n_classes=3)
    assert {k: v for k, v in card["metrics"].items() if k not in ("macro_f1", "auroc")} == {
        k: v for k, v in report.items()
        if k not in ("n", "n_robust", "n_autoattack", "sizes", "gradient_masking")}
    full = report_card(model, x, y, ["a", "b", "c"], RobustnessOptions(
        attacks=(), pgd_eps=(2.0,), pgd_options={"steps": 2}, max_images=None, noise_sigmas=()))
    assert full["n_robust"] == 12  # max_images None: every image


def test_per_class_sensitivity_specificity_and_auroc_by_hand():
    """Labels 0 0 1 1 2, predictions 0 1 1 1 0 (arg-max of the probabilities): class 0
    per class by hand below."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1],
                          [0.5, 0.1, 0.4]])
    y = torch.tensor([0, 0, 1, 1, 2])
    pc = per_class(probs, y, ["a", "b", "c"])
    # class a: positives {0, 1} predicted a: {0} -> 1/2; negatives {2, 3, 4} not a: {2, 3} -> 2/3
    # its scores 0.7 0.3 vs 0.2 0.1 0.5: pairs won 3 + 2 of 6 -> 5/6
    assert pc["a"] == pytest.approx({"auroc": 5 / 6, "sensitivity": 1 / 2, "specificity": 2 / 3})
    # class b: positives {2, 3} both b -> 1; negatives {0, 1, 4}: 1 predicted b -> 2/3;
    # scores 0.5 0.8 vs 0.2 0.6 0.1: 2 + 3 of 6 -> 5/6
    assert pc["b"] == pytest.approx({"auroc": 5 / 6, "sensitivity": 1.0, "specificity": 2 / 3})
    # class c: positive {4} predicted a -> 0; negatives all not c -> 1; 0.4 above all 4 -> 1
    assert pc["c"] == pytest.approx({"auroc": 1.0, "sensitivity": 0.0, "specificity": 1.0})


def test_binary_auroc_is_of_the_positive_class_probability():
    """Positive scores 0.9, 0.4 against negative 0.6, 0.1: 3 of 4 pairs ordered -> 0.75."""
    probs = torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.4, 0.6], [0.9, 0.1]])
    assert auroc(probs, torch.tensor([1, 1, 0, 0])) == 0.75
    assert math.isnan(auroc(probs, torch.tensor([1, 1, 1, 1])))


def test_evaluate_a_checkpoint_writes_json_markdown_and_figure(ckpt, tmp_path, capsys):
    out = tmp_path / "card"
    assert run(["evaluate", str(ckpt), "phantoms:12", *QUICK, "--out", str(out)]) == 0
    card = json.loads((out / "report.json").read_text())
    assert card["source"]["checkpoint"] == str(ckpt) and card["source"]["split"] == "test"
    assert {"accuracy", "macro_f1", "ece", "auroc", "acc_pgd_2", "acc_chain",
            "acc_shift_mean"} <= set(card["metrics"])
    md = (out / "report.md").read_text()
    assert "| macro-F1 |" in md and "](shift.png)" in md and "](examples.png)" in md
    assert (out / "shift.png").stat().st_size > 0 and (out / "examples.png").stat().st_size > 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # self-contained
    assert "](corruption.png)" in md and "## Common corruptions" in md
    assert "6 of 36 images scored: the checkpoint's held-out test split" in capsys.readouterr().out
    assert md.splitlines()[2].startswith("6 of 36 images scored")  # the line under the title


def test_the_provenance_names_the_model_file_its_sha256_the_data_and_the_versions(ckpt, tmp_path):
    out = tmp_path / "card"
    assert run(["evaluate", str(ckpt), "phantoms:12", *QUICK, "--no-shift", "--no-chain",
                "--out", str(out)]) == 0
    prov = json.loads((out / "report.json").read_text())["provenance"]
    assert prov["model file"] == str(ckpt)
    assert prov["model sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert prov["architecture"] == "tiny_cnn" and prov["data"] == "phantoms:12"
    assert prov["training data"] == "phantoms:12" and prov["input"].endswith("DICOM mode voi")
    assert prov["seed"] == 0 and prov["device"] == "cpu"
    assert prov["versions"].startswith(f"mladv {importlib.metadata.version('mladv')}, torch "
                                       f"{torch.__version__}")


def test_an_external_folder_the_model_never_saw_is_scored_whole(ckpt, tmp_path, capsys):
    """Phantoms of another seed written as PNGs: no image the checkpoint trained on, so all
    12 are scored (no 15 % test split), and the first line says so."""
    from mladv.data.phantoms import write_phantoms
    write_phantoms(tmp_path / "other", 4, 24, seed=99)
    out = tmp_path / "card"
    assert run(["evaluate", str(ckpt), str(tmp_path / "other"), *QUICK, "--no-shift",
                "--no-chain", "--out", str(out)]) == 0
    card = json.loads((out / "report.json").read_text())
    assert card["n"] == 12 and card["source"]["split"] == "all"
    assert card["scored"].startswith("12 of 12 images scored: ")
    assert "holds no image" in card["scored"]


def test_split_all_scores_the_training_data_whole_and_test_its_held_out_part(ckpt, tmp_path):
    """On the data it trained on: the default is the held-out split (6 of 36, as training
    printed), --split all every image."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(["evaluate", str(ckpt), "phantoms:12", *QUICK, "--no-shift", "--no-chain",
                "--out", str(a)]) == 0
    assert run(["evaluate", str(ckpt), "phantoms:12", "--split", "all", *QUICK, "--no-shift",
                "--no-chain", "--out", str(b)]) == 0
    assert json.loads((a / "report.json").read_text())["n"] == 6
    assert json.loads((b / "report.json").read_text())["n"] == 36


def test_a_state_dict_of_the_same_network_gives_the_same_card(ckpt, tmp_path):
    """The checkpoint's network saved as a plain state dict (``module.`` prefix, as DDP writes
    it) and evaluated through --arch / --state-dict: the identical report."""
    model, _ = load_checkpoint(ckpt)
    path = tmp_path / "net.pt"
    torch.save({f"module.{k}": v for k, v in model.net.state_dict().items()}, path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(["evaluate", str(ckpt), "phantoms:12", "--split", "all", *QUICK,
                "--out", str(a)]) == 0
    assert run(["evaluate", "phantoms:12", "--arch", "tiny_cnn", "--state-dict", str(path),
                "--image-size", "24", *QUICK, "--out", str(b)]) == 0
    ma = json.loads((a / "report.json").read_text())["metrics"]
    mb = json.loads((b / "report.json").read_text())["metrics"]
    assert ma == mb


def test_evaluate_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    assert model_from_state_dict("resnet18", path).num_classes == 3
    out = tmp_path / "card"
    assert run(["evaluate", "phantoms:4", "--arch", "resnet18", "--state-dict", str(path),
                "--image-size", "32", "--no-shift", "--no-chain", *QUICK, "--out", str(out)]) == 0
    card = json.loads((out / "report.json").read_text())
    assert card["source"]["arch"] == "resnet18" and card["n"] == 12


@pytest.mark.parametrize("args, needle", [
    (["phantoms:4", "--arch", "resnet18"], "--arch and --state-dict go together"),
    (["a.pt", "b.pt", "c", "d"], "expected CHECKPOINT DATA, A.pt B.pt DATA (A/B)"),
    (["x.pt", "phantoms:4", "--pgd-eps", "0"], "--pgd-eps are in 1/255 units"),
    (["x.pt", "phantoms:4", "--chain-option", "gamma=-1"], "attack 'chain': gamma must be >= 0"),
    (["x.pt", "phantoms:4", "--split", "train"], "--split must be 'test' or 'all'"),
])
def test_bad_input_is_one_line_before_any_work(args, needle, tmp_path, capsys):
    assert run(["evaluate", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_a_state_dict_of_another_architecture_names_the_file(tmp_path, capsys):
    path = tmp_path / "small.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    assert run(["evaluate", "phantoms:4", "--arch", "mobilenet_v3_small", "--state-dict",
                str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err, err


def test_mladv_evaluate_gives_the_experiment_s_numbers_for_the_same_checkpoint_data_options(
        ckpt, tmp_path):
    """One evaluation path: the card of CHECKPOINT on DATA's test split holds, under the same
    keys, exactly the numbers the experiment's measuring step gives the same model on the same
    images with the same options (subset seed = attack seed = 3)."""
    from mladv.crafting import checkpoint_and_split
    from mladv.experiment import measure
    from mladv.experiment.config import validate_config
    from mladv.experiment.state import Run
    from mladv.logs import quiet_log

    out = tmp_path / "card"
    assert run(["evaluate", str(ckpt), "phantoms:12", "--split", "test", "--max-images", "5",
                "--pgd-eps", "2", "--pgd-eps", "8", "--pgd-steps", "2", "--noise-sigma", "0.1",
                "--seed", "3", "--batch-size", "4", "--min-eps-images", "0", "--bootstrap", "0",
                "--out", str(out)]) == 0
    card = json.loads((out / "report.json").read_text())["metrics"]
    cfg = validate_config({
        "name": "t", "data": "phantoms:12", "image_size": 24, "arch": "tiny_cnn", "seeds": 1,
        "arms": ["none"], "eps": 8.0, "pgd": {"steps": 2}, "split": {"seed": 3},
        "robustness": {"attacks": ["mladv"], "max_images": 5, "batch_size": 4,
                       "pgd_eps": [2, 8], "noise_sigmas": [0.1], "acquisition_shift": True}})
    model, test, _ = checkpoint_and_split(ckpt, "phantoms:12", "test",
                                          device=torch.device("cpu"), skip_bad=False)
    experiment = measure.robustness(
        Run(cfg, tmp_path / "unused", torch.device("cpu"), test, test, {},
            measure.robust_subset(test, cfg), quiet_log), model, 3)
    assert len(experiment) == 1 + 2 + 1 + 18 + 2  # mladv, pgd 2 / 8, noise, shift, mean, chain
    assert {k: card[k] for k in experiment} == experiment


def test_a_b_of_two_identical_checkpoints_is_zero_difference_and_no_difference(ckpt, tmp_path,
                                                                                 capsys):
    """The same model file twice: every column's A - B is 0 with the CI [0, 0], McNemar finds
    no discordant image (p = 1), and every verdict reads "no difference"."""
    out = tmp_path / "ab"
    assert run(["evaluate", str(ckpt), str(ckpt), "phantoms:12", *QUICK, "--no-chain",
                "--out", str(out)]) == 0
    ab = json.loads((out / "compare.json").read_text())
    cols = ab["columns"]
    assert {"accuracy", "auroc", "acc_pgd_2", "acc_noise_0.02", "shift_gamma_1"} <= set(cols)
    for key, v in cols.items():
        assert (v["diff"], v["low"], v["high"], v["verdict"]) == (0, 0, 0, "no difference"), key
        assert v["a"] == v["b"]
        if key != "auroc":
            assert (v["a_only"], v["b_only"], v["p_mcnemar"]) == (0, 0, 1.0)
    assert "| no difference |" in (out / "compare.md").read_text()
    assert "A - B +0.000 [+0.000, +0.000]: no difference" in capsys.readouterr().out


@pytest.mark.parametrize("record, families", [
    ({"arm": "chain-online"}, ["brightness_up", "brightness_down", "contrast_up",
                               "contrast_down", "gamma_corr_up", "gamma_corr_down"]),
    ({"adversarial": {"attack": "chain", "options": {"noise": 0.02}}},
     ["brightness_up", "brightness_down", "contrast_up", "contrast_down", "gamma_corr_up",
      "gamma_corr_down", "gaussian_noise"]),
    ({"arm": "trivialaugment"}, ["brightness_up", "brightness_down", "contrast_up",
                                 "contrast_down"]),
    ({"arm": "pgd-online", "adversarial": {"attack": "pgd"}}, []), ({}, [])])
def test_the_trained_families_follow_the_checkpoint_s_augmentation_record(record, families):
    assert trained_families(record) == families


def test_the_corruption_summary_splits_trained_and_unseen_families_by_hand():
    """Clean accuracy 0.9 on the subset; Gaussian noise 0.8 / 0.6 at severities 1 / 2 (error
    0.3, +0.2 over clean 0.1), gamma up 0.9 / 0.7 (error 0.2, +0.1), gamma trained on."""
    from mladv.robustness import corruption_summary
    cols = {"corr_clean": 0.9, "corr_gaussian_noise_1": 0.8, "corr_gaussian_noise_2": 0.6,
            "corr_gamma_corr_up_1": 0.9, "corr_gamma_corr_up_2": 0.7}
    c = corruption_summary(cols, ["gaussian_noise", "gamma_corr_up"], [1, 2], ["gamma_corr_up"])
    assert c["clean_error"] == pytest.approx(0.1)
    assert c["families"]["gaussian_noise"] == pytest.approx({"error": 0.3, "relative": 0.2})
    assert c["families"]["gamma_corr_up"] == pytest.approx({"error": 0.2, "relative": 0.1})
    assert c["all"]["mce"] == pytest.approx(0.25)
    assert (c["trained"]["families"], c["trained"]["mce"]) == (["gamma_corr_up"],
                                                               pytest.approx(0.2))
    assert (c["unseen"]["families"], c["unseen"]["relative_mce"]) == (["gaussian_noise"],
                                                                      pytest.approx(0.2))
