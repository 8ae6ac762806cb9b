"""The targeted multilabel threat: add or remove ONE chosen finding, hold every other one.

On a multilabel chest X-ray model (``K`` findings, one sigmoid each) the clinically relevant
attack is not "change some decision" but "make the model report a pneumothorax that is not there"
(or hide one that is) while every other finding reads as before, so that nothing else on the
report looks odd. :class:`TargetedFinding` crafts that, and :func:`targeted_success_rate`
measures it.

Written here: no maintained attack library takes a multilabel objective (torchattacks' issue #70,
ART's #218 / #2064, foolbox's #643); the loop is PGD's (Madry et al., 2018), L-infinity.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import Task, Thresholds, decide, known_mask, threshold_logits
from .base import Attack, ComputeOptions, eval_mode, full_precision


def finding_index(finding: int | str, names: Sequence[str] | None,
                  n_findings: int | None = None) -> int:
    """The column of ``finding``: an index in ``[0, n_findings)`` or a name in ``names`` (the
    model's ``classes``). One ``ValueError`` line naming ``finding`` otherwise."""
    if isinstance(finding, bool) or not isinstance(finding, (int, str)):
        raise ValueError(f"finding must be a finding index or name, got {finding!r}")
    if isinstance(finding, str):
        if names is None:
            raise ValueError(f"finding {finding!r} is a name but the model carries no finding "
                             f"names (classes): give its index")
        if finding not in names:
            raise ValueError(f"finding {finding!r} is not one of the model's findings "
                             f"{list(names)}")
        return list(names).index(finding)
    if finding < 0 or (n_findings is not None and finding >= n_findings):
        top = f"{n_findings - 1}" if n_findings is not None else "K - 1"
        raise ValueError(f"finding must be an index in [0, {top}], got {finding}")
    return finding


def targeted_success(clean_logits: Tensor, adv_logits: Tensor, finding: int, to: int,
                     thresholds: Thresholds = None) -> Tensor:
    """``N`` bool: finding ``f``'s decision ``z_f >= logit(t_f)`` on the adversarial logits
    equals ``to`` AND every other finding's decision equals its clean one (all ``K - 1`` of
    them, label-free). Shape: logits ``N x K`` -> ``N``."""
    clean = decide(clean_logits, "multilabel", thresholds)
    adv = decide(adv_logits, "multilabel", thresholds)
    others = torch.ones(clean.shape[1], dtype=torch.bool, device=clean.device)
    others[finding] = False
    held = (clean[:, others] == adv[:, others]).all(1)
    return (adv[:, finding] == bool(to)) & held


@torch.no_grad()
def targeted_success_rate(model: nn.Module, clean: Tensor, adv: Tensor, finding: int | str,
                          to: int, thresholds: Thresholds = None) -> float:
    """The targeted multilabel success rate: the share of images where finding ``f`` reached the
    target decision ``to`` AND no other finding's decision changed (:func:`targeted_success`),
    decisions at ``thresholds`` (None: the model's ``thresholds`` attribute, else 0.5).

    Images whose clean decision already is ``to`` count when their other findings hold; select
    the images whose clean decision differs from ``to`` first to measure additions / removals
    only. Shape: ``clean`` and ``adv`` ``N x C x H x W`` in [0, 1] -> a float in [0, 1]."""
    if clean.shape != adv.shape or clean.dim() != 4:
        raise ValueError(f"clean and adv must be N x C x H x W images of one shape, got "
                         f"{tuple(clean.shape)} and {tuple(adv.shape)}")
    if to not in (0, 1) or isinstance(to, bool):
        raise ValueError(f"to must be 0 (remove the finding) or 1 (add it), got {to!r}")
    if clean.shape[0] == 0:
        raise ValueError("clean and adv hold no image")
    if thresholds is None:
        thresholds = getattr(model, "thresholds", None)
    param = next(model.parameters(), None)
    device = param.device if param is not None else clean.device
    with eval_mode(model):
        z_clean = model(clean.to(device)).float()
        z_adv = model(adv.to(device)).float()
    f = finding_index(finding, getattr(model, "classes", None), z_clean.shape[1])
    return float(targeted_success(z_clean, z_adv, f, to, thresholds).float().mean())


class TargetedFinding(Attack):
    r"""Add (``to=1``) or remove (``to=0``) one chosen finding of a multilabel model while
    holding every other known finding at the model's clean decision; PGD's L-infinity loop.

    The loss descended, per image ``i`` (``l(z, y)`` the binary cross-entropy with logits,
    ``d_ik = [z_ik(x) >= logit(t_k)]`` the clean decision, ``H_i`` the findings ``k != f``
    whose label is known (not NaN))::

        L_i = l(z_if, to) + w * 1/|H_i| sum_{k in H_i} l(z_ik, d_ik)

    ``w = hold_weight`` (default 1: the chosen finding and the mean of the held ones weigh
    alike). Steps: ``x_0 = clip_[0,1](x + U(-eps, eps))`` (``random_start``), then ``steps``
    times ``x_{t+1} = clip_[0,1](x + clip_[-eps,eps](x_t - alpha sign(grad L) - x))``. Each image
    returns the last iterate that succeeded (finding ``f`` at ``to`` and every held finding at
    its clean decision, at the thresholds: 0.5 unless the model carries ``thresholds``), the
    final iterate where none did.

    The labels only say which findings are known: a NaN finding is not held (pass an all-known
    label tensor, e.g. zeros, to hold every finding). :func:`targeted_success_rate` checks all
    ``K - 1`` other findings.

    Args:
        model: a multilabel classifier (``N x C x H x W`` in [0, 1] -> ``N x K`` logits). A model
            whose ``task`` is ``"multiclass"`` is refused; one without ``task`` is taken as
            multilabel.
        finding: the finding to change: its index, or its name in the model's ``classes``.
        to: 1 adds the finding (pushes ``sigmoid(z_f)`` above its threshold), 0 removes it.
        eps: L-infinity budget in [0, 1] units.
        steps: PGD iterations (>= 1).
        alpha: step size (default ``eps / 4``).
        hold_weight: ``w`` above (>= 0; 0 is plain targeted PGD on finding ``f`` alone).
        random_start: start from a uniform point of the eps ball (drawn with ``seed``).

    Shape: images ``N x C x H x W`` in [0, 1], labels ``N x K`` (0 / 1 / NaN) ->
    ``N x C x H x W``.

    Examples::
        >>> atk = TargetedFinding(model, finding="Pneumothorax", to=1, eps=4/255, seed=0)
        >>> x_adv = atk(images, labels)
        >>> targeted_success_rate(model, images, x_adv, "Pneumothorax", 1)
    """

    def __init__(self, model: nn.Module, *, finding: int | str = 0, to: int = 1,
                 eps: float = 8 / 255, steps: int = 10, alpha: float | None = None,
                 hold_weight: float = 1.0, random_start: bool = True, seed: int | None = None,
                 **compute: Unpack[ComputeOptions]) -> None:
        given: Task | None = compute.get("task")
        if (given or getattr(model, "task", None)) == "multiclass":
            raise ValueError("targeted-finding attacks a multilabel model (one sigmoid per "
                             "finding); this model's task is multiclass")
        super().__init__(model, eps=eps, targeted=False, seed=seed, task="multilabel",
                         precision=compute.get("precision", "fp32"),
                         channels_last=compute.get("channels_last", False))
        if isinstance(to, bool) or to not in (0, 1):
            raise ValueError(f"to must be 0 (remove the finding) or 1 (add it), got {to!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be >= 1 (an int), got {steps!r}")
        if alpha is not None and alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if hold_weight < 0:
            raise ValueError(f"hold_weight must be >= 0, got {hold_weight}")
        if isinstance(finding, str):
            finding_index(finding, getattr(model, "classes", None))  # a bad name: now
        else:
            finding_index(finding, None)
        self.finding, self.to, self.steps = finding, int(to), steps
        self.alpha = float(alpha) if alpha is not None else self.eps / 4
        self.hold_weight, self.random_start = float(hold_weight), random_start

    def _loss(self, logits: Tensor, f: int, hold: Tensor, held: Tensor) -> Tensor:
        """``sum_i L_i`` (see the class docstring). ``hold``: the clean decisions ``N x K``
        (float), ``held``: ``N x K`` bool, the findings in ``H_i``."""
        z = logits.float()
        target = torch.full_like(z[:, f], float(self.to))
        own = F.binary_cross_entropy_with_logits(z[:, f], target, reduction="none")
        per = F.binary_cross_entropy_with_logits(z, hold, reduction="none")
        per = torch.where(held, per, torch.zeros_like(per))
        keep = per.sum(1) / held.sum(1).clamp(min=1).to(per.dtype)
        return (own + self.hold_weight * keep).sum()

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            clean_logits = self.model(images).float()
        k = clean_logits.shape[1]
        f = finding_index(self.finding, getattr(self.model, "classes", None), k)
        cut = threshold_logits(self.thresholds, k, like=clean_logits)
        clean = clean_logits >= cut
        held = known_mask(labels)
        held[:, f] = False
        hold = clean.to(clean_logits.dtype)
        x = images.clone().detach()
        with full_precision(images.device.type):
            if self.random_start:
                noise = torch.empty_like(images, device="cpu").uniform_(
                    -self.eps, self.eps, generator=self.generator())
                x = (images + noise.to(images.device)).clamp(0.0, 1.0).detach()
        best = x.clone()
        found = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        for t in range(self.steps + 1):
            x = x.detach().requires_grad_(t < self.steps)
            with torch.set_grad_enabled(t < self.steps):
                logits = self.model(x)
            decision = logits.detach().float() >= cut
            ok = (decision[:, f] == bool(self.to)) & ((decision == clean) | ~held).all(1)
            best[ok] = x.detach()[ok]
            found |= ok
            if t == self.steps:  # the last forward only scores the final iterate
                break
            grad = torch.autograd.grad(self._loss(logits, f, hold, held), x)[0]
            with full_precision(images.device.type):
                delta = (x.detach() - self.alpha * grad.sign() - images).clamp(-self.eps, self.eps)
                x = (images + delta).clamp(0.0, 1.0)
        best[~found] = x.detach()[~found]
        return best
