"""The three readings of eq. 2 that MLAdv's ``balance`` option chooses between (SPEC eq. 2).

Each takes the per-sample terms of one forward pass (``L_adv`` and ``[(name, L_k)]``, each
``N``) or their gradients and gives the loss to differentiate or the descent direction.
``adv_w`` / ``real_w`` (``N`` each, optional) weight the adversarial and the realism terms per
sample; None is eq. 2's weight 1 for every sample (MLAdv itself never passes them: they are the
hook :meth:`mladv.attacks.MLAdv._sample_weights` gives the variants).
"""
from __future__ import annotations

from torch import Tensor

Terms = list[tuple[str, Tensor]]
SampleWeights = tuple[Tensor, Tensor]  # per-sample (adversarial, realism) weights, ``N`` each
TAU_DEFAULT = 0.1  # eq. 2's tau when not given (balance="literal"); the paper's is 0.5
REALISM_SCALE_DEFAULT = 0.1  # the measured default (docs/method.md, k5-dtv0.1-refine)


def mix_weights(balance: str, tau: float | None, realism_scale: float | None
                ) -> tuple[float | None, float | None]:
    """``(tau, realism_scale)``: the one ``balance`` uses (its default when None), the other
    None. Each name has one meaning: ``tau`` is eq. 2's weight of L_adv (``"literal"``),
    ``realism_scale`` the realism terms' weight in the normalised mixes (``"grad-norm"``,
    ``"calibrated"``); giving the other one is a one-line ``ValueError`` naming the right one."""
    literal = balance == "literal"
    if literal and realism_scale is not None:
        raise ValueError("realism_scale applies to balance 'grad-norm' / 'calibrated'; with "
                         "balance='literal' eq. 2's weight of L_adv is tau")
    if not literal and tau is not None:
        raise ValueError(f"tau is eq. 2's weight of L_adv (balance='literal' only); with "
                         f"balance={balance!r} the realism terms' weight relative to the "
                         f"adversarial one is realism_scale (e.g. realism_scale={tau})")
    name, value = (("tau", TAU_DEFAULT if tau is None else tau) if literal else
                   ("realism_scale",
                    REALISM_SCALE_DEFAULT if realism_scale is None else realism_scale))
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return (value, None) if literal else (None, value)


def per_sample_mean_abs(g: Tensor) -> Tensor:
    """``mean|g|`` per sample, shaped to broadcast against ``g`` (``N x 1 x 1 x 1``)."""
    return g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))


def per_sample_unit(g: Tensor) -> Tensor:
    """``g / mean|g|`` per sample, so that terms of very different scales weigh alike."""
    return g / per_sample_mean_abs(g)


def _per_sample(weight: Tensor | None, value: Tensor) -> Tensor:
    """``weight * value`` with ``weight`` (``N``) broadcast over ``value``'s trailing
    dimensions; ``value`` itself when ``weight`` is None."""
    if weight is None:
        return value
    return weight.view(-1, *[1] * (value.dim() - 1)) * value


def combine_eq2_literal(l_adv: Tensor, terms: Terms, tau: float, weights: dict[str, float], *,
                        adv_w: Tensor | None = None, real_w: Tensor | None = None) -> Tensor:
    """Eq. 2 as written: ``L_hybrid = sum_n (w_s L_s + w_o L_o + w_d L_d + tau L_adv)``, ``tau``
    the weight of L_adv. Shape: ``l_adv`` and each term ``N`` -> scalar."""
    return (tau * _per_sample(adv_w, l_adv)).sum() + sum(
        (weights[name] * _per_sample(real_w, t)).sum() for name, t in terms)


def combine_grad_norm(g_adv: Tensor, grads: Terms, scale: float, weights: dict[str, float], *,
                      adv_w: Tensor | None = None, real_w: Tensor | None = None
                      ) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-term normalised gradients: ``g = g_adv/|g_adv| + scale * sum_k w_k g_k/|g_k|`` with
    ``|.|`` the per-sample mean absolute value and ``scale`` MLAdv's ``realism_scale``.

    Returns the direction (``N x C x H x W``) and the per-sample factors ``|g_adv|/|g_k|``
    (``N`` per term; :func:`combine_calibrated` reuses them). ``grads``: ``[(name, g_k)]``.
    """
    scale_adv = per_sample_mean_abs(g_adv)
    g = _per_sample(adv_w, per_sample_unit(g_adv))
    factors: dict[str, Tensor] = {}
    for name, g_k in grads:
        scale_k = per_sample_mean_abs(g_k)
        g = g + scale * weights[name] * _per_sample(real_w, g_k) / scale_k
        factors[name] = (scale_adv / scale_k).flatten()
    return g, factors


def combine_calibrated(l_adv: Tensor, terms: Terms, scale: float, weights: dict[str, float],
                       factors: dict[str, Tensor], *, adv_w: Tensor | None = None,
                       real_w: Tensor | None = None) -> Tensor:
    """The grad-norm mix in ONE backward pass: the factors ``|g_adv|/|g_k|`` measured once scale
    the losses, ``L = sum_n L_adv + scale * sum_k w_k f_k L_k``. Shape: ``N`` each -> scalar."""
    return _per_sample(adv_w, l_adv).sum() + scale * sum(
        (_per_sample(real_w, weights[name] * factors[name]) * t).sum() for name, t in terms)
