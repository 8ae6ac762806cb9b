"""Calibration and own-model robustness numbers (ECE by hand, PGD / MLAdv / AutoAttack)."""
from __future__ import annotations

import pytest
import torch

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
