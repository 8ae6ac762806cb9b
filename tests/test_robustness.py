"""Calibration and own-model robustness numbers (ECE by hand, PGD / MLAdv / AutoAttack)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import mladv.robustness as rob
from mladv.attacks.chain import ChainBounds, random_chain
from mladv.robustness import (
    PadLogits,
    RobustnessOptions,
    adversarial_accuracy,
    autoattack_accuracy,
    expected_calibration_error,
    fixed_subset,
    robustness_report,
)
from mladv.training import accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ece_by_hand():
    """Confidences 0.9 (right), 0.62 (wrong), 0.7 (right), 0.95 (right), 0.91 (wrong): with 15
    bins of width 1/15, 0.9 and 0.91 share (0.867, 0.933] (accuracy 1/2, confidence 0.905),
    the others are alone: ECE = (2 * 0.405 + 0.62 + 0.3 + 0.05) / 5 = 0.356."""
    conf = torch.tensor([0.9, 0.62, 0.7, 0.95, 0.91])
    probs = torch.stack([conf, 1 - conf], 1)
    labels = torch.tensor([0, 1, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.356, abs=1e-6)
    # one bin: |mean accuracy - mean confidence| = |3/5 - 0.816|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.216, abs=1e-6)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="probs must be N x K and labels N"):
        expected_calibration_error(probs, torch.tensor([0, 1]))


def test_fixed_subset_is_seeded_sorted_and_bounded():
    a, b = fixed_subset(50, 10, seed=3), fixed_subset(50, 10, seed=3)
    assert torch.equal(a, b) and len(set(a.tolist())) == 10 and torch.equal(a, a.sort().values)
    assert not torch.equal(a, fixed_subset(50, 10, seed=4))
    assert torch.equal(fixed_subset(5, 10), torch.arange(5))


def test_attacks_lower_accuracy_and_autoattack_is_at_least_as_strong_as_pgd(tiny_trained):
    model, images, labels = tiny_trained
    x, y = images[:24], labels[:24]
    clean = accuracy(model, x, y)
    pgd2 = adversarial_accuracy(model, x, y, "pgd", eps=2 / 255, steps=10)
    pgd8 = adversarial_accuracy(model, x, y, "pgd", eps=8 / 255, steps=10)
    assert pgd8 <= pgd2 <= clean and pgd8 < clean - 0.3
    aa = autoattack_accuracy(model, x[:12], y[:12], eps=2 / 255, square_queries=50)
    pgd2_12 = adversarial_accuracy(model, x[:12], y[:12], "pgd", eps=2 / 255, steps=10)
    assert aa <= pgd2_12
    assert not model.training


def test_robustness_report_has_every_number(tiny_trained):
    """The clean numbers, the subset sizes, and one column per option (here no shift / chain)."""
    model, images, labels = tiny_trained
    opts = RobustnessOptions(attacks=("mladv",), pgd_eps=(2.0, 8.0), pgd_options={"steps": 3},
                             mladv_options={"steps": 2}, max_images=8, autoattack_images=4,
                             square_queries=20, noise_sigmas=(0.05,))
    r = robustness_report(model, images[:20], labels[:20], opts)
    assert set(r) == {"n", "n_robust", "n_autoattack", "accuracy", "ece", "acc_mladv",
                      "acc_pgd_2", "acc_pgd_8", "acc_autoattack_2", "acc_noise_0.05"}
    assert (r["n"], r["n_robust"], r["n_autoattack"]) == (20, 8, 4)
    assert r["accuracy"] == accuracy(model, images[:20], labels[:20])


def test_pad_logits_adds_a_column_below_every_logit_and_keeps_the_rest():
    """AutoAttack's APGD-T reads a 4th logit: a 3-class model gets one, always the smallest,
    so the prediction and the real logits are unchanged; 4 or more classes pass through."""
    z = torch.tensor([[2.0, -1.0, 0.5], [-3.0, -2.0, -4.0]])
    padded = PadLogits(lambda x: x)(z)
    assert padded.shape == (2, 4) and torch.equal(padded[:, :3], z)
    assert torch.equal(padded[:, 3], z.min(1).values - 1.0)
    assert torch.equal(padded.argmax(1), z.argmax(1))
    wide = torch.randn(2, 5)
    assert torch.equal(PadLogits(lambda x: x)(wide), wide)


# -- option checks, helpers and the wiring of the columns, value by value (issue 16) -----------
@pytest.mark.parametrize("kwargs", [
    {"eps": 0.5, "pgd_eps": (0.5,), "autoattack_eps": 0.5}, {"eps": 255.0},
    {"square_queries": 1, "ece_bins": 1, "batch_size": 1}, {"max_images": 1},
    {"max_images": None}])
def test_options_at_their_bounds_are_accepted(kwargs):
    rob.RobustnessOptions(**kwargs).check()


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 255.5}, "eps, pgd_eps and autoattack_eps are in 1/255 units, each in (0, 255]"),
    ({"noise_sigmas": (0.0,)}, "noise_sigmas must be > 0, got [0.0]"),
    ({"ece_bins": 0}, "ece_bins must be >= 1, got 0"),
    ({"autoattack_images": -1, "max_images": None},
     "autoattack_images must be >= 0 and max_images >= 1"),
    ({"max_images": 0}, "autoattack_images must be >= 0 and max_images >= 1")])
def test_a_bad_option_is_exactly_one_line(kwargs, message):
    with pytest.raises(ValueError) as err:
        rob.RobustnessOptions(**kwargs).check()
    assert str(err.value) == message


def test_fixed_subset_defaults_to_seed_0_and_takes_all_for_none_and_one_for_one():
    drawn = torch.randperm(10, generator=torch.Generator().manual_seed(0))[:3].sort().values
    assert torch.equal(rob.fixed_subset(10, 3), drawn)
    assert torch.equal(rob.fixed_subset(5, None), torch.arange(5))
    assert rob.fixed_subset(5, 1).shape == (1,)
    with pytest.raises(ValueError) as err:
        rob.fixed_subset(5, 0)
    assert str(err.value) == "the subset size must be >= 1, got 0"


def test_ece_defaults_to_15_bins_and_is_zero_on_no_images():
    # 0.87 (right) and 0.93 (wrong) share a bin of 15, not of 16
    probs, labels = torch.tensor([[0.87, 0.13], [0.93, 0.07]]), torch.tensor([0, 1])
    assert rob.expected_calibration_error(probs, labels) == rob.expected_calibration_error(
        probs, labels, 15) != rob.expected_calibration_error(probs, labels, 16)
    assert rob.expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) \
        == 0.0
    with pytest.raises(ValueError) as err:
        rob.expected_calibration_error(probs, labels, 0)
    assert str(err.value) == "n_bins must be >= 1, got 0"


def test_ece_puts_a_confidence_of_one_half_in_the_first_of_two_bins():
    probs, labels = torch.tensor([[0.5, 0.5], [0.9, 0.1]]), torch.tensor([0, 1])
    # bin 0: correct at 0.5 -> |1 - 0.5|; bin 1: wrong at 0.9 -> |0 - 0.9|; over 2 images
    assert rob.expected_calibration_error(probs, labels, 2) == pytest.approx((0.5 + 0.9) / 2)


ZERO = {k: 0.0 for k in ("gamma", "contrast", "brightness", "bias", "rotation", "scale",
                         "translation", "elastic", "noise")}


@pytest.mark.parametrize("transform, kept", [
    ("gamma", ("gamma",)), ("window", ("contrast", "brightness")), ("bias", ("bias",)),
    ("affine", ("rotation", "scale", "translation")), ("elastic", ("elastic",))])
def test_shift_bounds_keep_the_transforms_amplitudes_alone_times_the_severity(transform, kept):
    base = ChainBounds(noise=0.5)
    alone = replace(base, **{k: v for k, v in ZERO.items() if k not in kept})
    assert rob.shift_bounds(transform, 2.0, base) == alone.scaled(2.0)


def test_noise_shift_is_the_bounds_noise_or_0_02_where_it_is_off():
    assert rob.shift_bounds("noise", 2.0) == replace(ChainBounds(), **{**ZERO, "noise": 0.04})
    assert rob.shift_bounds("noise", 1.0, ChainBounds(noise=0.1)) == replace(
        ChainBounds(), **{**ZERO, "noise": 0.1})
    with pytest.raises(ValueError) as err:
        rob.shift_bounds("blur", 1.0)
    assert str(err.value) == ("unknown shift transform 'blur'; valid: ('gamma', 'window', "
                              "'bias', 'affine', 'elastic', 'noise')")


def test_shifted_is_the_random_chain_of_the_shift_bounds_from_the_seed():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    bounds = ChainBounds(gamma=0.6)
    by_hand = random_chain(x, torch.Generator().manual_seed(3),
                           rob.shift_bounds("gamma", 2.0, bounds))
    assert torch.equal(rob.shifted(x, "gamma", 2.0, 3, bounds), by_hand)
    assert torch.equal(rob.shifted(x, "gamma", 2.0), rob.shifted(x, "gamma", 2.0, 0))


class _FirstClass(torch.nn.Module):
    """Always predicts class 0 (3 classes)."""

    num_classes = 3

    def forward(self, x):
        return torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3)


def test_acquisition_shift_accuracy_per_transform_and_severity_and_their_mean(monkeypatch):
    calls: list = []
    real = rob.shifted
    monkeypatch.setattr(rob, "shifted", lambda *a: calls.append(a[1:]) or real(*a))
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 0])
    out = rob.acquisition_shift_accuracy(_FirstClass(), x, y, transforms=("gamma", "bias"),
                                         severities=(1.0, 2.0))
    assert out == pytest.approx({"shift_gamma_1": 0.6, "shift_gamma_2": 0.6, "shift_bias_1": 0.6,
                                 "shift_bias_2": 0.6, "shift_mean": 0.6})
    assert calls == [("gamma", 1.0, 0, None), ("gamma", 2.0, 0, None), ("bias", 1.0, 0, None),
                     ("bias", 2.0, 0, None)]
    calls.clear()
    bounds = ChainBounds(gamma=0.1)
    rob.acquisition_shift_accuracy(_FirstClass(), x, y, transforms=("gamma",), severities=(1.0,),
                                   seed=4, bounds=bounds)
    assert calls == [("gamma", 1.0, 4, bounds)]
    empty = rob.acquisition_shift_accuracy(_FirstClass(), x, y, transforms=())
    assert list(empty) == ["shift_mean"] and math.isnan(empty["shift_mean"])


def _spy(monkeypatch, name: str, value):
    calls: list = []
    monkeypatch.setattr(rob, name, lambda *a, **k: calls.append((a, k)) or value)
    return calls


def test_chain_accuracy_is_the_registry_chain_with_its_defaults(monkeypatch):
    calls = _spy(monkeypatch, "adversarial_accuracy", 0.5)
    model, x, y = _FirstClass(), torch.zeros(1, 1, 4, 4), torch.tensor([0])
    assert rob.chain_accuracy(model, x, y) == 0.5
    rob.chain_accuracy(model, x, y, eps=0.1, seed=2, batch_size=3, rotation=4.0)
    assert calls == [((model, x, y, "chain"), {"eps": 8 / 255, "seed": 0, "batch_size": 64}),
                     ((model, x, y, "chain"), {"eps": 0.1, "seed": 2, "batch_size": 3,
                                               "rotation": 4.0})]


def test_noise_accuracy_scores_the_clipped_noisy_images_drawn_per_sigma(monkeypatch):
    calls = _spy(monkeypatch, "_accuracy", 0.75)
    x = torch.tensor([0.0, 1.0, 0.5, 0.02]).view(1, 1, 2, 2)
    out = rob.noise_accuracy(_FirstClass(), x, torch.tensor([0]), (0.5, 2.0))
    assert out == {"acc_noise_0.5": 0.75, "acc_noise_2": 0.75}
    for i, (sigma, (args, _)) in enumerate(zip((0.5, 2.0), calls)):
        gen = torch.Generator().manual_seed(rob.derive_seed(0, 1000 + i))
        assert torch.equal(args[1], (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1))
    assert rob.noise_accuracy(_FirstClass(), x, torch.tensor([0]), (0.5,), seed=0) == \
        rob.noise_accuracy(_FirstClass(), x, torch.tensor([0]), (0.5,))


def test_the_columns_pass_each_attack_its_options_seed_and_classes(monkeypatch):
    adv = _spy(monkeypatch, "adversarial_accuracy", 0.5)
    _spy(monkeypatch, "noise_accuracy", {})
    subsets: list = []
    real = rob.robustness_subsets
    monkeypatch.setattr(rob, "robustness_subsets",
                        lambda labels, opts, k: subsets.append(k) or real(labels, opts, k))
    opts = rob.RobustnessOptions(attacks=("mladv", "pgd"), eps=4.0, pgd_eps=(),
                                 pgd_options={"steps": 3}, mladv_options={"beta": 2.0},
                                 max_images=None, batch_size=7)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))  # no num_classes
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    assert rob.robustness_columns(model, x, y, opts) == {"acc_mladv": 0.5, "acc_pgd": 0.5}
    common = {"eps": 4.0 / 255, "seed": 0, "batch_size": 7}
    assert [(a[3], k) for a, k in adv] == [("mladv", {"beta": 2.0, **common}),
                                           ("pgd", {"steps": 3, **common})]
    rob.robustness_columns(model, x, y, opts, n_classes=5)
    assert subsets == [3, 5]


def test_the_report_passes_its_bins_seed_and_classes(monkeypatch):
    cols = _spy(monkeypatch, "robustness_columns", {"acc_pgd_2": 0.25})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    opts = rob.RobustnessOptions(ece_bins=3, max_images=None)
    report = rob.robustness_report(model, x, y, opts)
    probs = rob.predict_logits(model, x).softmax(1)
    assert report["ece"] == rob.expected_calibration_error(probs, y, 3)
    assert report["acc_pgd_2"] == 0.25
    rob.robustness_report(model, x, y, opts, n_classes=5)
    assert [k for _, k in cols] == [{"seed": 0, "n_classes": 3}, {"seed": 0, "n_classes": 5}]
