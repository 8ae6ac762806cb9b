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


# --- mutation testing (issue 25 item 7): the refusals' exact lines, the edge cases of each
# statistic, the threshold boundary (sigmoid(z) >= t_k is positive).

def _message(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_logits_that_are_not_n_by_k_are_refused_in_one_line():
    assert _message(per_finding_auroc, torch.zeros(2, 1, 1), torch.zeros(2, 1)) == (
        "logits must have shape N x K, got (2, 1, 1)")


def test_logits_and_targets_with_different_rows_are_refused_naming_both_counts():
    assert _message(per_finding_auroc, torch.zeros(2, 3), torch.zeros(4, 3)) == (
        "logits have 2 rows and targets 4")


def test_a_finding_with_no_known_target_has_no_auroc():
    logits = torch.tensor([[1.0, 0.3], [0.0, 0.1]])
    targets = torch.tensor([[1.0, NAN], [0.0, NAN]])
    aurocs = per_finding_auroc(logits, targets)
    assert aurocs[0] == 1.0 and math.isnan(aurocs[1])


def test_a_finding_with_one_known_target_has_no_auroc():
    logits = torch.tensor([[1.0, 0.3], [0.0, 0.1]])
    targets = torch.tensor([[1.0, 1.0], [0.0, NAN]])
    aurocs = per_finding_auroc(logits, targets)
    assert aurocs[0] == 1.0 and math.isnan(aurocs[1])


def test_a_one_class_finding_is_nan_without_asking_scikit_learn():
    # scikit-learn warns (UndefinedMetricWarning) on one class; the card says NaN silently
    import warnings

    logits = torch.tensor([[1.0, 0.3], [0.0, 0.1], [0.5, 0.2]])
    targets = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aurocs = per_finding_auroc(logits, targets)
    assert aurocs[0] == 1.0 and math.isnan(aurocs[1])


def test_macro_auroc_is_the_mean_of_the_defined_findings():
    assert macro_auroc([0.9, NAN, 0.6, 0.75]) == (pytest.approx((0.9 + 0.6 + 0.75) / 3), 3)


def test_auroc_drop_is_the_mean_of_the_per_finding_drops():
    # drops 0.3 and 0.1 -> 0.2
    assert auroc_drop([0.9, 0.8], [0.6, 0.7]) == pytest.approx(0.2)


def test_auroc_drop_refuses_lists_of_different_lengths():
    with pytest.raises(ValueError):
        auroc_drop([0.9, 0.8], [0.6])


def test_a_logit_exactly_at_the_threshold_is_positive_on_either_side_of_the_attack():
    # t = 0.5 <=> logit 0: 0.0 is positive, -1.0 negative; both rows flip
    clean = torch.tensor([[0.0], [-1.0]])
    adv = torch.tensor([[-1.0], [0.0]])
    assert flip_rates(clean, adv) == [1.0]


def test_flip_rates_use_the_thresholds():
    # t = 0.3 (logit -0.847): -0.5 positive, -1.0 negative -> one flip in two; at 0.5 none
    clean = torch.tensor([[-0.5], [-0.5]])
    adv = torch.tensor([[-1.0], [-0.5]])
    assert flip_rates(clean, adv, [0.3]) == [0.5]


def test_flip_rates_of_no_image_are_nan_per_finding():
    rates = flip_rates(torch.zeros(0, 3), torch.zeros(0, 3))
    assert len(rates) == 3 and all(math.isnan(r) for r in rates)


def test_flip_rates_refuse_logits_that_are_not_n_by_k_even_of_equal_shape():
    assert _message(flip_rates, torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)) == (
        "clean (2, 3, 1) and attacked (2, 3, 1) logits must be the same N x K")


def test_flip_rates_refuse_logits_of_different_shapes_naming_both():
    assert _message(flip_rates, torch.zeros(2, 3), torch.zeros(2, 2)) == (
        "clean (2, 3) and attacked (2, 2) logits must be the same N x K")


def test_flip_rates_compare_on_the_logits_device(monkeypatch):
    # thresholds made on another device than the logits' would fail on a GPU; a spy on the
    # threshold conversion checks they are asked for on the logits' device (CPU here)
    import mladv.evaluation.multilabel as ml
    from mladv.tasks import threshold_logits

    seen = []

    def spy(thresholds, n_outputs, *, like=None):
        seen.append(like)
        return threshold_logits(thresholds, n_outputs, like=like)

    monkeypatch.setattr(ml, "threshold_logits", spy)
    flip_rates(torch.zeros(2, 1), torch.ones(2, 1))
    assert len(seen) == 1 and seen[0] is not None and seen[0].device.type == "cpu"
    assert seen[0].dtype == torch.float64
