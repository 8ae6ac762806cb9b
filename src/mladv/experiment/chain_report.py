"""The report section of the chain arms (issue 18): each chain arm against flips, TrivialAugment
and ``pgd-advprop`` by the one rule (:mod:`.claims`), with acquisition-shift accuracy, robust
accuracy and cost, and the moonshot.

The moonshot (:func:`.claims.moonshot`): a chain arm is "better" than flips (``none``) on clean
accuracy, or "within spread" of it while raising the mean acquisition-shift accuracy
(``acc_shift_mean``) by at least 10 points.
"""
from __future__ import annotations

from typing import Any

from ..reporting import Block, fmt, pm
from .arms import CHAIN_ARMS
from .claims import RULE, cell, compare_arms, moonshot
from .online_report import cost_multiplier

REFERENCES = ("none", "trivialaugment", "pgd-advprop")
SHIFT = "acc_shift_mean"
SHIFT_GAIN = 0.10
MOONSHOT = ("a chain arm is \"better\" than flips (`none`) on clean test accuracy, or \"within "
            "spread\" of it while raising the mean acquisition-shift accuracy by at least 10 "
            "points")


def chain_arms(results: dict[str, Any]) -> list[str]:
    """The chain arms of the run that have a summary, in config order."""
    return [a for a in results["arms"] if a in CHAIN_ARMS and a in results["summary"]]


def _versus(results: dict[str, Any], arm: str, base: str, metric: str = "accuracy") -> str:
    if base not in results["summary"]:
        return "n/a"
    return cell(compare_arms(results["runs"], arm, base, metric))


def chain_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per chain arm: clean gain vs each reference (spread, verdict), acquisition-shift
    and robust accuracy, cost multiplier."""
    summary = results["summary"]
    refs = [r for r in REFERENCES if r in summary]
    robust = [k for k in ("acc_shift_mean", "acc_chain", "acc_pgd_2", "acc_pgd_8")
              if any(k in summary[a] for a in summary)]
    head = ["arm", "seeds", "accuracy", *[f"gain vs {r} (spread): verdict" for r in refs],
            "shift gain vs none", *robust, "cost x (wall)"]
    rows = [[arm, str(summary[arm]["accuracy"]["n"]), pm(summary[arm].get("accuracy"), 3),
             *[_versus(results, arm, r) for r in refs], _versus(results, arm, "none", SHIFT),
             *[pm(summary[arm].get(k), 3) for k in robust], fmt(cost_multiplier(results, arm), 2)]
            for arm in [*refs, *chain_arms(results)]]
    return head, rows


def chain_moonshot(results: dict[str, Any]) -> list[str]:
    """Whether the moonshot was met, one line per chain arm."""
    return (moonshot(results, chain_arms(results), SHIFT, "acquisition-shift gain", SHIFT_GAIN)
            or ["No chain arm finished with flips: the target cannot be judged."])


def chain_blocks(results: dict[str, Any]) -> list[Block]:
    """The report blocks of the chain arms (empty when the run has none)."""
    if not any(a in CHAIN_ARMS for a in results["config"]["arms"]):
        return []
    return [("h2", "Chain arms (realistic adversarial transforms): the verdict"),
            ("p", f"Rule fixed before the run: {RULE} Moonshot target: {MOONSHOT}. "
                  "`chain-random` is the control: the same transforms and bounds, random "
                  "parameters, no gradient."),
            ("ul", chain_moonshot(results)),
            ("table", *chain_table(results))]
