"""Attack metrics: success rate, perturbation norms, SSIM / PSNR."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def success_rate(clean_pred: Tensor, adv_pred: Tensor, labels: Tensor,
                 target_labels: Tensor | None = None) -> float:
    """SPEC "Attack success": among images classified correctly when clean, the share whose
    adversarial version is misclassified (or, targeted, classified as the target).
    NaN when no image is classified correctly."""
    correct = clean_pred == labels
    if not correct.any():
        return float("nan")
    hit = adv_pred != labels if target_labels is None else adv_pred == target_labels
    return hit[correct].float().mean().item()


def perturbation_norms(clean: Tensor, adv: Tensor) -> dict[str, float]:
    """Mean over images of the per-pixel mean |delta| (``l1``), the L2 norm and the L-inf norm,
    and the max L-inf over the set (``linf_max``), all in [0, 1] units."""
    delta = (adv - clean).flatten(1).double()
    return {"l1": delta.abs().mean(1).mean().item(),
            "l2": delta.norm(dim=1).mean().item(),
            "linf": delta.abs().amax(1).mean().item(),
            "linf_max": delta.abs().max().item() if delta.numel() else 0.0}


def ssim(clean: Tensor, adv: Tensor) -> float:
    """Mean structural similarity over images and channels with Wang et al.'s Gaussian window
    (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004; as torchmetrics' SSIM): per pixel

        SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),

    the means, variances and covariance weighted by an 11 x 11 Gaussian (sigma 1.5), population
    (not sample) covariances, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = 1``; averaged over
    the pixels whose window lies inside the image. Computed by scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1.0)`` in float64. (Until 2026-12 this was scikit-image's default 7 x 7 uniform
    window, whose numbers are not comparable with papers.) An image under 11 px a side keeps the
    Gaussian but averages over the ``w x w`` interior, ``w`` the largest odd size that fits.

    Shape: ``clean``, ``adv`` ``N x C x H x W`` in [0, 1]; NaN for ``N = 0``."""
    from skimage.metrics import structural_similarity

    a, b = clean.detach().cpu().double().numpy(), adv.detach().cpu().double().numpy()
    win = min(11, a.shape[-1] - (1 - a.shape[-1] % 2), a.shape[-2] - (1 - a.shape[-2] % 2))
    vals = [structural_similarity(a[i, c], b[i, c], data_range=1.0,  # type: ignore[no-untyped-call]
                                  gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, win_size=win)
            for i in range(a.shape[0]) for c in range(a.shape[1])]
    return float(np.mean(vals)) if vals else float("nan")


def psnr(clean: Tensor, adv: Tensor) -> float:
    """Mean PSNR in dB over images (``data_range=1``): ``10 log10(1 / MSE)``; inf when an image
    is unchanged (MSE 0: RayS leaves the images it cannot fool as they are), NaN for no images.
    Reported one way: ``null`` in JSON (:func:`mladv.utils.atomic_write_json`, strict JSON),
    ``inf`` in text (:func:`mladv.reporting.fmt`)."""
    mse = (adv - clean).flatten(1).double().pow(2).mean(1)
    return (10 * torch.log10(1.0 / mse)).mean().item()


def total_variation(delta: Tensor) -> float:
    """Mean per image of the anisotropic total variation of ``delta`` (smoothness of the noise)."""
    dv = (delta[..., 1:, :] - delta[..., :-1, :]).abs().flatten(1).sum(1)
    dh = (delta[..., :, 1:] - delta[..., :, :-1]).abs().flatten(1).sum(1)
    return (dv + dh).mean().item()
