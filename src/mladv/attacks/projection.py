"""The heuristic projection of the patch-wise attack (SPEC eqs. 8-10)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import full_precision


def projection_kernel(size: int = 3, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """Eq. 10: the ``size x size`` kernel ``W_o``, centre 0 and every other cell ``1/(size^2-1)``.

    Shape: ``size x size``; it sums to 1.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 3, got {size}")
    kernel = torch.full((size, size), 1.0 / (size * size - 1), dtype=dtype, device=device)
    kernel[size // 2, size // 2] = 0.0
    return kernel


def cut_noise(amplified: Tensor, eps: float) -> Tensor:
    """Eq. 8: ``P = clip(|A| - eps, 0, inf) * sign(A)``, the part of ``A`` beyond the budget.

    Shape: any -> same.
    """
    return (amplified.abs() - eps).clamp_min(0.0) * amplified.sign()


def heuristic_projection(amplified: Tensor, eps: float, gamma: float, kernel: Tensor) -> Tensor:
    """Eqs. 8-9: ``gamma * sign(W_o * P(A))``, the projection step that moves the cut noise to its
    neighbours. Applied per channel (depthwise convolution, zero padding), so it works for any
    number of channels; it is exactly 0 where ``|A| <= eps`` everywhere in the neighbourhood.
    Computed in ``A``'s precision (float32) even under an attack's bf16 autocast.

    Shape: amplified ``N x C x H x W``, kernel ``w x w`` -> ``N x C x H x W``.
    """
    channels = amplified.shape[1]
    weight = kernel.to(amplified).expand(channels, 1, *kernel.shape)
    with full_precision(amplified.device.type):  # float32 under an attack's bf16 autocast
        spread = F.conv2d(cut_noise(amplified, eps), weight, padding=kernel.shape[-1] // 2,
                          groups=channels)
    return gamma * spread.sign()
