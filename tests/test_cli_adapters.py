"""``mladv evaluate --model SPEC DATA``: a practitioner's model (mladv.adapters) on the command
line: a torchxrayvision DenseNet-121 with random weights saved to a local file (no download) on
a tiny NIH-layout folder writes the multilabel card; a TorchScript multiclass model on phantoms
writes the multiclass card; every bad combination is one line before any compute.

Expected values come from torchxrayvision itself (its DenseNet fed ``2048 x - 1024`` with its
operating-point scaling off), scikit-learn's AUROC, hashlib and arithmetic by hand."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from adapter_factories import make
from cli_helpers import one_line_error, run

xrv = pytest.importorskip("torchxrayvision")

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = "densenet121-res224-all"
SPEC = f"xrv:{ALL}"
# the cheapest card: one PGD budget of one step on 2 images, one noise level, no bootstrap
CHEAP = ["--pgd-eps", "8", "--pgd-steps", "1", "--max-images", "2", "--no-mladv", "--no-chain",
         "--no-shift", "--corruptions", "none", "--min-eps-images", "0", "--noise-sigma", "0.05",
         "--bootstrap", "0"]
# image, NIH "Finding Labels", patient
NIH_ROWS = [("00000001_000.png", "Effusion", 1), ("00000002_000.png", "No Finding", 2),
            ("00000003_000.png", "Effusion|Mass", 3), ("00000004_000.png", "No Finding", 4)]
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position")


def _write_png(path: Path, seed: int, size: int = 224) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture(scope="module")
def xrv_weights(tmp_path_factory):
    """A torchxrayvision DenseNet-121 with random weights (seed 0), its state dict in a file."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = xrv.models.DenseNet(weights=None).eval()
    path = tmp_path_factory.mktemp("xrv") / "densenet-random.pt"
    torch.save(net.state_dict(), path)
    return path, net


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory):
    """NIH's published layout with 4 generated 224 px images (so reading them is lossless)."""
    root = tmp_path_factory.mktemp("nih")
    pixels = [_write_png(root / "images_001" / "images" / name, seed)
              for seed, (name, _, _) in enumerate(NIH_ROWS)]
    lines = [NIH_HEADER, *[f"{n},{f},0,{p},50,M,PA" for n, f, p in NIH_ROWS]]
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return root, np.stack(pixels)


@pytest.fixture(scope="module")
def xrv_card(xrv_weights, nih_root, tmp_path_factory):
    weights, _ = xrv_weights
    out = tmp_path_factory.mktemp("card")
    assert run(["evaluate", "--model", SPEC, "--weights-file", str(weights),
                f"nih:{nih_root[0]}", *CHEAP, "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def test_xrv_card_is_multilabel_over_the_models_18_findings(xrv_card):
    card, _ = xrv_card
    assert card["task"] == "multilabel"
    assert card["findings"] == xrv.models.model_urls[ALL]["labels"]
    assert card["n"] == 4


def test_xrv_card_auroc_of_each_finding_is_sklearn_s_on_xrv_s_own_logits(xrv_card, xrv_weights,
                                                                         nih_root):
    """Effusion (images 1 and 3 positive) and Mass (image 3): the AUROC of xrv's own raw logits
    for [0, 1] images mapped to its [-1024, 1024] range."""
    card, _ = xrv_card
    _, net = xrv_weights
    x = torch.from_numpy(nih_root[1]).float().div(255).unsqueeze(1) * 2048 - 1024
    with torch.no_grad():
        logits = net(x).double().numpy()  # op_threshs None: raw logits, no sigmoid
    labels = xrv.models.model_urls[ALL]["labels"]
    for finding, truth in (("Effusion", [1, 0, 1, 0]), ("Mass", [0, 0, 1, 0])):
        k = labels.index(finding)
        assert card["auroc"]["clean"][k] == pytest.approx(roc_auc_score(truth, logits[:, k]),
                                                          abs=1e-6)


def test_xrv_findings_nih_does_not_label_are_masked(xrv_card):
    """xrv's four non-NIH findings are NaN (null) targets; the 12 other NIH findings are all
    negative on these 4 images, so only Effusion and Mass have an AUROC."""
    card, _ = xrv_card
    labels = xrv.models.model_urls[ALL]["labels"]
    auroc = dict(zip(labels, card["auroc"]["clean"]))
    for finding in ("Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"):
        assert auroc[finding] is None
        assert card["operating_point"]["positives"][labels.index(finding)] == 0
        assert card["operating_point"]["negatives"][labels.index(finding)] == 0
    assert card["n_defined"]["clean"] == 2


def test_xrv_card_provenance_states_the_adapter_and_its_weights(xrv_card, xrv_weights):
    card, _ = xrv_card
    weights, _ = xrv_weights
    prov = card["provenance"]
    assert prov["model"] == SPEC
    assert prov["weights file"] == str(weights)
    assert prov["weights sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert prov["input range"] == "[-1024, 1024]" and prov["channels"] == 1
    effusion = xrv.models.model_urls[ALL]["op_threshs"][7]  # labels[7] == "Effusion"
    assert f"Effusion {effusion:.4g}" in prov["thresholds"]


def test_xrv_card_translates_eps_into_the_models_units(xrv_card):
    """8/255 of [0, 1] is 8 x 2048 / 255 = 64.2509... of xrv's [-1024, 1024]."""
    card, markdown = xrv_card
    line = "8/255 of [0, 1] = 64.25 in the model's [-1024, 1024]"
    assert card["provenance"]["eps in the model's units"] == line
    assert line in markdown


# -- a TorchScript multiclass model on phantoms --------------------------------------------------
@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    net = make(3)
    path = tmp_path_factory.mktemp("ts") / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    return path, net


def test_torchscript_multiclass_card_scores_every_phantom_in_the_models_range(scripted,
                                                                              tmp_path):
    """--input-range -1,1 (a negative LO parsed as a value): the model sees 2 x - 1; the card's
    clean accuracy is that of argmax(model(2 x - 1)) on the 6 phantoms."""
    from mladv.data import load_source

    path, net = scripted
    out = tmp_path / "card"
    assert run(["evaluate", "--model", f"torchscript:{path}", "--task", "multiclass",
                "--input-range", "-1,1", "--image-size", "24", "phantoms:2", *CHEAP,
                "--out", str(out)]) == 0
    card = json.loads((out / "report.json").read_text())
    data = load_source("phantoms:2", 24)
    with torch.no_grad():
        pred = net(data.images * 2 - 1).argmax(1)
    assert card["n"] == 6
    assert card["metrics"]["accuracy"] == pytest.approx((pred == data.labels).float().mean())
    assert card["provenance"]["eps in the model's units"] == \
        "8/255 of [0, 1] = 0.06275 in the model's [-1, 1]"  # 16/255 = 0.0627451
    assert card["provenance"]["weights sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


# -- bad input: one line, exit 2, before any compute ---------------------------------------------
def test_missing_weights_file_is_one_line_naming_it_before_data_is_read(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "densenet.pt"
    assert run(["evaluate", "--model", SPEC, "--weights-file", str(missing),
                f"nih:{tmp_path / 'no-data'}", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "weights file not found", str(missing))


@pytest.mark.parametrize("args, needles", [
    (["x.pt", "phantoms:4", "--model", SPEC], ["--model and a CHECKPOINT exclude each other"]),
    (["phantoms:4", "--model", SPEC, "--input-range", "0,1"],
     ["input_range (--input-range) does not apply to xrv:"]),
    (["phantoms:4", "--model", "onnx:net.onnx"],
     ["model spec must be xrv:NAME, torchscript:FILE or python:pkg.module:factory",
      "onnx:net.onnx"]),
    (["x.pt", "phantoms:4", "--input-range", "0,255"],
     ["--input-range applies to --model SPEC only"]),
    (["phantoms:4", "--model", SPEC, "--split", "test"], ["--split does not apply to --model"]),
    (["phantoms:4", "--model", "torchscript:net.pt"], ["--task multiclass|multilabel"]),
    (["phantoms:4", "--model", "torchscript:net.pt", "--task", "multiclass",
      "--input-range", "1,a"], ["--input-range must be LO,HI"]),
    (["phantoms:4", "--model", "torchscript:net.pt", "--task", "multiclass", "--channels", "2"],
     ["--channels", "must be 1 or 3"]),
])
def test_model_option_misuse_is_one_line(args, needles, tmp_path, capsys):
    assert run(["evaluate", *args, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, *needles)


def test_data_sharing_no_finding_with_the_model_names_both_lists(xrv_weights, tmp_path, capsys):
    weights, _ = xrv_weights
    _write_png(tmp_path / "a.png", 0, 32)
    _write_png(tmp_path / "b.png", 1, 32)
    manifest = tmp_path / "tb.csv"
    manifest.write_text(f"path,patient_id,Tuberculosis\n{tmp_path / 'a.png'},p1,1\n"
                        f"{tmp_path / 'b.png'},p2,0\n")
    assert run(["evaluate", "--model", SPEC, "--weights-file", str(weights), f"csv:{manifest}",
                "--image-size", "32", *CHEAP, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "no finding of the data ['Tuberculosis']", "'Atelectasis'",
                   "'Enlarged Cardiomediastinum'")


def test_multilabel_model_on_single_label_data_is_refused(xrv_weights, tmp_path, capsys):
    weights, _ = xrv_weights
    assert run(["evaluate", "--model", SPEC, "--weights-file", str(weights), "phantoms:2",
                *CHEAP, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, f"{SPEC} is a multilabel model but phantoms:2 is multiclass data")

