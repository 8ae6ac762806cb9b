"""A/B comparison (issue 23 item 6): paired CIs on the same images, McNemar, the verdict."""
from __future__ import annotations

import pytest
import torch

from mladv.evaluation.compare import compare_models
from mladv.evaluation.stats import paired_accuracy_ci
from mladv.robustness import RobustnessOptions
from model_helpers import Rows

RIGHT = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, 3.0]])  # labels 0 0 1 1
OPTS = RobustnessOptions(attacks=(), pgd_eps=(), noise_sigmas=(0.1,), max_images=None,
                         bootstrap=200)
Y = torch.tensor([0, 0, 1, 1])
PATIENTS = ["a", "a", "b", "c"]


def _compare(model_b):
    return compare_models(Rows(RIGHT), model_b, torch.zeros(4, 1, 2, 2), Y, OPTS, seed=1,
                          patients=PATIENTS)


def test_accuracy_difference_its_paired_patient_ci_and_mcnemar_by_hand():
    """A right on all 4, B wrong on images 1 and 2: A - B = 1 - 1/2 = 1/2; McNemar: 2 images
    only A gets right, none only B, p = 2 * (1/2)^2 = 1/2; the CI is the paired bootstrap over
    patients a a b c with the options' resamples and the seed."""
    b = Rows(torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0]]))
    acc = _compare(b)["accuracy"]
    want = paired_accuracy_ci([1, 1, 1, 1], [1, 0, 0, 1], PATIENTS, n_boot=200, seed=1)
    assert (acc["a"], acc["b"], acc["diff"]) == (1.0, 0.5, 0.5)
    assert (acc["a_only"], acc["b_only"], acc["p_mcnemar"]) == (2, 0, pytest.approx(0.5))
    assert (acc["low"], acc["high"]) == (want.low, want.high) and acc["n"] == 4


def test_a_model_wrong_on_every_image_of_every_patient_is_worse_for_sure():
    """B wrong everywhere: every resample's difference is 1, so the CI is [1, 1]: A better."""
    acc = _compare(Rows(-RIGHT))["accuracy"]
    assert (acc["low"], acc["high"], acc["verdict"]) == (1.0, 1.0, "A better")


def test_auroc_difference_of_a_perfect_and_a_reversed_ranking_is_one():
    """A ranks both positives above both negatives (AUROC 1), B the reverse (AUROC 0)."""
    auroc = _compare(Rows(-RIGHT))["auroc"]
    assert (auroc["a"], auroc["b"], auroc["diff"]) == (1.0, 0.0, 1.0)


def test_an_a_b_without_bootstrap_is_one_line():
    with pytest.raises(ValueError, match="needs --bootstrap >= 1"):
        compare_models(Rows(RIGHT), Rows(RIGHT), torch.zeros(4, 1, 2, 2), Y,
                       RobustnessOptions(bootstrap=0))
