"""mladv.evaluation.stats: patient-level bootstrap CIs, paired A/B, McNemar, the verdict — each
against what the definition gives by hand."""
import math

import numpy as np
import pytest

from mladv.evaluation.stats import (
    BootstrapCI,
    accuracy_ci,
    auroc_ci,
    bootstrap_ci,
    mcnemar,
    paired_accuracy_ci,
    paired_auroc_ci,
    paired_ci,
    verdict,
)

# Two patients: p1 with 9 images classified right, p2 with 1 image classified wrong.
CORRECT = np.array([1] * 9 + [0])
PATIENTS = ["p1"] * 9 + ["p2"]


def test_bootstrap_resamples_patients_so_accuracy_takes_only_three_values():
    # Drawing 2 of 2 patients: {p1, p1} -> 18/18 = 1; {p1, p2} in either order -> 9/10; {p2, p2}
    # -> 0/2 = 0. Resampling the 10 images instead would give k/10 for other k (0.8, 0.7, ...).
    ci = accuracy_ci(CORRECT, PATIENTS, n_boot=1000, seed=0)
    assert set(np.round(ci.samples, 12)) == {0.0, 0.9, 1.0}


def test_patient_draws_have_the_binomial_frequencies_one_quarter_one_half_one_quarter():
    s = np.round(accuracy_ci(CORRECT, PATIENTS, n_boot=1000, seed=0).samples, 12)
    assert [float(np.mean(s == v)) for v in (0.0, 0.9, 1.0)] == pytest.approx(
        [0.25, 0.5, 0.25], abs=0.05)


def test_the_95_interval_is_the_2_5_and_97_5_percentiles_of_the_resamples():
    ci = accuracy_ci(CORRECT, PATIENTS, n_boot=1000, seed=0)  # a quarter at 0, a quarter at 1
    assert (ci.estimate, ci.low, ci.high) == (pytest.approx(0.9), 0.0, 1.0)
    assert (ci.n_patients, ci.n_images, ci.n_boot, ci.skipped, ci.level) == (2, 10, 1000, 0,
                                                                              0.95)


def test_a_resample_is_b_times_p_integer_draws_of_the_seeded_generator():
    """The draw scheme the docstring states, rebuilt with numpy: resample b takes the patients
    ``default_rng(seed).integers(0, P, P)`` (in order of first appearance)."""
    correct, patients = np.array([1, 0, 0, 1, 1]), ["a", "b", "b", "c", "c"]
    rng, members = np.random.default_rng(3), [[0], [1, 2], [3, 4]]
    expected = [np.mean([correct[i] for p in rng.integers(0, 3, 3) for i in members[p]])
                for _ in range(50)]
    assert accuracy_ci(correct, patients, n_boot=50, seed=3).samples == pytest.approx(expected)


def test_the_ci_of_a_constant_statistic_is_that_constant():
    ci = accuracy_ci(np.ones(6), ["a", "a", "b", "c", "c", "c"], n_boot=200)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_a_narrower_level_gives_a_narrower_interval_of_the_same_samples():
    correct = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1])
    wide = accuracy_ci(correct, list(range(10)), n_boot=500, seed=1)
    narrow = accuracy_ci(correct, list(range(10)), n_boot=500, seed=1, level=0.5)
    assert narrow.low == pytest.approx(float(np.percentile(wide.samples, 25)))
    assert narrow.high == pytest.approx(float(np.percentile(wide.samples, 75)))
    assert wide.low < narrow.low < narrow.high < wide.high


def test_the_same_seed_gives_the_same_interval_and_another_seed_other_samples():
    correct, patients = np.array([1, 0, 1, 1, 0, 1]), [0, 1, 2, 3, 4, 5]
    a, b = accuracy_ci(correct, patients, seed=7), accuracy_ci(correct, patients, seed=7)
    assert np.array_equal(a.samples, b.samples) and (a.low, a.high) == (b.low, b.high)
    assert not np.array_equal(a.samples, accuracy_ci(correct, patients, seed=8).samples)
    g = accuracy_ci(correct, patients, seed=np.random.default_rng(7))
    assert np.array_equal(g.samples, a.samples)


# --- AUROC --------------------------------------------------------------------------------------

def test_auroc_skips_and_counts_resamples_holding_one_class():
    # p1 holds the positives, p2 the negatives: {p1, p1} and {p2, p2} have one class (NaN,
    # skipped); {p1, p2} is perfectly separated (AUROC 1).
    labels, scores = np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1])
    ci = auroc_ci(labels, scores, ["p1", "p1", "p2", "p2"], n_boot=400, seed=0)
    assert ci.skipped == int(np.isnan(ci.samples).sum())
    assert ci.skipped / 400 == pytest.approx(0.5, abs=0.08)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_binary_auroc_estimate_is_the_share_of_positive_negative_pairs_ranked_right():
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > both) -> 3 of 4
    assert auroc_ci(labels, scores, [0, 1, 2, 3], n_boot=20).estimate == pytest.approx(0.75)


def test_multiclass_auroc_estimate_is_the_one_vs_rest_macro_average():
    y = [0, 0, 1, 1, 2, 2]
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3],
                      [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.4, 0.1, 0.5]])
    # per class (pairs ranked right of 8): 7/8, 7/8, 8/8
    ci = auroc_ci(y, probs, list(range(6)), n_boot=50)
    assert ci.estimate == pytest.approx((7 / 8 + 7 / 8 + 1) / 3)


# --- paired A/B and the verdict -----------------------------------------------------------------

def test_identical_models_differ_by_exactly_zero_with_no_difference():
    correct = np.array([1, 0, 1, 1, 0, 1, 0, 1])
    patients = ["a", "a", "b", "c", "c", "d", "e", "e"]
    ci = paired_accuracy_ci(correct, correct, patients, n_boot=300)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert not ci.samples.any()
    assert verdict(ci) == "no difference"


def test_identical_scores_give_a_zero_auroc_difference():
    labels, scores = np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.7, 0.6, 0.4, 0.9])
    ci = paired_auroc_ci(labels, scores, scores, ["a", "a", "b", "c", "c"], n_boot=100)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)


def test_the_paired_difference_is_a_minus_b_on_the_same_resampled_patients():
    # A right where B is wrong on patient p1 only: each resample's difference is the share of
    # p1's images in it, the same draws as accuracy_ci of "image belongs to p1".
    a, b = np.array([1, 1, 1, 1]), np.array([0, 0, 1, 1])
    patients = ["p1", "p1", "p2", "p2"]
    diff = paired_accuracy_ci(a, b, patients, n_boot=200, seed=4)
    share = accuracy_ci(np.array([1, 1, 0, 0]), patients, n_boot=200, seed=4)
    assert np.array_equal(diff.samples, share.samples)
    assert diff.estimate == pytest.approx(0.5)


def _ci(low: float, high: float) -> BootstrapCI:
    return BootstrapCI((low + high) / 2, low, high, 0.95, 1, 0, 1, 1, np.zeros(1))


@pytest.mark.parametrize(("low", "high", "higher_is_better", "expected"), [
    (0.01, 0.2, True, "A better"), (-0.2, -0.01, True, "B better"),
    (-0.1, 0.1, True, "no difference"), (0.0, 0.1, True, "no difference"),
    (0.01, 0.2, False, "B better"), (-0.2, -0.01, False, "A better")])
def test_verdict_reads_the_ci_of_a_minus_b(low, high, higher_is_better, expected):
    assert verdict(_ci(low, high), higher_is_better=higher_is_better) == expected


def test_verdict_names_the_models():
    assert verdict(_ci(0.1, 0.2), names=("flips", "chain")) == "flips better"


def test_verdict_of_an_undefined_interval_is_no_difference():
    assert verdict(_ci(math.nan, math.nan)) == "no difference"


# --- McNemar ------------------------------------------------------------------------------------

def _pairs(a_only: int, b_only: int, both: int = 3, neither: int = 2) -> tuple[list, list]:
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    return a, b


@pytest.mark.parametrize(("a_only", "b_only", "p"), [
    (1, 5, 2 * (1 + 6) / 2 ** 6),   # 2 (C(6,0) + C(6,1)) / 2^6 = 14/64
    (0, 4, 2 * 1 / 2 ** 4),         # 2 C(4,0) / 2^4
    (5, 1, 2 * (1 + 6) / 2 ** 6),   # symmetric
    (2, 7, 2 * (1 + 9 + 36) / 2 ** 9),
    (3, 3, 1.0)])                   # 2 (1 + 6 + 15 + 20) / 64 > 1 -> 1
def test_mcnemar_exact_p_value_is_the_two_sided_binomial_tail_by_hand(a_only, b_only, p):
    r = mcnemar(*_pairs(a_only, b_only))
    assert (r.a_only, r.b_only) == (a_only, b_only)
    assert r.p_value == pytest.approx(p)


def test_mcnemar_without_discordant_images_has_p_one():
    assert mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "match"), [
    (lambda: accuracy_ci([], []), "^patients: no image given$"),
    (lambda: accuracy_ci([1, 0], ["a"]), r"correct must have one entry per image \(1\)"),
    (lambda: accuracy_ci([1, 2], ["a", "b"]), "correct must hold 0 / 1"),
    (lambda: accuracy_ci([1, 0], ["a", "b"], n_boot=0), "n_boot must be a positive integer"),
    (lambda: accuracy_ci([1, 0], ["a", "b"], level=95), r"level must be in \(0, 1\)"),
    (lambda: auroc_ci([0, 3], [0.1, 0.2], ["a", "b"]), "labels must be class indices 0..1"),
    (lambda: auroc_ci([0, 1], [[0.1, 0.9]], ["a", "b"]), "scores must have one entry"),
    (lambda: paired_accuracy_ci([1, 0], [1], ["a", "b"]), "correct_b must have one entry"),
    (lambda: mcnemar([1, 0], [1]), "correct_b must have one entry per image")])
def test_bad_input_is_one_line_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bootstrap_ci_takes_any_statistic_of_the_resampled_indices():
    values = np.array([3.0, 5.0, 10.0])
    ci = bootstrap_ci(lambda idx: float(values[idx].max()), ["a", "b", "c"], n_boot=300)
    assert ci.estimate == 10.0 and set(ci.samples) <= {3.0, 5.0, 10.0}


# --- options reach the bootstrap (each public function) -----------------------------------------

def by_hand_samples(stat, members: list[list[int]], n_boot: int, seed: int) -> list[float]:
    """The documented draws: resample b takes patients ``default_rng(seed).integers(0, P, P)``."""
    rng = np.random.default_rng(seed)
    return [stat(np.array([i for p in rng.integers(0, len(members), len(members))
                           for i in members[p]])) for _ in range(n_boot)]


PAT = ["a", "a", "b", "c", "c", "d", "e", "f"]
MEMBERS = [[0, 1], [2], [3, 4], [5], [6], [7]]
CA, CB = np.array([1, 0, 1, 1, 0, 1, 0, 1]), np.array([0, 0, 1, 0, 1, 1, 1, 1])
LAB = np.array([0, 1, 0, 1, 1, 0, 1, 0])
SA = np.array([0.1, 0.7, 0.3, 0.9, 0.6, 0.5, 0.4, 0.2])
SB = np.array([0.3, 0.6, 0.2, 0.8, 0.1, 0.4, 0.9, 0.7])


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC by hand: the share of (positive, negative) pairs ranked right, ties half."""
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


CALLS = {
    "accuracy": (lambda **kw: accuracy_ci(CA, PAT, **kw), lambda i: CA[i].mean()),
    "auroc": (lambda **kw: auroc_ci(LAB, SA, PAT, **kw), lambda i: _auc(LAB[i], SA[i])),
    "paired_accuracy": (lambda **kw: paired_accuracy_ci(CA, CB, PAT, **kw),
                        lambda i: CA[i].mean() - CB[i].mean()),
    "paired_auroc": (lambda **kw: paired_auroc_ci(LAB, SA, SB, PAT, **kw),
                     lambda i: _auc(LAB[i], SA[i]) - _auc(LAB[i], SB[i])),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_n_boot_seed_and_level_reach_the_bootstrap(name):
    call, stat = CALLS[name]
    ci = call(n_boot=40, seed=3, level=0.5)
    expected = np.array(by_hand_samples(stat, MEMBERS, 40, 3))
    assert np.allclose(ci.samples, expected, equal_nan=True)
    valid = expected[~np.isnan(expected)]
    assert (ci.n_boot, ci.level, ci.skipped) == (40, 0.5, 40 - valid.size)
    assert (ci.low, ci.high) == pytest.approx(tuple(np.percentile(valid, [25, 75])))
    assert ci.estimate == pytest.approx(stat(np.arange(8)))


@pytest.mark.parametrize("name", list(CALLS))
def test_the_defaults_are_1000_resamples_seed_0_and_a_95_percent_interval(name):
    call, stat = CALLS[name]
    ci = call()
    assert (ci.n_boot, ci.level) == (1000, 0.95)
    assert np.allclose(ci.samples[:20], by_hand_samples(stat, MEMBERS, 20, 0), equal_nan=True)


def test_bootstrap_ci_defaults_and_percentiles_of_a_continuous_statistic():
    values = np.random.default_rng(0).random(8)

    def stat(idx):
        return float(values[idx].mean())

    ci = bootstrap_ci(stat, PAT)
    expected = np.array(by_hand_samples(stat, MEMBERS, 1000, 0))
    assert (ci.n_boot, ci.level) == (1000, 0.95)
    assert np.allclose(ci.samples, expected)
    assert (ci.low, ci.high) == pytest.approx(tuple(np.percentile(expected, [2.5, 97.5])))
    half = bootstrap_ci(stat, PAT, level=0.5)
    assert (half.low, half.high) == pytest.approx(tuple(np.percentile(expected, [25, 75])))


def test_every_resample_skipped_gives_an_undefined_interval():
    ci = auroc_ci([1, 1], [0.2, 0.3], ["a", "b"], n_boot=10)  # one class only
    assert ci.skipped == 10 and math.isnan(ci.low) and math.isnan(ci.high)
    assert math.isnan(ci.estimate)


def test_one_resample_is_allowed():
    assert accuracy_ci([1, 0], ["a", "b"], n_boot=1).n_boot == 1


@pytest.mark.parametrize(("call", "match"), [
    (lambda: accuracy_ci([1, 0], ["a", "b"], n_boot=2.5), "n_boot must be a positive integer"),
    (lambda: accuracy_ci([1, 0], ["a", "b"], n_boot=True), "n_boot must be a positive integer"),
    (lambda: accuracy_ci([1, 0], ["a", "b"], level=0), r"level must be in \(0, 1\)"),
    (lambda: accuracy_ci([1, 0], ["a", "b"], level=1), r"level must be in \(0, 1\)"),
    (lambda: auroc_ci([0], [0.1, 0.2], ["a", "b"]), "labels must have one entry per image"),
    (lambda: paired_accuracy_ci([1, 2], [1, 0], ["a", "b"]), "correct_a must hold 0 / 1"),
    (lambda: paired_accuracy_ci([1, 0], [1, 2], ["a", "b"]), "correct_b must hold 0 / 1"),
    (lambda: paired_accuracy_ci([1], [1, 0], ["a", "b"]), "correct_a must have one entry"),
    (lambda: mcnemar([1, 2], [1, 0]), "correct_a must hold 0 / 1"),
    (lambda: mcnemar([1, 0], [1, 2]), "correct_b must hold 0 / 1"),
    (lambda: paired_auroc_ci([0, 1], [0.1], [0.1, 0.2], ["a", "b"]), "scores_a must have one"),
    (lambda: paired_auroc_ci([0, 1], [0.1, 0.2], [0.1], ["a", "b"]), "scores_b must have one")])
def test_more_bad_input_is_one_line_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_paired_ci_defaults_are_1000_resamples_seed_0_and_95_percent():
    def stat(i):
        return CA[i].mean() - CB[i].mean()

    ci = paired_ci(lambda i: CA[i].mean(), lambda i: CB[i].mean(), PAT)
    assert (ci.n_boot, ci.level) == (1000, 0.95)
    assert np.allclose(ci.samples[:20], by_hand_samples(stat, MEMBERS, 20, 0))
