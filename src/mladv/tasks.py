"""The task a classifier solves, and what follows from it: the label checks, the loss an attack
ascends, the decision rule and the flip counts. The ground floor: imports only torch.

Two tasks:

- ``multiclass``: one softmax over ``K`` mutually exclusive classes. Targets are ``N`` int64
  class indices in ``[0, K)``; the attack objective is the mean cross-entropy; the decision is
  ``argmax_k z_k``.
- ``multilabel``: ``K`` independent findings, one sigmoid each (NIH ChestX-ray14, CheXpert,
  torchxrayvision). Targets are ``N x K`` floats in {0, 1} with ``NaN`` = unknown (CheXpert's
  "uncertain", a finding a data set does not label); the objective is the binary cross-entropy
  over the *known* entries (:func:`masked_bce`); the decision for finding ``k`` is
  ``sigmoid(z_k) >= t_k`` (``t_k`` = 0.5 unless the model brings calibrated thresholds).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

Task = Literal["multiclass", "multilabel"]
TASKS: tuple[str, ...] = get_args(Task)
Objective = Callable[[Tensor, Tensor], Tensor]
Thresholds = float | Sequence[float] | Tensor | None
DEFAULT_THRESHOLD = 0.5


def check_task(task: str) -> Task:
    """``task`` as a :data:`Task`; ``ValueError`` naming the valid ones otherwise."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    return cast(Task, task)


def check_targets(targets: Tensor, task: str, n_outputs: int) -> Tensor:
    """Refuse targets that do not fit ``task`` and a model with ``n_outputs`` logits, in one
    ``ValueError`` line naming ``targets``; return them unchanged otherwise.

    - multiclass: shape ``N``, dtype int64, values in ``[0, n_outputs)``;
    - multilabel: shape ``N x n_outputs``, a float dtype, values in {0, 1} or NaN (unknown).
    """
    task = check_task(task)
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be at least 1, got {n_outputs}")
    shape = tuple(targets.shape)
    if task == "multiclass":
        if targets.dim() != 1:
            hint = (" (N x K targets are multilabel: pass task='multilabel')"
                    if targets.dim() == 2 else "")
            raise ValueError(f"targets for a multiclass task must have shape N, got {shape}{hint}")
        if targets.dtype != torch.int64:
            raise ValueError(f"targets for a multiclass task must be int64 class indices, got "
                             f"{targets.dtype} (use targets.long())")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_outputs):
            raise ValueError(f"targets must be class indices in [0, {n_outputs}), got values in "
                             f"[{int(targets.min())}, {int(targets.max())}]")
        return targets
    if targets.dim() != 2 or targets.shape[1] != n_outputs:
        raise ValueError(f"targets for a multilabel task must have shape N x {n_outputs} "
                         f"(one column per finding), got {shape}")
    if not targets.is_floating_point():
        raise ValueError(f"targets for a multilabel task must be float (0, 1, NaN = unknown), "
                         f"got {targets.dtype}")
    known = targets[~torch.isnan(targets)]
    bad = known[(known != 0) & (known != 1)]
    if bad.numel():
        raise ValueError(f"targets for a multilabel task must be 0, 1 or NaN (unknown), got "
                         f"{float(bad[0]):g}")
    return targets


def known_mask(targets: Tensor) -> Tensor:
    """``True`` where a multilabel target is known (not NaN). Shape as ``targets``."""
    return ~torch.isnan(targets)


def masked_bce(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy with logits over the known entries only.

    With ``m_ik = 1`` where ``y_ik`` is known (not NaN), else 0, and the stable form of
    ``-[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]``::

        l_ik = max(z_ik, 0) - z_ik y_ik + log(1 + exp(-|z_ik|))
        mean:  L = sum_ik m_ik l_ik / max(1, sum_ik m_ik)
        sum:   L = sum_ik m_ik l_ik
        none:  m_ik l_ik                       (N x K; 0 at unknown entries)

    An unknown entry contributes nothing to ``L`` and gets a gradient of exactly 0 (its target
    is replaced by 0 *before* the loss and its term selected away with ``where``, so no
    ``NaN * 0`` reaches the backward pass); a batch with no known entry gives ``L = 0`` with a
    zero gradient. ``l_ik`` itself is :func:`torch.nn.functional.binary_cross_entropy_with_logits`.

    Shape: ``logits`` and ``targets`` ``N x K``; the result a scalar (``N x K`` for ``none``).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must "
                         "have the same shape N x K")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    mask = known_mask(targets)
    safe = torch.where(mask, targets, torch.zeros_like(targets)).to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(logits, safe, reduction="none")
    per_entry = torch.where(mask, per_entry, torch.zeros_like(per_entry))
    if reduction == "none":
        return per_entry
    total = per_entry.sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1).to(total.dtype)


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean softmax cross-entropy ``-1/N sum_i log softmax(z_i)_{y_i}``."""
    return F.cross_entropy(logits, targets)


def attack_objective(task: str) -> Objective:
    """The loss an untargeted attack ascends for ``task``: ``(logits, targets) -> scalar``.

    multiclass: mean cross-entropy (logits ``N x K``, targets ``N`` int64);
    multilabel: :func:`masked_bce` with ``mean`` (logits and targets ``N x K``, NaN unknown).
    """
    return _cross_entropy if check_task(task) == "multiclass" else masked_bce


def threshold_logits(thresholds: Thresholds, n_outputs: int, *,
                     like: Tensor | None = None) -> Tensor:
    """Probability thresholds ``t_k`` as logit thresholds ``logit(t_k) = log(t_k / (1 - t_k))``
    (``K`` float, on ``like``'s device and dtype). ``None`` -> 0.5 for every finding (logit 0);
    a number -> that threshold for every finding; else one per finding, each in (0, 1)."""
    if thresholds is None:
        values = [DEFAULT_THRESHOLD] * n_outputs
    elif isinstance(thresholds, (int, float)):
        values = [float(thresholds)] * n_outputs
    else:
        values = [float(t) for t in (thresholds.tolist() if isinstance(thresholds, Tensor)
                                     else thresholds)]
    if len(values) != n_outputs:
        raise ValueError(f"thresholds: {len(values)} values for {n_outputs} findings")
    bad = [t for t in values if not 0.0 < t < 1.0]
    if bad:
        raise ValueError(f"thresholds must be probabilities in (0, 1), got {bad[0]:g}")
    out = torch.tensor([math.log(t / (1.0 - t)) for t in values], dtype=torch.float64)
    if like is not None:
        out = out.to(device=like.device, dtype=like.dtype if like.is_floating_point()
                     else torch.float32)
    return out


def decide(logits: Tensor, task: str, thresholds: Thresholds = None) -> Tensor:
    """The model's decision.

    multiclass: ``argmax_k z_ik`` (``N`` int64; ``thresholds`` must be ``None``);
    multilabel: ``sigmoid(z_ik) >= t_k``, computed as ``z_ik >= logit(t_k)`` so that it does not
    saturate (``N x K`` bool; ``t_k`` = 0.5 by default, see :func:`threshold_logits`).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape N x K, got {tuple(logits.shape)}")
    if check_task(task) == "multiclass":
        if thresholds is not None:
            raise ValueError("thresholds apply to a multilabel task only (multiclass decides "
                             "by argmax)")
        return logits.argmax(dim=1)
    cut = threshold_logits(thresholds, logits.shape[1], like=logits.detach())
    return logits.detach() >= cut


def correct(logits: Tensor, targets: Tensor, task: str, thresholds: Thresholds = None
            ) -> Tensor:
    """Whether each decision matches its target.

    multiclass: ``N`` bool, ``argmax_k z_ik == y_i``; multilabel: ``N x K`` bool,
    ``(z_ik >= logit(t_k)) == (y_ik == 1)``, ``False`` where ``y_ik`` is unknown (combine with
    :func:`known_mask` to count only known entries).
    """
    decision = decide(logits, task, thresholds)
    if task == "multiclass":
        return decision == targets
    return (decision == (targets == 1)) & known_mask(targets)


def flips(clean_logits: Tensor, adv_logits: Tensor, task: str, thresholds: Thresholds = None
          ) -> Tensor:
    """Where the decision changed between clean and adversarial logits: ``N`` bool (multiclass)
    or ``N x K`` bool, one per finding (multilabel). Label-free."""
    if clean_logits.shape != adv_logits.shape:
        raise ValueError(f"clean logits {tuple(clean_logits.shape)} and adversarial logits "
                         f"{tuple(adv_logits.shape)} differ in shape")
    return decide(clean_logits, task, thresholds) != decide(adv_logits, task, thresholds)


def flip_rate(clean_logits: Tensor, adv_logits: Tensor, task: str, thresholds: Thresholds = None
              ) -> Tensor:
    """The share of images whose decision changed: a scalar (multiclass) or ``K`` floats, one
    per finding (multilabel): ``1/N sum_i [d_k(z_i) != d_k(z'_i)]``."""
    changed = flips(clean_logits, adv_logits, task, thresholds).float()
    return changed.mean() if task == "multiclass" else changed.mean(dim=0)
