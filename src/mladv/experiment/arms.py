"""The arms of the augmentation experiment: how each one builds its training set.

Every arm trains the same architecture from scratch with the same schedule and the same
left-right flips; an arm adds either a batch transform (``rotation``, ``mixup``, ``cutmix``,
``trivialaugment``) or adversarial copies ``x'_train`` crafted on the base model with the true
labels, trained on ``x_train ∪ x'_train`` (``pgd-adv`` and the MLAdv ablation arms of Table 2).

MLAdv arms switch the terms of eq. 2 on and off (SPEC, "the ablation rows of Table 2"); a term
that is on gets the weight from the config's ``mladv`` options, or else :class:`MLAdv`'s own
default, read from its signature, so the arms follow the class whatever its defaults are; where
that default is 0 (the class default switches style and origin off, ``docs/method.md``), an arm
that switches the term on uses the paper's unit weight (eq. 2):

=========================  =====  =====  =====  ==========
arm                        L_s    L_o    L_d    projection
=========================  =====  =====  =====  ==========
``ls``                     on     off    off    off
``ls+lo``                  on     on     off    off
``multi-loss``             on     on     on     off
``multi-loss+projection``  on     on     on     on   (the full method)
=========================  =====  =====  =====  ==========

Online arms (``pgd-online``, ``pgd-advprop``, ``mladv-online``, ``mladv-advprop``) craft each
batch's adversarial rows against the *current* model during training
(:class:`mladv.adversarial_training.AdversarialBatch`, modes ``online`` / ``advprop``); their
eps / steps / fraction come from the validation grid search of :mod:`.selection`.

The chain arms (``chain-random``, ``chain-online``, ``chain-advprop``) are online arms of attack
``chain`` (:class:`mladv.attacks.chain.Chain`, AdvChain): the grid's eps scales the chain's bounds
(``eps / 8`` times the defaults, so eps 8 is the documented default), the config's ``chain:``
options set them; ``chain-random`` is the same recipe with ``steps=0`` (random parameters inside
the same bounds, no gradient), the control that tells whether the adversarial choice helps.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from ..attacks import MLAdv, make_attack
from ..attacks.base import Attack
from ..training import BatchTransform, random_hflip
from .arm_table import (  # the table of arms (names, recipes as data) lives below the builders
    ABLATIONS,
    ARMS,
    BASELINES,
    CHAIN_ARMS,
    FULL_METHOD,
    ONLINE_ARMS,
    ONLINE_CONTROLLED,
    Arm,
    check_arm,
)

__all__ = ["ABLATIONS", "ARMS", "BASELINES", "CHAIN_ARMS", "FULL_METHOD", "ONLINE_ARMS",
           "ONLINE_CONTROLLED", "TRANSFORMS", "Arm", "batch_transform", "check_arm",
           "make_adversary", "mladv_arm_options", "mladv_default", "online_options",
           "register_arm", "rotate_batch"]


def register_arm(arm: Arm) -> None:
    """Add ``arm`` to :data:`ARMS` (its transform must be a key of :data:`TRANSFORMS`)."""
    if arm.transform not in TRANSFORMS:
        raise ValueError(f"arm {arm.name!r}: unknown transform {arm.transform!r}; "
                         f"valid: {', '.join(TRANSFORMS)}")
    ARMS[arm.name] = arm


# -- adversarial arms ---------------------------------------------------------------------------
def mladv_default(option: str) -> Any:
    """:class:`MLAdv`'s default for ``option``, read from its signature."""
    return inspect.signature(MLAdv.__init__).parameters[option].default


def mladv_arm_options(arm: Arm, options: dict[str, Any]) -> dict[str, Any]:
    """The MLAdv keyword arguments of an ablation arm: the config's options, with each switched-
    off term's weight set to 0, each switched-on term's weight taken from the options or MLAdv's
    default, and ``projection`` as the arm says."""
    out = dict(options)
    for term in ("style", "origin", "detail"):
        key = f"{term}_weight"
        weight = options.get(key, mladv_default(key)) or 1.0  # "on" means a weight above 0
        out[key] = weight if arm.terms[term] else 0.0
    out["projection"] = arm.terms["projection"]
    return out


def make_adversary(arm: str, model: nn.Module, *, eps: float, seed: int,
                   pgd_options: dict[str, Any], mladv_options: dict[str, Any]) -> Attack:
    """The attack that crafts ``x'_train`` for an adversarial arm (``eps`` in [0, 1] units):
    the arm's registry attack with the config's options for it (MLAdv arms: with their terms
    switched, :func:`mladv_arm_options`)."""
    spec = check_arm(arm)
    if not spec.adversarial or spec.attack is None:
        raise ValueError(f"arm {arm!r} does not craft offline adversarial copies")
    if spec.attack == "mladv":
        options = mladv_arm_options(spec, mladv_options) if spec.terms else dict(mladv_options)
    else:
        options = dict(pgd_options) if spec.attack == "pgd" else {}
    return make_attack(spec.attack, model, eps=eps, seed=seed, **options)


def online_options(arm: str, pgd_options: dict[str, Any], mladv_options: dict[str, Any],
                   chain_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The attack options an online arm adds to the training module's online defaults: the
    config's ``pgd:`` / ``mladv:`` / ``chain:`` options less those in :data:`ONLINE_CONTROLLED`
    (the steps come from the validation grid; MLAdv keeps ``refine=0`` and PGD its one-step
    FGSM), then the arm's own fixed options (``chain-random``: ``steps=0``)."""
    spec = check_arm(arm)
    if not spec.online or spec.attack is None:
        raise ValueError(f"arm {arm!r} is not an online arm")
    given = {"pgd": pgd_options, "mladv": mladv_options}.get(spec.attack, chain_options or {})
    kept = {k: v for k, v in given.items() if k not in ONLINE_CONTROLLED[spec.attack]}
    return {**kept, **spec.options}


# -- batch transforms ---------------------------------------------------------------------------
def _forked(gen: torch.Generator, fn: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Run a torchvision transform (which draws from torch's global generator) with the global
    generator seeded from ``gen``, restoring it afterwards: the arm's batches then depend on the
    training seed alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        return fn()


def rotate_batch(images: Tensor, angles_deg: Tensor) -> Tensor:
    """Rotate each image by its own angle about the centre (bilinear, zeros outside).

    Shape: images ``N x C x H x W``, angles ``N`` (degrees) -> ``N x C x H x W``.
    """
    rad = angles_deg.to(images) * (math.pi / 180.0)
    cos, sin = rad.cos(), rad.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).clamp(0.0, 1.0)


def rotation_transform(degrees: float, central_p: float) -> BatchTransform:
    """Flips, a rotation by ``U(-degrees, degrees)`` and, with probability ``central_p``, the
    central symmetry (a point reflection through the centre: both axes flipped)."""
    def transform(x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = random_hflip(x, y, gen)
        angles = (torch.rand(x.shape[0], generator=gen) * 2 - 1) * degrees
        x = rotate_batch(x, angles)
        central = (torch.rand(x.shape[0], generator=gen) < central_p).to(x.device)
        x[central] = x[central].flip(-1, -2)
        return x, y
    return transform


def mix_transform(kind: str, alpha: float, num_classes: int) -> BatchTransform:
    """Flips, then torchvision's ``MixUp`` or ``CutMix`` over the batch (soft labels ``N x K``)."""
    mixer = (v2.MixUp if kind == "mixup" else v2.CutMix)(alpha=alpha, num_classes=num_classes)

    def transform(x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = random_hflip(x, y, gen)
        return _forked(gen, lambda: mixer(x, y))
    return transform


def trivialaugment_transform(num_magnitude_bins: int = 31) -> BatchTransform:
    """Flips, then torchvision's ``TrivialAugmentWide`` drawn per image. It runs on float
    1-channel tensors directly (every op supports them), so no 8-bit rounding is added."""
    augment = v2.TrivialAugmentWide(num_magnitude_bins=num_magnitude_bins)

    def transform(x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = random_hflip(x, y, gen)
        out = _forked(gen, lambda: (torch.stack([augment(img) for img in x]), y))
        return out[0].clamp(0.0, 1.0), out[1]
    return transform


TRANSFORMS: dict[str, Callable[[Any, int], BatchTransform]] = {
    "flips": lambda options, k: random_hflip,
    "rotation": lambda options, k: rotation_transform(options.rotation_degrees,
                                                      options.central_symmetry_p),
    "mixup": lambda options, k: mix_transform("mixup", options.mixup_alpha, k),
    "cutmix": lambda options, k: mix_transform("cutmix", options.cutmix_alpha, k),
    "trivialaugment": lambda options, k: trivialaugment_transform(options.trivialaugment_bins),
}


def batch_transform(arm: str, options: Any, num_classes: int) -> BatchTransform:
    """The training-time transform of ``arm`` (``options``: the config's ``arm_options``)."""
    return TRANSFORMS[check_arm(arm).transform](options, num_classes)
