"""Results files and the report of an experiment run: Table 2, Fig. 4, Fig. 5, verdicts.

Writes ``results.json``, ``results.csv`` (one row per arm x seed), ``figures/*.png``,
``report.md`` and a self-contained ``report.html`` (figures embedded as base64).

A multilabel run (``run.train.task == "multilabel"``) is reported on its primary metric, the
macro AUROC (:func:`.claims.primary_metric`): per-seed ``macro_auroc``, per-finding AUROC
``auc_<finding>``, the robustness columns of :mod:`.measure` (``auroc_*``, ``auroc_drop_*``,
``flip_rate_*``), every arm judged against flips (``none``) by the one rule (:mod:`.claims`);
``results.json`` then also holds ``task``, ``primary_metric`` and ``verdicts``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..augment import load_shards
from ..figures import adversarial_grid, save_figure
from ..reporting import Block, csv_text, fmt, pm
from ..reporting import write_report as write_blocks
from ..utils import atomic_write_json, atomic_write_text
from .arms import ABLATIONS, ARMS, BASELINES, FULL_METHOD
from .chain_report import chain_blocks
from .claims import RULE, Comparison, cell, compare_arms, primary_metric
from .metrics import TABLE2_METRICS, balanced_metrics, mean_std, roc_per_class
from .online_report import curve_figure, online_blocks
from .state import Run, selection_so_far

# SPEC "Reference figures from the paper", Table 2 (ResNet50, COVID-19 Radiography Database).
PAPER_TABLE2: dict[str, tuple[float, float, float, float]] = {
    "original": (0.9166, 0.9166, 0.9267, 0.9157),
    "+ rotation/symmetry": (0.9168, 0.9168, 0.9230, 0.9163),
    "+ mixup": (0.9457, 0.9457, 0.9462, 0.9346),
    "+ L_s only": (0.9440, 0.9440, 0.9455, 0.9332),
    "+ L_s + L_o": (0.9465, 0.9465, 0.9477, 0.9464),
    "+ multi-loss": (0.9615, 0.9615, 0.9620, 0.9615),
    "+ multi-loss + projection": (0.9641, 0.9641, 0.9643, 0.9641),
}


# -- collecting ---------------------------------------------------------------------------------
def flat_metrics(result: dict[str, Any], classes: Sequence[str]) -> dict[str, float]:
    """One (seed, arm) result as flat ``metric -> value`` (Table 2, balanced accuracy and
    macro-F1 from the confusion matrix (also for results written before they were recorded),
    AUCs, robustness)."""
    clean = result["clean"]
    row = {m: clean[m] for m in TABLE2_METRICS}
    row.update(balanced_metrics(clean["confusion_matrix"]))
    row["auc_macro"] = clean["auc_macro"]
    if "ece" in clean:
        row["ece"] = clean["ece"]
    row.update({f"auc_{c}": clean["auc_per_class"][c] for c in classes})
    row.update(result["robust"])
    return row


def flat_multilabel(result: dict[str, Any], findings: Sequence[str]) -> dict[str, float]:
    """One multilabel (seed, arm) result as flat ``metric -> value``: ``macro_auroc``,
    ``n_defined``, ``auc_<finding>`` per finding, then the robustness columns."""
    clean = result["clean"]
    row = {"macro_auroc": clean["macro_auroc"], "n_defined": float(clean["n_defined"])}
    row.update({f"auc_{f}": clean["auroc_per_finding"][f] for f in findings})
    row.update(result["robust"])
    return row


def metric_names(results: dict[str, Any]) -> list[str]:
    return list(results["runs"][0]["metrics"]) if results["runs"] else []


def full_method_verdict(runs: Sequence[dict[str, Any]], baseline: str,
                        metric: str = "accuracy") -> dict[str, Any] | None:
    """The full method (as the arm) against ``baseline`` on ``metric`` by the one rule
    (:func:`.claims.compare`: ``difference = mean(full) - mean(baseline)``, ``spread`` the larger
    seed std, verdict ``better`` / ``worse`` / ``within spread`` / ``one seed``), with a sentence
    for the report; None when either has no finite value."""
    c = compare_arms(runs, FULL_METHOD, baseline, metric)
    if c is None:
        return None
    return {"baseline": baseline, "metric": metric, "full_mean": c.arm_mean,
            "baseline_mean": c.baseline_mean, "difference": c.gain, "spread": c.spread,
            "verdict": c.verdict, "sentence": _sentence(baseline, metric, c)}


def _sentence(baseline: str, metric: str, c: Comparison) -> str:
    head = (f"MLAdv ({FULL_METHOD}) vs `{baseline}`: {metric} {c.arm_mean:.4f} vs "
            f"{c.baseline_mean:.4f} ({c.gain:+.4f})")
    if c.verdict == "one seed":
        return f"{head}: one seed, so no seed-to-seed spread and no conclusion."
    if c.verdict == "better":
        return f"{head}: better, by more than the seed-to-seed spread ({c.spread:.4f})."
    if c.verdict == "worse":
        return (f"{head}: worse; `{baseline}` was ahead by more than the seed-to-seed spread "
                f"({c.spread:.4f}).")
    return (f"{head}: within spread ({c.spread:.4f}); MLAdv did NOT beat `{baseline}` by more "
            f"than the seed-to-seed noise.")


def collect_results(run: Run) -> tuple[dict[str, Any], dict[tuple[str, int], np.ndarray]]:
    """Read every finished (seed, arm) of the run; returns the ``results.json`` content and the
    test-set probabilities per ``(arm, seed)`` (for the ROC figure)."""
    cfg = run.cfg
    multilabel = run.train.task == "multilabel"
    runs: list[dict[str, Any]] = []
    probs: dict[tuple[str, int], np.ndarray] = {}
    per_arm: dict[str, list[dict[str, Any]]] = {}
    for arm in cfg.arms:
        for seed in cfg.seed_list():
            path = run.seed_dir(seed) / "results" / f"{arm}.json"
            if not path.is_file():  # not finished yet (a report of a run in progress)
                continue
            res = json.loads(path.read_text())
            probs[(arm, seed)] = np.asarray(res["probs"])
            if multilabel:
                row = {"arm": arm, "seed": seed, "n_train": res["n_train"],
                       "metrics": flat_multilabel(res, run.classes), "timings": res["timings"]}
            else:
                row = {"arm": arm, "seed": seed, "n_train": res["n_train"],
                       "metrics": flat_metrics(res, run.classes),
                       "confusion_matrix": res["clean"]["confusion_matrix"],
                       "timings": res["timings"]}
            for extra in ("augment", "online", "robust_per_finding"):
                if extra in res:
                    row[extra] = res[extra]
            row["history"] = res.get("history")
            runs.append(row)
            per_arm.setdefault(arm, []).append(row)
    if not runs:
        raise ValueError(f"{run.out}: no (seed, arm) has finished yet: nothing to report")
    names = list(runs[0]["metrics"])
    summary = {arm: {m: mean_std([r["metrics"][m] for r in rows]) for m in names}
               for arm, rows in per_arm.items()}
    metric = primary_metric(run.train.task)
    verdicts = [full_method_verdict(runs, b, metric) if multilabel else full_method_verdict(runs, b)
                for b in BASELINES if b in summary]
    comparisons = [v for v in verdicts if v is not None]
    timing_keys = sorted({k for r in runs for k in r["timings"] if k.endswith("_s")})
    compute: dict[str, Any] = {k: round(sum(r["timings"].get(k, 0.0) for r in runs), 1)
                               for k in timing_keys}
    compute["wall_s"] = round(sum(v for k, v in compute.items() if k.endswith("_wall_s")), 1)
    compute["cpu_s"] = round(sum(v for k, v in compute.items() if k.endswith("_cpu_s")), 1)
    compute["torch_threads"] = sorted({r["timings"]["torch_threads"] for r in runs
                                       if "torch_threads" in r["timings"]})
    results = {"name": cfg.name, "config": cfg.model_dump(mode="json"), "classes": run.classes,
               "n_train": len(run.train), "n_test": len(run.test),
               "robust_n": len(run.robust_index), "split": run.split_info,
               "seeds": cfg.seed_list(), "arms": [a for a in cfg.arms if a in per_arm],
               "finished": len(runs), "planned": len(cfg.arms) * len(cfg.seed_list()),
               "runs": runs, "summary": summary,
               "comparisons": comparisons, "compute": compute,
               "test_labels": run.test.labels.tolist()}
    if multilabel:  # multiclass results.json keeps its keys
        results.update(task="multilabel", primary_metric=metric,
                       verdicts=verdicts_vs_flips(runs, list(per_arm), metric))
    return results, probs


def verdicts_vs_flips(runs: Sequence[dict[str, Any]], arms: Sequence[str],
                      metric: str) -> list[dict[str, Any]]:
    """Every arm but ``none`` against flips (``none``) on ``metric`` by the one rule
    (:func:`.claims.compare`), one dict per arm with a comparison (``gain = mean(arm) -
    mean(none)``, ``spread`` the larger seed std, ``verdict``)."""
    out = []
    for arm in arms:
        if arm == "none":
            continue
        c = compare_arms(runs, arm, "none", metric)
        if c is not None:
            out.append({"arm": arm, "baseline": "none", "metric": metric, "arm_mean": c.arm_mean,
                        "baseline_mean": c.baseline_mean, "gain": c.gain, "spread": c.spread,
                        "verdict": c.verdict})
    return out


# -- files --------------------------------------------------------------------------------------
def write_csv(results: dict[str, Any], path: Path) -> None:
    names = metric_names(results)
    timing = sorted({k for r in results["runs"] for k in r["timings"]})
    rows = [[r["arm"], r["seed"], r["n_train"], *[_num(r["metrics"][m]) for m in names],
             *[r["timings"].get(k, "") for k in timing]] for r in results["runs"]]
    atomic_write_text(csv_text(["arm", "seed", "n_train", *names, *timing], rows), path)


def _num(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def roc_figure(results: dict[str, Any], probs: dict[tuple[str, int], np.ndarray],
               path: Path) -> bool:
    """Fig. 5: per-class one-vs-rest ROC curves of ``none`` and the full method, one line per
    seed. Returns False (no figure) when neither arm was run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ("none", FULL_METHOD) if a in results["arms"]]
    if not arms:
        return False
    classes, labels = results["classes"], results["test_labels"]
    fig, axes = plt.subplots(1, len(classes), figsize=(3.4 * len(classes), 3.4), squeeze=False)
    colors = {"none": "tab:blue", FULL_METHOD: "tab:red"}
    for arm in arms:
        for s_i, seed in enumerate(s for s in results["seeds"] if (arm, s) in probs):
            for c, (fpr, tpr) in enumerate(roc_per_class(labels, probs[(arm, seed)])):
                stat = results["summary"][arm][f"auc_{classes[c]}"]
                label = f"{arm} (AUC {pm(stat, 3)})" if s_i == 0 else None
                axes[0, c].plot(fpr, tpr, color=colors[arm], alpha=0.8, lw=1.2, label=label)
    for c, name in enumerate(classes):
        ax = axes[0, c]
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
        ax.set(title=f"class {name}", xlabel="false positive rate", ylabel="true positive rate",
               xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("ROC per class, one line per seed (Fig. 5)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def accuracy_figure(results: dict[str, Any], path: Path) -> None:
    """Clean and robust accuracy per arm, mean with the seed-to-seed std as error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = results["arms"]
    if results.get("task") == "multilabel":
        keys = ["macro_auroc"] + [k for k in metric_names(results) if k.startswith("auroc_")
                                  and not k.startswith("auroc_drop_")]
    else:
        keys = ["accuracy"] + [k for k in metric_names(results) if k.startswith("acc_")]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(arms) + 1.5), 3.8))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        means = [results["summary"][a][key]["mean"] or 0.0 for a in arms]
        stds = [results["summary"][a][key]["std"] or 0.0 for a in arms]
        ax.bar(np.arange(len(arms)) + j * width, means, width, yerr=stds, capsize=2, label=key)
    ax.set_xticks(np.arange(len(arms)) + width * (len(keys) - 1) / 2, arms, rotation=30,
                  ha="right", fontsize=8)
    ax.set(ylabel="macro AUROC" if results.get("task") == "multilabel" else "accuracy",
           ylim=(0, 1))
    ax.legend(fontsize=7, ncol=len(keys), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)
    save_figure(fig, path)


def ablation_figure(run: Run, path: Path) -> bool:
    """Fig. 4: the same training images (one per class) under each MLAdv ablation arm that was
    run, crafted on the first seed's base model, with their amplified noise."""
    seed = run.cfg.seed_list()[0]
    arms = [a for a in ABLATIONS if a in run.cfg.arms
            and (run.seed_dir(seed) / "adv" / a / "manifest.json").is_file()]
    if not arms:
        return False
    adv = {a: load_shards(run.seed_dir(seed) / "adv" / a).images for a in arms}
    adversarial_grid(run.train.images, adv, run.train.labels, run.classes, path)
    return True


# -- report text --------------------------------------------------------------------------------
def table2(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Table 2 layout: our mean ± std beside the paper's reference row."""
    header = ["training data (paper row)", "arm", *[f"{m} (ours)" for m in TABLE2_METRICS],
              *[f"{m} (paper)" for m in TABLE2_METRICS]]
    rows = []
    for arm in results["arms"]:
        row_name = ARMS[arm].paper_row
        ref = PAPER_TABLE2.get(row_name or "")
        rows.append([row_name or "— (not in the paper)", arm,
                     *[pm(results["summary"][arm][m], 4) for m in TABLE2_METRICS],
                     *([f"{v:.4f}" for v in ref] if ref else ["—"] * 4)])
    return header, rows


def extra_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in metric_names(results)
            if k.startswith("auc_") or k.startswith("acc_")
            or k in ("ece", "balanced_accuracy", "macro_f1")]
    header = ["arm", *keys]
    rows = [[arm, *[pm(results["summary"][arm][k], 3) for k in keys]] for arm in results["arms"]]
    return header, rows


def _seed_mean(values: Sequence[float | None], scale: float = 1.0) -> float | None:
    """``scale`` x the mean over seeds, NaN / null left out (as :func:`.metrics.mean_std`);
    None when no value is left."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    return scale * float(np.mean(vals)) if vals else None


def augment_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """How strong and how visible x'_train was, against the base model (mean over seeds). A
    PSNR written as ``null`` was infinite (an image x'_train left unchanged; strict JSON has no
    inf): it shows as ``inf``, like every infinite number (:func:`mladv.reporting.fmt`)."""
    header = ["arm", "success on base model", "SSIM", "PSNR (dB)", "mean abs δ (x255)",
              "max abs δ (x255)"]
    rows = []
    for arm in results["arms"]:
        vals = [r["augment"] for r in results["runs"] if r["arm"] == arm and "augment" in r]
        if not vals:
            continue
        psnrs = [math.inf if v["psnr"] is None else v["psnr"] for v in vals]
        rows.append([arm, fmt(_seed_mean([v["success"] for v in vals]), 3),
                     fmt(_seed_mean([v["ssim"] for v in vals]), 3), fmt(_seed_mean(psnrs), 1),
                     fmt(_seed_mean([v["l1"] for v in vals], 255), 2),
                     fmt(_seed_mean([v["linf_max"] for v in vals], 255), 2)])
    return header, rows


def _intro(results: dict[str, Any]) -> list[str]:
    cfg, comp = results["config"], results["compute"]
    split = results["split"]
    test_desc = (f"a patient-aware stratified split ({1 - split['test_size']:.2f} / "
                 f"{split['test_size']:.2f}, seed {split['seed']}, the same for every arm and seed)"
                 if split["mode"] == "split" else f"the separate folder {split['test_data']}")
    return [
        f"Data `{cfg['data']}`: {results['n_train']} training / {results['n_test']} test images "
        f"from {test_desc}; classes {results['classes']}.",
        f"Model {cfg['arch']} trained from scratch at {cfg['image_size']} px for "
        f"{cfg['train']['epochs']} epochs (batch {cfg['train']['batch_size']}, lr "
        f"{cfg['train']['lr']}); eps = {cfg['eps']:g}/255; seeds {results['seeds']} (mean ± sample "
        f"std over seeds). Every arm starts from the same initialisation per seed; `none` is the "
        f"base model on which x'_train is crafted.",
        f"Attack options (x'_train and robustness): PGD {cfg['pgd'] or '(defaults)'}, MLAdv "
        f"{cfg['mladv'] or '(class defaults)'}; every other MLAdv setting is the class default "
        f"(the resolved settings of each x'_train are in results.json, runs[].augment.settings).",
        f"Robustness: accuracy on {results['robust_n']} test images (a fixed stratified subset) "
        f"attacked on each arm's own model: `acc_<attack>` at eps {cfg['eps']:g}/255 "
        f"(attacks {cfg['robustness']['attacks']}, the options above), `acc_pgd_<E>` at E/255 "
        f"(E in {cfg['robustness']['pgd_eps']}), `acc_autoattack_<E>` the official "
        f"AutoAttack (standard, Croce & Hein's pyautoattack) at "
        f"{cfg['robustness']['autoattack_eps']:g}/255 on "
        f"{cfg['robustness']['autoattack_images']} of them (0: not run); `acc_noise_<sigma>` on "
        f"all test images under Gaussian noise; `ece`: expected calibration error "
        f"({cfg['robustness']['ece_bins']} bins) on all test images.",
        f"Compute: {comp['wall_s']:.0f} s wall, {comp['cpu_s']:.0f} s CPU summed over all stages "
        f"(this run folder; torch threads {comp.get('torch_threads') or 'not recorded'}; on a "
        f"shared machine the wall time includes waiting for other jobs).",
    ]


def multilabel_tables(results: dict[str, Any]
                      ) -> tuple[tuple[list[str], list[list[str]]],
                                 tuple[list[str], list[list[str]]],
                                 tuple[list[str], list[list[str]]]]:
    """The multilabel report's tables: (macro AUROC ± std per arm with its verdict against
    flips; per-finding AUROC per arm; the robustness columns per arm), means ± std over seeds."""
    summary, names = results["summary"], metric_names(results)
    verdicts = {v["arm"]: v for v in results.get("verdicts", [])}
    main = (["arm", "seeds", "macro AUROC", "gain vs none (spread): verdict"],
            [[arm, str(summary[arm]["macro_auroc"]["n"]), pm(summary[arm]["macro_auroc"], 4),
              "— (reference)" if arm == "none" else
              cell(Comparison(v["arm_mean"], v["baseline_mean"], v["gain"], v["spread"],
                              v["verdict"])) if (v := verdicts.get(arm)) else "n/a"]
             for arm in results["arms"]])
    findings = [f"auc_{f}" for f in results["classes"]]
    per_finding = (["finding", *results["arms"]],
                   [[f[4:], *[pm(summary[arm][f], 3) for arm in results["arms"]]]
                    for f in findings])
    robust = ["macro_auroc_subset"] + [k for k in names if k.startswith(
        ("auroc_", "flip_rate_"))]
    rob = (["arm", *robust], [[arm, *[pm(summary[arm][k], 3) for k in robust]]
                              for arm in results["arms"]])
    return main, per_finding, rob


def multilabel_blocks(results: dict[str, Any], figures: list[tuple[str, Path]],
                      selection: dict[str, Any] | None) -> list[Block]:
    """The report of a multilabel run (macro AUROC, verdicts against flips, per-finding AUROC,
    robustness columns, the online choices)."""
    cfg, comp = results["config"], results["compute"]
    rob = cfg["robustness"]
    intro = [
        f"Data `{cfg['data']}` (multilabel): {results['n_train']} training / "
        f"{results['n_test']} test images (patient-aware multilabel split); findings "
        f"{results['classes']}.",
        f"Model {cfg['arch']} from scratch at {cfg['image_size']} px, {cfg['train']['epochs']} "
        f"epochs, masked BCE; seeds {results['seeds']} (mean ± sample std over seeds).",
        "Primary metric: macro AUROC, the mean of the per-finding AUROCs defined on the test "
        "split (a finding with one class among its known test labels has none).",
        f"Robustness on {results['robust_n']} test images (a fixed seeded subset: a class-"
        f"stratified draw does not apply to label sets): `auroc_<attack>` macro AUROC under "
        f"own-model {rob['attacks']} at eps {cfg['eps']:g}/255 (masked BCE), `auroc_pgd_<E>` "
        f"at E/255 (E in {rob['pgd_eps']}), `auroc_drop_*` clean minus attacked on the same "
        f"images, `flip_rate_*` mean over findings of the share of decisions (at 0.5) changed; "
        f"`auroc_noise_<sigma>` on every test image.",
        f"Compute: {comp['wall_s']:.0f} s wall, {comp['cpu_s']:.0f} s CPU summed over all "
        f"stages.",
    ]
    blocks: list[Block] = [("h", f"MLAdv augmentation experiment (multilabel): {results['name']}"),
                           ("ul", intro)]
    if results["finished"] < results["planned"]:
        blocks.append(("p", f"PARTIAL REPORT: {results['finished']} of {results['planned']} "
                            f"(seed, arm) runs have finished."))
    main, per_finding, robust = multilabel_tables(results)
    blocks += [("h2", "Macro AUROC by arm, and the verdict against flips"),
               ("p", f"Rule fixed before the run, on macro AUROC: {RULE}"),
               ("table", *main)]
    if selection and selection.get("choices"):
        blocks += [("h2", "Online arms: the grid point chosen on validation"),
                   ("ul", [f"`{a}`: {c['point']}" + (f", matched to `{c['matched_to']}` (not "
                                                     f"searched)" if "matched_to" in c else
                                                     f", val macro AUROC "
                                                     f"{fmt(c.get('val_macro_auroc'), 4)}")
                           for a, c in selection["choices"].items()])]
    blocks += [("h2", "Per-finding AUROC (mean ± std over seeds)"), ("table", *per_finding),
               ("h2", "Robustness (mean ± std over seeds)"), ("table", *robust)]
    aug = augment_table(results)
    if aug[1]:
        blocks += [("h2", "x'_train against the base model"), ("table", *aug)]
    blocks.append(("h2", "Figures"))
    blocks += [("figure", f"figures/{path.name}", caption) for caption, path in figures]
    return blocks


def report_blocks(results: dict[str, Any], figures: list[tuple[str, Path]],
                  selection: dict[str, Any] | None = None) -> list[Block]:
    """The report as blocks for :mod:`mladv.reporting` (figures: ``(caption, path)``)."""
    blocks: list[Block] = [("h", f"MLAdv augmentation experiment: {results['name']}"),
                           ("ul", _intro(results))]
    if results["finished"] < results["planned"]:
        blocks.append(("p", f"PARTIAL REPORT: {results['finished']} of {results['planned']} "
                            f"(seed, arm) runs have finished; the numbers below cover those only "
                            f"(column `seeds` / n per arm). Rerun the same command to resume."))
    blocks += chain_blocks(results) + online_blocks(results, selection)
    blocks += [("h2", "Table 2: clean test metrics by training set"), ("table", *table2(results))]
    if FULL_METHOD in results["arms"]:  # an online-only comparison has its verdict above
        blocks += [("h2", "Verdicts: MLAdv (full method) against each baseline"),
                   ("p", f"Rule fixed before the run: {RULE}"),
                   ("ul", [c["sentence"] for c in results["comparisons"]]
                    or ["No verdict yet: the full method and a baseline have not both finished."])]
    blocks += [("h2", "AUC and robustness (mean ± std over seeds)"),
               ("table", *extra_table(results))]
    aug = augment_table(results)
    if aug[1]:
        blocks += [("h2", "x'_train against the base model"), ("table", *aug)]
    blocks.append(("h2", "Figures"))
    blocks += [("figure", f"figures/{path.name}", caption) for caption, path in figures]
    blocks.append(("p", "Per arm x seed numbers: `results.csv`; everything: `results.json`; the "
                        "resolved config: `config.yaml`."))
    return blocks


def write_report(run: Run, results: dict[str, Any],
                 probs: dict[tuple[str, int], np.ndarray]) -> None:
    """Write results.json, results.csv, the figures, report.md and report.html into the run."""
    out = run.out
    atomic_write_json(results, out / "results.json")
    write_csv(results, out / "results.csv")
    figs = out / "figures"
    figures: list[tuple[str, Path]] = []
    if results.get("task") == "multilabel":
        accuracy_figure(results, figs / "macro_auroc.png")
        figures.append(("Clean and attacked macro AUROC per arm (mean, error bar = std over "
                        "seeds)", figs / "macro_auroc.png"))
        write_blocks(multilabel_blocks(results, figures, selection_so_far(run)),
                     f"MLAdv augmentation experiment: {results['name']}", out / "report.md",
                     out / "report.html")
        return
    accuracy_figure(results, figs / "accuracy.png")
    figures.append(("Clean and robust accuracy per arm (mean, error bar = std over seeds)",
                    figs / "accuracy.png"))
    if roc_figure(results, probs, figs / "roc.png"):
        shown = " vs ".join(f"`{a}`" for a in ("none", FULL_METHOD) if a in results["arms"])
        figures.append((f"Fig. 5: ROC curves per class, {shown}",
                        figs / "roc.png"))
    selection = selection_so_far(run)
    if any(ARMS[a].online for a in run.cfg.arms) and curve_figure(
            results, selection, figs / "flips_curve.png"):
        figures.append(("Flips (`none`) learning curve: train loss / accuracy per epoch of each "
                        "seed, validation accuracy per epoch on the selection split",
                        figs / "flips_curve.png"))
    if ablation_figure(run, figs / "ablation.png"):
        figures.append(("Fig. 4: the same training images under each MLAdv ablation arm "
                        "(image, then its noise amplified)", figs / "ablation.png"))
    write_blocks(report_blocks(results, figures, selection), f"MLAdv augmentation experiment: "
                 f"{results['name']}", out / "report.md", out / "report.html")
