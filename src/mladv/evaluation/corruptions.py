"""The common-corruption benchmark protocol of ImageNet-C / MedMNIST-C on float chest X-rays.

Hendrycks & Dietterich, *Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations*, ICLR 2019 (https://arxiv.org/abs/1903.12261); Di Salvo, Doerrich & Ledig,
*MedMNIST-C: Comprehensive benchmark and improved classifier robustness by simulating realistic
image corruptions*, 2024 (https://arxiv.org/abs/2406.17536).

Severity parameters are MedMNIST-C's **chest** table, ``CORRUPTIONS_DS['chestmnist']`` in
``medmnistc/corruptions/registry.py`` of https://github.com/francescodisalvo05/medmnistc-api at
commit ``8acfd2710c6e0e8b2745be8b1fa1c17b94b8f8a7`` (the file last changed in ``b6dee0e``,
2024-06-24). Severity ``s`` in 1..5 reads ``params[s - 1]`` (their ``dataset_manager.py`` loops
``severity in range(0, 5)``), so the sixth Gaussian-blur kernel size they list (13) is never used
and is left out here. MedMNIST-C has no motion blur for chest: that family takes ImageNet-C's
parameters (https://github.com/hendrycks/robustness ``ImageNet-C/imagenet_c/imagenet_c/
corruptions.py`` at commit ``712bfcd18ba1159df5f7ed46f4e6cae611bfe60e``). Brightness, contrast and
gamma are, as in MedMNIST-C, two families each (``_up`` / ``_down``). Pixel-sized parameters
(blur kernels, motion radii) were set for 224 x 224 images (MedMNIST+ 224, ImageNet-C) and are
applied as published at any size.

Deliberate differences from the reference code: float ``[0, 1]`` images in and out with no
8-bit round trip (JPEG excepted: it is an 8-bit codec, so that family alone quantises to 8 bits,
through Pillow, and back); noise drawn from a per-call ``torch.Generator`` instead of numpy's
global state. Each family is a small function ``(images, severity, generator) -> images``
registered where it is defined in :data:`CORRUPTIONS`, with its kind and parameter table.

Shape: ``N x C x H x W`` floating images in ``[0, 1]`` in, the same shape, dtype and device out,
clipped to ``[0, 1]``.

Examples::

    >>> import torch
    >>> from mladv.evaluation.corruptions import CORRUPTIONS, corrupt
    >>> x = torch.full((2, 1, 32, 32), 0.5)
    >>> corrupt(x, "gaussian_noise", 3, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 1, 32, 32])
    >>> CORRUPTIONS["gaussian_noise"].params
    (0.04, 0.08, 0.12, 0.18, 0.26)
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

Kind = Literal["noise", "blur", "digital", "intensity"]
SEVERITIES = (1, 2, 3, 4, 5)

MEDMNISTC_CHEST = ("MedMNIST-C chestmnist: francescodisalvo05/medmnistc-api "
                   "medmnistc/corruptions/registry.py @ 8acfd2710c6e0e8b2745be8b1fa1c17b94b8f8a7")
IMAGENET_C = ("ImageNet-C (no chest value in MedMNIST-C): hendrycks/robustness "
              "ImageNet-C/imagenet_c/imagenet_c/corruptions.py @ "
              "712bfcd18ba1159df5f7ed46f4e6cae611bfe60e")


class CorruptionFn(Protocol):
    def __call__(self, images: Tensor, severity: int,
                 generator: torch.Generator | None = None) -> Tensor: ...


@dataclass(frozen=True)
class Corruption:
    """A registered family: ``params[s - 1]`` is the parameter of severity ``s``."""

    name: str
    kind: Kind
    params: tuple[Any, ...]
    source: str
    apply: CorruptionFn


CORRUPTIONS: dict[str, Corruption] = {}

_Impl = Callable[[Tensor, Any, "torch.Generator | None"], Tensor]


def _check(images: Tensor, severity: int, name: str) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name}: images must be a floating N x C x H x W tensor, got {shape}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"{name}: images must be in [0, 1], got min {images.min().item():.4g} "
                         f"max {images.max().item():.4g}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"{name}: severity must be one of 1..5, got {severity!r}")


def register(name: str, kind: Kind, params: Sequence[Any],
             source: str = MEDMNISTC_CHEST) -> Callable[[_Impl], CorruptionFn]:
    """Register ``impl(images, param, generator)`` as family ``name``; the returned function
    takes a severity 1..5, checks its input and clips the output to [0, 1]."""
    if len(params) != len(SEVERITIES):
        raise ValueError(f"{name}: params must hold 5 severities, got {len(params)}")
    if name in CORRUPTIONS:
        raise ValueError(f"corruption {name!r} is already registered")

    def deco(impl: _Impl) -> CorruptionFn:
        def apply(images: Tensor, severity: int,
                  generator: torch.Generator | None = None) -> Tensor:
            _check(images, severity, name)
            out = impl(images, params[severity - 1], generator)
            return out.clamp(0, 1).to(images.dtype)

        apply.__name__, apply.__doc__ = impl.__name__, impl.__doc__
        CORRUPTIONS[name] = Corruption(name, kind, tuple(params), source, apply)
        return apply

    return deco


def corrupt(images: Tensor, name: str, severity: int,
            generator: torch.Generator | None = None) -> Tensor:
    """Family ``name`` at ``severity`` (1..5) applied to ``images`` (``N x C x H x W``)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"corruption: unknown name {name!r}; known: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name].apply(images, severity, generator)


def _like(images: Tensor, generator: torch.Generator | None) -> dict[str, Any]:
    """Draw on the generator's device (a CPU generator cannot draw on CUDA), in images' dtype."""
    return {"device": generator.device if generator is not None else images.device,
            "dtype": images.dtype}


def _randn(images: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(images.shape, generator=generator,
                       **_like(images, generator)).to(images.device)


def _rand(images: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(images.shape, generator=generator,
                      **_like(images, generator)).to(images.device)


# --- noise --------------------------------------------------------------------------------------

@register("gaussian_noise", "noise", (0.04, 0.08, 0.12, 0.18, 0.26))
def gaussian_noise(images: Tensor, sigma: float, generator: torch.Generator | None) -> Tensor:
    """``x + sigma n``, ``n ~ N(0, 1)`` per pixel (additive electronic / detector noise)."""
    return images + sigma * _randn(images, generator)


@register("shot_noise", "noise", (60, 25, 18, 10, 5))
def shot_noise(images: Tensor, photons: float, generator: torch.Generator | None) -> Tensor:
    """``Poisson(lambda x) / lambda``: quantum (photon-count) noise, ``lambda`` photons at
    full intensity; fewer photons, more noise."""
    rates = (images * photons).to(_like(images, generator)["device"])
    return torch.poisson(rates, generator=generator).to(images.device) / photons


@register("impulse_noise", "noise", (0.01, 0.03, 0.06, 0.09, 0.17))
def impulse_noise(images: Tensor, amount: float, generator: torch.Generator | None) -> Tensor:
    """Salt and pepper: each pixel is replaced with probability ``amount``, by 1 or by 0 with
    equal odds (scikit-image's ``random_noise(mode='s&p', salt_vs_pepper=0.5)`` definition,
    which MedMNIST-C calls: ``flipped = u1 <= amount``, ``salted = u2 <= 0.5``; written in torch
    here to draw from the torch generator on the images' device)."""
    flipped = _rand(images, generator) <= amount
    salted = _rand(images, generator) <= 0.5
    return torch.where(flipped, salted.to(images.dtype), images)


@register("speckle_noise", "noise", (0.05, 0.15, 0.2, 0.35, 0.45))
def speckle_noise(images: Tensor, sigma: float, generator: torch.Generator | None) -> Tensor:
    """``x + x sigma n``, ``n ~ N(0, 1)``: multiplicative noise."""
    return images + images * sigma * _randn(images, generator)


# --- blur ---------------------------------------------------------------------------------------

@register("gaussian_blur", "blur", (3, 5, 7, 9, 11))
def gaussian_blur(images: Tensor, kernel: int, generator: torch.Generator | None) -> Tensor:
    """torchvision's ``gaussian_blur`` with a ``kernel x kernel`` window and its default
    ``sigma = 0.3 ((kernel - 1) / 2 - 1) + 0.8`` (as MedMNIST-C calls it), reflect padding."""
    out: Tensor = TF.gaussian_blur(images, [kernel, kernel])
    return out


def motion_kernel_offsets(radius: float, sigma: float,
                          angle_deg: float) -> tuple[list[tuple[int, int]], list[float]]:
    """ImageMagick's ``MotionBlurImage`` kernel (the one ImageNet-C calls through Wand): width
    ``w = 2 ceil(radius) + 1`` taps ``i = 0 .. w - 1`` with weight ``exp(-i^2 / (2 sigma^2))``
    (normalised to sum 1), tap ``i`` reading the pixel at ``(dy, dx) = (ceil(i sin a - 1/2),
    ceil(i cos a - 1/2))`` — a one-sided streak along angle ``a``. Returns the ``(dy, dx)``
    offsets and the weights."""
    width = int(2 * math.ceil(radius) + 1)
    a = math.radians(angle_deg)
    offsets = [(math.ceil(i * math.sin(a) - 0.5), math.ceil(i * math.cos(a) - 0.5))
               for i in range(width)]
    weights = [math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(width)]
    total = sum(weights)
    return offsets, [w / total for w in weights]


@register("motion_blur", "blur", ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), IMAGENET_C)
def motion_blur(images: Tensor, radius_sigma: tuple[float, float],
                generator: torch.Generator | None) -> Tensor:
    """ImageMagick's motion blur (:func:`motion_kernel_offsets`) along an angle drawn per image
    uniformly in [-45, 45] degrees, edge pixels repeated outside the image. Written by hand:
    ImageNet-C / MedMNIST-C call ImageMagick through Wand (a system library, 8-bit images)."""
    radius, sigma = radius_sigma
    angles = torch.rand(images.shape[0], generator=generator,
                        device=_like(images, generator)["device"]) * 90 - 45
    out = torch.empty_like(images)
    h, w = images.shape[-2:]
    for n, angle in enumerate(angles.tolist()):
        offsets, weights = motion_kernel_offsets(radius, sigma, angle)
        pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
        padded = torch.nn.functional.pad(images[n:n + 1], (pad, pad, pad, pad), mode="replicate")
        acc = torch.zeros_like(images[n:n + 1])
        for (dy, dx), weight in zip(offsets, weights, strict=True):
            acc += weight * padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]
        out[n:n + 1] = acc
    return out


# --- digital ------------------------------------------------------------------------------------

@register("jpeg_compression", "digital", (50, 30, 15, 10, 7))
def jpeg_compression(images: Tensor, quality: int, generator: torch.Generator | None) -> Tensor:
    """Pillow's JPEG encoder at ``quality``, each channel as an 8-bit grey image, decoded and
    divided by 255: the one family with an 8-bit round trip (JPEG is an 8-bit codec)."""
    arr = (images.detach().cpu().double().numpy() * 255).round().astype(np.uint8)
    out = np.empty(arr.shape, dtype=np.float64)
    for n in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            buf = io.BytesIO()
            Image.fromarray(arr[n, c]).save(buf, "JPEG", quality=quality)
            out[n, c] = np.asarray(Image.open(buf), dtype=np.float64) / 255
    return torch.from_numpy(out).to(images.device, images.dtype)


@register("pixelate", "digital", (0.30, 0.25, 0.20, 0.15, 0.10))
def pixelate(images: Tensor, factor: float, generator: torch.Generator | None) -> Tensor:
    """Pillow's BOX resize to ``(int(W f), int(H f))`` and back to ``W x H``, as MedMNIST-C, on
    32-bit float images (Pillow mode ``F``): no 8-bit round trip."""
    h, w = images.shape[-2:]
    small = (max(1, int(w * factor)), max(1, int(h * factor)))
    arr = images.detach().cpu().float().numpy()
    out = np.empty(arr.shape, dtype=np.float32)
    for n in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[n, c]).resize(small, Image.Resampling.BOX)
            out[n, c] = np.asarray(img.resize((w, h), Image.Resampling.BOX))
    return torch.from_numpy(out).to(images.device, images.dtype)


# --- intensity ----------------------------------------------------------------------------------

def _brightness(images: Tensor, factor: float, generator: torch.Generator | None) -> Tensor:
    """``f x``: Pillow's ``ImageEnhance.Brightness`` (a blend with black), on floats."""
    return images * factor


def _contrast(images: Tensor, factor: float, generator: torch.Generator | None) -> Tensor:
    """``m + f (x - m)``, ``m`` the image's mean over its pixels: Pillow's
    ``ImageEnhance.Contrast`` (a blend with the mean grey), on floats (``m`` not rounded to an
    8-bit level)."""
    m = images.mean(dim=(1, 2, 3), keepdim=True)
    return m + factor * (images - m)


def _gamma(images: Tensor, gamma: float, generator: torch.Generator | None) -> Tensor:
    """``x ** gamma``: torchvision's ``adjust_gamma(gain=1)``."""
    out: Tensor = TF.adjust_gamma(images, gamma, gain=1)
    return out


brightness_up = register("brightness_up", "intensity", (1.1, 1.2, 1.3, 1.4, 1.5))(_brightness)
brightness_down = register("brightness_down", "intensity",
                           (0.9, 0.8, 0.7, 0.6, 0.5))(_brightness)
contrast_up = register("contrast_up", "intensity", (1.1, 1.2, 1.3, 1.4, 1.6))(_contrast)
contrast_down = register("contrast_down", "intensity", (0.9, 0.8, 0.7, 0.6, 0.4))(_contrast)
gamma_corr_up = register("gamma_corr_up", "intensity", (1.1, 1.2, 1.3, 1.4, 1.6))(_gamma)
gamma_corr_down = register("gamma_corr_down", "intensity", (0.9, 0.8, 0.7, 0.6, 0.4))(_gamma)


# --- the protocol -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FamilyError:
    """One family ``c``: ``error = E_c = mean_s E_{c,s}``; ``relative = E_c - E_clean``; with
    a baseline model ``b``: ``ce = E_c / E_c^b`` and ``relative_ce = (E_c - E_clean) /
    (E_c^b - E_clean^b)`` (MedMNIST-C's BE and RBE), else None."""

    error: float
    relative: float
    ce: float | None
    relative_ce: float | None


@dataclass(frozen=True)
class GroupError:
    """Means over a group of families (NaN for an empty group): ``mce`` = mean ``E_c`` (the
    unnormalised mean corruption error), ``relative_mce`` = mean ``E_c - E_clean``;
    ``normalised_mce`` / ``normalised_relative_mce`` the means of ``ce`` / ``relative_ce``
    (None without a baseline)."""

    families: tuple[str, ...]
    mce: float
    relative_mce: float
    normalised_mce: float | None
    normalised_relative_mce: float | None


@dataclass(frozen=True)
class CorruptionErrors:
    """:func:`corruption_error`'s result: per family, all families, and the split into the
    families the model trained on and those it never saw."""

    clean_error: float
    families: dict[str, FamilyError]
    all: GroupError
    trained: GroupError
    unseen: GroupError


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _group(names: Sequence[str], fam: Mapping[str, FamilyError],
           normalised: bool) -> GroupError:
    def opt(values: list[float | None]) -> float | None:
        if not normalised or any(v is None for v in values):
            return None
        return _mean([v for v in values if v is not None])

    return GroupError(tuple(names), _mean([fam[n].error for n in names]),
                      _mean([fam[n].relative for n in names]),
                      opt([fam[n].ce for n in names]), opt([fam[n].relative_ce for n in names]))


def corruption_error(err_by_family_severity: Mapping[str, Sequence[float]], clean_err: float,
                     *, trained: Collection[str] = (),
                     baseline: Mapping[str, float] | None = None,
                     baseline_clean_err: float | None = None) -> CorruptionErrors:
    """The ImageNet-C / MedMNIST-C corruption error of one model.

    Args:
        err_by_family_severity: family -> its error (1 - accuracy, or 1 - balanced accuracy as
            MedMNIST-C) at each severity 1..5 (any non-empty number of severities is averaged).
        clean_err: the error on the clean images, ``E_clean``.
        trained: the families the model was trained on (from its augmentation record); the
            others are ``unseen``. Names outside ``err_by_family_severity`` are left out.
        baseline: family -> a baseline model's error averaged over severities, ``E_c^b``; gives
            the normalised CE. ImageNet-C normalises by AlexNet's errors, MedMNIST-C by its own
            baseline's; no such baseline exists for these models, so without one the mCE is
            the unnormalised mean ``mean_c E_c``.
        baseline_clean_err: the baseline's clean error ``E_clean^b`` (needs ``baseline``): gives
            the relative normalised CE.

    Per family ``E_c = mean_s E_{c,s}``, ``relative = E_c - E_clean``, ``ce = E_c / E_c^b``,
    ``relative_ce = (E_c - E_clean) / (E_c^b - E_clean^b)``; each group's mCE is the mean over
    its families (:class:`GroupError`).
    """
    if not err_by_family_severity:
        raise ValueError("err_by_family_severity: no family given")
    for name, errs in err_by_family_severity.items():
        if len(errs) == 0:
            raise ValueError(f"err_by_family_severity[{name!r}]: no severity given")
    if baseline is not None:
        missing = sorted(set(err_by_family_severity) - set(baseline))
        if missing:
            raise ValueError(f"baseline: no error for {', '.join(missing)}")
    if baseline_clean_err is not None and baseline is None:
        raise ValueError("baseline_clean_err: needs baseline (the baseline's per-family errors)")

    families: dict[str, FamilyError] = {}
    for name, errs in err_by_family_severity.items():
        e = _mean([float(v) for v in errs])
        ce = rce = None
        if baseline is not None:
            ce = e / baseline[name]
            if baseline_clean_err is not None:
                rce = (e - clean_err) / (baseline[name] - baseline_clean_err)
        families[name] = FamilyError(e, e - clean_err, ce, rce)
    names = list(families)
    seen = [n for n in names if n in set(trained)]
    unseen = [n for n in names if n not in set(trained)]
    normalised = baseline is not None
    return CorruptionErrors(float(clean_err), families, _group(names, families, normalised),
                            _group(seen, families, normalised),
                            _group(unseen, families, normalised))
