"""Scoring one arm's model beyond clean accuracy: calibration and robustness.

Per (seed, arm), on the test split:

- ``ece``: expected calibration error (Guo et al. 2017; :func:`mladv.robustness.
  expected_calibration_error`, ``robustness.ece_bins`` equal-width bins) on every test image;
- ``acc_<attack>``: accuracy under the registry attacks of ``robustness.attacks`` at the top-level
  ``eps``, crafted white-box on the arm's own model, on a fixed stratified subset
  (``robustness.max_images``, the same images for every arm and seed);
- ``acc_pgd_<E>``: the same for own-model PGD at each ``robustness.pgd_eps`` (1/255 units), with
  the ``pgd:`` options;
- ``acc_autoattack_<E>``: torchattacks' ``AutoAttack`` (standard version: APGD-CE, APGD-T,
  FAB-T, Square) at ``robustness.autoattack_eps`` on the first ``robustness.autoattack_images``
  of that subset in its stratified order (so the classes stay balanced);
- ``acc_noise_<sigma>``: accuracy on every test image plus Gaussian noise, clipped to [0, 1];
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

from ..attacks import make_attack
from ..attacks.registry import attack_options
from ..augment import craft_shard, derive_seed
from ..data import ImageSet
from ..models import ImageClassifier
from ..robustness import (
    acquisition_shift_accuracy,
    autoattack_accuracy,
    expected_calibration_error,
)
from ..training import accuracy
from .config import ExperimentConfig
from .state import Run


def stratified_order(test: ImageSet, seed: int) -> list[int]:
    """Every test index, dealt round-robin over the classes from per-class shuffles seeded with
    ``seed``: any prefix is as class-balanced as the data allows."""
    gen = torch.Generator().manual_seed(seed)
    per_class = [idx[torch.randperm(len(idx), generator=gen)].tolist()
                 for idx in (torch.nonzero(test.labels == c).flatten()
                             for c in range(len(test.classes)))]
    return [lst[i] for i in range(max(map(len, per_class), default=0))
            for lst in per_class if i < len(lst)]


def robust_subset(test: ImageSet, cfg: ExperimentConfig) -> list[int]:
    """The test images the robustness attacks run on: all, or exactly ``robustness.max_images``
    of them from :func:`stratified_order` with the split seed (the same subset for every arm and
    seed), sorted."""
    n, cap = len(test), cfg.robustness.max_images
    if cap is None or cap >= n:
        return list(range(n))
    return sorted(stratified_order(test, cfg.split.seed)[:cap])


def autoattack_subset(test: ImageSet, cfg: ExperimentConfig) -> list[int]:
    """The first ``robustness.autoattack_images`` of the robustness subset, in stratified order."""
    chosen = set(robust_subset(test, cfg))
    order = [i for i in stratified_order(test, cfg.split.seed) if i in chosen]
    return sorted(order[:cfg.robustness.autoattack_images])


def calibration(probs: np.ndarray, labels: torch.Tensor, bins: int) -> float:
    """ECE of test-set probabilities ``N x K`` against labels ``N``."""
    return expected_calibration_error(torch.as_tensor(probs, dtype=torch.float32), labels, bins)


def own_model_accuracy(model: ImageClassifier, images: ImageSet, name: str, eps: float,
                       seed: int, options: dict[str, Any], batch_size: int) -> float:
    """Accuracy on ``images`` attacked by registry attack ``name`` (``eps`` in 1/255, the
    config's ``options``) crafted on ``model`` itself, seeded as every robustness number is."""
    atk = make_attack(name, model, **attack_options(name, eps=eps, seed=seed, options=options))
    adv = craft_shard(atk, images.images, images.labels, seed=seed, shard=0,
                      batch_size=batch_size)
    return accuracy(model, adv, images.labels)


def attacked_accuracy(run: Run, model: ImageClassifier, name: str, eps: float, seed: int,
                      options: dict[str, Any]) -> float:
    """Accuracy on the robustness subset attacked on ``model`` itself (``eps`` in 1/255)."""
    return own_model_accuracy(model, run.test.subset(run.robust_index), name, eps, seed, options,
                              run.cfg.robustness.batch_size)


def robustness(run: Run, model: ImageClassifier, seed: int) -> dict[str, float]:
    """Every robustness number of the module docstring for ``model`` (a dict of accuracies)."""
    cfg, rob = run.cfg, run.cfg.robustness
    out: dict[str, float] = {}
    for name in rob.attacks:
        out[f"acc_{name}"] = attacked_accuracy(run, model, name, cfg.eps, seed,
                                               cfg.mladv if name == "mladv" else cfg.pgd)
    for eps in rob.pgd_eps:
        out[f"acc_pgd_{eps:g}"] = attacked_accuracy(run, model, "pgd", eps, seed, cfg.pgd)
    if rob.autoattack_images:
        sub = run.test.subset(autoattack_subset(run.test, cfg))
        out[f"acc_autoattack_{rob.autoattack_eps:g}"] = autoattack_accuracy(
            model, sub.images, sub.labels, eps=rob.autoattack_eps / 255, seed=seed,
            batch_size=rob.batch_size, square_queries=rob.autoattack_square_queries)
    for i, sigma in enumerate(rob.noise_sigmas):
        gen = torch.Generator().manual_seed(derive_seed(seed, 1000 + i))
        noise = sigma * torch.randn(run.test.images.shape, generator=gen)
        noisy = (run.test.images + noise).clamp(0, 1)
        out[f"acc_noise_{sigma:g}"] = accuracy(model, noisy, run.test.labels)
    if rob.acquisition_shift:
        shift = acquisition_shift_accuracy(model, run.test.images, run.test.labels,
                                           seed=derive_seed(seed, 2000))
        out.update({k: v for k, v in shift.items() if k != "shift_mean"})
        out["acc_shift_mean"] = shift["shift_mean"]
        out["acc_chain"] = attacked_accuracy(run, model, "chain", 8.0, seed, cfg.chain)
    return out
