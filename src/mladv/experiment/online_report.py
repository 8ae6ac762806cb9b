"""The report section of the online / AdvProp arms: what the validation grid chose, the flips
learning curve, and the verdict of each online arm against flips and against the best classic
augmentation of the run, with calibration, robustness and cost.

Every verdict is the one rule of :mod:`.claims` (:data:`.claims.RULE`, fixed before the run).

The moonshot target (:func:`.claims.moonshot`): an online MLAdv arm that is "better" than flips
on clean test accuracy, or "within spread" of it while raising accuracy under own-model PGD at
2/255 by at least 30 points.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..figures import save_figure
from ..reporting import Block, fmt, pm
from .arms import ARMS
from .claims import RULE, cell, compare_arms
from .claims import moonshot as judge_moonshot

MOONSHOT = ("an online MLAdv arm is \"better\" than flips (`none`) on clean test accuracy, or "
            "\"within spread\" of it while raising accuracy under own-model PGD at 2/255 by at "
            "least 30 points")
PGD2 = "acc_pgd_2"
MOONSHOT_GAIN = 0.30


def best_classic(results: dict[str, Any]) -> str | None:
    """The arm of the run, other than ``none`` and the online arms, with the highest mean clean
    accuracy (None when there is no such arm)."""
    classic = [a for a in results["arms"] if a != "none" and not ARMS[a].online
               and results["summary"].get(a, {}).get("accuracy", {}).get("mean") is not None]
    return max(classic, key=lambda a: results["summary"][a]["accuracy"]["mean"], default=None)


def cost_multiplier(results: dict[str, Any], arm: str, kind: str = "wall") -> float | None:
    """Mean over seeds of the arm's training time (plus crafting x'_train, for an offline arm)
    over the flips arm's training time in the same seed of the same run. Seeds where the two ran
    with different torch thread counts (a run resumed in another setting) are left out: their
    ratio compares unlike settings. None when no seed is left."""
    ratios = []
    for seed in results["seeds"]:
        rows = {r["arm"]: r for r in results["runs"] if r["seed"] == seed}
        if arm not in rows or "none" not in rows:
            continue
        t = rows[arm]["timings"]
        if t.get("torch_threads") != rows["none"]["timings"].get("torch_threads"):
            continue
        spent = t.get(f"train_{kind}_s", 0.0) + t.get(f"craft_{kind}_s", 0.0)
        ratios.append(spent / rows["none"]["timings"][f"train_{kind}_s"])
    return float(np.mean(ratios)) if ratios else None


def _stat(results: dict[str, Any], arm: str, key: str) -> str:
    return pm(results["summary"][arm].get(key), 3)


def verdict_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per online arm (and the references): clean gain vs flips and vs the best classic
    arm with spread and verdict, ECE, robust accuracies, cost multiplier."""
    classic = best_classic(results)
    robust = [k for k in results["summary"][results["arms"][0]] if k.startswith("acc_")
              and not k.startswith("acc_noise")]
    head = ["arm", "seeds", "accuracy", "gain vs none (spread): verdict",
            f"gain vs {classic or 'best classic'} (spread): verdict", "ECE", *robust,
            "cost x (wall)", "cost x (CPU)"]
    rows = []
    for arm in results["arms"]:
        if arm not in results["summary"]:
            continue
        cells = []
        for base in ("none", classic):
            if base is None or base == arm or base not in results["summary"]:
                cells.append("—")
                continue
            cells.append(cell(compare_arms(results["runs"], arm, base)))
        rows.append([arm, str(results["summary"][arm]["accuracy"]["n"]),
                     _stat(results, arm, "accuracy"), *cells, _stat(results, arm, "ece"),
                     *[_stat(results, arm, k) for k in robust],
                     fmt(cost_multiplier(results, arm), 2),
                     fmt(cost_multiplier(results, arm, "cpu"), 2)])
    return head, rows


def moonshot(results: dict[str, Any]) -> list[str]:
    """Whether the moonshot target was met, one line per online MLAdv arm of the run."""
    arms = [a for a in results["arms"] if ARMS[a].online and ARMS[a].attack == "mladv"]
    return (judge_moonshot(results, arms, PGD2, "gain in accuracy under own-model PGD 2/255",
                           MOONSHOT_GAIN)
            or ["No online MLAdv arm finished: the target cannot be judged."])


def selection_table(selection: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every grid point's validation accuracy, the chosen one marked."""
    head = ["arm", "eps (/255)", "steps", "fraction", "val accuracy", "val loss", "train s",
            "chosen"]
    flips = selection["flips"]
    rows = [["none (flips, reference)", "—", "—", "—", f"{flips['val_accuracy']:.4f}",
             f"{flips['history'][-1]['val_loss']:.4f}", f"{flips['train_wall_s']:.0f}", ""]]
    for arm, scored in selection["scores"].items():
        chosen = selection["choices"].get(arm, {}).get("point")
        for s in scored:
            p = s["point"]
            rows.append([arm, f"{p['eps']:g}", str(p["steps"]),
                         "all (clean + adv)" if p["fraction"] is None else f"{p['fraction']:g}",
                         f"{s['val_accuracy']:.4f}", f"{s['val_loss']:.4f}",
                         f"{s['train_wall_s']:.0f}", "yes" if p == chosen else ""])
    return head, rows


def convergence(selection: dict[str, Any]) -> str:
    """The flips arm's validation accuracy over the last epochs, in words."""
    hist = selection["flips"]["history"]
    acc = [h["val_accuracy"] for h in hist]
    tail = min(len(acc), max(3, len(acc) // 3))
    best = int(np.argmax(acc))
    return (f"Flips on the selection split ({selection['n_train']} train / {selection['n_val']} "
            f"validation images): validation accuracy {acc[-1]:.4f} after epoch {len(acc)}, best "
            f"{acc[best]:.4f} at epoch {best + 1}; over the last {tail} epochs it moved within "
            f"[{min(acc[-tail:]):.4f}, {max(acc[-tail:]):.4f}], train loss "
            f"{hist[-tail]['loss']:.4f} -> {hist[-1]['loss']:.4f}.")


def curve_figure(results: dict[str, Any], selection: dict[str, Any] | None, path: Path) -> bool:
    """Flips learning curve: per-epoch train loss and accuracy of every seed's ``none`` model
    and, from the selection run, validation accuracy per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nones = [r for r in results["runs"] if r["arm"] == "none" and r.get("history")]
    if not nones and selection is None:
        return False
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.4))
    for r in nones:
        ep = [h["epoch"] for h in r["history"]]
        ax_l.plot(ep, [h["loss"] for h in r["history"]], label=f"seed {r['seed']}")
        ax_a.plot(ep, [h["train_acc"] for h in r["history"]], label=f"train, seed {r['seed']}")
    if selection is not None:
        hist = selection["flips"]["history"]
        ep = [h["epoch"] for h in hist]
        ax_l.plot(ep, [h["loss"] for h in hist], "k--", label="selection split")
        ax_a.plot(ep, [h["val_accuracy"] for h in hist], "k-o", ms=3,
                  label="validation (selection split)")
    ax_l.set(xlabel="epoch", ylabel="train loss", title="flips (`none`): train loss")
    ax_a.set(xlabel="epoch", ylabel="accuracy", title="flips: train / validation accuracy")
    for ax in (ax_l, ax_a):
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def how_trained(results: dict[str, Any]) -> list[str]:
    """One line per online arm: mode, attack, eps / steps / fraction and extra attack options,
    as recorded by its first finished run."""
    lines = []
    for arm in results["arms"]:
        row = next((r for r in results["runs"] if r["arm"] == arm and "online" in r), None)
        if row is None:
            continue
        o = row["online"]
        frac = "clean + all adversarial rows" if o["fraction"] is None else \
            f"{o['fraction']:g} of each batch replaced"
        lines.append(f"`{arm}`: {o['mode']}, {o['attack']} at eps {o['eps']:g}/255, "
                     f"{o['steps']} step(s), {frac}; options "
                     f"{o['options'] or '(none)'} on top of the training module's online "
                     f"defaults (PGD 1 step = FGSM without random start; MLAdv refine=0, other "
                     f"settings the class defaults)")
    return lines


def threads_note(results: dict[str, Any]) -> str:
    """Which torch thread counts each arm's runs used, when they differ between arms (the cost
    ratios then leave out the seeds that ran with another count than flips)."""
    per_arm = {a: sorted({r["timings"].get("torch_threads") for r in results["runs"]
                          if r["arm"] == a} - {None}) for a in results["arms"]}
    if len({tuple(v) for v in per_arm.values()}) <= 1:
        return ""
    return (" The arms ran with different torch thread counts (" + ", ".join(
        f"{a}: {v}" for a, v in per_arm.items()) + "); a cost ratio only compares runs with the "
        "same count (n/a: none did). `benchmarks/train.py` measures every mode in one process.")


def online_blocks(results: dict[str, Any], selection: dict[str, Any] | None) -> list[Block]:
    """The report blocks of the online arms (empty when the run has none)."""
    if not any(ARMS[a].online for a in results["config"]["arms"]):
        return []
    blocks: list[Block] = [("h2", "Online and AdvProp arms: the verdict"),
                           ("p", f"Rule fixed before the run: {RULE} Moonshot target: {MOONSHOT}."),
                           ("ul", moonshot(results)),
                           ("table", *verdict_table(results)),
                           ("ul", how_trained(results)),
                           ("p", "Cost x: the arm's training time (plus crafting x'_train for an "
                                 "offline arm) over the flips arm's, same seed, same run; on a "
                                 "shared machine wall time includes waiting for other jobs."
                                 + threads_note(results))]
    if selection is not None:
        blocks += [("h2", "Online settings chosen on the validation split (never the test split)"),
                   ("p", f"Rule `{selection['rule']}`: {selection['rule_text']}. Validation: "
                         f"{selection['val_size']:g} of the training set, patient-aware, seed "
                         f"{selection['seed']}; each choice is reused for every seed, trained on "
                         f"the full training set."),
                   *([("p", f"GRID SEARCH IN PROGRESS: {selection['finished']} of "
                                 f"{selection['planned']} grid points finished; nothing chosen "
                                 f"yet.")] if "planned" in selection else []),
                   ("table", *selection_table(selection)),
                   ("p", convergence(selection))]
    return blocks
