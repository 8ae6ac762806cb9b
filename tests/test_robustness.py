"""Calibration and own-model robustness numbers (ECE by hand, PGD / MLAdv / AutoAttack)."""
from __future__ import annotations

import importlib.metadata
import inspect
import math
import sys
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import pyautoattack
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
from model_helpers import Rows

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
    state = torch.get_rng_state()
    aa = autoattack_accuracy(model, x[:12], y[:12], eps=2 / 255, square_queries=50)
    assert torch.equal(torch.get_rng_state(), state)  # the attacks' manual_seed is undone
    pgd2_12 = adversarial_accuracy(model, x[:12], y[:12], "pgd", eps=2 / 255, steps=10)
    assert aa <= pgd2_12 <= accuracy(model, x[:12], y[:12])
    assert not model.training


def test_robustness_report_has_every_number(tiny_trained):
    """The clean numbers, the subset sizes, and one column per option (here no shift / chain)."""
    model, images, labels = tiny_trained
    opts = RobustnessOptions(attacks=("mladv",), pgd_eps=(2.0, 8.0), pgd_options={"steps": 3},
                             mladv_options={"steps": 2}, max_images=8, autoattack_images=4,
                             square_queries=20, noise_sigmas=(0.05,))
    r = robustness_report(model, images[:20], labels[:20], opts)
    assert set(r) == {"n", "n_robust", "n_autoattack", "accuracy", "ece", "acc_mladv",
                      "acc_pgd_2", "acc_pgd_8", "acc_autoattack_2", "acc_noise_0.05", "sizes",
                      "gradient_masking"}
    assert r["sizes"] == {"accuracy": 20, "acc_mladv": 8, "acc_pgd_2": 8, "acc_pgd_8": 8,
                          "acc_autoattack_2": 4, "acc_noise_0.05": 20}
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
    ({"eps": 255.5}, "eps, pgd_eps, autoattack_eps and min_eps_max are in 1/255 units, each in "
                     "(0, 255]"),
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
    calls = _spy(monkeypatch, "_correct", torch.tensor([True, True, True, False]))
    x = torch.tensor([0.0, 1.0, 0.5, 0.02]).view(1, 1, 2, 2)
    out = rob.noise_accuracy(_FirstClass(), x, torch.tensor([0]), (0.5, 2.0))
    assert out == {"acc_noise_0.5": 0.75, "acc_noise_2": 0.75}
    for i, (sigma, (args, _)) in enumerate(zip((0.5, 2.0), calls)):
        gen = torch.Generator().manual_seed(rob.derive_seed(0, 1000 + i))
        assert torch.equal(args[1], (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1))
    assert rob.noise_accuracy(_FirstClass(), x, torch.tensor([0]), (0.5,), seed=0) == \
        rob.noise_accuracy(_FirstClass(), x, torch.tensor([0]), (0.5,))


def test_the_columns_pass_each_attack_its_options_seed_and_classes(monkeypatch):
    adv = _spy(monkeypatch, "adversarial_correct", torch.tensor([True, False]))
    _spy(monkeypatch, "noise_correct", {})
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
    cols = _spy(monkeypatch, "robustness_outcomes",
                {"acc_pgd_2": (torch.tensor([0]), torch.tensor([True, False, False, False]))})
    torch.manual_seed(0)  # the same model every run (what the test can tell apart stays fixed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    opts = rob.RobustnessOptions(ece_bins=3, max_images=None)
    report = rob.robustness_report(model, x, y, opts)
    probs = rob.predict_logits(model, x).softmax(1)
    assert report["ece"] == rob.expected_calibration_error(probs, y, 3)
    assert report["acc_pgd_2"] == 0.25
    rob.robustness_report(model, x, y, opts, n_classes=5)
    assert [k for _, k in cols] == [{"seed": 0, "n_classes": 3}, {"seed": 0, "n_classes": 5}]


# -- the last survivors of issue 16's mutation run: arguments as the callee binds them ----------

def _plain(value):
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _bound_spy(monkeypatch, name: str, value):
    """Replaces ``rob.<name>`` by a spy returning ``value`` that records each call's arguments as
    the real function binds them (defaults applied; tensors as lists): what the callee receives,
    however the call is spelled."""
    signature, calls = inspect.signature(getattr(rob, name)), []

    def spy(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append({k: _plain(v) for k, v in bound.arguments.items()})
        return value
    monkeypatch.setattr(rob, name, spy)
    return calls


SPIED = {"adversarial_correct": torch.tensor([True, False]),
         "autoattack_correct": torch.tensor([False]), "noise_correct": {}, "shift_correct": {}}
WIRED = rob.RobustnessOptions(attacks=(), pgd_eps=(2.0, 8.0), pgd_options={"steps": 3},
                              chain_options={"rotation": 5.0}, max_images=4, subset_seed=1,
                              autoattack_images=2, autoattack_eps=4.0, square_queries=9,
                              noise_sigmas=(), acquisition_shift=True, batch_size=7)


def _wired_calls(monkeypatch, name: str):
    """The calls of ``name`` by ``robustness_columns`` (every attack spied) with ``WIRED``, attack
    seed 2, on 6 images of the 3 classes; and the images and labels of the robustness subset."""
    calls = {n: _bound_spy(monkeypatch, n, v) for n, v in SPIED.items()}
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model = Rows(torch.zeros(6, 3))
    rob.robustness_columns(model, x, y, WIRED, seed=2, n_classes=3)
    sub, auto = rob.robustness_subsets(y, WIRED, 3)
    return calls[name], model, (x[sub].tolist(), y[sub].tolist()), (x[auto].tolist(),
                                                                   y[auto].tolist())


def test_the_columns_run_pgd_at_each_pgd_eps_in_1_255_units_with_its_options(monkeypatch):
    calls, model, (x, y), _ = _wired_calls(monkeypatch, "adversarial_correct")
    calls = [c for c in calls if c["attack"] == "pgd"]
    assert calls == [{"model": model, "images": x, "labels": y, "attack": "pgd", "eps": e / 255,
                      "seed": 2, "batch_size": 7, "options": {"steps": 3}} for e in (2.0, 8.0)]


def test_the_columns_run_autoattack_on_its_images_at_its_eps_and_square_queries(monkeypatch):
    calls, model, _, (x, y) = _wired_calls(monkeypatch, "autoattack_correct")
    assert calls == [{"model": model, "images": x, "labels": y, "eps": 4.0 / 255, "seed": 2,
                      "batch_size": 7, "square_queries": 9, "log": None}]


def test_the_columns_run_the_chain_at_8_255_with_its_options(monkeypatch):
    calls, model, (x, y), _ = _wired_calls(monkeypatch, "adversarial_correct")
    calls = [c for c in calls if c["attack"] == "chain"]
    assert calls == [{"model": model, "images": x, "labels": y, "attack": "chain", "eps": 8 / 255,
                      "seed": 2, "batch_size": 7, "options": {"rotation": 5.0}}]


@pytest.fixture()
def fake_autoattack(monkeypatch):
    """pyautoattack.AutoAttack replaced by a subclass that records its arguments (defaults
    applied) and keeps the real object (so its four attacks and their settings are the
    package's), and whose ``run_standard_evaluation`` records its call and returns
    ``returns(x)`` (default the images unchanged) instead of attacking; ``during(self)`` runs
    inside it (e.g. the package's logger or print)."""
    signature = inspect.signature(pyautoattack.AutoAttack)
    rec = SimpleNamespace(built=[], returns=lambda x: x, during=lambda atk: None)

    class Recording(pyautoattack.AutoAttack):
        def __init__(self, *args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            super().__init__(*args, **kwargs)
            self.args, self.runs = dict(bound.arguments), []
            rec.built.append(self)

        def run_standard_evaluation(self, x, y, /, *, batch_size=250, state_path=None):
            self.runs.append({"n": x.shape[0], "batch_size": batch_size,
                              "devices": (x.device.type, y.device.type)})
            rec.during(self)
            return rec.returns(x), y
    monkeypatch.setattr(pyautoattack, "AutoAttack", Recording)
    return rec


def _five_classes_no_attribute():
    """65 images of 2 x 2 px and a 5-class linear model without a ``num_classes`` attribute,
    seeded: ``z(x) = W (x - 1/2)``, so ``z(1 - x) = -z(x)``."""
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(5, 4, generator=g))
        model[1].bias.copy_(-model[1].weight.sum(1) / 2)
    return model, torch.rand(65, 1, 2, 2, generator=g), torch.randint(0, 5, (65,), generator=g)


def test_autoattack_is_the_official_standard_version_linf_2_255_seed_0_on_the_cpu(
        fake_autoattack):
    """The authors' AutoAttack as published: standard = APGD-CE, APGD-T, FAB-T, Square; 100
    iterations for the three gradient attacks, 5000 Square queries; 5 classes: 4 targets."""
    model, x, y = _five_classes_no_attribute()
    rob.autoattack_accuracy(model, x, y)
    (atk,) = fake_autoattack.built
    assert isinstance(atk.args.pop("model"), PadLogits)
    assert atk.args == {"norm": "Linf", "eps": 2 / 255, "version": "standard", "seed": 0,
                        "device": torch.device("cpu"), "attacks": None}
    assert atk.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (atk.apgd.n_iter, atk.apgd_targeted.n_iter, atk.fab.n_iter) == (100, 100, 100)
    assert (atk.apgd.n_restarts, atk.apgd_targeted.n_restarts, atk.fab.n_restarts) == (1, 1, 1)
    assert (atk.apgd_targeted.n_target_classes, atk.fab.n_target_classes) == (4, 4)
    assert atk.square.n_queries == 5000
    assert atk.runs == [{"n": 65, "batch_size": 64, "devices": ("cpu", "cpu")}]


def test_autoattack_passes_its_eps_seed_batch_size_and_square_queries(fake_autoattack):
    model, x, y = _five_classes_no_attribute()
    rob.autoattack_accuracy(model, x[:5], y[:5], eps=0.1, seed=3, batch_size=2, square_queries=7)
    (atk,) = fake_autoattack.built
    assert (atk.args["eps"], atk.args["seed"], atk.square.n_queries) == (0.1, 3, 7)
    assert atk.runs[0]["batch_size"] == 2


@pytest.mark.parametrize("k, targets", [(2, 1), (3, 2), (4, 3), (10, 9), (14, 9)])
def test_apgd_t_and_fab_t_target_every_other_real_class_up_to_the_standard_nine(
        fake_autoattack, k, targets):
    """min(9, K - 1): the standard 9 from 10 classes on; fewer classes, each other real class
    (never a padded column, which is never the arg-max)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, k))
    rob.autoattack_accuracy(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
    (atk,) = fake_autoattack.built
    assert (atk.apgd_targeted.n_target_classes, atk.fab.n_target_classes) == (targets, targets)


def test_a_one_class_model_is_one_line_before_any_attack(fake_autoattack):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"^AutoAttack needs a model with >= 2 classes, got 1$"):
        rob.autoattack_accuracy(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 0]))
    assert fake_autoattack.built == []


def test_autoattack_accuracy_is_each_image_s_arg_max_on_what_the_attack_returns(fake_autoattack):
    """The fake attack returns ``1 - x``; the labels are the model's classes on those (all 5
    classes among them): 1.0; on the clean images (``z(x) = -z(1 - x)``) it would be 0."""
    fake_autoattack.returns = lambda x: 1 - x
    model, x, _ = _five_classes_no_attribute()
    y = model(1 - x).argmax(1)
    assert len(set(y.tolist())) == 5 and int((model(x).argmax(1) == y).sum()) == 0
    assert rob.autoattack_accuracy(model, x, y) == 1.0


def test_the_package_s_warnings_go_to_the_log_and_stdout_stays_clean(fake_autoattack, capsys):
    def during(atk):
        atk.logger.warning("it seems to be a randomized defense!")
        atk.logger.debug("robust accuracy after APGD-CE: 50.00%")
        print("restart 0 - robust accuracy: 50.00%")
    fake_autoattack.during = during
    model, x, y = _five_classes_no_attribute()
    lines: list[str] = []
    rob.autoattack_accuracy(model, x[:2], y[:2], log=lines.append)
    assert lines == ["AutoAttack: it seems to be a randomized defense!"]
    assert capsys.readouterr().out == ""
    with pytest.warns(UserWarning, match="^AutoAttack: it seems to be a randomized defense!$"):
        rob.autoattack_accuracy(model, x[:2], y[:2])


def test_a_trace_function_switched_off_by_the_package_is_put_back(fake_autoattack):
    """Its dynamic-defence check ends with ``sys.settrace(None)``, which would stop a coverage
    tool; the caller's trace function is restored."""
    fake_autoattack.during = lambda atk: sys.settrace(None)
    model, x, y = _five_classes_no_attribute()

    def tracer(frame, event, arg):
        return None
    before = sys.gettrace()
    sys.settrace(tracer)
    try:
        rob.autoattack_accuracy(model, x[:2], y[:2])
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(before)


def test_the_label_names_the_package_version_the_seed_and_a_non_standard_square():
    version = importlib.metadata.version("pyautoattack")
    assert rob.autoattack_label(3) == (
        f"AutoAttack standard (Croce & Hein 2020, pyautoattack {version}), seed 3")
    assert rob.autoattack_label(0, square_queries=20) == (
        f"AutoAttack standard (Croce & Hein 2020, pyautoattack {version}), seed 0, "
        "Square 20 queries (not the standard 5000)")


def test_gradient_masking_warning_when_autoattack_is_weaker_than_pgd_only():
    assert rob.gradient_masking_warning(pgd_accuracy=0.4, autoattack_accuracy=0.4) is None
    assert rob.gradient_masking_warning(pgd_accuracy=0.4, autoattack_accuracy=0.3) is None
    text = rob.gradient_masking_warning(pgd_accuracy=0.4, autoattack_accuracy=0.45)
    assert text == ("AutoAttack accuracy 0.450 > PGD accuracy 0.400 at the same eps: a sign of "
                    "gradient masking; the robust accuracies may overstate the model's "
                    "robustness")


class _OnMeta(torch.nn.Module):
    """A 3-class model whose device (its one buffer's) is ``meta``; its logits are zeros on the
    CPU whatever it is given: a stand-in for a model on a GPU."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("where", torch.empty(0, device="meta"))

    def forward(self, x):
        return torch.zeros(x.shape[0], 3)


def test_autoattack_runs_on_the_model_s_device(fake_autoattack):
    """The package moves each batch to ``device`` itself; the images stay on the CPU."""
    rob.autoattack_accuracy(_OnMeta(), torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 2]),
                            batch_size=2)
    (atk,) = fake_autoattack.built
    assert atk.args["device"] == torch.device("meta")
    assert atk.runs == [{"n": 3, "batch_size": 2, "devices": ("cpu", "cpu")}]


class _Counted(torch.nn.Module):
    """Zero logits of ``width`` columns; records the batch size of each call."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width, self.calls = width, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return torch.zeros(x.shape[0], self.width)


def test_num_classes_is_the_model_s_attribute_without_running_it():
    model = _Counted(4)
    model.num_classes = 3
    assert rob.num_classes(model, torch.zeros(2, 1, 2, 2)) == 3 and model.calls == []


def test_num_classes_without_the_attribute_is_the_output_width_on_one_image():
    model = _Counted(4)
    assert rob.num_classes(model, torch.zeros(2, 1, 2, 2)) == 4 and model.calls == [1]


def test_adversarial_accuracy_defaults_pgd_at_8_255_seed_0_shard_0_batches_of_64(monkeypatch):
    model, x, y = _FirstClass(), torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    built = _bound_spy(monkeypatch, "make_attack", "the attack")
    crafted = _bound_spy(monkeypatch, "craft_shard", x)
    assert rob.adversarial_accuracy(model, x, y) == 0.5
    assert built == [{"name": "pgd", "model": model, "options": {"eps": 8 / 255, "seed": 0}}]
    assert crafted == [{"attack": "the attack", "images": x.tolist(), "labels": y.tolist(),
                        "seed": 0, "shard": 0, "batch_size": 64, "bar": None}]


def test_adversarial_accuracy_passes_its_attack_eps_seed_batch_size_and_options(monkeypatch):
    model, x, y = _FirstClass(), torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    built = _bound_spy(monkeypatch, "make_attack", "the attack")
    crafted = _bound_spy(monkeypatch, "craft_shard", x)
    rob.adversarial_accuracy(model, x, y, "mladv", eps=0.1, seed=3, batch_size=5, steps=2)
    assert built == [{"name": "mladv", "model": model,
                      "options": {"eps": 0.1, "seed": 3, "steps": 2}}]
    assert (crafted[0]["seed"], crafted[0]["shard"], crafted[0]["batch_size"]) == (3, 0, 5)


def test_shift_accuracy_compares_each_image_s_arg_max_with_its_label():
    """Images 0..4 predicted 0, 1, 2, 0, 1 (whatever the shift does) with those labels: 1.0."""
    model = Rows(torch.eye(3)[[0, 1, 2, 0, 1]])
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    out = rob.acquisition_shift_accuracy(model, x, y, transforms=("bias",), severities=(1.0,))
    assert out == {"shift_bias_1": 1.0, "shift_mean": 1.0}


def test_the_report_ece_uses_ece_bins():
    """Confidences 0.9 (right) and 0.6 (wrong): one bin |1/2 - 0.75| = 0.25; 15 bins 0.35."""
    model = Rows(torch.tensor([[0.9, 0.1], [0.6, 0.4]]).log())
    opts = rob.RobustnessOptions(attacks=(), pgd_eps=(), max_images=None, noise_sigmas=(),
                                 ece_bins=1)
    report = rob.robustness_report(model, torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), opts)
    assert report["ece"] == pytest.approx(0.25, abs=1e-6)


def test_the_report_counts_the_subsets_over_its_n_classes(monkeypatch):
    """6 images of classes 0 / 1 / 2 stratified over 2 classes: the 4 of classes 0 and 1."""
    _spy(monkeypatch, "robustness_outcomes", {})
    opts = rob.RobustnessOptions(max_images=5, autoattack_images=5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    report = rob.robustness_report(Rows(torch.zeros(6, 3)), torch.zeros(6, 1, 2, 2), y, opts,
                                   n_classes=2)
    assert (report["n"], report["n_robust"], report["n_autoattack"]) == (6, 4, 4)


def test_robustness_subsets_draw_both_with_subset_seed_over_n_classes():
    """Classes 0 / 1 / 2 of 3 / 3 / 2 images over 2 classes: the first 5 of the order seeded 7
    hold 3 of class 0 and 2 of class 1, AutoAttack's first 3 two and one."""
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opts = rob.RobustnessOptions(max_images=5, subset_seed=7, autoattack_images=3)
    sub, auto = rob.robustness_subsets(y, opts, 2)
    order = rob.stratified_order(y, 2, 7)
    assert (sub.tolist(), auto.tolist()) == (sorted(order[:5]), sorted(order[:3]))
    assert Counter(y[sub].tolist()) == {0: 3, 1: 2} and Counter(y[auto].tolist()) == {0: 2, 1: 1}


def test_empty_subsets_are_still_index_tensors():
    """No AutoAttack image, or a class range that holds no image: an empty ``long`` tensor, which
    indexes (an empty float tensor would not)."""
    y = torch.tensor([1, 1, 1])
    _, auto = rob.robustness_subsets(y, rob.RobustnessOptions(autoattack_images=0), 2)
    none = rob.stratified_subset(y, 2, n_classes=1)
    for empty in (auto, none):
        assert empty.dtype == torch.long and y[empty].shape == (0,)


def test_a_subset_of_all_images_or_more_is_all_of_them_even_of_no_image():
    y = torch.tensor([1, 1, 1])
    assert rob.stratified_subset(y, 3, n_classes=1).tolist() == [0, 1, 2]
    assert rob.stratified_subset(torch.zeros(0, dtype=torch.long), 0).tolist() == []
    assert rob.fixed_subset(0, 0).tolist() == []


def test_a_subset_of_one_image_is_the_first_of_the_order():
    y = torch.tensor([1, 0, 1, 0])
    assert rob.stratified_subset(y, 1).tolist() == [rob.stratified_order(y, 2, 0)[0]]


def test_stratified_subset_defaults_to_seed_0():
    y = torch.tensor([0, 1] * 4)
    by_seed = {s: rob.stratified_subset(y, 4, seed=s).tolist() for s in (0, 1)}
    assert rob.stratified_subset(y, 4).tolist() == by_seed[0] != by_seed[1]


def test_the_subset_is_stratified_over_classes_below_n_classes_only():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert Counter(y[rob.stratified_subset(y, 5, n_classes=2)].tolist()) == {0: 2, 1: 2}


def test_the_order_over_no_class_is_empty():
    assert rob.stratified_order(torch.tensor([0, 1]), 0, seed=0) == []


# -- the smallest flipping eps (issue 23 item 4) -------------------------------------------------
class _MeanMargin(torch.nn.Module):
    """Logits ``[m, -m]`` with ``m = mean(x) - 0.5``: class 0 while the mean brightness is above
    1/2. PGD's L-inf step lowers every pixel by its budget, so an image of constant ``0.5 + d``
    flips exactly when eps > d."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([m, -m], 1)


def test_minimal_flip_eps_is_the_first_bisection_point_above_the_margin():
    """Margins 3.05/255 and 0.3/255 (class 0), a misclassified image (class 1 label) and one
    of margin 20/255 beyond 8/255: bisection of [0, 8/255] in 6 halvings (steps of 0.125/255)
    ends at 3.125/255 and 0.375/255; 0 for the misclassified, inf for the unflippable."""
    d = torch.tensor([3.05, 0.3, 1.0, 20.0]) / 255
    x = (0.5 + d).view(4, 1, 1, 1).expand(4, 1, 4, 4).clone()
    y = torch.tensor([0, 0, 1, 0])
    eps = rob.minimal_flip_eps(_MeanMargin(), x, y, max_eps=8 / 255, bisections=6,
                               steps=10)
    assert eps[:2].tolist() == pytest.approx([3.125 / 255, 0.375 / 255], abs=1e-12)
    assert eps[2] == 0 and eps[3] == math.inf


@pytest.mark.parametrize("values, median", [([0.0, 1.0, math.inf], 1.0),
                                            ([3.0, 1.0, 2.0, math.inf], 2.5),
                                            ([math.inf, 1.0], math.inf), ([], math.nan)])
def test_the_median_of_min_eps_is_the_middle_value_or_the_mean_of_the_two(values, median):
    got = rob.median_min_eps(torch.tensor(values, dtype=torch.float64))
    assert got == median or (math.isnan(median) and math.isnan(got))


def test_the_report_gives_median_min_eps_in_1_255_units_over_the_images_right_when_clean():
    """Margins 3.05/255 and 0.3/255 flip at 3.125 and 0.375 (1/255): median their mean 1.75;
    a third image, misclassified clean (label 1), does not enter the median."""
    x = (0.5 + torch.tensor([3.05, 0.3, 1.0]) / 255).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    opts = rob.RobustnessOptions(attacks=(), pgd_eps=(), pgd_options={"steps": 10},
                                 noise_sigmas=(), max_images=None, min_eps_images=3)
    report = rob.robustness_report(_MeanMargin(), x, torch.tensor([0, 0, 1]), opts,
                                   n_classes=2)
    assert report["median_min_eps"] == pytest.approx(1.75)


def test_the_report_cis_are_the_patient_bootstrap_of_each_column_s_images():
    """Images 0..3 of patients a a b b, classified right, right, wrong, right (rows of logits);
    noise column on all 4: its CI is stats.accuracy_ci of those outcomes by patient, with the
    report's resamples, level and seed; the size beside it 4 images of 2 patients."""
    from mladv.evaluation.stats import accuracy_ci
    model = Rows(torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]))
    y = torch.tensor([0, 0, 0, 1])
    opts = rob.RobustnessOptions(attacks=(), pgd_eps=(), noise_sigmas=(0.1,), max_images=None,
                                 bootstrap=50, ci_level=0.9)
    report = rob.robustness_report(model, torch.zeros(4, 1, 2, 2), y, opts, seed=4,
                                   patients=["a", "a", "b", "b"])
    want = accuracy_ci([1, 1, 0, 1], ["a", "a", "b", "b"], n_boot=50, seed=4, level=0.9)
    for key in ("accuracy", "acc_noise_0.1"):
        assert report["ci"][key] == {"low": want.low, "high": want.high, "n": 4, "n_patients": 2}
    assert report["sizes"] == {"accuracy": 4, "acc_noise_0.1": 4}


def test_the_report_warns_of_gradient_masking_when_autoattack_beats_pgd_on_its_images(
        monkeypatch):
    """PGD at 2/255 leaves no image right, AutoAttack at 2/255 both of its images: warned."""
    _spy(monkeypatch, "adversarial_correct", torch.tensor([False, False, False, False]))
    _spy(monkeypatch, "autoattack_correct", torch.tensor([True, True]))
    opts = rob.RobustnessOptions(attacks=(), pgd_eps=(2.0,), autoattack_images=2,
                                 noise_sigmas=(), max_images=None)
    report = rob.robustness_report(Rows(torch.zeros(4, 2)), torch.zeros(4, 1, 2, 2),
                                   torch.tensor([0, 1, 0, 1]), opts)
    assert report["gradient_masking"].startswith(
        "AutoAttack accuracy 1.000 > PGD accuracy 0.000 at the same eps")
    opts = replace(opts, pgd_eps=(8.0,))  # no PGD at AutoAttack's eps: no check
    assert "gradient_masking" not in rob.robustness_report(
        Rows(torch.zeros(4, 2)), torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), opts)



def test_corruption_columns_score_the_subset_under_each_family_and_severity_seeded_per_family():
    """Images of constant brightness 0.5 +- 0.02 under the mean-brightness rule (class 0 above
    1/2): corr_clean, and corr_<family>_<s> is that rule on corrupt(x, family, s) with the
    generator seeded derive_seed(seed, 4000 + the family's registry place, s)."""
    from mladv.evaluation.corruptions import CORRUPTIONS, corrupt
    x = (0.5 + torch.tensor([0.02, -0.02, 0.02, -0.02])).view(4, 1, 1, 1).expand(4, 1, 8, 8)
    x = x.contiguous()
    y = torch.tensor([0, 1, 0, 1])
    opts = rob.RobustnessOptions(attacks=(), pgd_eps=(), noise_sigmas=(), max_images=None,
                                 corruptions=("gaussian_noise", "contrast_down"),
                                 corruption_severities=(2, 5))
    cols = rob.robustness_columns(_MeanMargin(), x, y, opts, seed=3, n_classes=2)
    assert cols["corr_clean"] == 1.0
    for name in ("gaussian_noise", "contrast_down"):
        for s in (2, 5):
            gen = torch.Generator().manual_seed(
                rob.derive_seed(3, 4000 + list(CORRUPTIONS).index(name), s))
            bright = corrupt(x, name, s, gen).flatten(1).mean(1) > 0.5
            want = float((bright == (y == 0)).float().mean())
            assert cols[f"corr_{name}_{s}"] == want, (name, s)
    assert set(cols) == {"corr_clean", "corr_gaussian_noise_2", "corr_gaussian_noise_5",
                         "corr_contrast_down_2", "corr_contrast_down_5"}


def test_an_unknown_corruption_is_one_line_naming_it():
    with pytest.raises(ValueError, match="unknown corruption\\(s\\) \\['fog'\\]"):
        rob.RobustnessOptions(corruptions=("fog",)).check()
