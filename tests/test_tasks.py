"""The task layer: masked BCE (hand values, torch's BCE on the known entries), the NaN mask's
effect on loss and gradient, the decision rule at thresholds, the label checks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mladv.tasks import (
    attack_objective,
    check_targets,
    correct,
    decide,
    flip_rate,
    masked_bce,
)

NAN = float("nan")


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [NAN, 1.0]])
    return logits, targets


def test_masked_bce_equals_the_hand_computed_mean_over_known_entries():
    logits, targets = _case()
    # -log sigmoid(0), -log(1 - sigmoid(2)), -log sigmoid(3); the NaN entry left out
    hand = (math.log(2.0) + 2.0 + math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-3.0))) / 3
    assert masked_bce(logits, targets).item() == pytest.approx(hand, rel=1e-6)


def test_masked_bce_equals_torch_bce_on_the_known_entries_only():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    targets = torch.randint(0, 2, (5, 4)).float()
    targets[torch.rand(5, 4) < 0.4] = NAN
    known = ~torch.isnan(targets)
    expected = F.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert masked_bce(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    expected_sum = F.binary_cross_entropy_with_logits(logits[known], targets[known],
                                                      reduction="sum")
    assert masked_bce(logits, targets, "sum").item() == pytest.approx(expected_sum.item(),
                                                                      rel=1e-6)


def test_masked_bce_gradient_is_sigmoid_minus_target_over_known_count_and_zero_at_nan():
    logits, targets = _case()
    masked_bce(logits, targets).backward()
    assert logits.grad is not None
    hand = torch.tensor([[(0.5 - 1.0) / 3, _sigmoid(2.0) / 3], [0.0, (_sigmoid(3.0) - 1.0) / 3]])
    torch.testing.assert_close(logits.grad, hand)
    assert logits.grad[1, 0].item() == 0.0


def test_a_nan_entry_changes_neither_loss_nor_gradient_of_the_other_entries():
    logits, targets = _case()
    loss = masked_bce(logits, targets)
    loss.backward()
    # the same batch without the unknown entry, through torch's own BCE
    known = torch.tensor([[True, True], [False, True]])
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = F.binary_cross_entropy_with_logits(ref_logits[known], targets[known])
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert logits.grad is not None and ref_logits.grad is not None
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_all_unknown_batch_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = masked_bce(logits, torch.full((3, 2), NAN))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None
    assert torch.equal(logits.grad, torch.zeros(3, 2))


def test_multiclass_objective_is_mean_cross_entropy():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # -log softmax: log(1 + e^-1) for the first, log(1 + e^2) for the second (wrong class)
    hand = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(2.0))) / 2
    loss = attack_objective("multiclass")(logits, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(hand, rel=1e-6)


def test_multilabel_objective_is_the_masked_bce_mean():
    logits, targets = _case()
    hand = (math.log(2.0) + 2.0 + math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-3.0))) / 3
    assert attack_objective("multilabel")(logits, targets).item() == pytest.approx(hand, rel=1e-6)


def test_multilabel_decision_is_logit_at_least_zero_by_default():
    logits = torch.tensor([[0.0, -0.1, 1.0]])
    assert decide(logits, "multilabel").tolist() == [[True, False, True]]


def test_multilabel_decision_uses_one_threshold_per_finding():
    # logit(0.3) = -0.847, logit(0.45) = -0.201, logit(0.8) = 1.386
    logits = torch.tensor([[0.0, -0.1, 1.0], [-0.9, -0.25, 1.4]])
    assert decide(logits, "multilabel", [0.3, 0.45, 0.8]).tolist() == [[True, True, False],
                                                                        [False, False, True]]


def test_multilabel_decision_does_not_saturate_near_one():
    # logit(0.999999) = 13.8155: sigmoid(13.9) >= t, sigmoid(13.7) < t (float32 sigmoid ties)
    logits = torch.tensor([[13.9], [13.7]])
    assert decide(logits, "multilabel", 0.999999).tolist() == [[True], [False]]


def test_multiclass_decision_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert decide(logits, "multiclass").tolist() == [1, 0]


def test_multilabel_correct_is_false_at_unknown_entries():
    logits = torch.tensor([[1.0, -1.0, 1.0]])
    targets = torch.tensor([[1.0, 1.0, NAN]])
    assert correct(logits, targets, "multilabel").tolist() == [[True, False, False]]


def test_flip_rate_per_finding_counts_changed_decisions():
    clean = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    adv = torch.tensor([[-1.0, -1.0], [2.0, 0.5]])
    assert flip_rate(clean, adv, "multilabel").tolist() == [0.5, 0.0]


@pytest.mark.parametrize(("targets", "task", "message"), [
    (torch.tensor([0.0, 1.0]), "multiclass", "int64"),
    (torch.tensor([0, 3]), "multiclass", r"\[0, 3\)"),
    (torch.zeros(2, 3), "multiclass", "multilabel"),
    (torch.tensor([[0.0, 2.0, 1.0]]), "multilabel", "0, 1 or NaN"),
    (torch.zeros(2, 4), "multilabel", "N x 3"),
    (torch.zeros(2, 3, dtype=torch.long), "multilabel", "float"),
    (torch.zeros(2), "multilabel", "N x 3"),
])
def test_bad_targets_are_refused_in_one_line(targets, task, message):
    with pytest.raises(ValueError, match=message) as info:
        check_targets(targets, task, 3)
    assert "targets" in str(info.value) and "\n" not in str(info.value)


def test_good_targets_pass_unchanged():
    ml = torch.tensor([[0.0, 1.0, NAN]])
    assert check_targets(ml, "multilabel", 3) is ml
    mc = torch.tensor([2, 0])
    assert check_targets(mc, "multiclass", 3) is mc


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="task must be one of"):
        check_targets(torch.tensor([0]), "regression", 2)
