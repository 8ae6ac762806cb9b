"""The one verdict rule (mladv.experiment.claims): gain = mean(arm) - mean(baseline), spread = the
larger of the two sample stds over seeds; "better" when gain > spread, "worse" when
gain < -spread, "within spread" otherwise (gain == spread included), "one seed" with fewer than
two seeds in either arm. Values are chosen so that every mean and std is exact in binary."""
from __future__ import annotations

import math

import pytest

from experiment_helpers import hand_results
from mladv.experiment import claims
from mladv.experiment.chain_report import chain_moonshot, chain_table
from mladv.experiment.claims import Comparison, cell, compare, compare_arms, moonshot_met
from mladv.experiment.online_report import moonshot, verdict_table

WIDE = [0.25, 0.5, 0.75]           # mean 0.5, sample std 0.25
NARROW = [0.1875, 0.3125, 0.4375]  # mean 0.3125, sample std 0.125
FLAT = [0.25, 0.25, 0.25]          # mean 0.25, std 0


def test_a_gain_between_the_smaller_and_the_larger_std_is_within_spread_larger_on_the_arm():
    # gain 0.1875 > baseline std 0.125 but < arm std 0.25
    assert compare(WIDE, NARROW) == Comparison(0.5, 0.3125, 0.1875, 0.25, "within spread")


def test_a_gain_between_the_smaller_and_the_larger_std_is_within_spread_larger_on_the_baseline():
    arm = [0.4375, 0.5625, 0.6875]      # mean 0.5625, std 0.125
    baseline = [0.125, 0.375, 0.625]    # mean 0.375, std 0.25
    assert compare(arm, baseline) == Comparison(0.5625, 0.375, 0.1875, 0.25, "within spread")


def test_a_gain_exactly_equal_to_the_spread_is_within_spread():
    assert compare(WIDE, FLAT) == Comparison(0.5, 0.25, 0.25, 0.25, "within spread")


def test_a_gain_just_above_the_spread_is_better():
    below = [0.25 - 2 ** -10] * 3
    assert compare(WIDE, below) == Comparison(0.5, 0.25 - 2 ** -10, 0.25 + 2 ** -10, 0.25,
                                              "better")


def test_a_loss_just_beyond_the_spread_is_worse_and_exactly_at_it_within_spread():
    below = [0.25 - 2 ** -10] * 3
    assert compare(below, WIDE) == Comparison(0.25 - 2 ** -10, 0.5, -0.25 - 2 ** -10, 0.25,
                                              "worse")
    assert compare(FLAT, WIDE).verdict == "within spread"


@pytest.mark.parametrize("arm, baseline", [([0.75], WIDE), (WIDE, [0.75]), ([0.75], [0.5])])
def test_fewer_than_two_seeds_in_either_arm_is_one_seed_with_the_gain_but_no_spread(arm, baseline):
    c = compare(arm, baseline)
    assert (c.verdict, c.spread) == ("one seed", None)
    assert c.gain == sum(arm) / len(arm) - sum(baseline) / len(baseline)


@pytest.mark.parametrize("arm, baseline", [(WIDE, [0.2490234375] * 3), (WIDE, FLAT),
                                           (WIDE, NARROW), ([0.9, 0.92, 0.94], [0.8, 0.81])])
def test_swapping_arm_and_baseline_negates_the_gain_and_flips_better_and_worse(arm, baseline):
    flip = {"better": "worse", "worse": "better", "within spread": "within spread"}
    ab, ba = compare(arm, baseline), compare(baseline, arm)
    assert (ba.gain, ba.spread, ba.verdict) == (-ab.gain, ab.spread, flip[ab.verdict])


def test_nan_seeds_are_left_out_as_in_the_summary():
    assert compare([0.25, math.nan, 0.5, 0.75], FLAT) == compare(WIDE, FLAT)


def test_an_arm_without_a_finite_value_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match="^baseline_values: no finite per-seed value"):
        compare(WIDE, [math.nan])


def test_an_arm_without_a_finite_value_is_refused_naming_arm_values():
    with pytest.raises(ValueError, match="^arm_values: no finite per-seed value"):
        compare([math.nan], WIDE)


@pytest.mark.parametrize("missing", ["arm", "baseline"])
def test_compare_arms_is_none_when_either_arm_has_no_value_of_the_metric(missing):
    present = "baseline" if missing == "arm" else "arm"
    runs = hand_results({present: {"accuracy": WIDE}})["runs"]
    assert compare_arms(runs, "arm", "baseline") is None


def test_moonshot_lines_skip_arms_without_runs_and_go_on_after_one_seed_and_not_met():
    """Arms in order: no runs (no line), one seed, no side metric (side gain n/a, NOT met),
    better on clean (MET)."""
    results = hand_results({"none": {"accuracy": WIDE, "side": FLAT},
                            "single": {"accuracy": [0.5], "side": [0.5]},
                            "no-side": {"accuracy": NARROW},
                            "up": {"accuracy": [1.0, 1.25, 1.5], "side": FLAT}})
    assert claims.moonshot(results, ["absent", "single", "no-side", "up"], "side", "side gain",
                           0.1) == [
        "`single`: one seed: fewer than two seeds finished, so no spread and no verdict.",
        "`no-side`: clean gain over flips -0.1875 (0.2500): within spread; side gain n/a "
        "(target >= +0.10). Target NOT met.",
        "`up`: clean gain over flips +0.7500 (0.2500): better; side gain +0.000 "
        "(target >= +0.10). Target MET."]


def test_a_table_cell_reads_gain_spread_and_verdict():
    assert cell(compare(WIDE, NARROW)) == "+0.1875 (0.2500): within spread"
    assert cell(compare([0.75], [0.5])) == "+0.2500 (n/a): one seed"
    assert cell(None) == "n/a"


# -- the moonshots --------------------------------------------------------------------------------
def test_the_moonshot_is_met_by_better_alone_or_by_a_tie_with_the_side_gain_at_the_target():
    better = Comparison(0.6, 0.5, 0.1, 0.01, "better")
    worse = Comparison(0.4, 0.5, -0.1, 0.01, "worse")
    tie = Comparison(0.5, 0.5, 0.0, 0.01, "within spread")
    assert [moonshot_met(better, None, 0.3), moonshot_met(tie, 0.3, 0.3),
            moonshot_met(tie, 0.29, 0.3), moonshot_met(tie, None, 0.3),
            moonshot_met(worse, 1.0, 0.3)] == [True, True, False, False, False]
    assert moonshot_met(Comparison(0.6, 0.5, 0.1, None, "one seed"), 1.0, 0.3) is None


def test_an_online_arm_meeting_only_the_second_clause_meets_the_moonshot():
    results = hand_results({
        "none": {"accuracy": [0.90, 0.92, 0.94], "acc_pgd_2": [0.125] * 3},
        "mladv-advprop": {"accuracy": [0.89, 0.91, 0.93], "acc_pgd_2": [0.5] * 3}})
    assert moonshot(results) == [
        "`mladv-advprop`: clean gain over flips -0.0100 (0.0200): within spread; gain in accuracy "
        "under own-model PGD 2/255 +0.375 (target >= +0.30). Target MET."]


def test_a_chain_arm_meeting_only_the_second_clause_meets_the_moonshot():
    results = hand_results({
        "none": {"accuracy": [0.90, 0.92, 0.94], "acc_shift_mean": [0.5] * 3},
        "chain-online": {"accuracy": [0.89, 0.91, 0.93], "acc_shift_mean": [0.625] * 3}})
    assert chain_moonshot(results) == [
        "`chain-online`: clean gain over flips -0.0100 (0.0200): within spread; "
        "acquisition-shift gain +0.125 (target >= +0.10). Target MET."]


def test_one_seed_gives_no_moonshot_verdict():
    results = hand_results({"none": {"accuracy": [0.9]}, "mladv-online": {"accuracy": [0.95]}})
    assert moonshot(results) == [
        "`mladv-online`: one seed: fewer than two seeds finished, so no spread and no verdict."]


# -- the tables -----------------------------------------------------------------------------------
def test_the_verdict_table_row_of_an_arm_takes_that_arm_as_the_arm():
    results = hand_results({"none": {"accuracy": [0.90, 0.92, 0.94]},
                            "multi-loss": {"accuracy": [0.85, 0.87, 0.89]},
                            "pgd-online": {"accuracy": [0.93, 0.95, 0.97]}})
    head, rows = verdict_table(results)
    cols = [head.index("gain vs none (spread): verdict"),
            head.index("gain vs multi-loss (spread): verdict")]
    assert {r[0]: [r[c] for c in cols] for r in rows} == {
        "none": ["—", "+0.0500 (0.0200): better"],
        "multi-loss": ["-0.0500 (0.0200): worse", "—"],
        "pgd-online": ["+0.0300 (0.0200): better", "+0.0800 (0.0200): better"]}


def test_the_chain_table_row_of_an_arm_takes_that_arm_as_the_arm():
    results = hand_results({"none": {"accuracy": [0.90, 0.92, 0.94]},
                            "chain-online": {"accuracy": [0.85, 0.87, 0.89]}})
    head, rows = chain_table(results)
    col = head.index("gain vs none (spread): verdict")
    assert {r[0]: r[col] for r in rows} == {"none": "+0.0000 (0.0200): within spread",
                                            "chain-online": "-0.0500 (0.0200): worse"}
