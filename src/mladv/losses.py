"""The four terms of MLAdv's hybrid loss (SPEC eqs. 4-7).

Every function returns one value per sample (shape ``N``) so that callers can weight or
normalise per sample; sum it for a batch loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def gram_matrix(features: Tensor) -> Tensor:
    """Gram matrix of a feature map, normalised by its number of elements (Gatys et al.).

    ``G[n] = F[n] F[n]^T / (C*H*W)`` with ``F[n]`` the ``C x (H*W)`` reshaped features.

    Shape:
        features: ``N x C x H x W`` (or ``N x C x L``) -> ``N x C x C``.
    """
    n, c = features.shape[:2]
    flat = features.reshape(n, c, -1)
    return torch.bmm(flat, flat.transpose(1, 2)) / flat[0].numel()


def style_loss(style_grams: Sequence[Tensor], adv_features: Sequence[Tensor]) -> Tensor:
    """Eq. 4: ``L_s = sum_l || G(D_l(x_s)) - G(D_l(x_a)) ||_2^2``.

    Args:
        style_grams: per style layer ``l``, the reference Gram ``N x C_l x C_l`` (or ``1 x C_l x
            C_l``, broadcast over the batch).
        adv_features: per style layer, the activation ``N x C_l x H_l x W_l`` of ``x_a``.

    Returns:
        ``N`` per-sample losses.
    """
    total = adv_features[0].new_zeros(adv_features[0].shape[0])
    for ref, feat in zip(style_grams, adv_features, strict=True):
        total = total + (gram_matrix(feat) - ref).pow(2).flatten(1).sum(1)
    return total


def origin_loss(origin_features: Sequence[Tensor], adv_features: Sequence[Tensor]) -> Tensor:
    """Eq. 5 (content): ``L_o = sum_{l in O} || D_l(x) - D_l(x_a) ||_2^2``, averaged over elements.

    The mean over each layer's ``C*H*W`` elements keeps the term's scale independent of the
    image size (the paper does not say; the sign-gradient update is unaffected by a constant).

    Shape: each ``N x C_l x H_l x W_l`` -> ``N``.
    """
    total = adv_features[0].new_zeros(adv_features[0].shape[0])
    for ref, feat in zip(origin_features, adv_features, strict=True):
        total = total + (feat - ref).pow(2).flatten(1).mean(1)
    return total


def detail_loss(x_adv: Tensor) -> Tensor:
    """Eq. 6, total variation of ``x_a`` with its own neighbours:
    ``L_d = sum_{i,j} (x_a[i,j] - x_a[i+1,j])^2 + (x_a[i,j] - x_a[i,j+1])^2`` (summed over channels).

    Shape: ``N x C x H x W`` -> ``N``.
    """
    dv = (x_adv[..., :-1, :] - x_adv[..., 1:, :]).pow(2).flatten(1).sum(1)
    dh = (x_adv[..., :, :-1] - x_adv[..., :, 1:]).pow(2).flatten(1).sum(1)
    return dv + dh


def adversarial_loss(logits: Tensor, labels: Tensor, target_labels: Tensor | None = None) -> Tensor:
    """Eq. 7 with ``p = softmax(f(x_a))``; minimising it fools the model.

    Untargeted: ``L_adv = log p_y``. Targeted: ``L_adv = -log p_t + log p_y``.

    Shape: logits ``N x K``, labels ``N`` (and target_labels ``N``) -> ``N``.
    """
    logp = F.log_softmax(logits, dim=1)
    loss = logp.gather(1, labels[:, None]).squeeze(1)
    if target_labels is not None:
        loss = loss - logp.gather(1, target_labels[:, None]).squeeze(1)
    return loss
