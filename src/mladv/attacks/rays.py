"""RayS: a hard-label ray-search attack (Chen & Gu, KDD 2020)."""
from __future__ import annotations

import math
from typing import Unpack

import torch
from torch import Tensor, nn

from .base import Attack, ComputeOptions
from .multilabel import fooled


class RayS(Attack):
    r"""RayS (Chen & Gu, "RayS: A Ray Searching Method for Hard-label Adversarial Attack",
    KDD 2020, https://arxiv.org/abs/2006.12792). Uses only the model's predicted label.

    It searches the sign directions ``s`` in {-1, +1}^(C H W) for the one with the smallest
    radius ``r(s) = min{ d : f(clip(x + d s)) != y }``, which is the L-infinity norm of the
    perturbation along that ray. Starting from ``s = 1``, it flips blocks of ``s`` (1 block,
    then 2 halves, then 4 quarters, ...); for each flip one query checks whether the new
    direction is adversarial at the current best radius ``r_t`` (the paper's fast check) and,
    only if so, a binary search over ``d`` in ``[0, r_t]`` finds its radius (to ``tol``).
    A sample stops when ``r_t <= eps`` (success; early stopping) or when its queries reach the
    budget. Every model evaluation of a sample counts as one query; a first query on the clean
    image marks samples the model already gets wrong (radius 0).

    The returned image is ``clip(x + r_t s_t)`` for successful samples (so ``||delta||_inf <=
    eps``) and ``clip(x + eps s_t)``, the best direction at the budget, for the others.
    After each call, ``last_queries`` (``N``, int64) holds the queries each sample used,
    ``last_radius`` (``N``) the L-infinity radius found (inf if none) and ``last_success``
    (``N``, bool) whether it is ``<= eps``.

    Multilabel models (labels ``N x K``, NaN = unknown): the hard-label decision is the set of
    findings at or above their thresholds (0.5 unless the model carries ``thresholds``), and a
    point is adversarial when ANY known finding crosses its threshold, i.e. its decision
    disagrees with its label (:func:`~mladv.attacks.multilabel.fooled`); targeted, when every
    known entry of the ``N x K`` ``target_labels`` is reached.

    Args:
        model: classifier taking ``N x C x H x W`` images in [0, 1], returning logits (only the
            arg-max is used; multilabel, only the decisions at the thresholds).
        eps: L-infinity budget in [0, 1] units; success iff the radius found is ``<= eps``.
        budget: query budget per image (10,000 in the paper); must be >= 1.
        tol: binary-search resolution of the radius, in [0, 1] units.
        targeted: reach ``target_labels`` (or a random other class drawn with ``seed``).
        seed: used only for random targets (the search itself is deterministic).

    Shape:
        images ``N x C x H x W`` in [0, 1], labels ``N`` -> ``N x C x H x W``.

    Examples::
        >>> atk = RayS(model, eps=8/255, budget=10_000)
        >>> x_adv = atk(images, labels)
        >>> atk.last_queries.float().mean()
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, budget: int = 10_000,
                 tol: float = 1e-4, targeted: bool = False, seed: int | None = None,
                 **compute: Unpack[ComputeOptions]) -> None:
        super().__init__(model, eps=eps, targeted=targeted, seed=seed, **compute)
        if int(budget) != budget or budget < 1:
            raise ValueError(f"RayS budget must be a positive number of queries, got {budget}")
        if not 0 < tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {tol}")
        self.budget = int(budget)
        self.tol = float(tol)
        self.last_queries = torch.zeros(0, dtype=torch.long)
        self.last_radius = torch.zeros(0)
        self.last_success = torch.zeros(0, dtype=torch.bool)

    # -- queries -----------------------------------------------------------------------------
    @torch.no_grad()
    def _is_adv(self, x: Tensor, idx: Tensor, goal: Tensor, queries: Tensor) -> Tensor:
        """One query for each sample in ``idx``: is ``x`` (``len(idx) x C x H x W``) adversarial?
        Multilabel: any known finding's decision disagrees with its label (targeted: every known
        entry of the target set reached), at the thresholds."""
        queries[idx] += 1
        if self.multilabel:
            logits = self.model(x)
            if self.targeted:
                return fooled(logits, goal[idx], self.thresholds, targets=goal[idx])
            return fooled(logits, goal[idx], self.thresholds)
        pred = self.model(x).argmax(1)
        hit: Tensor = pred == goal[idx] if self.targeted else pred != goal[idx]
        return hit

    @staticmethod
    def _point(images: Tensor, signs: Tensor, radius: Tensor) -> Tensor:
        """``clip(x + d s)``, with ``d`` capped at 1 (beyond that clipping changes nothing)."""
        d = radius.clamp(max=1.0).view(-1, *[1] * (images.dim() - 1))
        return (images + d * signs).clamp(0.0, 1.0)

    def _search(self, images: Tensor, goal: Tensor, attempt: Tensor, idx: Tensor,
                radius: Tensor, signs: Tensor, queries: Tensor) -> None:
        """Fast check of ``attempt`` at the current radius, then binary search on the samples
        where it is adversarial; updates ``radius`` and ``signs`` in place where it is shorter.
        Never queries a sample whose budget is spent."""
        hit = self._is_adv(self._point(images[idx], attempt[idx], radius[idx]), idx, goal, queries)
        idx = idx[hit]
        if idx.numel() == 0:
            return
        lo = torch.zeros_like(radius[idx])
        hi = radius[idx].clamp(max=1.0)
        active = torch.ones_like(idx, dtype=torch.bool)
        while True:
            active &= ((hi - lo) > self.tol) & (queries[idx] < self.budget)
            # success-only search: once the radius is within eps the sample is done
            active &= hi > self.eps
            if not active.any():
                break
            sub = idx[active]
            mid = (lo[active] + hi[active]) / 2
            ok = self._is_adv(self._point(images[sub], attempt[sub], mid), sub, goal, queries)
            where = active.nonzero().flatten()
            hi[where[ok]] = mid[ok]
            lo[where[~ok]] = mid[~ok]
        shorter = hi < radius[idx]
        radius[idx[shorter]] = hi[shorter]
        signs[idx[shorter]] = attempt[idx[shorter]]

    # -- the attack --------------------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor,
                target_labels: Tensor | None = None) -> Tensor:
        n = images.shape[0]
        dev = images.device
        goal = labels
        if self.targeted:
            num_classes = self.model(images[:1]).shape[1]
            goal = (target_labels if target_labels is not None
                    else self.random_targets(labels, num_classes, self.generator()))
        queries = torch.zeros(n, dtype=torch.long, device=dev)
        radius = torch.full((n,), float("inf"), device=dev)
        signs = torch.ones_like(images)
        everyone = torch.arange(n, device=dev)
        already = self._is_adv(images, everyone, goal, queries)
        radius[already] = 0.0

        dim = images[0].numel()
        max_level = math.ceil(math.log2(dim)) if dim > 1 else 0
        level, block = 0, 0
        while True:
            idx = ((radius > self.eps) & (queries < self.budget)).nonzero().flatten()
            if idx.numel() == 0:
                break
            size = math.ceil(dim / 2 ** level)
            start, end = block * size, min(dim, (block + 1) * size)
            attempt = signs.clone().view(n, dim)
            attempt[idx, start:end] *= -1
            self._search(images, goal, attempt.view_as(images), idx, radius, signs, queries)
            block += 1
            if block == 2 ** level or end >= dim:
                level, block = min(level + 1, max_level), 0

        success = radius <= self.eps
        self.last_queries = queries.cpu()
        self.last_radius = radius.cpu()
        self.last_success = success.cpu()
        final_radius = torch.where(success, radius, torch.full_like(radius, self.eps))
        return self._point(images, signs, final_radius)
