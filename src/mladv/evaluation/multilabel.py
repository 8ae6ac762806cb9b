"""The numbers of a multilabel card (issue 22 item 6): per-finding AUROC, the macro AUROC and its
drop under an attack, sensitivity / specificity at the model's operating thresholds.

Conventions (:mod:`mladv.tasks`): logits ``N x K``, targets ``N x K`` floats in {0, 1} with NaN
= unknown; every statistic of finding ``k`` is computed on the images where ``y_ik`` is known.
A finding whose known targets hold a single class has no AUROC (NaN, as scikit-learn refuses it);
the macro AUROC is the mean over the findings that have one, and says how many that is.

AUROC is scikit-learn's ``roc_auc_score`` (the Mann-Whitney statistic, ties counted half); it is
rank-based, so logits and sigmoid probabilities give the same value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..tasks import Thresholds, check_targets, known_mask, threshold_logits


def _check(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape N x K, got {tuple(logits.shape)}")
    check_targets(targets, "multilabel", logits.shape[1])
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"logits have {logits.shape[0]} rows and targets {targets.shape[0]}")


def per_finding_auroc(logits: Tensor, targets: Tensor) -> list[float]:
    """AUROC of each finding over its known targets; NaN where they hold one class only.

    Shape: logits, targets ``N x K`` -> ``K`` floats."""
    from sklearn.metrics import roc_auc_score

    _check(logits, targets)
    scores, y, known = logits.detach().cpu().double(), targets.cpu(), known_mask(targets.cpu())
    out: list[float] = []
    for k in range(logits.shape[1]):
        yk, sk = y[known[:, k], k], scores[known[:, k], k]
        if yk.numel() == 0 or bool((yk == yk[0]).all()):
            out.append(math.nan)
        else:
            out.append(float(roc_auc_score(yk.numpy(), sk.numpy())))
    return out


def macro_auroc(aurocs: list[float]) -> tuple[float, int]:
    """``(mean of the defined per-finding AUROCs, how many were defined)``; NaN and 0 when
    none is."""
    defined = [a for a in aurocs if not math.isnan(a)]
    return (sum(defined) / len(defined), len(defined)) if defined else (math.nan, 0)


@dataclass(frozen=True)
class OperatingPoint:
    """Sensitivity and specificity of each finding at its decision threshold ``t_k``
    (``sigmoid(z) >= t_k`` is positive): ``TP / (TP + FN)`` over the known positives and
    ``TN / (TN + FP)`` over the known negatives (NaN where there are none), with the counts."""

    sensitivity: list[float]
    specificity: list[float]
    positives: list[int]
    negatives: list[int]


def operating_point(logits: Tensor, targets: Tensor, thresholds: Thresholds = None
                    ) -> OperatingPoint:
    """:class:`OperatingPoint` of ``logits`` against ``targets`` at ``thresholds`` (default
    0.5 for every finding; see :func:`mladv.tasks.threshold_logits`)."""
    _check(logits, targets)
    z, y = logits.detach().cpu().double(), targets.cpu()
    positive = z >= threshold_logits(thresholds, z.shape[1], like=z)
    known = known_mask(y)
    pos, neg = (y == 1) & known, (y == 0) & known
    tp, tn = (positive & pos).sum(0), (~positive & neg).sum(0)
    n_pos, n_neg = pos.sum(0), neg.sum(0)

    def ratio(a: Tensor, b: Tensor) -> list[float]:
        return [float(x) / float(n) if n else math.nan for x, n in zip(a, b, strict=True)]

    return OperatingPoint(ratio(tp, n_pos), ratio(tn, n_neg), [int(n) for n in n_pos],
                          [int(n) for n in n_neg])


def auroc_drop(clean: list[float], attacked: list[float]) -> float:
    """Macro AUROC clean minus macro AUROC attacked, over the findings defined in both."""
    both = [(c, a) for c, a in zip(clean, attacked, strict=True)
            if not (math.isnan(c) or math.isnan(a))]
    if not both:
        return math.nan
    return sum(c - a for c, a in both) / len(both)


def flip_rates(clean_logits: Tensor, adv_logits: Tensor, thresholds: Thresholds = None
               ) -> list[float]:
    """Per finding, the share of images whose decision at ``thresholds`` changed between the
    clean and the attacked logits (label-free). Shape: ``N x K`` twice -> ``K`` floats."""
    if clean_logits.shape != adv_logits.shape or clean_logits.dim() != 2:
        raise ValueError(f"clean {tuple(clean_logits.shape)} and attacked "
                         f"{tuple(adv_logits.shape)} logits must be the same N x K")
    t = threshold_logits(thresholds, clean_logits.shape[1], like=clean_logits.double())
    changed = (clean_logits.double() >= t) != (adv_logits.double() >= t)
    return [float(v) for v in changed.float().mean(0)] if clean_logits.shape[0] else \
        [math.nan] * clean_logits.shape[1]


__all__ = ["OperatingPoint", "auroc_drop", "flip_rates", "macro_auroc", "operating_point",
           "per_finding_auroc"]
