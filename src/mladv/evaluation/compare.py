"""A/B: two models on the same images, column by column (``mladv evaluate A.pt B.pt DATA``).

Both models are scored through :func:`mladv.robustness.robustness_outcomes` with one
:class:`~mladv.robustness.RobustnessOptions` and one seed, so every column holds the same images
for both (the subsets depend on the labels only). Per column (clean ``accuracy``, ``auroc`` and
every accuracy column):

- ``a``, ``b``: each model's value; ``diff``: ``A - B``;
- ``low`` / ``high``: the patient-level bootstrap CI of ``A - B`` with both models' statistics on
  the **same** resampled patients (:func:`mladv.evaluation.stats.paired_accuracy_ci`,
  :func:`~mladv.evaluation.stats.paired_auroc_ci`; ``opts.bootstrap`` resamples at
  ``opts.ci_level``, seed ``seed``);
- accuracies: McNemar's exact test on the paired per-image outcomes (``a_only``, ``b_only``,
  ``p_mcnemar``; :func:`~mladv.evaluation.stats.mcnemar`);
- ``verdict``: ``"A better"`` / ``"B better"`` when the whole CI lies on one side of 0, else
  ``"no difference"`` (:func:`~mladv.evaluation.stats.verdict`).

Example::
    >>> ab = compare_models(model_a, model_b, images, labels, opts, seed=0, patients=groups)
    >>> ab["acc_pgd_2"]["verdict"]
    'A better'
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..models import predict_logits
from ..robustness import RobustnessOptions, robustness_outcomes
from .stats import auroc_ci, mcnemar, paired_accuracy_ci, paired_auroc_ci, verdict


def _scores(probs: Tensor) -> Tensor:
    """AUROC's scores: the positive class' probability (2 classes) or all ``N x K``."""
    return probs[:, 1] if probs.shape[1] == 2 else probs


def compare_models(model_a: nn.Module, model_b: nn.Module, images: Tensor, labels: Tensor,
                   opts: RobustnessOptions, *, seed: int = 0, n_classes: int | None = None,
                   patients: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """The paired comparison of the module docstring for ``images`` ``N x C x H x W`` in
    [0, 1] with ``labels`` ``N`` (``patients``: one id per image; None: each image its own).
    ``opts.bootstrap`` must be >= 1 (the CIs are the comparison)."""
    opts.check()
    if opts.bootstrap < 1:
        raise ValueError("an A/B comparison needs --bootstrap >= 1 (its CIs are the verdict)")
    n = int(images.shape[0])
    ids = list(patients) if patients is not None else [str(i) for i in range(n)]
    if len(ids) != n:
        raise ValueError(f"patients must hold one id per image: {len(ids)} for {n}")
    labels = labels.cpu()
    boot: dict[str, Any] = {"n_boot": opts.bootstrap, "seed": seed, "level": opts.ci_level}
    probs = [predict_logits(m, images).softmax(1) for m in (model_a, model_b)]
    every = torch.arange(n)
    outcomes = [{"accuracy": (every, p.argmax(1) == labels),
                 **robustness_outcomes(m, images, labels, opts, seed=seed, n_classes=n_classes)}
                for m, p in zip((model_a, model_b), probs)]
    out: dict[str, dict[str, Any]] = {}
    if len(torch.unique(labels)) == probs[0].shape[1]:
        ci = paired_auroc_ci(labels.numpy(), _scores(probs[0]).double().numpy(),
                             _scores(probs[1]).double().numpy(), ids, **boot)
        a_auroc, b_auroc = (auroc_ci(labels.numpy(), _scores(p).double().numpy(), ids,
                                     n_boot=1, seed=seed).estimate for p in probs)
        out["auroc"] = {"a": a_auroc, "b": b_auroc, "diff": ci.estimate, "low": ci.low,
                        "high": ci.high, "verdict": verdict(ci), "n": n}
    for key, (idx, ca) in outcomes[0].items():
        cb = outcomes[1][key][1]
        pats = [ids[int(i)] for i in idx]
        if not pats:
            continue
        ci = paired_accuracy_ci(ca.numpy(), cb.numpy(), pats, **boot)
        test = mcnemar(ca.numpy(), cb.numpy())
        out[key] = {"a": float(ca.float().mean()), "b": float(cb.float().mean()),
                    "diff": ci.estimate, "low": ci.low, "high": ci.high,
                    "a_only": test.a_only, "b_only": test.b_only, "p_mcnemar": test.p_value,
                    "verdict": verdict(ci), "n": len(pats)}
    return out
