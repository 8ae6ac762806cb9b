"""Evaluation beside accuracy: calibration and accuracy under white-box attacks on the model
itself (PGD at 2/255 and 8/255, MLAdv, and torchattacks' AutoAttack, which catches the gradient
masking that can make adversarially trained models only *look* robust).

Examples::
    >>> ece = expected_calibration_error(predict_logits(model, x).softmax(1), y)
    >>> acc = adversarial_accuracy(model, x, y, "pgd", eps=2/255)
    >>> report = robustness_report(model, x, y, n_images=64, seed=0)   # every number at once
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from typing import Any

import torch
import torchattacks
from torch import Tensor, nn

from .attacks import eval_mode, make_attack
from .attacks.chain import ChainBounds, random_chain
from .crafting import craft
from .training import predict_logits
from .utils import model_device


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al., ICML 2017): ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over ``n_bins``
    equal-width confidence bins ``((b-1)/n_bins, b/n_bins]``, confidence = the top probability.

    Shape: probs ``N x K`` (rows sum to 1), labels ``N`` -> a float in [0, 1].
    """
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be N x K and labels N, got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if probs.shape[0] == 0:
        return 0.0
    conf, pred = probs.detach().float().cpu().max(1)
    correct = (pred == labels.cpu()).float()
    # bin b holds (b/n, (b+1)/n]; a confidence of exactly 0 (impossible for softmax) joins bin 0
    bins = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1
    gap = torch.zeros(n_bins).index_add_(0, bins, correct - conf)  # |B| (acc(B) - conf(B))
    return float(gap.abs().sum() / conf.shape[0])


def fixed_subset(n: int, k: int | None, seed: int = 0) -> Tensor:
    """``min(k, n)`` indices of ``range(n)`` drawn with ``seed``, sorted (all of them when
    ``k`` is None): the same images for every model compared."""
    if k is None or k >= n:
        return torch.arange(n)
    if k < 1:
        raise ValueError(f"the subset size must be >= 1, got {k}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def adversarial_accuracy(model: nn.Module, images: Tensor, labels: Tensor, attack: str = "pgd",
                         *, eps: float = 8 / 255, seed: int = 0, batch_size: int = 64,
                         **options: Any) -> float:
    """Accuracy of ``model`` on images attacked white-box on ``model`` itself (registry attack
    ``attack`` with ``eps`` in [0, 1] units and its own defaults, e.g. PGD-10, step eps/4,
    random start). Shape: images ``N x C x H x W`` in [0, 1], labels ``N`` -> a float."""
    atk = make_attack(attack, model, eps=eps, seed=seed, **options)
    adv = craft(atk, images, labels, batch_size=batch_size, progress=False)
    return float((predict_logits(model, adv).argmax(1) == labels.cpu()).float().mean())


def num_classes(model: nn.Module, images: Tensor) -> int:
    """``model.num_classes`` when it has one, else the width of its output on one image."""
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) else int(predict_logits(model, images[:1]).shape[1])


class PadLogits(nn.Module):
    """``model`` with its logits padded to ``k`` columns by ``min(z) - 1`` (never the arg-max):
    torchattacks' APGD-T / DLR loss reads the 4th-largest logit, so AutoAttack needs >= 4
    classes; 3-class chest X-rays get one extra column, the real classes' order unchanged."""

    def __init__(self, model: nn.Module, k: int = 4) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.model(x)
        if z.shape[1] >= self.k:
            return z
        pad = z.min(1, keepdim=True).values - 1.0
        return torch.cat([z, pad.expand(-1, self.k - z.shape[1])], 1)


def autoattack_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *,
                        eps: float = 2 / 255, seed: int = 0, batch_size: int = 64,
                        square_queries: int = 5000) -> float:
    """Accuracy under torchattacks' ``AutoAttack(norm="Linf", version="standard")`` (APGD-CE,
    APGD-T, FAB-T, Square; each attack only on the images still classified correctly) with
    ``n_classes`` from the model. 1-channel [0, 1] images go straight in (the model wrapper
    repeats channels and normalises). Square spends up to 5000 queries per robust image: use a
    small fixed subset (:func:`fixed_subset`) on a CPU. Models with fewer than 4 classes are
    attacked through :class:`PadLogits` (accuracy is read on ``model`` itself).
    ``square_queries`` other than 5000 is not the standard version (tests use fewer).

    Measured (2-core CPU, small_cnn, 24 px): APGD-CE, APGD-T, FAB-T 0.1-0.4 s for 12 images;
    Square 26 s for the 5 that survived them. torchattacks runs APGD with 10 steps."""
    padded = PadLogits(model)
    atk = torchattacks.AutoAttack(padded, norm="Linf", eps=eps, version="standard",
                                  n_classes=max(4, num_classes(model, images)), seed=seed)
    atk._autoattack.attacks[-1].n_queries = square_queries  # Square is the last of the four
    device = model_device(model)
    out = []
    with eval_mode(model), contextlib.redirect_stdout(io.StringIO()):
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(device)
            y = labels[i:i + batch_size].to(device)
            out.append(atk(x, y).detach().cpu())
    adv = torch.cat(out) if out else images
    return float((predict_logits(model, adv).argmax(1) == labels.cpu()).float().mean())


def robustness_report(model: nn.Module, images: Tensor, labels: Tensor, *,
                      n_images: int | None = 64, n_autoattack: int | None = 32, seed: int = 0,
                      pgd_steps: int = 10, mladv_options: dict[str, Any] | None = None,
                      autoattack: bool = True, batch_size: int = 64,
                      square_queries: int = 5000) -> dict[str, Any]:
    """Every evaluation number of the experiment for one model on a test set:

    ``acc`` and ``ece`` (15 bins) on all images; on a fixed subset of ``n_images`` (seeded):
    ``pgd2`` / ``pgd8`` (own-model PGD-``pgd_steps`` at 2/255 and 8/255), ``mladv`` (own-model
    MLAdv at 8/255, its defaults plus ``mladv_options``); on the first ``n_autoattack`` of that
    subset: ``autoattack2`` (standard AutoAttack at 2/255; None when ``autoattack`` is False).
    """
    probs = predict_logits(model, images).softmax(1)
    labels = labels.cpu()
    sub = fixed_subset(images.shape[0], n_images, seed)
    x, y = images[sub], labels[sub]
    report: dict[str, Any] = {
        "n": int(images.shape[0]), "n_robust": int(sub.shape[0]),
        "acc": float((probs.argmax(1) == labels).float().mean()),
        "ece": expected_calibration_error(probs, labels),
        "pgd2": adversarial_accuracy(model, x, y, "pgd", eps=2 / 255, steps=pgd_steps, seed=seed,
                                     batch_size=batch_size),
        "pgd8": adversarial_accuracy(model, x, y, "pgd", eps=8 / 255, steps=pgd_steps, seed=seed,
                                     batch_size=batch_size),
        "mladv": adversarial_accuracy(model, x, y, "mladv", eps=8 / 255, seed=seed,
                                      batch_size=batch_size, **(mladv_options or {})),
        "autoattack2": None, "n_autoattack": 0,
    }
    if autoattack:
        k = sub.shape[0] if n_autoattack is None else min(n_autoattack, sub.shape[0])
        report["autoattack2"] = autoattack_accuracy(model, x[:k], y[:k], eps=2 / 255, seed=seed,
                                                    batch_size=batch_size,
                                                    square_queries=square_queries)
        report["n_autoattack"] = int(k)
    return report


# -- acquisition shift: a chest-X-ray analogue of ImageNet-C ------------------------------------
SHIFT_TRANSFORMS = ("gamma", "window", "bias", "affine", "elastic", "noise")
SHIFT_SEVERITIES = (1.0, 2.0, 4.0)  # times the chain's default bounds
SHIFT_NOISE_SIGMA = 0.02  # the noise transform's bound at severity 1 (the chain's default is off)


def shift_bounds(transform: str, severity: float, bounds: ChainBounds | None = None
                 ) -> ChainBounds:
    """The bounds of ``transform`` alone (every other amplitude 0) at ``severity`` times
    ``bounds`` (default :class:`ChainBounds`; noise: :data:`SHIFT_NOISE_SIGMA`)."""
    if transform not in SHIFT_TRANSFORMS:
        raise ValueError(f"unknown shift transform {transform!r}; valid: {SHIFT_TRANSFORMS}")
    b = bounds or ChainBounds()
    keep = {"gamma": ("gamma",), "window": ("contrast", "brightness"), "bias": ("bias",),
            "affine": ("rotation", "scale", "translation"), "elastic": ("elastic",),
            "noise": ("noise",)}[transform]
    amplitudes = ("gamma", "contrast", "brightness", "bias", "rotation", "scale", "translation",
                  "elastic", "noise")
    zeros: dict[str, Any] = {k: 0.0 for k in amplitudes if k not in keep}
    alone = replace(b, **zeros)
    if transform == "noise" and alone.noise == 0:
        alone = replace(alone, noise=SHIFT_NOISE_SIGMA)
    return alone.scaled(severity)


def shifted(images: Tensor, transform: str, severity: float, seed: int = 0,
            bounds: ChainBounds | None = None) -> Tensor:
    """``images`` under ``transform`` alone at ``severity``: parameters drawn uniformly inside
    the bounds of :func:`shift_bounds` (no gradient, no model), from ``seed``.
    Shape: ``N x C x H x W`` in [0, 1] -> the same."""
    gen = torch.Generator().manual_seed(seed)
    return random_chain(images, gen, shift_bounds(transform, severity, bounds))


def acquisition_shift_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *,
                               transforms: tuple[str, ...] = SHIFT_TRANSFORMS,
                               severities: tuple[float, ...] = SHIFT_SEVERITIES, seed: int = 0,
                               bounds: ChainBounds | None = None) -> dict[str, float]:
    """Accuracy of ``model`` under each acquisition transform alone at each severity
    (``shift_<transform>_<severity>``, :func:`shifted`), and their mean (``shift_mean``).
    The same seed gives every model the same shifted images."""
    labels = labels.cpu()
    out: dict[str, float] = {}
    for t in transforms:
        for s in severities:
            x = shifted(images, t, s, seed, bounds)
            out[f"shift_{t}_{s:g}"] = float(
                (predict_logits(model, x).argmax(1) == labels).float().mean())
    out["shift_mean"] = sum(out.values()) / len(out) if out else float("nan")
    return out


def chain_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float = 8 / 255,
                   seed: int = 0, batch_size: int = 64, **options: Any) -> float:
    """Accuracy under the adversarial chain (registry attack ``chain``, one sign step by
    default) crafted on ``model`` itself; ``eps`` scales its bounds (8/255: the defaults)."""
    return adversarial_accuracy(model, images, labels, "chain", eps=eps, seed=seed,
                                batch_size=batch_size, **options)
