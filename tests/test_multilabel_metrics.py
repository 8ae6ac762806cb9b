"""The multilabel card's numbers (issue 22 item 6), each against its definition by hand."""
from __future__ import annotations

import math

import pytest
import torch

from mladv.evaluation.multilabel import (
    auroc_drop,
    flip_rates,
    macro_auroc,
    operating_point,
    per_finding_auroc,
)

NAN = float("nan")


def test_auroc_is_the_share_of_positive_negative_pairs_ranked_right_ties_half():
    # finding 0: positives scored 3, 1; negatives 2, 1 -> pairs (3>2), (3>1), (1<2), (1=1: half)
    logits = torch.tensor([[3.0], [1.0], [2.0], [1.0]])
    targets = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    assert per_finding_auroc(logits, targets) == [pytest.approx((1 + 1 + 0 + 0.5) / 4)]


def test_unknown_targets_are_left_out_of_a_findings_auroc():
    # the NaN row would be a positive ranked below every negative if it were read as 1
    logits = torch.tensor([[3.0], [2.0], [1.0], [-5.0]])
    targets = torch.tensor([[1.0], [0.0], [0.0], [NAN]])
    assert per_finding_auroc(logits, targets) == [1.0]


def test_a_finding_with_one_class_has_no_auroc_and_macro_counts_the_defined_ones():
    logits = torch.tensor([[1.0, 0.5], [0.0, 0.2]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    aurocs = per_finding_auroc(logits, targets)
    assert aurocs[0] == 1.0 and math.isnan(aurocs[1])
    assert macro_auroc(aurocs) == (1.0, 1)
    assert math.isnan(macro_auroc([NAN])[0]) and macro_auroc([NAN])[1] == 0


def test_sensitivity_and_specificity_at_the_threshold_by_hand():
    # threshold 0.5 <=> logit >= 0; finding 0: TP 1 (2.0), FN 1 (-1.0), TN 1 (-3.0), FP 1 (0.0)
    logits = torch.tensor([[2.0], [-1.0], [-3.0], [0.0], [5.0]])
    targets = torch.tensor([[1.0], [1.0], [0.0], [0.0], [NAN]])
    point = operating_point(logits, targets)
    assert point.sensitivity == [0.5] and point.specificity == [0.5]
    assert point.positives == [2] and point.negatives == [2]


def test_a_per_finding_threshold_moves_the_operating_point():
    # at t = 0.9 (logit 2.197) only 5.0 is positive: sensitivity of [5.0, 1.0] positives = 1/2
    logits = torch.tensor([[5.0], [1.0], [-1.0]])
    targets = torch.tensor([[1.0], [1.0], [0.0]])
    assert operating_point(logits, targets, [0.9]).sensitivity == [0.5]
    assert operating_point(logits, targets, [0.5]).sensitivity == [1.0]


def test_no_known_positive_gives_nan_sensitivity():
    point = operating_point(torch.tensor([[1.0], [-1.0]]), torch.tensor([[0.0], [NAN]]))
    assert math.isnan(point.sensitivity[0]) and point.specificity == [0.0]


def test_auroc_drop_averages_over_findings_defined_in_both():
    assert auroc_drop([0.9, 0.8, NAN], [0.6, NAN, 0.7]) == pytest.approx(0.3)
    assert math.isnan(auroc_drop([NAN], [0.5]))


def test_flip_rate_counts_decisions_that_crossed_the_threshold():
    clean = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, -2.0], [0.5, 3.0]])
    adv = torch.tensor([[-1.0, -1.0], [2.0, -0.5], [0.5, -2.0], [0.5, 3.0]])
    # finding 0: rows 0 and 2 flip -> 2/4; finding 1: row 1 flips -> 1/4
    assert flip_rates(clean, adv) == [0.5, 0.25]


def test_multilabel_metrics_refuse_multiclass_targets_in_one_line():
    with pytest.raises(ValueError, match="multilabel task must have shape N x 2"):
        per_finding_auroc(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
