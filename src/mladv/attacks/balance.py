"""The three readings of eq. 2 that MLAdv's ``balance`` option chooses between (SPEC eq. 2).

Each takes the per-sample terms of one forward pass (``L_adv`` and ``[(name, L_k)]``, each
``N``) or their gradients and gives the loss to differentiate or the descent direction.
"""
from __future__ import annotations

from torch import Tensor

Terms = list[tuple[str, Tensor]]


def per_sample_mean_abs(g: Tensor) -> Tensor:
    """``mean|g|`` per sample, shaped to broadcast against ``g`` (``N x 1 x 1 x 1``)."""
    return g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))


def per_sample_unit(g: Tensor) -> Tensor:
    """``g / mean|g|`` per sample, so that terms of very different scales weigh alike."""
    return g / per_sample_mean_abs(g)


def combine_eq2_literal(l_adv: Tensor, terms: Terms, tau: float, weights: dict[str, float],
                        adv_w: Tensor, real_w: Tensor) -> Tensor:
    """Eq. 2 as written: ``L_hybrid = sum_n (w_s L_s + w_o L_o + w_d L_d + tau L_adv)``.

    ``adv_w`` / ``real_w`` (``N``, ones unless a variant gates the terms per sample) weight the
    adversarial and the realism terms. Shape: ``l_adv`` and each term ``N`` -> scalar.
    """
    return (tau * adv_w * l_adv).sum() + sum(
        (weights[name] * real_w * t).sum() for name, t in terms)


def combine_grad_norm(g_adv: Tensor, grads: Terms, tau: float, weights: dict[str, float],
                      adv_w: Tensor, real_w: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-term normalised gradients: ``g = g_adv/|g_adv| + tau * sum_k w_k g_k/|g_k|`` with
    ``|.|`` the per-sample mean absolute value.

    Returns the direction (``N x C x H x W``) and the per-sample factors ``|g_adv|/|g_k|``
    (``N`` per term; :func:`combine_calibrated` reuses them). ``grads``: ``[(name, g_k)]``.
    """
    scale_adv = per_sample_mean_abs(g_adv)
    g = per_sample_unit(g_adv) * adv_w.view(-1, 1, 1, 1)
    factors: dict[str, Tensor] = {}
    for name, g_k in grads:
        scale_k = per_sample_mean_abs(g_k)
        g = g + tau * weights[name] * real_w.view(-1, 1, 1, 1) * g_k / scale_k
        factors[name] = (scale_adv / scale_k).flatten()
    return g, factors


def combine_calibrated(l_adv: Tensor, terms: Terms, tau: float, weights: dict[str, float],
                       factors: dict[str, Tensor], adv_w: Tensor, real_w: Tensor) -> Tensor:
    """The grad-norm mix in ONE backward pass: the factors ``|g_adv|/|g_k|`` measured once scale
    the losses, ``L = sum_n L_adv + tau * sum_k w_k f_k L_k``. Shape: ``N`` each -> scalar."""
    return (adv_w * l_adv).sum() + tau * sum(
        (weights[name] * real_w * factors[name] * t).sum() for name, t in terms)
