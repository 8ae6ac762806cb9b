"""The experiment's measuring step (as ``transfer/measure.py`` is the transfer study's): one
arm's model scored beyond clean accuracy, calibration and robustness, through
:func:`mladv.robustness.robustness_columns` (the one evaluation path; this module only maps
the config onto :class:`~mladv.robustness.RobustnessOptions`, so the public API given the same
model, test split and options reproduces every column exactly).

Per (seed, arm), on the test split:

- ``ece``: expected calibration error (Guo et al. 2017; :func:`mladv.robustness.
  expected_calibration_error`, ``robustness.ece_bins`` equal-width bins) on every test image;
- ``acc_<attack>``: accuracy under the registry attacks of ``robustness.attacks`` at the top-level
  ``eps``, crafted white-box on the arm's own model, on a fixed stratified subset
  (``robustness.max_images``, the same images for every arm and seed);
- ``acc_pgd_<E>``: the same for own-model PGD at each ``robustness.pgd_eps`` (1/255 units), with
  the ``pgd:`` options;
- ``acc_autoattack_<E>``: the official ``AutoAttack`` (Croce & Hein's ``pyautoattack``, standard
  version: APGD-CE, APGD-T, FAB-T, Square; :func:`mladv.robustness.autoattack_accuracy`) at
  ``robustness.autoattack_eps`` on the first ``robustness.autoattack_images``
  of that subset in its stratified order (so the classes stay balanced);
- ``acc_noise_<sigma>``: accuracy on every test image plus Gaussian noise, clipped to [0, 1]
  (the ``i``-th sigma's noise drawn from ``derive_seed(seed, 1000 + i)``);
- with ``robustness.acquisition_shift``: ``shift_<transform>_<severity>`` (accuracy on every test
  image under each chain transform alone at severities 1, 2, 4, random parameters:
  :func:`mladv.robustness.acquisition_shift_accuracy`), their mean ``acc_shift_mean``, and
  ``acc_chain``: the adversarial chain (severity 1, the ``chain:`` options) crafted on the arm's
  own model, on the robustness subset.

A multilabel data set (``ImageSet.task == "multilabel"``: ``N x K`` targets, NaN unknown) is
scored by :func:`mladv.evaluation.multilabel_report.multilabel_report` instead (the card's one
multilabel path; nothing is re-implemented here): clean ``macro_auroc`` (mean of the per-finding
AUROCs defined on the test split) and per-finding AUROC on every test image
(:func:`multilabel_clean`), and on the robustness subset (:func:`robust_subset`: a fixed seeded
draw, :func:`mladv.robustness.fixed_subset`, since a class-stratified draw does not apply to
label sets) ``auroc_<attack>`` (macro AUROC under the own-model attack at ``eps``, masked BCE),
``auroc_pgd_<E>``, ``auroc_drop_<column>`` (macro AUROC clean on the same images minus attacked,
over the findings defined in both), ``flip_rate_<column>`` (the mean over findings of the share
of images whose decision at 0.5 changed; per finding in ``robust_per_finding``), and
``auroc_noise_<sigma>`` on every image. Accuracy-based columns (AutoAttack, ECE, acquisition
shift) are refused for a multilabel set (:func:`check_task_settings`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import ImageSet
from ..evaluation.multilabel import macro_auroc, operating_point, per_finding_auroc
from ..evaluation.multilabel_report import multilabel_report
from ..models import ImageClassifier
from ..robustness import (
    RobustnessOptions,
    adversarial_accuracy,
    expected_calibration_error,
    fixed_subset,
    robustness_columns,
    robustness_subsets,
)
from .arm_table import ARMS
from .config import TASK_RULES, ExperimentConfig
from .state import Run


def robustness_options(cfg: ExperimentConfig) -> RobustnessOptions:
    """The :class:`~mladv.robustness.RobustnessOptions` of ``cfg``: its ``robustness:``
    section, top-level ``eps``, ``pgd:`` / ``mladv:`` / ``chain:`` options, and ``split.seed``
    as the subset seed (the same subset for every arm and seed)."""
    rob = cfg.robustness
    return RobustnessOptions(
        attacks=tuple(rob.attacks), eps=cfg.eps, pgd_eps=tuple(rob.pgd_eps),
        pgd_options=cfg.pgd, mladv_options=cfg.mladv, chain_options=cfg.chain,
        max_images=rob.max_images, subset_seed=cfg.split.seed,
        autoattack_images=rob.autoattack_images, autoattack_eps=rob.autoattack_eps,
        square_queries=rob.autoattack_square_queries, noise_sigmas=tuple(rob.noise_sigmas),
        acquisition_shift=rob.acquisition_shift, ece_bins=rob.ece_bins,
        batch_size=rob.batch_size)


def robust_subset(test: ImageSet, cfg: ExperimentConfig) -> list[int]:
    """The test images the robustness attacks run on: all, or exactly ``robustness.max_images``
    of them from :func:`mladv.robustness.stratified_order` with the split seed, sorted; for a
    multilabel set :func:`mladv.robustness.fixed_subset` with the split seed (the draw of
    :func:`~mladv.evaluation.multilabel_report.multilabel_report`)."""
    if test.task == "multilabel":
        return [int(i) for i in fixed_subset(len(test), cfg.robustness.max_images,
                                             cfg.split.seed)]
    sub, _ = robustness_subsets(test.labels, robustness_options(cfg), len(test.classes))
    return [int(i) for i in sub]


def autoattack_subset(test: ImageSet, cfg: ExperimentConfig) -> list[int]:
    """The first ``robustness.autoattack_images`` of the robustness subset, in stratified order
    (sorted)."""
    _, auto = robustness_subsets(test.labels, robustness_options(cfg), len(test.classes))
    return [int(i) for i in auto]


def calibration(probs: np.ndarray, labels: torch.Tensor, bins: int) -> float:
    """ECE of test-set probabilities ``N x K`` against labels ``N``."""
    return expected_calibration_error(torch.as_tensor(probs, dtype=torch.float32), labels, bins)


def own_model_accuracy(model: ImageClassifier, images: ImageSet, name: str, eps: float,
                       seed: int, options: dict[str, Any], batch_size: int) -> float:
    """Accuracy on ``images`` attacked by registry attack ``name`` (``eps`` in 1/255, the
    config's ``options``) crafted on ``model`` itself, seeded as every robustness number is
    (:func:`mladv.robustness.adversarial_accuracy`)."""
    return adversarial_accuracy(model, images.images, images.labels, name,
                                **{**options, "eps": eps / 255, "seed": seed,
                                   "batch_size": batch_size})


def robustness(run: Run, model: ImageClassifier, seed: int) -> dict[str, float]:
    """Every robustness number of the module docstring for ``model`` (a dict of accuracies)."""
    return robustness_columns(model, run.test.images, run.test.labels,
                              robustness_options(run.cfg), seed=seed,
                              n_classes=len(run.test.classes))


# -- multilabel -----------------------------------------------------------------------------------
MIX_ARMS = ("mixup", "cutmix")


def check_task_settings(cfg: ExperimentConfig, task: str, source: str) -> None:
    """Refuse settings that do not apply to the data's ``task`` in one ``ValueError`` line
    naming the key, before any training: the selection rule must be the task's
    (:data:`~.config.TASK_RULES`) when an online arm is searched; for a multilabel set the mixing
    arms (``mixup`` / ``cutmix`` mix one-hot class labels; a finding unknown in either image
    would have no mixed target, so they are refused rather than half-defined) and the
    accuracy-only robustness columns (``autoattack_images``, ``acquisition_shift``)."""
    rule = cfg.online.selection.rule
    if any(ARMS[a].online for a in cfg.arms) and rule != TASK_RULES[task]:
        raise ValueError(f"online.selection.rule: {rule} does not apply to {source}, a {task} "
                         f"data set; use {TASK_RULES[task]}")
    if task != "multilabel":
        return
    mixing = [a for a in cfg.arms if a in MIX_ARMS]
    if mixing:
        raise ValueError(f"arms: {mixing} mix one-hot class labels; {source} is multilabel "
                         f"(N x K targets with unknowns), so they are not run on it")
    if cfg.robustness.autoattack_images or cfg.robustness.acquisition_shift:
        raise ValueError(f"robustness.autoattack_images / acquisition_shift measure accuracy; "
                         f"{source} is multilabel: set them to 0 / false")


def multilabel_clean(logits: torch.Tensor, targets: torch.Tensor,
                     findings: list[str]) -> dict[str, Any]:
    """The clean test numbers of a multilabel model: ``macro_auroc`` (mean of the defined
    per-finding AUROCs), ``n_defined``, ``auroc_per_finding`` ``{finding: AUROC}`` (None where
    undefined), and ``sensitivity`` / ``specificity`` ``{finding: value}`` at 0.5.
    Shape: logits and targets ``N x K``."""
    aurocs = per_finding_auroc(logits, targets)
    macro, defined = macro_auroc(aurocs)
    op = operating_point(logits, targets)
    return {"macro_auroc": macro, "n_defined": defined,
            "auroc_per_finding": dict(zip(findings, aurocs, strict=True)),
            "sensitivity": dict(zip(findings, op.sensitivity, strict=True)),
            "specificity": dict(zip(findings, op.specificity, strict=True))}


def multilabel_robustness(run: Run, model: ImageClassifier, seed: int
                          ) -> tuple[dict[str, float], dict[str, Any]]:
    """The robustness columns of the module docstring for a multilabel ``model`` (flat macro
    numbers) and their per-finding AUROC and flip rates (``{"auroc": {column: K}, "flip_rate":
    {column: K}, "findings": K names}``), from
    :func:`~mladv.evaluation.multilabel_report.multilabel_report`."""
    rep = multilabel_report(model, run.test.images, run.test.labels,
                            robustness_options(run.cfg), seed=seed)
    cols: dict[str, float] = {"macro_auroc_subset": rep["macro"]["clean_subset"]}
    for key, value in rep["macro"].items():
        if key in ("clean", "clean_subset"):
            continue
        cols[key] = value
        cols[f"auroc_drop_{key[len('auroc_'):]}"] = rep["drop"][key]
        rates = [r for r in rep["flip_rate"][key] if not np.isnan(r)]
        cols[f"flip_rate_{key[len('auroc_'):]}"] = float(np.mean(rates)) if rates else float("nan")
    per_finding = {"findings": list(run.classes), "auroc": rep["auroc"],
                   "flip_rate": rep["flip_rate"]}
    return cols, per_finding
