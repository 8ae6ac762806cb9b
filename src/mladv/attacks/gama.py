"""GAMA-PGD: Guided Adversarial Margin Attack (Sriramanan et al., NeurIPS 2020)."""
from __future__ import annotations

from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import Thresholds, known_mask
from .base import Attack, ComputeOptions
from .multilabel import finding_margins


def margin_on_softmax(probs: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """The margin GAMA ascends, on softmax probabilities ``p`` (not logits).

    Untargeted: ``max_{j != y} p_j - p_y``; targeted: ``p_t - max_{j != t} p_j``.
    The attack has succeeded on a sample exactly when its margin is > 0.

    Shape: probs ``N x K``, labels ``N`` (targets ``N``) -> ``N``.
    """
    ref = labels if targets is None else targets
    ref_mask = F.one_hot(ref, probs.shape[1]).bool()
    p_ref = probs.gather(1, ref[:, None]).squeeze(1)
    p_other = probs.masked_fill(ref_mask, float("-inf")).amax(1)
    return p_other - p_ref if targets is None else p_ref - p_other


def multilabel_margin(logits: Tensor, labels: Tensor, thresholds: Thresholds = None,
                      targets: Tensor | None = None) -> Tensor:
    """GAMA's margin for a multilabel model, on logits: with the per-finding margins
    ``m_ik = s_ik (z_ik - logit(t_k))`` (:func:`~mladv.attacks.multilabel.finding_margins`;
    ``s = +1`` for a present finding, ``-1`` for an absent one), untargeted
    ``max_{k known} -m_ik`` (> 0 exactly when some known finding is across its threshold, the
    success test); targeted, on the targets, ``min_{k known} m_ik`` (> 0 exactly when every
    known target entry is reached). An image with no known finding gets 0, a constant.

    Shape: logits, labels (targets) ``N x K`` -> ``N``."""
    if targets is None:
        m = finding_margins(logits, labels, thresholds)
        out = (-m).amax(1)
    else:
        m = finding_margins(logits, targets, thresholds)
        out = m.amin(1)
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


class GAMA(Attack):
    r"""GAMA-PGD (Sriramanan, Addepalli, Baburaj & Babu, "Guided Adversarial Attack for Evaluating
    and Enhancing Adversarial Defenses", NeurIPS 2020, https://arxiv.org/abs/2011.14969).

    Maximises, with signed-gradient steps inside the L-infinity ball of radius ``eps``,

        ``L_t(x~) = max_{j != y} p_j(x~) - p_y(x~) + lambda_t * ||p(x_0) - p(x~)||_2^2``

    where ``p`` is the softmax of the logits and ``x_0`` the random start (``x + eps * s``,
    ``s`` uniform in {-1, +1} per pixel, as in the authors' code). The relaxation weight
    ``lambda_t`` falls linearly from ``lam`` (50) to 0 over the first ``relax_fraction`` (25 %) of
    the steps; the step size starts at ``2 * eps`` and is divided by ``drop`` (10) at
    ``drop_at`` (60 % and 85 %) of the steps. With the default 100 steps that is the paper's
    schedule: lambda reaches 0 at step 25, the step falls at steps 60 and 85; fewer steps scale
    the schedule proportionally. The image returned per sample is the iterate with the largest
    margin seen (the final one when none succeeded earlier).

    Any number of classes ``K >= 2``. Targeted mode ascends ``p_t - max_{j != t} p_j`` instead.

    Multilabel models (labels ``N x K``, NaN = unknown): the margin is per finding, on logits:
    the margin of finding ``k`` is its logit's signed distance to its threshold,
    ``m_k = s_k (z_k - logit(t_k))`` (for ``y_k = 1`` the attack pushes ``z_k - logit(t_k)``
    down, for ``y_k = 0`` up), and GAMA ascends ``max_{k known} -m_k``
    (:func:`multilabel_margin`), > 0 once any known finding crosses its threshold (0.5 unless
    the model carries ``thresholds``); ``p`` in the relaxation term is the per-finding
    ``sigmoid(z)`` over the known findings.

    Args:
        model: classifier taking ``N x C x H x W`` images in [0, 1], returning logits.
        eps: L-infinity budget in [0, 1] units.
        steps: number of iterations (100 in the paper).
        lam: initial weight of the relaxation term (50 in the paper).
        relax_fraction: share of the steps over which lambda falls to 0 (0.25).
        step_scale: the initial step is ``step_scale * eps`` (2).
        drop_at: fractions of the steps at which the step is divided by ``drop``.
        drop: step-size divisor (10).
        targeted, seed: see :class:`~mladv.attacks.Attack`; ``seed`` draws the random start.

    Shape:
        images ``N x C x H x W`` in [0, 1], labels ``N`` -> ``N x C x H x W``.

    Examples::
        >>> atk = GAMA(model, eps=8/255)           # GAMA-PGD-100
        >>> x_adv = atk(images, labels)
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, steps: int = 100,
                 lam: float = 50.0, relax_fraction: float = 0.25, step_scale: float = 2.0,
                 drop_at: tuple[float, ...] = (0.6, 0.85), drop: float = 10.0,
                 targeted: bool = False, seed: int | None = None,
                 **compute: Unpack[ComputeOptions]) -> None:
        super().__init__(model, eps=eps, targeted=targeted, seed=seed, **compute)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if lam < 0 or not 0 < relax_fraction <= 1:
            raise ValueError(f"need lam >= 0 and relax_fraction in (0, 1], "
                             f"got {lam}, {relax_fraction}")
        if drop <= 0 or step_scale <= 0:
            raise ValueError(f"need drop > 0 and step_scale > 0, got {drop}, {step_scale}")
        self.steps = steps
        self.lam = lam
        self.relax_steps = max(1, round(relax_fraction * steps))
        self.step_scale = step_scale
        self.drop_steps = sorted({round(f * steps) for f in drop_at})
        self.drop = drop

    def lambda_at(self, t: int) -> float:
        """``lambda_t = lam * max(0, 1 - t / relax_steps)``: 50 at t = 0, 0 from t = 25 on."""
        return self.lam * max(0.0, 1.0 - t / self.relax_steps)

    def step_at(self, t: int) -> float:
        """``2 eps / drop^k`` with k the number of drop points <= t."""
        k = sum(t >= s for s in self.drop_steps)
        return self.step_scale * self.eps / self.drop ** k

    def _probs(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The ``p`` of the relaxation term: the softmax (multiclass); the per-finding sigmoid,
        0 at unknown findings (multilabel). ``N x K``."""
        if not self.multilabel:
            return F.softmax(logits, dim=1)
        p = torch.sigmoid(logits)
        return torch.where(known_mask(labels), p, torch.zeros_like(p))

    def forward(self, images: Tensor, labels: Tensor,
                target_labels: Tensor | None = None) -> Tensor:
        gen = self.generator()
        sign = torch.randint(0, 2, images.shape, generator=gen).to(images) * 2 - 1
        x = (images + self.eps * sign).clamp(0.0, 1.0)
        with torch.no_grad():
            p0 = self._probs(self.model(x).to(images.dtype), labels)  # bf16 logits: float32
        targets = None
        if self.targeted:
            targets = (target_labels if target_labels is not None
                       else self.random_targets(labels, p0.shape[1], gen))
        best = x.clone()
        best_margin = torch.full((images.shape[0],), float("-inf"), device=images.device,
                                 dtype=images.dtype)
        for t in range(self.steps + 1):
            x = x.detach().requires_grad_(True)
            logits = self.model(x).to(images.dtype)
            p = self._probs(logits, labels)
            margin = (multilabel_margin(logits, labels, self.thresholds, targets)
                      if self.multilabel else margin_on_softmax(p, labels, targets))
            better = margin.detach() > best_margin
            best[better], best_margin[better] = x.detach()[better], margin.detach()[better]
            if t == self.steps:  # the last forward only scores the final iterate
                break
            loss = margin + self.lambda_at(t) * (p0 - p).pow(2).sum(1)
            grad = torch.autograd.grad(loss.sum(), x)[0]
            delta = (x.detach() + self.step_at(t) * grad.sign() - images).clamp(-self.eps, self.eps)
            x = (images + delta).clamp(0.0, 1.0)
        return best
