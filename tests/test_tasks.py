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
    flips,
    masked_bce,
    threshold_logits,
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


# --- mutation testing (issue 25 item 7): the refusals' exact lines, the boundaries, the
# thresholds reaching every decision, the dtype / device the thresholds are made in.

def _message(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_non_tensor_targets_are_refused_naming_their_type():
    assert _message(check_targets, [0, 1], "multiclass", 2) == (
        "targets must be a torch.Tensor, got list")


def test_one_output_is_a_valid_model():
    ml = torch.tensor([[1.0], [0.0]])
    assert check_targets(ml, "multilabel", 1) is ml


def test_zero_outputs_are_refused_naming_n_outputs():
    assert _message(check_targets, torch.zeros(2, 0), "multilabel", 0) == (
        "n_outputs must be at least 1, got 0")


def test_n_by_k_multiclass_targets_get_the_multilabel_hint_in_the_exact_line():
    assert _message(check_targets, torch.zeros(2, 3, dtype=torch.long), "multiclass", 3) == (
        "targets for a multiclass task must have shape N, got (2, 3) (N x K targets are "
        "multilabel: pass task='multilabel')")


def test_three_d_multiclass_targets_get_no_multilabel_hint():
    assert _message(check_targets, torch.zeros(2, 3, 1, dtype=torch.long), "multiclass", 3) == (
        "targets for a multiclass task must have shape N, got (2, 3, 1)")


def test_masked_bce_none_reduction_is_the_per_entry_loss_with_zero_at_unknown():
    logits, targets = _case()
    # -log sigmoid(0) = log 2; -log(1 - sigmoid(2)) = 2 + log(1 + e^-2); -log sigmoid(3)
    hand = torch.tensor([[math.log(2.0), 2.0 + math.log(1 + math.exp(-2.0))],
                         [0.0, math.log(1 + math.exp(-3.0))]])
    torch.testing.assert_close(masked_bce(logits, targets, "none").detach(), hand)


def test_masked_bce_mean_of_a_single_known_entry_is_that_entrys_loss():
    logits = torch.tensor([[0.0, 5.0]])
    targets = torch.tensor([[1.0, NAN]])
    assert masked_bce(logits, targets).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_masked_bce_is_in_the_logits_dtype_whatever_the_targets_float_dtype():
    logits = torch.tensor([[0.3, -1.2]], dtype=torch.float32)
    targets = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    loss = masked_bce(logits, targets)
    ref = F.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0.0]]))
    assert loss.dtype == torch.float32
    assert loss.item() == ref.item()


def test_masked_bce_refuses_an_unknown_reduction_in_one_line():
    logits, targets = _case()
    assert _message(masked_bce, logits, targets, "max") == (
        "reduction must be 'mean', 'sum' or 'none', got 'max'")


def test_masked_bce_refuses_mismatched_shapes_naming_both():
    assert _message(masked_bce, torch.zeros(2, 3), torch.zeros(2, 2)) == (
        "logits (2, 3) and targets (2, 2) must have the same shape N x K")


def test_threshold_logits_without_like_are_the_exact_float64_logits():
    out = threshold_logits([0.3, 0.8], 2)
    assert out.dtype == torch.float64
    # to double precision: a float32 logit would be off by ~1e-8
    assert out.tolist() == pytest.approx([math.log(0.3 / (1 - 0.3)), math.log(0.8 / (1 - 0.8))],
                                         rel=1e-14)


@pytest.mark.parametrize(("like_dtype", "expected"), [
    (torch.float32, torch.float32), (torch.float64, torch.float64),
    (torch.float16, torch.float16), (torch.int64, torch.float32)])
def test_threshold_logits_take_likes_float_dtype_and_float32_for_integer_like(like_dtype,
                                                                               expected):
    assert threshold_logits(0.3, 2, like=torch.zeros(1, dtype=like_dtype)).dtype == expected


def test_threshold_logits_are_made_on_likes_device():
    # the meta device stands in for a GPU this machine may lack
    assert threshold_logits(0.3, 2, like=torch.zeros(1, device="meta")).device.type == "meta"


def test_a_wrong_number_of_thresholds_is_refused_in_one_line():
    assert _message(threshold_logits, [0.3, 0.4], 3) == "thresholds: 2 values for 3 findings"


@pytest.mark.parametrize(("value", "shown"), [(0.0, "0"), (1.0, "1"), (1.5, "1.5"),
                                              (-0.2, "-0.2")])
def test_a_threshold_outside_the_open_unit_interval_is_refused_in_one_line(value, shown):
    assert _message(threshold_logits, [0.5, value], 2) == (
        f"thresholds must be probabilities in (0, 1), got {shown}")


def test_decide_on_a_device_makes_the_decision_there():
    logits = torch.zeros(2, 3, device="meta")
    out = decide(logits, "multilabel", 0.3)
    assert out.device.type == "meta" and out.dtype == torch.bool and tuple(out.shape) == (2, 3)


def test_decide_refuses_thresholds_for_a_multiclass_task_in_one_line():
    assert _message(decide, torch.zeros(1, 2), "multiclass", 0.3) == (
        "thresholds apply to a multilabel task only (multiclass decides by argmax)")


def test_decide_refuses_logits_that_are_not_n_by_k():
    assert _message(decide, torch.zeros(3), "multilabel") == (
        "logits must have shape N x K, got (3,)")


def test_multiclass_correct_is_argmax_equal_to_the_class_index():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    # argmax [1, 0] against classes [1, 2]
    assert correct(logits, torch.tensor([1, 2]), "multiclass").tolist() == [True, False]


def test_multilabel_correct_uses_the_thresholds():
    # logit -0.5: positive at t = 0.3 (logit(0.3) = -0.847), negative at 0.5 (logit 0)
    logits = torch.tensor([[-0.5, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    assert correct(logits, targets, "multilabel", 0.3).tolist() == [[True, True]]


def test_flips_use_the_thresholds_on_both_sides():
    # t = 0.3 (logit -0.847): clean -0.5 positive; adversarial -1.0 negative (flip), -0.5
    # positive (no flip). At the default 0.5 all four are negative.
    clean = torch.tensor([[-0.5], [-0.5]])
    adv = torch.tensor([[-1.0], [-0.5]])
    assert flips(clean, adv, "multilabel", 0.3).tolist() == [[True], [False]]
    assert flip_rate(clean, adv, "multilabel", 0.3).tolist() == [0.5]


def test_flip_rate_per_finding_averages_over_images_not_findings():
    clean = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([[-1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
    # finding 0 flips on both images, finding 1 on one, finding 2 on none
    assert flip_rate(clean, adv, "multilabel").tolist() == [1.0, 0.5, 0.0]


def test_multiclass_flip_rate_is_the_share_of_changed_argmaxes():
    clean = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    adv = torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    rate = flip_rate(clean, adv, "multiclass")
    assert rate.dim() == 0 and rate.item() == 0.25


def test_flips_refuse_logits_of_different_shapes_naming_both():
    assert _message(flips, torch.zeros(2, 3), torch.zeros(2, 2), "multilabel") == (
        "clean logits (2, 3) and adversarial logits (2, 2) differ in shape")


def test_masked_bce_float16_mean_divides_in_float16_on_every_device():
    # L = sum / count in the loss's dtype: the count 2049 is no float16 number and rounds
    # (ties to even) to 2048, as a float16 division on a GPU rounds it; the float16 sum of the
    # per-entry losses (torch's own BCE, reduction "sum") is 2066, and 2066 / 2048 is exact.
    logits = torch.linspace(-3.0, 3.0, 2049).reshape(2049, 1).half()
    targets = (torch.arange(2049) % 2).reshape(2049, 1).half()
    total = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    assert total.item() == 2066.0
    loss = masked_bce(logits, targets)
    assert loss.dtype == torch.float16 and loss.item() == 2066.0 / 2048.0


def test_thresholds_given_as_a_parameter_tensor_are_read_without_a_warning():
    import warnings

    thresholds = torch.nn.Parameter(torch.tensor([0.3, 0.8]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = threshold_logits(thresholds, 2)
    # float32 parameters: logit of the float32 value of 0.3 and 0.8
    t0, t1 = (float(torch.tensor(0.3)), float(torch.tensor(0.8)))
    assert out.tolist() == pytest.approx([math.log(t0 / (1 - t0)), math.log(t1 / (1 - t1))],
                                         rel=1e-14)
