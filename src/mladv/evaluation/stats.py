"""Statistics a reader trusts: patient-level bootstrap confidence intervals, paired A/B
differences, McNemar's exact test and the verdict they give.

Bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, percentile method):
images of one patient are not independent, so a resample draws the ``P`` **patients** with
replacement and each drawn patient brings all its images (a cluster bootstrap; an image-level
bootstrap would understate the spread). For ``b = 1 .. B`` the statistic ``T_b`` is computed on
the resampled images; the ``level`` interval is ``[q_{(1 - level) / 2}, q_{(1 + level) / 2}]`` of
the ``T_b`` (numpy's linear-interpolation percentiles). Resamples where the statistic is undefined
(AUROC of a resample holding one class) are skipped and counted. Paired A/B: both models'
statistics on the **same** resampled patients, ``T_b = T_b(A) - T_b(B)``.

Written here rather than with ``scipy.stats.bootstrap``: scipy resamples observations, not
clusters of them, and cannot skip undefined resamples.

Examples::

    >>> import numpy as np
    >>> from mladv.evaluation.stats import accuracy_ci
    >>> ci = accuracy_ci(np.array([1, 1, 0, 1]), ["p1", "p1", "p2", "p3"], n_boot=200)
    >>> ci.estimate
    0.75
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

Statistic = Callable[[NDArray[np.intp]], float]
Seed = int | np.random.Generator


@dataclass(frozen=True)
class BootstrapCI:
    """``estimate`` (the statistic on all images) with its ``[low, high]`` percentile interval
    at ``level`` from ``n_boot - skipped`` resamples of ``n_patients`` patients
    (``n_images`` images); ``samples`` holds every resample's value (NaN where skipped)."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    skipped: int
    n_patients: int
    n_images: int
    samples: NDArray[np.float64] = field(repr=False, compare=False)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired correctness: ``a_only`` images A gets right and B wrong,
    ``b_only`` the reverse; ``p_value`` two-sided."""

    a_only: int
    b_only: int
    p_value: float


def _check_common(patients: Sequence[Hashable], n_boot: int, level: float) -> None:
    if len(patients) == 0:
        raise ValueError("patients: no image given")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _per_image(name: str, values: ArrayLike, n: int, *, binary: bool = False,
               ndim: tuple[int, ...] = (1,)) -> NDArray[Any]:
    arr = np.asarray(values)
    if arr.ndim not in ndim or arr.shape[0] != n:
        raise ValueError(f"{name} must have one entry per image ({n}), got shape {arr.shape}")
    if binary and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold 0 / 1 (or bool) per image")
    return arr


def patient_groups(patients: Sequence[Hashable]) -> list[NDArray[np.intp]]:
    """The image indices of each patient, patients in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, p in enumerate(patients):
        groups.setdefault(p, []).append(i)
    return [np.asarray(g, dtype=np.intp) for g in groups.values()]


def bootstrap_ci(statistic: Statistic, patients: Sequence[Hashable], *, n_boot: int = 1000,
                 seed: Seed = 0, level: float = 0.95) -> BootstrapCI:
    """Patient-level bootstrap CI of ``statistic(indices)``, a statistic of the images at
    ``indices`` (repeats included; NaN when undefined: that resample is skipped).

    Args:
        statistic: image indices (1-D ``intp``) -> a float.
        patients: one patient id per image (length ``N``).
        n_boot: resamples ``B``.
        seed: an int seed or a numpy ``Generator`` (the draws are ``B`` times ``P`` integers).
        level: the interval's coverage.
    """
    _check_common(patients, n_boot, level)
    groups = patient_groups(patients)
    rng = np.random.default_rng(seed)
    samples = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        drawn = rng.integers(0, len(groups), size=len(groups))
        samples[b] = statistic(np.concatenate([groups[p] for p in drawn]))
    valid = samples[~np.isnan(samples)]
    low, high = (np.percentile(valid, [50 * (1 - level), 50 * (1 + level)]) if valid.size
                 else (math.nan, math.nan))
    return BootstrapCI(float(statistic(np.arange(len(patients), dtype=np.intp))), float(low),
                       float(high), level, n_boot, int(n_boot - valid.size), len(groups),
                       len(patients), samples)


def accuracy_ci(correct: ArrayLike, patients: Sequence[Hashable], *, n_boot: int = 1000,
                seed: Seed = 0, level: float = 0.95) -> BootstrapCI:
    """CI of the accuracy ``mean_i correct_i`` (``correct``: ``N`` 0 / 1 or bool)."""
    c = _per_image("correct", correct, len(patients), binary=True).astype(np.float64)
    return bootstrap_ci(lambda idx: float(c[idx].mean()), patients, n_boot=n_boot, seed=seed,
                        level=level)


def _auroc(labels: NDArray[Any], scores: NDArray[Any]) -> Callable[[NDArray[np.intp]], float]:
    """AUROC on the images at ``idx`` (scikit-learn's ``roc_auc_score``): binary with ``N``
    scores; with ``N x K`` probabilities the one-vs-rest macro average over the ``K`` classes.
    NaN when a class is missing from the resample."""
    from sklearn.metrics import roc_auc_score

    k = 2 if scores.ndim == 1 else scores.shape[1]

    def stat(idx: NDArray[np.intp]) -> float:
        y = labels[idx]
        if np.unique(y).size < k:
            return math.nan
        if scores.ndim == 1:
            return float(roc_auc_score(y, scores[idx]))
        return float(roc_auc_score(y, scores[idx], multi_class="ovr", average="macro",
                                   labels=np.arange(k)))

    return stat


def _auroc_inputs(labels: ArrayLike, scores: ArrayLike,
                  n: int, name: str = "scores") -> tuple[NDArray[Any], NDArray[Any]]:
    y = _per_image("labels", labels, n)
    s = _per_image(name, scores, n, ndim=(1, 2)).astype(np.float64)
    k = 2 if s.ndim == 1 else s.shape[1]
    if not np.isin(y, np.arange(k)).all():
        raise ValueError(f"labels must be class indices 0..{k - 1} for {name} of shape "
                         f"{s.shape}")
    return y, s


def auroc_ci(labels: ArrayLike, scores: ArrayLike, patients: Sequence[Hashable], *,
             n_boot: int = 1000, seed: Seed = 0, level: float = 0.95) -> BootstrapCI:
    """CI of the AUROC: ``labels`` ``N`` class indices; ``scores`` ``N`` positive-class scores
    (binary) or ``N x K`` class probabilities (one-vs-rest macro AUROC). Resamples missing a
    class are skipped (``skipped``)."""
    y, s = _auroc_inputs(labels, scores, len(patients))
    return bootstrap_ci(_auroc(y, s), patients, n_boot=n_boot, seed=seed, level=level)


def paired_ci(stat_a: Statistic, stat_b: Statistic, patients: Sequence[Hashable], *,
              n_boot: int = 1000, seed: Seed = 0, level: float = 0.95) -> BootstrapCI:
    """CI of the difference ``T(A) - T(B)``, both on the same resampled patients."""
    return bootstrap_ci(lambda idx: stat_a(idx) - stat_b(idx), patients, n_boot=n_boot,
                        seed=seed, level=level)


def paired_accuracy_ci(correct_a: ArrayLike, correct_b: ArrayLike,
                       patients: Sequence[Hashable], *, n_boot: int = 1000, seed: Seed = 0,
                       level: float = 0.95) -> BootstrapCI:
    """CI of ``accuracy(A) - accuracy(B)`` on the same images."""
    a = _per_image("correct_a", correct_a, len(patients), binary=True).astype(np.float64)
    b = _per_image("correct_b", correct_b, len(patients), binary=True).astype(np.float64)
    return bootstrap_ci(lambda idx: float(a[idx].mean() - b[idx].mean()), patients,
                        n_boot=n_boot, seed=seed, level=level)


def paired_auroc_ci(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike,
                    patients: Sequence[Hashable], *, n_boot: int = 1000, seed: Seed = 0,
                    level: float = 0.95) -> BootstrapCI:
    """CI of ``AUROC(A) - AUROC(B)`` on the same images (see :func:`auroc_ci`)."""
    y, sa = _auroc_inputs(labels, scores_a, len(patients), "scores_a")
    _, sb = _auroc_inputs(labels, scores_b, len(patients), "scores_b")
    return paired_ci(_auroc(y, sa), _auroc(y, sb), patients, n_boot=n_boot, seed=seed,
                     level=level)


def mcnemar(correct_a: ArrayLike, correct_b: ArrayLike) -> McNemar:
    """McNemar's exact test (McNemar 1947; the exact binomial form): with ``n_a`` images only A
    classifies correctly and ``n_b`` only B, under H0 ``n_a ~ Binomial(n_a + n_b, 1/2)``;
    ``p = min(1, 2 sum_{i <= min(n_a, n_b)} C(n, i) / 2^n)``, computed with
    ``scipy.stats.binomtest`` (two-sided); 1 when no image is discordant. Images, not patients:
    the test assumes independent pairs."""
    from scipy.stats import binomtest

    a = _per_image("correct_a", correct_a, len(np.asarray(correct_a)), binary=True).astype(bool)
    b = _per_image("correct_b", correct_b, a.shape[0], binary=True).astype(bool)
    n_a, n_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if n_a + n_b == 0 else float(binomtest(n_a, n_a + n_b, 0.5).pvalue)
    return McNemar(n_a, n_b, p)


def verdict(diff: BootstrapCI, *, higher_is_better: bool = True,
            names: tuple[str, str] = ("A", "B")) -> str:
    """The verdict on a CI of ``T(A) - T(B)``: ``"A better"`` when the whole interval favours A,
    ``"B better"`` when it favours B, ``"no difference"`` when it contains 0 (or is undefined).
    ``higher_is_better=False`` for errors."""
    low, high = (diff.low, diff.high) if higher_is_better else (-diff.high, -diff.low)
    if low > 0:
        return f"{names[0]} better"
    if high < 0:
        return f"{names[1]} better"
    return "no difference"
