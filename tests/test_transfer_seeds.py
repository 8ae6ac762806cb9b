"""Target seeds in ``mladv transfer`` (issue 24): ``configs/transfer-full-cpu.yaml`` (Table 1 in
the paper's ResNet50 family), the ``seeds`` key, mean ± std over target seeds and the paired
patient-level bootstrap CIs of MLAdv's black-box average vs FGSM, GAMA and RayS."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mladv.data import make_phantoms
from mladv.transfer import load_config, run_transfer
from mladv.transfer.config import ModelSpec, TransferConfig
from mladv.transfer.measure import blackbox_cis, seed_summary
from mladv.transfer.run import train_key

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "transfer-full-cpu.yaml"
LITERAL = {"balance": "literal", "style_weight": 1, "origin_weight": 1, "detail_on": "image",
           "tau": 0.5, "kernel_size": 3, "refine": 0}  # README's x_literal

pytestmark = pytest.mark.usefixtures("one_thread")


def small(**changes):
    cfg = {"data": "phantoms:4", "image_size": 24, "source": {"arch": "tiny_cnn"},
           "targets": [{"arch": "tiny_cnn"}, {"arch": "small_cnn"}]}
    cfg.update(changes)
    return TransferConfig.model_validate(cfg)


# -- the config ------------------------------------------------------------------------------

def test_full_cpu_config_is_the_papers_family_at_96_px_with_three_target_seeds():
    cfg = load_config(CONFIG)
    assert (cfg.data, cfg.image_size, cfg.eps, cfg.seed_list()) == (
        "../shared/data/cxr3-full", 96, 8.0, [0, 1, 2])
    assert cfg.source.arch == "resnet50"
    assert [t.arch for t in cfg.targets] == ["resnet101", "vgg16_bn", "resnet152"]
    assert {m.precision for m in [cfg.source, *cfg.targets]} == {"bf16"}


def test_full_cpu_config_runs_every_attack_and_the_paper_literal_mladv():
    cfg = load_config(CONFIG)
    assert [a.name for a in cfg.attacks] == ["fgsm", "pgd", "mifgsm", "pifgsm", "gama", "rays",
                                             "mladv", "mladv"]
    assert cfg.attacks[6].options == {}  # the measured default: the class defaults
    assert (cfg.attacks[7].title, cfg.attacks[7].options) == ("MLAdv (paper-literal)", LITERAL)


# -- seeds ---------------------------------------------------------------------------------

def test_seeds_count_means_seeds_zero_to_n_minus_one_and_a_list_is_used_as_given():
    assert small(seeds=3).seed_list() == [0, 1, 2]
    assert small(seeds=[4, 7]).seed_list() == [4, 7]
    assert small().seed_list() is None


@pytest.mark.parametrize("bad", [[1, 1], [], 0])
def test_bad_seeds_fail_in_one_line_naming_seeds(tmp_path, bad):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**small().model_dump(mode="json"), "seeds": bad}))
    with pytest.raises(ValueError, match=r"seeds") as info:
        load_config(path)
    assert "\n" not in str(info.value).strip()


def test_seeds_refuse_a_target_loaded_from_a_checkpoint():
    with pytest.raises(ValueError, match=r"seeds: target ck is loaded from a checkpoint"):
        small(seeds=2, targets=[{"arch": "tiny_cnn", "name": "ck", "checkpoint": "m.pt"}])


def test_without_seeds_target_i_trains_from_seed_plus_i_as_before():
    cfg = small(seed=5)
    assert [(k, seed, s) for k, _, seed, s in cfg.trained_models()] == [
        ("source", 5, None), ("t1", 6, None), ("t2", 7, None)]


def test_target_seed_s_trains_target_i_from_seed_plus_i_plus_1000_s():
    cfg = small(seed=5, seeds=[0, 2])
    assert [(k, seed, s) for k, _, seed, s in cfg.trained_models()] == [
        ("source", 5, None), ("t1-seed0", 6, 0), ("t1-seed2", 2006, 2), ("t2-seed0", 7, 0),
        ("t2-seed2", 2007, 2)]


def test_train_key_without_precision_is_the_key_from_before_precision():
    cfg, data = small(), make_phantoms(2, 24, seed=0)
    key = train_key(cfg, ModelSpec(arch="tiny_cnn"), data, 3)
    assert set(key) == {"arch", "epochs", "lr", "batch_size", "seed", "image_size", "classes",
                        "train", "n_train"}
    assert train_key(cfg, ModelSpec(arch="tiny_cnn", precision="bf16"), data, 3) == {
        **key, "precision": "bf16"}


# -- mean ± std over seeds, CIs, by hand -----------------------------------------------------------

def test_seed_summary_gives_each_seeds_average_and_mean_and_sample_std_over_seeds():
    groups = [{"key": "t1", "label": "a", "models": {"0": "t1-seed0", "1": "t1-seed1"}},
              {"key": "t2", "label": "b", "models": {"0": "t2-seed0", "1": "t2-seed1"}}]
    success = {"source": 1.0, "t1-seed0": 0.5, "t1-seed1": 0.7, "t2-seed0": 0.2,
               "t2-seed1": 0.4, "blackbox_avg": 0.45}
    out = seed_summary(success, groups)
    assert out["per_seed"]["0"] == pytest.approx({"t1": 0.5, "t2": 0.2, "blackbox_avg": 0.35})
    assert out["per_seed"]["1"] == pytest.approx({"t1": 0.7, "t2": 0.4, "blackbox_avg": 0.55})
    # seed averages 0.35, 0.55: mean 0.45, sample std sqrt(2 * 0.1^2 / 1) = 0.14142
    assert out["blackbox_avg"]["mean"] == pytest.approx(0.45)
    assert out["blackbox_avg"]["std"] == pytest.approx(math.sqrt(0.02))
    assert out["targets"]["t1"]["mean"] == pytest.approx(0.6)
    assert out["targets"]["t1"]["std"] == pytest.approx(math.sqrt(0.02))


def hand_case():
    """Two target models, four images of patients p, p, q, r. Model a gets images 0, 1, 2
    right, model b images 0, 1, 2, 3. MLAdv fools a on 0, 1 and b on 0 (rates 2/3, 1/4); FGSM
    fools a on 2 and b on 3 (rates 1/3, 1/4)."""
    correct = {"source": np.array([1, 1, 1, 1], bool), "a": np.array([1, 1, 1, 0], bool),
               "b": np.array([1, 1, 1, 1], bool)}
    hits = {"MLAdv": {"source": np.ones(4, bool), "a": np.array([1, 1, 0, 1], bool),
                      "b": np.array([1, 0, 0, 0], bool)},
            "FGSM": {"source": np.ones(4, bool), "a": np.array([0, 0, 1, 1], bool),
                     "b": np.array([0, 0, 0, 1], bool)}}
    return correct, hits, {"MLAdv": "mladv", "FGSM": "fgsm"}


def test_blackbox_ci_estimate_is_the_difference_of_mean_target_success_rates():
    correct, hits, names = hand_case()
    (ci,) = blackbox_cis(correct, hits, names, ["p", "p", "q", "r"], n_boot=50)
    # MLAdv (2/3 + 1/4) / 2 = 11/24, FGSM (1/3 + 1/4) / 2 = 7/24; the source is not a target
    assert (ci["attack"], ci["baseline"]) == ("MLAdv", "FGSM")
    assert ci["ours"] == pytest.approx(11 / 24)
    assert ci["theirs"] == pytest.approx(7 / 24)
    assert ci["diff"] == pytest.approx(4 / 24)
    assert (ci["n_patients"], ci["n_images"]) == (3, 4)


def test_blackbox_ci_of_one_patient_is_the_estimate_itself():
    """Every resample of one patient draws all four images again: no spread."""
    correct, hits, names = hand_case()
    (ci,) = blackbox_cis(correct, hits, names, ["p"] * 4, n_boot=20)
    assert ci["low"] == pytest.approx(4 / 24) and ci["high"] == pytest.approx(4 / 24)
    assert ci["verdict"] == "MLAdv better"


# -- the smoke of configs/transfer-full-cpu.yaml -------------------------------------------------

CHEAP = {"pgd": {"steps": 1}, "mifgsm": {"steps": 1}, "pifgsm": {"steps": 1},
         "gama": {"steps": 1}, "rays": {"budget": 4}, "mladv": {"steps": 1, "refine": 0}}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """configs/transfer-full-cpu.yaml on phantoms at 32 px: its ResNet50 source, attacks and
    bf16 training, 1 epoch, 2 target seeds, 6 test images, each attack's cheapest options. The
    targets become ``tiny_cnn`` (names kept): six ResNet101 / VGG16-BN / ResNet152 models cost
    ~100 s of CPU to build, train one step and save (VGG16-BN: 0.54 GB a checkpoint) even at
    32 px; the config test above pins the real targets."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw.update(data="phantoms:8", image_size=32, seeds=2, max_images=6, batch_size=8,
               bm3d={"max_images": 1, "workers": 1}, device="cpu", progress=False, threads=1)
    for model in [raw["source"], *raw["targets"]]:
        model.update(epochs=1, batch_size=8)
    for model in raw["targets"]:
        model.update(arch="tiny_cnn", name=model.get("name", model["arch"]))
    for attack in raw["attacks"]:
        attack["options"] = {**attack.get("options", {}), **CHEAP.get(attack["name"], {})}
    folder = tmp_path_factory.mktemp("smoke")
    path = folder / "smoke.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = folder / "run"
    with pytest.warns(UserWarning, match="BM3D"):
        results = run_transfer(load_config(path), out, log=lambda *_: None)
    return results, out


def test_smoke_report_holds_per_seed_target_rows_and_mean_std(smoke):
    results, out = smoke
    assert results["seeds"]["seeds"] == [0, 1]
    md = (out / "transfer.md").read_text()
    assert "Black-box success per target seed" in md
    for title in ("MLAdv", "MLAdv (paper-literal)", "RayS"):
        for seed in ("0", "1"):
            assert f"| {title} | {seed} |" in md
    assert "resnet101 (mean ± std)" in md and "VGG16-BN (mean ± std)" in md
    saved = json.loads((out / "transfer.json").read_text())
    assert set(saved["models"]) == {"source", "t1-seed0", "t1-seed1", "t2-seed0", "t2-seed1",
                                    "t3-seed0", "t3-seed1"}


def test_smoke_report_answers_the_papers_sentence_for_both_mladv_rows(smoke):
    results, out = smoke
    pairs = [(c["attack"], c["baseline"]) for c in results["blackbox_ci"]]
    assert pairs == [(m, b) for m in ("MLAdv", "MLAdv (paper-literal)")
                     for b in ("FGSM", "GAMA", "RayS")]
    ranking = [c for c in results["claims"] if c["claim"].startswith("transfer ranking")]
    assert len(ranking) == 2
    assert all("63.9%" in c["sentence"] and "49.5%" in c["sentence"] for c in ranking)
    assert all(c["held"] in (True, False, None) for c in ranking)
    assert "The paper's sentence" in (out / "transfer.md").read_text()


def test_smoke_scores_the_same_adversarial_images_on_each_seeds_targets(smoke):
    """Rates from the saved adversarial images and checkpoints, by the definition: among the
    test images a model gets right clean, the share it gets wrong after the attack."""
    from mladv.models import load_checkpoint
    from mladv.transfer.run import prepare_data

    results, out = smoke
    cfg = load_config(out / "config.yaml")
    _, test = prepare_data(cfg)
    adv = torch.load(out / "attacks" / "MLAdv.pt", weights_only=False)["adv"]
    for seed in ("0", "1"):
        for t in ("t1", "t2", "t3"):
            model, _ = load_checkpoint(out / "models" / f"{t}-seed{seed}-tiny_cnn.pt")
            with torch.no_grad():
                clean = model.eval()(test.images).argmax(1)
                fooled = model(adv).argmax(1)
            right = clean == test.labels
            want = (fooled[right] != test.labels[right]).float().mean().item() if right.any() \
                else math.nan
            got = results["attacks"]["MLAdv"]["seeds"]["per_seed"][seed][t]
            assert got == pytest.approx(want, nan_ok=True), (seed, t)


# -- the paper's sentence: held / not held / not decided -----------------------------------------

def ranking_results(intervals):
    """A ``transfer.json``-shaped result with one MLAdv row and a CI (low, high) per baseline."""
    names = {"FGSM": "fgsm", "GAMA": "gama", "RayS": "rays"}
    attacks = {t: {"name": n, "success": {"blackbox_avg": 0.2}} for t, n in names.items()}
    attacks["MLAdv"] = {"name": "mladv", "success": {"blackbox_avg": 0.3}}
    cis = [{"attack": "MLAdv", "baseline": b, "ours": 0.3, "theirs": 0.2, "diff": 0.1,
            "low": low, "high": high, "level": 0.95, "n_patients": 9, "n_images": 10}
           for b, (low, high) in intervals.items()]
    return {"attacks": attacks, "blackbox_ci": cis, "models": {"source": {}, "t1": {}}}


def test_papers_sentence_holds_when_every_interval_lies_above_zero():
    from mladv.transfer.claims import ranking_claims
    (claim,) = ranking_claims(ranking_results(
        {"FGSM": (0.01, 0.2), "GAMA": (0.02, 0.3), "RayS": (0.001, 0.1)}))
    assert claim["held"] is True and claim["sentence"].endswith("; held.")


def test_papers_sentence_fails_when_an_interval_lies_below_zero():
    from mladv.transfer.claims import ranking_claims
    (claim,) = ranking_claims(ranking_results(
        {"FGSM": (0.01, 0.2), "GAMA": (0.02, 0.3), "RayS": (-0.3, -0.1)}))
    assert claim["held"] is False and "not held (MLAdv behind RayS)" in claim["sentence"]


def test_papers_sentence_is_not_decided_when_an_interval_holds_zero():
    from mladv.transfer.claims import ranking_claims
    (claim,) = ranking_claims(ranking_results(
        {"FGSM": (0.01, 0.2), "GAMA": (-0.02, 0.3), "RayS": (0.01, 0.1)}))
    assert claim["held"] is None and "not decided (the interval holds 0 for GAMA)" in \
        claim["sentence"]


# -- the run's seeds wiring, by hand on stub models ------------------------------------------------

class MeanThreshold(torch.nn.Module):
    """Class 0 when an image's mean pixel is below ``t``, else class 1 (never class 2); one
    identity 1x1 convolution so that Grad-CAM has a layer."""

    def __init__(self, t):
        super().__init__()
        self.t = t
        self.conv = torch.nn.Conv2d(1, 1, 1)
        torch.nn.init.ones_(self.conv.weight)
        torch.nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        m = self.conv(x).mean((1, 2, 3))
        return torch.stack([50 * (self.t - m), 50 * (m - self.t), torch.full_like(m, -1e3)], 1)


def test_run_scores_the_same_adversarial_images_on_each_target_seeds_model(tmp_path,
                                                                           monkeypatch):
    """Test images of mean 0.2, 0.4, 0.6, 0.8, labels 0, 0, 1, 1; every attack's images have
    means 0.6, 0.2, 0.4, 0.9. Target seed 0 thresholds at 0.5: all four right clean, images 0
    and 2 wrong after: 2/4. Target seed 1 thresholds at 0.3: images 0, 2, 3 right clean, image 0
    wrong after: 1/3. Over the seeds: mean 5/12, sample std (1/6) / sqrt(2)."""
    import warnings

    from mladv.data import ImageSet
    from mladv.transfer import run as run_module

    means = torch.tensor([0.2, 0.4, 0.6, 0.8])
    test = ImageSet(means.view(4, 1, 1, 1).expand(4, 1, 24, 24).clone(),
                    torch.tensor([0, 0, 1, 1]), ["a", "b", "c"], ["p0", "p1", "p2", "p3"],
                    ["p0", "p1", "p2", "p3"])
    adv = torch.tensor([0.6, 0.2, 0.4, 0.9]).view(4, 1, 1, 1).expand(4, 1, 24, 24).clone()
    thresholds = {"source": 0.5, "t1-seed0": 0.5, "t1-seed1": 0.3}
    monkeypatch.setattr(run_module, "prepare_data", lambda cfg: (test, test))
    monkeypatch.setattr(run_module, "obtain_model", lambda cfg, key, *a: (
        MeanThreshold(thresholds[key]).eval(),
        {"classes": ["a", "b", "c"], "checkpoint": None, "fingerprint": key,
         "trained_here": False}))
    monkeypatch.setattr(run_module, "obtain_attack", lambda *a: {
        "adv": adv, "seconds": 0.0, "queries": None, "key": "k", "settings": {},
        "repr": "stub", "resumed": False})
    cfg = small(seeds=2, targets=[{"arch": "tiny_cnn"}], attacks=[{"name": "fgsm"}],
                bm3d={"max_images": 1, "workers": 1}, progress=False, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_transfer(cfg, tmp_path / "run", log=lambda *_: None)
    fgsm = res["attacks"]["FGSM"]
    assert fgsm["success"]["t1-seed0"] == pytest.approx(2 / 4)
    assert fgsm["success"]["t1-seed1"] == pytest.approx(1 / 3)
    assert fgsm["seeds"]["blackbox_avg"]["mean"] == pytest.approx(5 / 12)
    assert fgsm["seeds"]["blackbox_avg"]["std"] == pytest.approx((1 / 6) / math.sqrt(2))
