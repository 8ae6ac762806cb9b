"""mladv.attacks.balance, the three readings of eq. 2 (SPEC eq. 2), by hand on two samples:
``literal`` L = sum_n (tau a_n L_adv + sum_k w_k r_n L_k); ``grad-norm`` g = a g_adv/|g_adv| +
scale sum_k w_k r g_k/|g_k| (|.| the per-sample mean absolute value), with the factors
|g_adv|/|g_k|; ``calibrated`` L = sum_n a_n L_adv + scale sum_k w_k f_k r_n L_k (a, r the
per-sample weights, 1 when not given)."""
import pytest
import torch

from mladv.attacks.balance import (
    REALISM_SCALE_DEFAULT,
    TAU_DEFAULT,
    _per_sample,
    combine_calibrated,
    combine_eq2_literal,
    combine_grad_norm,
    mix_weights,
    per_sample_mean_abs,
    per_sample_unit,
)

T = torch.tensor


# -- mix_weights ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("balance", "tau", "scale", "expected"), [
    ("literal", None, None, (TAU_DEFAULT, None)), ("literal", 0.5, None, (0.5, None)),
    ("literal", 0.0, None, (0.0, None)), ("grad-norm", None, None, (None, REALISM_SCALE_DEFAULT)),
    ("calibrated", None, 0.25, (None, 0.25)), ("grad-norm", None, 0.0, (None, 0.0))])
def test_mix_weights_gives_the_balances_own_weight_its_default_when_none(balance, tau, scale,
                                                                         expected):
    assert mix_weights(balance, tau, scale) == expected


def test_defaults_are_tau_and_realism_scale_one_tenth():
    assert (TAU_DEFAULT, REALISM_SCALE_DEFAULT) == (0.1, 0.1)


def test_realism_scale_with_literal_is_one_line_naming_tau():
    with pytest.raises(ValueError) as err:
        mix_weights("literal", None, 0.5)
    assert str(err.value) == ("realism_scale applies to balance 'grad-norm' / 'calibrated'; with "
                              "balance='literal' eq. 2's weight of L_adv is tau")


def test_tau_with_a_normalised_balance_is_one_line_naming_realism_scale():
    with pytest.raises(ValueError) as err:
        mix_weights("calibrated", 0.5, None)
    assert str(err.value) == ("tau is eq. 2's weight of L_adv (balance='literal' only); with "
                              "balance='calibrated' the realism terms' weight relative to the "
                              "adversarial one is realism_scale (e.g. realism_scale=0.5)")


@pytest.mark.parametrize(("balance", "tau", "scale", "message"), [
    ("literal", -0.5, None, "tau must be >= 0, got -0.5"),
    ("grad-norm", None, -0.25, "realism_scale must be >= 0, got -0.25")])
def test_a_negative_weight_is_one_line_naming_it(balance, tau, scale, message):
    with pytest.raises(ValueError) as err:
        mix_weights(balance, tau, scale)
    assert str(err.value) == message


# -- per-sample helpers ---------------------------------------------------------------------------
def test_per_sample_mean_abs_is_n_x_1_x_1_x_1_and_never_below_1e_12():
    g = torch.zeros(2, 1, 2, 2)
    g[0, 0, 0] = T([1.0, -3.0])
    assert torch.equal(per_sample_mean_abs(g), T([1.0, 1e-12]).view(2, 1, 1, 1))


def test_per_sample_unit_divides_each_sample_by_its_mean_abs():
    g = T([[2.0, -6.0], [0.5, 0.5]])
    assert torch.equal(per_sample_unit(g), T([[0.5, -1.5], [1.0, 1.0]]))


def test_per_sample_weight_scales_each_sample_and_none_is_the_value_itself():
    value = torch.ones(2, 1, 2)
    assert _per_sample(None, value) is value
    assert torch.equal(_per_sample(T([2.0, 3.0]), value), T([[[2.0, 2.0]], [[3.0, 3.0]]]))


# -- the three mixes ------------------------------------------------------------------------------
L_ADV, TERMS, W = T([1.0, 2.0]), [("style", T([3.0, 4.0])), ("tv", T([5.0, 6.0]))], {"style": 2.0,
                                                                                    "tv": 10.0}


def test_literal_eq2_is_tau_l_adv_plus_the_weighted_terms_summed_over_samples():
    assert combine_eq2_literal(L_ADV, TERMS, 0.5, W).item() == 0.5 * 3 + 2 * 7 + 10 * 11


def test_literal_eq2_weighs_l_adv_and_the_terms_per_sample():
    got = combine_eq2_literal(L_ADV, TERMS, 0.5, W, adv_w=T([1.0, 0.0]), real_w=T([0.0, 1.0]))
    assert got.item() == 0.5 * 1 + 2 * 4 + 10 * 6


def test_grad_norm_adds_the_unit_gradients_and_reports_the_scale_ratios():
    g_adv = T([[2.0, -2.0]])  # mean abs 2
    grads = [("style", T([[1.0, 3.0]])), ("tv", T([[0.5, -0.5]]))]  # mean abs 2 and 0.5
    g, factors = combine_grad_norm(g_adv, grads, 0.5, {"style": 1.0, "tv": 2.0})
    assert torch.equal(g, T([[1.0, -1.0]]) + 0.5 * T([[1.0, 3.0]]) / 2 + 0.5 * 2 * T([[1.0, -1.0]]))
    assert set(factors) == {"style", "tv"}
    assert torch.equal(factors["style"], T([1.0])) and torch.equal(factors["tv"], T([4.0]))


def test_grad_norm_weighs_the_adversarial_and_the_realism_gradients_per_sample():
    g_adv = T([[2.0, -2.0], [1.0, 1.0]])  # mean abs 2, 1
    grads = [("style", T([[1.0, 3.0], [2.0, 2.0]]))]  # mean abs 2, 2
    g, factors = combine_grad_norm(g_adv, grads, 1.0, {"style": 1.0}, adv_w=T([1.0, 0.5]),
                                   real_w=T([0.0, 1.0]))
    assert torch.equal(g, T([[1.0, -1.0], [1.5, 1.5]]))
    assert torch.equal(factors["style"], T([1.0, 0.5]))


def test_calibrated_is_l_adv_plus_scale_times_the_factor_weighted_terms():
    factors = {"style": T([1.0, 4.0])}
    terms = TERMS[:1]
    assert combine_calibrated(L_ADV, terms, 0.5, W, factors).item() == 3 + 0.5 * (2 * 3 + 2 * 4 * 4)
    got = combine_calibrated(L_ADV, terms, 0.5, W, factors, adv_w=T([1.0, 0.0]),
                             real_w=T([0.0, 1.0]))
    assert got.item() == 1 + 0.5 * (2 * 4 * 4)
