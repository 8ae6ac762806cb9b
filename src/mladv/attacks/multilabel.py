"""The multilabel pieces the attacks share (:mod:`mladv.tasks` for the task itself).

A multilabel model has ``K`` findings, one sigmoid each; labels are ``N x K`` floats in {0, 1}
with NaN = unknown, and every quantity here ignores the unknown entries. The decision of finding
``k`` is ``z_k >= c_k`` with ``c_k = logit(t_k)`` (``t_k`` = 0.5 by default, so ``c_k = 0``).

- :func:`per_image_bce`: each image's mean binary cross-entropy over its known findings (the
  multilabel analogue of the per-sample cross-entropy);
- :func:`wrong_findings` / :func:`fooled`: the success test of an untargeted attack: a known
  finding whose decision disagrees with its label (for an image the model had right, a flip);
- :func:`finding_margins`: the signed logit distance of each finding to its threshold, positive
  when the decision agrees with the label (GAMA's per-finding margin);
- :func:`bernoulli_kl`: the per-finding Bernoulli KL divergence (the chain's ``loss="kl"``);
- :func:`nearest_label_partners`: MLAdv's style partner, the batch image with the nearest label
  set.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..tasks import Thresholds, known_mask, masked_bce, threshold_logits


def per_image_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """``L_i = sum_k m_ik l_ik / max(1, sum_k m_ik)``: the mean BCE over image ``i``'s known
    findings (``l_ik`` and ``m_ik`` as in :func:`mladv.tasks.masked_bce`; 0 with a zero gradient
    for an image with none known). Shape: logits and labels ``N x K`` -> ``N``."""
    per_entry = masked_bce(logits.float(), labels, reduction="none")
    return per_entry.sum(1) / known_mask(labels).sum(1).clamp(min=1).to(per_entry.dtype)


def wrong_findings(logits: Tensor, labels: Tensor, thresholds: Thresholds = None) -> Tensor:
    """``N x K`` bool: finding ``k`` is known and its decision ``z_ik >= logit(t_k)`` differs
    from ``y_ik == 1``."""
    cut = threshold_logits(thresholds, logits.shape[1], like=logits.detach())
    decision = logits.detach() >= cut
    return known_mask(labels) & (decision != (labels == 1))


def fooled(logits: Tensor, labels: Tensor, thresholds: Thresholds = None,
           targets: Tensor | None = None) -> Tensor:
    """The success test of a multilabel attack (``N`` bool). Untargeted: ANY known finding's
    decision disagrees with its label (at ``thresholds``, 0.5 by default). Targeted
    (``targets`` ``N x K``, NaN = free): EVERY known target entry is reached (an image with no
    known target entry counts as reached)."""
    if targets is None:
        return wrong_findings(logits, labels, thresholds).any(1)
    missed = wrong_findings(logits, targets, thresholds)
    return ~missed.any(1)


def finding_margins(logits: Tensor, labels: Tensor, thresholds: Thresholds = None) -> Tensor:
    """GAMA's per-finding margin ``m_ik = s_ik (z_ik - logit(t_k))`` with ``s_ik = +1`` for
    ``y_ik = 1`` and ``-1`` for ``y_ik = 0``: positive while the decision agrees with the label,
    negative once the finding is pushed across its threshold (the attack lowers ``z_k`` of a
    present finding and raises it for an absent one). ``+inf`` at unknown entries (never the
    weakest finding). Shape: ``N x K`` -> ``N x K``."""
    cut = threshold_logits(thresholds, logits.shape[1], like=logits.detach())
    known = known_mask(labels)
    sign = torch.where(labels == 1, 1.0, -1.0).to(logits.dtype)
    margin = sign * (logits - cut)
    return torch.where(known, margin, torch.full_like(margin, float("inf")))


def bernoulli_kl(clean_logits: Tensor, logits: Tensor, known: Tensor | None = None) -> Tensor:
    """``sum_k KL(Bern(p_k) || Bern(q_k))`` per image with ``p = sigmoid(clean_logits)`` (fixed)
    and ``q = sigmoid(logits)``, over the findings where ``known`` is True (all by default)::

        KL = p (log p - log q) + (1 - p) (log (1 - p) - log (1 - q))

    computed with ``logsigmoid`` (``log(1 - sigmoid(z)) = logsigmoid(-z)``) so that it does not
    saturate. Shape: ``N x K`` -> ``N``."""
    lp, lq = torch.nn.functional.logsigmoid(clean_logits), torch.nn.functional.logsigmoid(logits)
    lp1, lq1 = (torch.nn.functional.logsigmoid(-clean_logits),
                torch.nn.functional.logsigmoid(-logits))
    p = lp.exp()
    kl = p * (lp - lq) + (1 - p) * (lp1 - lq1)
    if known is not None:
        kl = torch.where(known, kl, torch.zeros_like(kl))
    return kl.sum(1)


def nearest_label_partners(labels: Tensor) -> Tensor:
    """MLAdv's multilabel style partner: for each image ``i``, the index ``j != i`` of the batch
    image with the nearest label set, the Hamming distance counted over the findings known in
    BOTH (``d_ij = sum_k [y_ik known, y_jk known, y_ik != y_jk]``; a pair with no finding known
    in both is at distance 0: nothing tells them apart), ties to the lowest index. An image alone
    in its batch is its own partner. Deterministic (no draw). Shape: ``N x K`` -> ``N`` int64."""
    n = labels.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.long, device=labels.device)
    y = labels.detach().cpu().double()
    known = known_mask(y).double()
    ones = torch.where(known.bool(), y, torch.zeros_like(y))
    zeros = known - ones
    # disagreements where both known: i has 1 and j has 0, or i has 0 and j has 1
    dist = ones @ zeros.T + zeros @ ones.T
    dist.fill_diagonal_(float("inf"))
    return dist.argmin(1).to(labels.device)  # argmin returns the first minimum: lowest index
