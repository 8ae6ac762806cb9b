"""``mladv evaluate``: the report card of our checkpoints and of torchvision state dicts."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision

from mladv.cli import main
from mladv.evaluate import (
    CardOptions,
    card_blocks,
    macro_f1,
    model_from_state_dict,
    report_card,
)
from mladv.models import load_checkpoint
from mladv.robustness import SHIFT_SEVERITIES, SHIFT_TRANSFORMS

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--max-images", "6", "--pgd-eps", "2", "--pgd-steps", "2", "--no-mladv"]


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
    left) reads ``n/a``, as in every other report."""
    card = {"n": 12, "n_robust": 6, "classes": ["a", "b"],
            "options": {"ece_bins": 15, "pgd_steps": 10, "pgd_eps": [2.0], "autoattack_eps": 2.0,
                        "autoattack_images": 16, "bm3d_sigma": 0.1, "seed": 0,
                        "severities": [0.5, 1.0]},
            "metrics": {"accuracy": 0.83333, "macro_f1": 0.8, "ece": 0.04321, "pgd_2": 0.5,
                        "autoattack_2": math.nan, "shift_gamma_0.5": 0.9, "shift_gamma_1": 0.8}}
    tables = [b[2] for b in card_blocks(card) if b[0] == "table"]
    assert tables == [[["accuracy", "0.8333"], ["macro-F1", "0.8000"], ["ECE (15 bins)", "0.0432"],
                       ["PGD-10 at 2/255", "0.5000"],
                       ["AutoAttack (standard) at 2/255 on 6 images", "n/a"]],
                      [["gamma", "0.9000", "0.8000"]]]


def test_report_card_holds_every_number(tiny_trained):
    model, x, y = tiny_trained
    card = report_card(model, x[:12], y[:12], ["a", "b", "c"],
                       CardOptions(pgd_eps=(2.0, 8.0), pgd_steps=2, max_images=6,
                                   autoattack_images=2, square_queries=5, bm3d_images=2))
    m = card["metrics"]
    expected = {"accuracy", "macro_f1", "ece", "pgd_2", "pgd_8", "mladv", "chain",
                "autoattack_2", "shift_mean", "bm3d_clean", "bm3d_pgd_8"} | {
        f"shift_{t}_{s:g}" for t in SHIFT_TRANSFORMS for s in SHIFT_SEVERITIES}
    assert set(m) == expected and card["n"] == 12 and card["n_robust"] == 6
    assert all(0.0 <= v <= 1.0 for v in m.values())


def test_report_card_uses_the_experiments_evaluation_path(tiny_trained):
    """The card's PGD and AutoAttack columns equal mladv.robustness's (the experiment's path):
    the same class-stratified subset, the same per-batch seeds."""
    from mladv.robustness import RobustnessOptions, robustness_columns
    model, x, y = tiny_trained
    x, y = x[::10], y[::10]  # 4 images per class (the first 12 are all of class 0)
    card = report_card(model, x, y, ["a", "b", "c"],
                       CardOptions(pgd_eps=(2.0,), pgd_steps=2, max_images=6, mladv=False,
                                   chain=False, shift=False, autoattack_images=3,
                                   square_queries=5, seed=3))["metrics"]
    cols = robustness_columns(model, x, y, RobustnessOptions(
        attacks=(), pgd_eps=(2.0,), pgd_options={"steps": 2}, max_images=6, subset_seed=3,
        autoattack_images=3, square_queries=5, noise_sigmas=()), seed=3, n_classes=3)
    assert card["pgd_2"] == cols["acc_pgd_2"]
    assert card["autoattack_2"] == cols["acc_autoattack_2"]
    full = report_card(model, x, y, ["a", "b", "c"], CardOptions(
        pgd_eps=(2.0,), pgd_steps=2, max_images=None, mladv=False, chain=False, shift=False))
    assert full["n_robust"] == 12  # max_images None: every image


def test_evaluate_a_checkpoint_writes_json_markdown_and_figure(ckpt, tmp_path, capsys):
    out = tmp_path / "card"
    assert run(["evaluate", str(ckpt), "phantoms:12", *QUICK, "--out", str(out)]) == 0
    card = json.loads((out / "report.json").read_text())
    assert card["source"]["checkpoint"] == str(ckpt) and card["source"]["split"] == "test"
    assert {"accuracy", "macro_f1", "ece", "pgd_2", "chain", "shift_mean"} <= set(card["metrics"])
    md = (out / "report.md").read_text()
    assert "| macro-F1 |" in md and "](shift.png)" in md and "](examples.png)" in md
    assert (out / "shift.png").stat().st_size > 0 and (out / "examples.png").stat().st_size > 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # self-contained
    assert "wrote" in capsys.readouterr().out


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
    (["a.pt", "b", "c"], "expected CHECKPOINT DATA"),
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
