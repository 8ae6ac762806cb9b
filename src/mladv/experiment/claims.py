"""The one verdict rule of the experiment, fixed before any run (configs/full-cpu.yaml): every
report and table of the experiment judges an arm against a baseline with :func:`compare` and
only with it, in one vocabulary (:data:`VERDICTS`).

Over the per-seed values ``a_1..a_n`` of the arm and ``b_1..b_m`` of the baseline (SPEC 2.1,
"mean ± std over seeds"; NaN / None left out, as :func:`.metrics.mean_std` does)::

    gain   = mean(a) - mean(b)
    spread = max(std(a), std(b))          std: sample standard deviation (ddof = 1)

    verdict = "one seed"       if n < 2 or m < 2 (no spread can be measured)
              "better"         if gain >  spread
              "worse"          if gain < -spread
              "within spread"  otherwise (|gain| <= spread: a gain EQUAL to the spread is a tie)

The metric is the task's primary metric (:func:`primary_metric`): clean test ``accuracy`` for a
multiclass data set, ``macro_auroc`` (the mean of the per-finding AUROCs defined on the test
split) for a multilabel one; the rule itself is the same.

The rule is antisymmetric: swapping arm and baseline negates the gain, keeps the spread, and so
turns "better" into "worse" and back.

The moonshot targets (:func:`moonshot`) build on it: an arm meets one when it is "better" than
flips (``none``) on clean accuracy, or "within spread" of it while a second metric (accuracy
under own-model PGD, acquisition-shift accuracy) gains at least a fixed amount.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..reporting import fmt
from .metrics import mean_std

Verdict = Literal["better", "worse", "within spread", "one seed"]
VERDICTS: tuple[Verdict, ...] = ("better", "worse", "within spread", "one seed")

RULE = ("\"better\" means the mean gain exceeds the larger of the two arms' seed standard "
        "deviations (sample std over seeds); \"worse\" means it is below minus that spread; "
        "otherwise \"within spread\" (a gain exactly equal to the spread included); \"one seed\" "
        "when either arm has fewer than two seeds (no spread, no verdict).")


PRIMARY_METRICS = {"multiclass": "accuracy", "multilabel": "macro_auroc"}


def primary_metric(task: str) -> str:
    """The metric every verdict of an experiment on ``task`` judges: ``accuracy`` (multiclass)
    or ``macro_auroc`` (multilabel); ``ValueError`` naming the valid tasks otherwise."""
    if task not in PRIMARY_METRICS:
        raise ValueError(f"task must be one of {list(PRIMARY_METRICS)}, got {task!r}")
    return PRIMARY_METRICS[task]


@dataclass(frozen=True)
class Comparison:
    """An arm against a baseline on one metric: means over seeds, ``gain = arm_mean -
    baseline_mean``, ``spread`` (the larger seed std; None with one seed) and the verdict."""

    arm_mean: float
    baseline_mean: float
    gain: float
    spread: float | None
    verdict: Verdict


def judge(gain: float, spread: float | None) -> Verdict:
    """The verdict of a mean gain against the spread (module docstring; None: one seed)."""
    if spread is None:
        return "one seed"
    return "better" if gain > spread else "worse" if gain < -spread else "within spread"


def compare(arm_values: Sequence[float], baseline_values: Sequence[float]) -> Comparison:
    """The arm's per-seed values against the baseline's by the one rule (module docstring).

    Raises ``ValueError`` when either sequence has no finite value.
    """
    a, b = mean_std(arm_values), mean_std(baseline_values)
    for name, stat in (("arm_values", a), ("baseline_values", b)):
        if stat["mean"] is None:
            raise ValueError(f"{name}: no finite per-seed value to compare")
    gain = a["mean"] - b["mean"]
    spread = None if a["std"] is None or b["std"] is None else max(a["std"], b["std"])
    return Comparison(a["mean"], b["mean"], gain, spread, judge(gain, spread))


def seed_values(runs: Sequence[dict[str, Any]], arm: str, metric: str) -> list[float]:
    """The per-seed values of ``metric`` for ``arm`` from the ``runs`` rows of ``results.json``
    (``{"arm", "seed", "metrics"}``), in run order."""
    return [r["metrics"][metric] for r in runs if r["arm"] == arm and metric in r["metrics"]]


def compare_arms(runs: Sequence[dict[str, Any]], arm: str, baseline: str,
                 metric: str = "accuracy") -> Comparison | None:
    """:func:`compare` of ``arm`` (as the arm) against ``baseline`` on ``metric``, over the
    finished runs; None when either has no finite value of it."""
    a, b = seed_values(runs, arm, metric), seed_values(runs, baseline, metric)
    if mean_std(a)["n"] == 0 or mean_std(b)["n"] == 0:
        return None
    return compare(a, b)


def cell(c: Comparison | None) -> str:
    """A table cell ``"+0.0300 (0.0200): better"`` (gain, spread, verdict); ``n/a`` when no
    comparison could be made."""
    if c is None:
        return "n/a"
    return f"{fmt(c.gain, 4, sign=True)} ({fmt(c.spread, 4)}): {c.verdict}"


def moonshot_met(clean: Comparison, side_gain: float | None, target: float) -> bool | None:
    """A moonshot: ``clean`` is "better", or "within spread" while ``side_gain >= target``
    (the second clause). None with one seed (no verdict)."""
    if clean.verdict == "one seed":
        return None
    tie_and_side = clean.verdict == "within spread" and side_gain is not None \
        and side_gain >= target
    return clean.verdict == "better" or tie_and_side


def moonshot(results: dict[str, Any], arms: Sequence[str], side_metric: str, side_label: str,
             target: float) -> list[str]:
    """One line per arm of ``arms`` that has runs: its clean comparison with flips (``none``),
    its ``side_metric`` gain over flips, and whether :func:`moonshot_met`."""
    runs, lines = results["runs"], []
    for arm in arms:
        clean = compare_arms(runs, arm, "none")
        if clean is None:
            continue
        if clean.verdict == "one seed":
            lines.append(f"`{arm}`: one seed: fewer than two seeds finished, so no spread and no "
                         f"verdict.")
            continue
        side = compare_arms(runs, arm, "none", side_metric)
        side_gain = None if side is None else side.gain
        met = moonshot_met(clean, side_gain, target)
        lines.append(f"`{arm}`: clean gain over flips {cell(clean)}; {side_label} "
                     f"{fmt(side_gain, 3, sign=True)} (target >= +{target:.2f}). Target "
                     + ("MET." if met else "NOT met."))
    return lines
