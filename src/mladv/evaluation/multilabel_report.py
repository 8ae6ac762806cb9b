"""The multilabel report card's numbers (issue 22 item 6): per-finding AUROC clean and under each
attack and noise, macro AUROC and its drop, sensitivity / specificity at the model's thresholds,
per-finding flip rates, patient-level bootstrap CIs of every macro AUROC.

The same :class:`~mladv.robustness.RobustnessOptions` and seeding as the multiclass columns
(:func:`mladv.robustness.robustness_columns`): attacks crafted white-box on the model itself
(the registry attacks are multilabel-aware: masked BCE over the known findings), batch ``b``
seeded ``derive_seed(seed, 0, b)``; noise of the ``i``-th sigma from ``derive_seed(seed,
1000 + i)``. The robustness subset is :func:`mladv.robustness.fixed_subset` (``max_images``
drawn with ``subset_seed``): a class-stratified draw does not apply to label sets.

Columns (the robustness vocabulary with ``auroc_`` for ``acc_``): ``clean`` (every image),
``clean_subset`` (the subset's clean images, what the attacks are compared with),
``auroc_<attack>`` at ``eps``, ``auroc_pgd_<E>``, on the subset; ``auroc_noise_<sigma>`` on every
image.

Example::
    >>> r = multilabel_report(model, images, targets, RobustnessOptions(pgd_eps=(2.0,)))
    >>> r["macro"]["auroc_pgd_2"], r["drop"]["auroc_pgd_2"]
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from ..attacks import make_attack
from ..augment import craft_shard, derive_seed
from ..models import predict_logits
from ..robustness import RobustnessOptions, fixed_subset
from ..tasks import Thresholds
from .multilabel import auroc_drop, flip_rates, macro_auroc, operating_point, per_finding_auroc
from .stats import bootstrap_ci


def _macro_at(logits: Tensor, targets: Tensor) -> Callable[[NDArray[np.intp]], float]:
    """The macro AUROC of the rows at given indices (a bootstrap statistic) over the findings
    whose AUROC is defined on all the rows: every resample averages the SAME findings, and one
    where any of them has a single class is undefined (NaN: the bootstrap skips and counts
    it), so a rare finding does not drop in and out of the mean."""
    defined = [k for k, a in enumerate(per_finding_auroc(logits, targets)) if not math.isnan(a)]

    def stat(rows: NDArray[np.intp]) -> float:
        r = torch.as_tensor(rows)
        aurocs = per_finding_auroc(logits[r][:, defined], targets[r][:, defined])
        return math.nan if any(math.isnan(a) for a in aurocs) or not aurocs else \
            sum(aurocs) / len(aurocs)
    return stat


def multilabel_report(model: nn.Module, images: Tensor, targets: Tensor,
                      opts: RobustnessOptions | None = None, *, seed: int = 0,
                      patients: Sequence[str] | None = None, thresholds: Thresholds = None
                      ) -> dict[str, Any]:
    """Every number of the module docstring for ``model`` on ``images`` ``N x C x H x W`` in
    [0, 1] with ``targets`` ``N x K`` (1 / 0 / NaN unknown); ``thresholds``: the decision
    thresholds (default: the model's ``thresholds`` attribute, else 0.5 per finding).

    Returns ``{"n", "n_robust", "auroc": {column: K floats}, "macro": {column: float},
    "n_defined": {column: int}, "drop": {column: macro AUROC clean minus attacked, on the same
    images}, "operating_point": {"sensitivity", "specificity", "positives", "negatives"} at the
    thresholds (clean, every image), "flip_rate": {column: K floats}, "ci": {column: {"low",
    "high", "n", "n_patients"}} (macro AUROC, with ``opts.bootstrap``), "sizes"}``."""
    opts = opts or RobustnessOptions()
    opts.check()
    n = int(images.shape[0])
    if targets.dim() != 2 or targets.shape[0] != n:
        raise ValueError(f"targets must be N x K for {n} images, got {tuple(targets.shape)}")
    thr = thresholds if thresholds is not None else getattr(model, "thresholds", None)
    targets = targets.cpu().float()
    clean = predict_logits(model, images).double()
    sub = fixed_subset(n, opts.max_images, opts.subset_seed)
    x, t = images[sub], targets[sub]
    logits: dict[str, tuple[Tensor, Tensor]] = {"clean": (torch.arange(n), clean),
                                                "clean_subset": (sub, clean[sub])}
    runs = [(f"auroc_{a}", a, opts.eps, opts.mladv_options if a == "mladv" else opts.pgd_options)
            for a in opts.attacks]
    runs += [(f"auroc_pgd_{e:g}", "pgd", e, opts.pgd_options) for e in opts.pgd_eps]
    for key, name, eps, options in runs:
        atk = make_attack(name, model, **{**options, "eps": eps / 255, "seed": seed,
                                          "task": "multilabel"})  # whatever model.task says
        adv = craft_shard(atk, x, t, seed=seed, shard=0, batch_size=opts.batch_size)
        logits[key] = sub, predict_logits(model, adv).double()
    for i, sigma in enumerate(opts.noise_sigmas):
        gen = torch.Generator().manual_seed(derive_seed(seed, 1000 + i))
        noisy = (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 1)
        logits[f"auroc_noise_{sigma:g}"] = torch.arange(n), predict_logits(model, noisy).double()
    auroc = {k: per_finding_auroc(z, targets[idx]) for k, (idx, z) in logits.items()}
    macro = {k: macro_auroc(v) for k, v in auroc.items()}
    op = operating_point(clean, targets, thr)
    report: dict[str, Any] = {
        "n": n, "n_robust": int(sub.numel()), "auroc": auroc,
        "macro": {k: v[0] for k, v in macro.items()},
        "n_defined": {k: v[1] for k, v in macro.items()},
        "drop": {k: auroc_drop(auroc["clean" if k.startswith("auroc_noise") else
                                     "clean_subset"], v)
                 for k, v in auroc.items() if k not in ("clean", "clean_subset")},
        "operating_point": {"sensitivity": op.sensitivity, "specificity": op.specificity,
                            "positives": op.positives, "negatives": op.negatives},
        "flip_rate": {k: flip_rates(clean[idx], z, thr) for k, (idx, z) in logits.items()
                      if k not in ("clean", "clean_subset")},
        "sizes": {k: int(idx.numel()) for k, (idx, _) in logits.items()}}
    if opts.bootstrap:
        ids = list(patients) if patients is not None else [str(i) for i in range(n)]
        if len(ids) != n:
            raise ValueError(f"patients must hold one id per image: {len(ids)} for {n}")
        report["ci"] = {}
        for k, (idx, z) in logits.items():
            ci = bootstrap_ci(_macro_at(z, targets[idx]), [ids[int(i)] for i in idx],
                              n_boot=opts.bootstrap, seed=seed, level=opts.ci_level)
            report["ci"][k] = {"low": ci.low, "high": ci.high, "n": ci.n_images,
                               "n_patients": ci.n_patients}
    return report

