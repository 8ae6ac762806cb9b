"""Test-set metrics of Table 2 and Fig. 5, computed with scikit-learn.

Accuracy, recall / precision / F1 weighted by class support (the paper's recall equals its
accuracy, which is what weighted recall gives), per-class and macro one-vs-rest ROC AUC (as
MedMNIST reports it), the confusion matrix, balanced accuracy and macro-F1 (from the
confusion matrix: the classes are unbalanced), and mean ± std over seeds.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

TABLE2_METRICS = ("accuracy", "recall", "precision", "f1")


def _auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC, NaN when only one class is present (AUC undefined)."""
    if y_true.min() == y_true.max():
        return float("nan")
    return float(roc_auc_score(y_true, score))


def classification_metrics(labels: Sequence[int] | np.ndarray, probs: np.ndarray,
                           classes: Sequence[str]) -> dict[str, Any]:
    """Metrics of predicted class probabilities against true labels.

    Args:
        labels: ``N`` true class indices.
        probs: ``N x K`` class probabilities (rows sum to 1); the prediction is the argmax.
        classes: the ``K`` class names.

    Returns:
        ``accuracy``, ``recall``, ``precision``, ``f1`` (support-weighted; classes never
        predicted count 0 precision), ``balanced_accuracy`` and ``macro_f1``
        (:func:`balanced_metrics`), ``auc_macro`` (one-vs-rest, macro over classes),
        ``auc_per_class`` (``{class: AUC}``), ``confusion_matrix`` (rows true, columns predicted).
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    k = len(classes)
    if p.ndim != 2 or p.shape != (y.shape[0], k):
        raise ValueError(f"probs must have shape ({y.shape[0]}, {k}), got {p.shape}")
    pred = p.argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, labels=list(range(k)), average="weighted", zero_division=0)
    per_class = {c: _auc((y == i).astype(int), p[:, i]) for i, c in enumerate(classes)}
    present = len(np.unique(y))
    if k == 2:
        macro = _auc(y, p[:, 1])
    elif present == k:
        macro = float(roc_auc_score(y, p, multi_class="ovr", average="macro",
                                    labels=list(range(k))))
    else:  # a class missing from the test labels: average over the defined per-class AUCs
        vals = [v for v in per_class.values() if not math.isnan(v)]
        macro = float(np.mean(vals)) if vals else float("nan")
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    return {"accuracy": float(accuracy_score(y, pred)), "recall": float(recall),
            "precision": float(precision), "f1": float(f1), **balanced_metrics(cm),
            "auc_macro": macro, "auc_per_class": per_class, "confusion_matrix": cm.tolist()}


def balanced_metrics(cm: Sequence[Sequence[int]] | np.ndarray) -> dict[str, float]:
    """``balanced_accuracy`` (the unweighted mean of per-class recall over the classes present)
    and ``macro_f1`` (the unweighted mean of per-class F1 over all ``K`` classes, 0 for a class
    neither present nor predicted, as scikit-learn's ``zero_division=0``) of a ``K x K``
    confusion matrix (rows true, columns predicted). Per class ``i``: recall ``C_ii / sum_j C_ij``,
    precision ``C_ii / sum_j C_ji``, F1 ``2 C_ii / (sum_j C_ij + sum_j C_ji)``."""
    c = np.asarray(cm, dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"confusion matrix must be K x K, got shape {c.shape}")
    tp, true, pred = np.diag(c), c.sum(1), c.sum(0)
    present = true > 0
    recall = tp[present] / true[present]
    denom = true + pred
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"balanced_accuracy": float(recall.mean()) if present.any() else float("nan"),
            "macro_f1": float(f1.mean())}


def roc_per_class(labels: Sequence[int], probs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curve ``(fpr, tpr)`` of each class (empty arrays where undefined)."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    curves = []
    for i in range(p.shape[1]):
        truth = (y == i).astype(int)
        if truth.min() == truth.max():
            curves.append((np.array([]), np.array([])))
            continue
        fpr, tpr, _ = roc_curve(truth, p[:, i])
        curves.append((fpr, tpr))
    return curves


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` over seeds; ``std`` is the sample standard deviation (ddof = 1),
    ``None`` for a single seed (no spread can be measured). NaN values are left out."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(vals)),
            "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None, "n": len(vals)}
