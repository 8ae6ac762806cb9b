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
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import ImageSet
from ..models import ImageClassifier
from ..robustness import (
    RobustnessOptions,
    adversarial_accuracy,
    expected_calibration_error,
    robustness_columns,
    robustness_subsets,
)
from .config import ExperimentConfig
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
    of them from :func:`mladv.robustness.stratified_order` with the split seed, sorted."""
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
