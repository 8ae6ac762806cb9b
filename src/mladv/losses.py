"""The four terms of MLAdv's hybrid loss (SPEC eqs. 4-7).

Every function returns one value per sample (shape ``N``) so that callers can weight or
normalise per sample; sum it for a batch loss.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def gram_matrix(features: Tensor) -> Tensor:
    """Gram matrix of a feature map, normalised by its number of elements (Gatys et al.).

    ``G[n] = F[n] F[n]^T / (C*H*W)`` with ``F[n]`` the ``C x (H*W)`` reshaped features.
    Contiguous and channels_last inputs are both read without a copy.

    Shape:
        features: ``N x C x H x W`` (or ``N x C x L``) -> ``N x C x C``.
    """
    n, c = features.shape[:2]
    with _float32(features) as features:
        flat = features.reshape(n, c, -1)
        return torch.bmm(flat, flat.transpose(1, 2)) / flat[0].numel()


@contextmanager
def _float32(features: Tensor) -> Iterator[Tensor]:
    """Gram matrices in (at least) float32 even under bf16 autocast: ``G - R`` cancels, and 8
    mantissa bits would leave mostly rounding noise. A no-op for float32 / float64 features
    outside autocast."""
    if features.dtype not in (torch.float32, torch.float64):
        features = features.float()
    device_type = features.device.type
    if not torch.is_autocast_enabled(device_type):
        yield features
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield features


class _GramDistance(torch.autograd.Function):
    """Per-sample ``|| s F F^T - R ||_F^2`` (``F``: ``N x C x L``, ``R``: ``N|1 x C x C``) with a
    cheaper backward than autograd's: ``dL/dF = 4 s (sF F^T - R) F`` is ONE batched matmul
    (autograd does two, plus five elementwise passes over the ``C x C`` matrices), using that
    ``sF F^T - R`` is symmetric for a symmetric reference. The forward fuses ``- R`` and the
    scale ``s`` into the matmul (``baddbmm``) and takes the squared norm as a batched dot
    product, so no ``C x C`` temporary is allocated besides ``sF F^T - R`` itself (on the CPU
    large temporaries cost page faults as much as arithmetic). ``R`` is treated as a constant
    (the style reference is computed without gradient)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(flat: Tensor, ref: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        n = flat.shape[0]
        diff = torch.baddbmm(ref.expand(n, -1, -1), flat, flat.transpose(1, 2),
                             beta=-1.0, alpha=scale)
        row = diff.view(n, 1, -1)  # the squared norm as a batched dot product: no C x C temporary
        return torch.bmm(row, row.transpose(1, 2)).view(n), diff

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        flat, _ref, scale = inputs
        _loss, diff = output
        ctx.mark_non_differentiable(diff)
        ctx.set_materialize_grads(False)  # no zero-filled C x C gradient for ``diff``
        ctx.save_for_backward(flat, diff)
        ctx.scale = scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_diff: None
                 ) -> tuple[Tensor | None, None, None]:
        if grad_loss is None:
            return None, None, None
        flat, diff = ctx.saved_tensors
        weight = (4.0 * ctx.scale) * grad_loss.view(-1, 1, 1)
        c, length = flat.shape[1:]
        if c <= length:  # scale the smaller of the C x C and C x L operands
            diff, weight = diff * weight, None
        if flat.stride(-2) == 1 and flat.stride(-1) != 1:  # channels_last: keep its layout
            grad = torch.bmm(flat.transpose(1, 2), diff).transpose(1, 2)
        else:
            grad = torch.bmm(diff, flat)
        return (grad if weight is None else grad * weight), None, None


def gram_distance(style_gram: Tensor, features: Tensor) -> Tensor:
    """``|| G(features) - style_gram ||_2^2`` per sample (one layer of eq. 4), without forming
    ``G`` separately and with a one-matmul backward (:class:`_GramDistance`).

    Shape: style_gram ``N x C x C`` or ``1 x C x C``, features ``N x C x H x W`` -> ``N``.
    """
    n, c = features.shape[:2]
    with _float32(features) as features:
        flat = features.reshape(n, c, -1)
        ref = style_gram.detach().to(flat.dtype)
        loss: Tensor = _GramDistance.apply(flat, ref, 1.0 / flat[0].numel())[0]
        return loss


def style_loss(style_grams: Sequence[Tensor], adv_features: Sequence[Tensor]) -> Tensor:
    """Eq. 4: ``L_s = sum_l || G(D_l(x_s)) - G(D_l(x_a)) ||_2^2``.

    Args:
        style_grams: per style layer ``l``, the reference Gram ``N x C_l x C_l`` (or ``1 x C_l x
            C_l``, broadcast over the batch); treated as a constant.
        adv_features: per style layer, the activation ``N x C_l x H_l x W_l`` of ``x_a``.

    Returns:
        ``N`` per-sample losses (float32 even when the features are bf16 under autocast).
    """
    if len(style_grams) != len(adv_features) or not adv_features:
        raise ValueError(f"style_loss needs one reference Gram per style layer (at least one), "
                         f"got {len(style_grams)} Grams for {len(adv_features)} layers")
    total = gram_distance(style_grams[0], adv_features[0])
    for ref, feat in zip(style_grams[1:], adv_features[1:]):
        total = total + gram_distance(ref, feat)
    return total


def origin_loss(origin_features: Sequence[Tensor], adv_features: Sequence[Tensor],
                reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """Eq. 5 (content): ``L_o = sum_{l in O} || D_l(x) - D_l(x_a) ||_2^2``.

    ``reduction="sum"`` is eq. 5 as written (squared L2 norm, summed over each layer's
    ``C*H*W`` elements); ``"mean"`` divides each layer's sum by its ``C*H*W``, which keeps the
    term's scale independent of the image size (the paper does not say; the per-sample
    normalised readings of eq. 2 are unaffected by a constant factor). MLAdv's
    ``balance="literal"`` uses the sum.

    Shape: each ``N x C_l x H_l x W_l`` -> ``N``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    total = adv_features[0].new_zeros(adv_features[0].shape[0])
    for ref, feat in zip(origin_features, adv_features, strict=True):
        # reduce over the non-batch dims directly: no copy for channels_last features
        sq = (feat - ref).square()
        dims = tuple(range(1, feat.dim()))
        total = total + (sq.mean(dim=dims) if reduction == "mean" else sq.sum(dim=dims))
    return total


def detail_loss(x_adv: Tensor) -> Tensor:
    """Eq. 6, total variation of ``x_a`` with its own neighbours (summed over channels):
    ``L_d = sum_{i,j} (x_a[i,j] - x_a[i+1,j])^2 + (x_a[i,j] - x_a[i,j+1])^2``.

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
