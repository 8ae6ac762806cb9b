"""The adversarial transform chain (AdvChain): bounded, smooth, adversarial, reproducible, and the
same attack from the API, the CLI and a config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from experiment_helpers import hand_results, run_quietly
from mladv.adversarial_training import AdversarialBatch
from mladv.attacks import attack_options, make_attack, parse_options
from mladv.attacks.chain import (
    TRANSFORM_NAMES,
    Chain,
    ChainBounds,
    apply_chain,
    chain_augment,
    random_chain,
    sample_params,
)
from mladv.experiment import load_config
from mladv.experiment.arms import CHAIN_ARMS, online_options
from mladv.experiment.chain_report import chain_moonshot
from mladv.robustness import SHIFT_SEVERITIES, SHIFT_TRANSFORMS, shift_bounds, shifted

pytestmark = pytest.mark.usefixtures("one_thread")


def blur_kept(delta: torch.Tensor) -> float:
    """The share of a perturbation's energy a Gaussian blur (sigma = 1 px) keeps."""
    return float((gaussian_blur(delta, [7, 7], [1.0, 1.0]) ** 2).sum() / (delta ** 2).sum())


def mean_ce(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_every_parameter_stays_inside_its_bounds(tiny_trained):
    model, x, y = tiny_trained
    atk = Chain(model, steps=3, alpha=1.5, noise=0.02, seed=0)  # big steps: clipping must act
    params, order, _ = atk.parameters_for(x[:32], y[:32])
    assert sorted(order) == sorted(TRANSFORM_NAMES)
    for name, p in params.items():
        lo, hi = atk.bounds.limits(name)
        assert p.shape == (32, lo.shape[0])
        assert bool((p >= lo.float() - 1e-7).all() and (p <= hi.float() + 1e-7).all()), name
        assert bool((p.abs() > 0.999 * hi.float().abs().max()).any()), name  # bounds reached


def test_eps_scales_every_bound_and_eight_is_the_default(tiny_trained):
    model = tiny_trained[0]
    assert Chain(model).bounds == ChainBounds()
    half = Chain(model, eps=4 / 255).bounds
    assert half.rotation == pytest.approx(2.5) and half.gamma == pytest.approx(0.1)
    assert half.bias_grid == ChainBounds().bias_grid  # grid sizes do not scale
    with pytest.raises(ValueError, match="at most 32/255"):
        Chain(model, eps=40 / 255)


def test_bias_field_amplitude_is_bounded_between_control_points():
    x = torch.full((2, 1, 16, 16), 0.5)
    b = ChainBounds()
    f = torch.tensor([[b.bias, -b.bias] * 8, [-b.bias, b.bias] * 8])  # worst-case overshoot
    out = apply_chain(x, {"bias": f}, ["bias"], b)
    assert float(out.max()) <= 0.5 * torch.tensor(b.bias).exp() + 1e-6
    assert float(out.min()) >= 0.5 * torch.tensor(-b.bias).exp() - 1e-6


def test_zero_parameters_are_the_identity():
    x = torch.rand(3, 1, 16, 16)
    b = ChainBounds()
    zeros = {k: torch.zeros_like(v) for k, v in
             sample_params(b, 3, torch.Generator().manual_seed(0)).items()}
    assert torch.allclose(apply_chain(x, zeros, list(b.enabled()), b), x, atol=1e-5)


def test_chain_has_no_pixel_noise_where_pgd_is_mostly_noise(tiny_trained):
    """A light Gaussian blur keeps most of the chain's perturbation, removes most of PGD's."""
    model, x, y = tiny_trained
    x, y = x[:48], y[:48]
    chained = Chain(model, seed=0)(x, y)
    pgd = make_attack("pgd", model, eps=8 / 255, seed=0)(x, y)
    assert blur_kept(chained - x) > 0.6
    assert blur_kept(pgd - x) < 0.3


def test_one_adversarial_step_raises_the_loss_above_the_random_chain(tiny_trained):
    """Same seed: same order and starting point; the step alone makes the difference."""
    model, x, y = tiny_trained
    for seed in (0, 1):
        rand = Chain(model, steps=0, seed=seed)(x, y)
        adv = Chain(model, steps=1, seed=seed)(x, y)
        assert mean_ce(model, adv, y) > mean_ce(model, rand, y) + 0.2
    kl = Chain(model, loss="kl", seed=0)(x, y)
    assert mean_ce(model, kl, y) > mean_ce(model, Chain(model, steps=0, seed=0)(x, y), y)


def test_seeds_reproduce_and_differ(tiny_trained):
    model, x, y = tiny_trained
    a, b = Chain(model, seed=3)(x[:8], y[:8]), Chain(model, seed=3)(x[:8], y[:8])
    assert torch.equal(a, b)
    assert not torch.equal(a, Chain(model, seed=4)(x[:8], y[:8]))


def test_random_chain_equals_the_zero_step_attack(tiny_trained):
    model, x, y = tiny_trained
    atk = Chain(model, steps=0, seed=5)
    assert torch.equal(random_chain(x[:8], atk.generator()), atk(x[:8], y[:8]))
    out, labels = chain_augment()(x[:8], y[:8], torch.Generator().manual_seed(5))
    assert torch.equal(out, atk(x[:8], y[:8])) and torch.equal(labels, y[:8])


def test_output_stays_in_the_unit_interval(tiny_trained):
    model, x, y = tiny_trained
    out = Chain(model, eps=32 / 255, noise=0.05, seed=0)(x[:16], y[:16])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_same_options_from_cli_config_and_api(tiny_trained):
    model = tiny_trained[0]
    pairs = ["gamma=0.1", "rotation=3", "elastic_grid=5", "loss=kl"]
    cli = make_attack("chain", model, **attack_options(
        "chain", eps=4, steps=2, seed=1, options=parse_options(pairs)))
    api = Chain(model, eps=4 / 255, steps=2, seed=1, gamma=0.1, rotation=3, elastic_grid=5,
                loss="kl")
    online = AdversarialBatch("chain", mode="online", eps=4 / 255, steps=2,
                              options={"gamma": 0.1, "rotation": 3, "elastic_grid": 5,
                                       "loss": "kl"}, seed=1)
    online.bind(model)
    for atk in (cli, online._attack):
        assert isinstance(atk, Chain)
        assert (atk.bounds, atk.steps, atk.loss) == (api.bounds, api.steps, api.loss)


@pytest.mark.parametrize("option, value, needle", [
    ("steps", -1, "steps must be an int >= 0"), ("gamma", -0.1, "gamma must be >= 0"),
    ("bias_grid", 1, "bias_grid must be an int >= 2"), ("loss", "l2", "loss must be one of"),
    ("alpha", 0.0, "alpha must be in"),
])
def test_bad_options_are_one_line_naming_the_attack(tiny_trained, option, value, needle):
    with pytest.raises(ValueError, match="attack 'chain'") as exc:
        make_attack("chain", tiny_trained[0], **{option: value})
    assert needle in str(exc.value)


# -- the experiment's chain arms --------------------------------------------------------------
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CHAIN_RUN = {"name": "mini-chain", "data": "phantoms:12", "image_size": 16, "arch": "small_cnn",
             "seeds": 1, "arms": ["none", "chain-random", "chain-online", "chain-advprop"],
             "train": {"epochs": 1, "batch_size": 16, "lr": 0.01},
             "chain": {"rotation": 3.0},
             "online": {"grid": {"eps": [4, 8]}, "selection": {"val_size": 0.25, "seed": 0}},
             "robustness": {"attacks": [], "noise_sigmas": [], "max_images": 6,
                            "acquisition_shift": True},
             "progress": False}


def test_chain_config_is_full_cpu_with_the_chain_arms():
    full, chain = load_config(CONFIGS / "full-cpu.yaml"), load_config(
        CONFIGS / "full-cpu-chain.yaml")
    same = ("data", "image_size", "arch", "seeds", "train", "split", "pgd", "mladv")
    assert {k: getattr(chain, k) for k in same} == {k: getattr(full, k) for k in same}
    assert chain.arms == ["none", "trivialaugment", "pgd-advprop", *CHAIN_ARMS]
    assert set(full.online.grid.eps) <= set(chain.online.grid.eps)  # full-cpu's PGD points too
    assert chain.robustness.acquisition_shift and not full.robustness.acquisition_shift


def test_new_fields_at_their_defaults_leave_the_resume_key_alone():
    key = load_config(CONFIGS / "full-cpu.yaml").resume_key()
    assert "chain" not in key and "acquisition_shift" not in key["robustness"]
    assert "acquisition_shift" in load_config(CONFIGS / "full-cpu-chain.yaml").resume_key()[
        "robustness"]


def test_chain_random_is_chain_online_without_the_gradient():
    assert online_options("chain-random", {}, {}, {"gamma": 0.1, "steps": 3}) == {
        "gamma": 0.1, "steps": 0}
    assert online_options("chain-online", {}, {}, {"gamma": 0.1, "steps": 3}) == {"gamma": 0.1}


def test_chain_arms_run_end_to_end_with_acquisition_shift_columns(tmp_path_factory):
    out, results = run_quietly(tmp_path_factory, "chain", CHAIN_RUN)
    assert results["finished"] == results["planned"] == 4
    for r in results["runs"]:
        m = r["metrics"]
        shifts = [k for k in m if k.startswith("shift_")]
        assert len(shifts) == len(SHIFT_TRANSFORMS) * len(SHIFT_SEVERITIES)
        assert m["acc_shift_mean"] == pytest.approx(sum(m[k] for k in shifts) / len(shifts))
        assert 0.0 <= m["acc_chain"] <= 1.0
        if r["arm"] != "none":
            assert r["online"]["attack"] == "chain"
            assert r["online"]["options"]["rotation"] == 3.0
    random_run = next(r for r in results["runs"] if r["arm"] == "chain-random")
    assert random_run["online"]["options"]["steps"] == 0
    report = (out / "report.md").read_text()
    assert "Chain arms (realistic adversarial transforms): the verdict" in report
    assert "`chain-online`: one seed: fewer than two seeds finished" in report


def test_acquisition_shift_is_exact_for_each_transform_alone():
    x = torch.rand(4, 1, 16, 16)
    assert shift_bounds("gamma", 2.0).enabled() == ("gamma",)
    assert shift_bounds("affine", 4.0).rotation == pytest.approx(20.0)
    assert shift_bounds("noise", 1.0).noise == pytest.approx(0.02)
    assert torch.equal(shifted(x, "bias", 1.0, seed=3), shifted(x, "bias", 1.0, seed=3))
    assert not torch.equal(shifted(x, "bias", 1.0, seed=3), x)
    with pytest.raises(ValueError, match="unknown shift transform 'blur'"):
        shift_bounds("blur", 1.0)


def _seeds(mean: float) -> list[float]:
    """Three seeds around ``mean`` with sample std 0.01."""
    return [mean - 0.01, mean, mean + 0.01]


@pytest.mark.parametrize("acc, shift, met", [
    (0.83, 0.60, True),    # clean gain +0.03 > spread 0.01
    (0.805, 0.71, True),   # tie (+0.005 within 0.01) and shift +0.11 >= 0.10
    (0.805, 0.69, False),  # tie, shift +0.09
    (0.78, 0.90, False),   # clean loss beyond the spread, whatever the shift
])
def test_chain_moonshot_follows_the_fixed_rule(acc, shift, met):
    results = hand_results({
        "none": {"accuracy": _seeds(0.80), "acc_shift_mean": _seeds(0.60)},
        "chain-online": {"accuracy": _seeds(acc), "acc_shift_mean": _seeds(shift)}})
    (line,) = chain_moonshot(results)
    assert line.rsplit("Target ", 1)[1] == ("MET." if met else "NOT met.")


def _cli(args: list[str]) -> int:
    from mladv.cli import main
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def test_mladv_attack_augment_and_export_run_the_chain(tmp_path):
    """`mladv attack --attack chain` gives the API's tensor; augment and export take it too."""
    from mladv.data import AdversarialDataset, load_source, split_imageset
    from mladv.models import load_checkpoint

    assert _cli(["train", "phantoms:12", "--arch", "tiny_cnn", "--image-size", "24",
                 "--epochs", "1", "--out", str(tmp_path / "ck")]) == 0
    ckpt = tmp_path / "ck" / "model.pt"
    assert _cli(["attack", str(ckpt), "phantoms:12", "--attack", "chain", "--eps", "4",
                 "--steps", "2", "--option", "rotation=3", "--out", str(tmp_path / "a")]) == 0
    cli_adv = AdversarialDataset(tmp_path / "a").to_imageset().images
    model, _ = load_checkpoint(ckpt)
    _, test = split_imageset(load_source("phantoms:12", 24), seed=0)
    api_adv = Chain(model, eps=4 / 255, steps=2, rotation=3, seed=0)(test.images, test.labels)
    assert torch.equal(cli_adv, api_adv)
    assert _cli(["augment", str(ckpt), "phantoms:12", "--attack", "chain", "--option",
                 "loss=kl", "--out", str(tmp_path / "aug")]) == 0
    assert _cli(["export", str(tmp_path / "aug"), str(tmp_path / "png")]) == 0
    assert len(list((tmp_path / "png").rglob("*.png"))) == 30


def test_on_real_chest_xrays_the_chain_is_smooth_and_pgd_is_not(cxr3_root):
    """The blur-energy property on 12 real radiographs (128 px), an untrained model (the
    property is about the perturbation's spectrum, not about fooling)."""
    from mladv.data import load_source
    from mladv.models import build_model

    data = load_source(str(cxr3_root), 128)
    x, y = data.images[::65][:12], data.labels[::65][:12]
    torch.manual_seed(0)
    model = build_model("small_cnn", 3).eval()
    chained = Chain(model, seed=0)(x, y)
    pgd = make_attack("pgd", model, eps=8 / 255, steps=2, seed=0)(x, y)
    assert blur_kept(chained - x) > 0.6
    assert blur_kept(pgd - x) < 0.3
