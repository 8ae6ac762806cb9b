"""The report section of the chain arms (issue 18): each chain arm against flips, TrivialAugment
and ``pgd-advprop`` by the fixed rule (:data:`.online_report.RULE`), with acquisition-shift
accuracy, robust accuracy and cost, and the moonshot.

The moonshot: a chain arm beats flips (``none``) on clean accuracy by more than the spread, or
ties it (gain within the spread) while raising the mean acquisition-shift accuracy
(``acc_shift_mean``) by at least 10 points.
"""
from __future__ import annotations

from typing import Any

from ..reporting import Block
from .arms import CHAIN_ARMS
from .online_report import RULE, _f, _stat, cost_multiplier, verdict

REFERENCES = ("none", "trivialaugment", "pgd-advprop")
SHIFT = "acc_shift_mean"
SHIFT_GAIN = 0.10
MOONSHOT = ("a chain arm beats flips (`none`) on clean test accuracy by more than the spread, or "
            "ties it (within the spread) while raising the mean acquisition-shift accuracy by at "
            "least 10 points")


def chain_arms(results: dict[str, Any]) -> list[str]:
    """The chain arms of the run that have a summary, in config order."""
    return [a for a in results["arms"] if a in CHAIN_ARMS and a in results["summary"]]


def _versus(summary: dict[str, Any], arm: str, base: str, metric: str = "accuracy") -> str:
    if base not in summary or metric not in summary[arm] or metric not in summary[base]:
        return "n/a"
    v = verdict(summary, arm, base, metric)
    return f"{_f(v['gain'], 4, True)} ({_f(v['spread'], 4)}): {v['verdict']}"


def chain_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per chain arm: clean gain vs each reference (spread, verdict), acquisition-shift
    and robust accuracy, cost multiplier."""
    summary = results["summary"]
    refs = [r for r in REFERENCES if r in summary]
    robust = [k for k in ("acc_shift_mean", "acc_chain", "acc_pgd_2", "acc_pgd_8")
              if any(k in summary[a] for a in summary)]
    head = ["arm", "seeds", "accuracy", *[f"gain vs {r} (spread): verdict" for r in refs],
            "shift gain vs none", *robust, "cost x (wall)"]
    rows = [[arm, str(summary[arm]["accuracy"]["n"]), _stat(results, arm, "accuracy"),
             *[_versus(summary, arm, r) for r in refs], _versus(summary, arm, "none", SHIFT),
             *[_stat(results, arm, k) for k in robust], _f(cost_multiplier(results, arm), 2)]
            for arm in [*refs, *chain_arms(results)]]
    return head, rows


def chain_moonshot(results: dict[str, Any]) -> list[str]:
    """Whether the moonshot was met, one line per chain arm."""
    summary, lines = results["summary"], []
    for arm in chain_arms(results):
        if "none" not in summary:
            break
        clean = verdict(summary, arm, "none")
        if clean["spread"] is None:
            lines.append(f"`{arm}`: fewer than two seeds finished, so no spread and no verdict.")
            continue
        shift = verdict(summary, arm, "none", SHIFT)["gain"] if SHIFT in summary[arm] else None
        met = clean["verdict"] == "better" or (
            clean["gain"] >= -clean["spread"] and shift is not None and shift >= SHIFT_GAIN)
        lines.append(f"`{arm}`: clean gain over flips {clean['gain']:+.4f} (spread "
                     f"{clean['spread']:.4f}); acquisition-shift gain {_f(shift, 3, True)} "
                     f"(target >= +{SHIFT_GAIN:.2f}). Target " + ("MET." if met else "NOT met."))
    return lines or ["No chain arm finished with flips: the target cannot be judged."]


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
