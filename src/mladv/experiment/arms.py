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
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from ..attacks import MLAdv, make_attack
from ..attacks.base import Attack
from ..training import BatchTransform, random_hflip


@dataclass(frozen=True)
class Arm:
    """One row of the experiment, as data: its name, what it does, the paper's Table 2 row (if
    any), its batch transform (a key of :data:`TRANSFORMS`), and for an adversarial arm the
    registry name of the attack that crafts ``x'_train`` (MLAdv arms: which terms are on)."""

    name: str
    description: str
    paper_row: str | None = None
    transform: str = "flips"
    attack: str | None = None
    terms: dict[str, bool] = field(default_factory=dict)  # style / origin / detail / projection
    mode: str = "offline"  # offline (x'_train crafted once), online or advprop (per batch)
    options: dict[str, Any] = field(default_factory=dict)  # fixed attack options of the arm

    @property
    def adversarial(self) -> bool:
        """Whether the arm trains on ``x_train ∪ x'_train`` (crafted once, offline)."""
        return self.attack is not None and self.mode == "offline"

    @property
    def online(self) -> bool:
        """Whether the arm crafts adversarial rows per batch against the current model."""
        return self.attack is not None and self.mode != "offline"


def _mladv_arm(name: str, paper_row: str, style: bool, origin: bool, detail: bool,
               projection: bool, description: str) -> Arm:
    return Arm(name, description, paper_row, attack="mladv",
               terms={"style": style, "origin": origin, "detail": detail,
                      "projection": projection})


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("none", "flips only (the base recipe)", "original"),
    Arm("rotation", "flips + random rotation + central symmetry (the paper's geometric arm)",
        "+ rotation/symmetry", transform="rotation"),
    Arm("mixup", "flips + MixUp (torchvision.transforms.v2)", "+ mixup", transform="mixup"),
    Arm("cutmix", "flips + CutMix (torchvision.transforms.v2)", transform="cutmix"),
    Arm("trivialaugment", "flips + TrivialAugmentWide (torchvision.transforms.v2)",
        transform="trivialaugment"),
    Arm("pgd-adv", "x_train ∪ PGD(x_train), same eps, crafted on the base model", attack="pgd"),
    _mladv_arm("ls", "+ L_s only", True, False, False, False,
               "x_train ∪ MLAdv(x_train) with L_s + L_adv, no projection"),
    _mladv_arm("ls+lo", "+ L_s + L_o", True, True, False, False,
               "x_train ∪ MLAdv(x_train) with L_s + L_o + L_adv, no projection"),
    _mladv_arm("multi-loss", "+ multi-loss", True, True, True, False,
               "x_train ∪ MLAdv(x_train) with all four terms, no projection (gamma = 0)"),
    _mladv_arm("multi-loss+projection", "+ multi-loss + projection", True, True, True, True,
               "x_train ∪ MLAdv(x_train), the full method"),
    Arm("pgd-online", "flips + PGD rows crafted per batch on the current model", attack="pgd",
        mode="online"),
    Arm("pgd-advprop", "flips + PGD rows per batch through twin BatchNorm (AdvProp)",
        attack="pgd", mode="advprop"),
    Arm("mladv-online", "flips + MLAdv rows crafted per batch on the current model",
        attack="mladv", mode="online"),
    Arm("mladv-advprop", "flips + MLAdv rows per batch through twin BatchNorm (AdvProp)",
        attack="mladv", mode="advprop"),
    Arm("chain-random", "flips + random-chain rows per batch (the chain's transforms and bounds, "
        "no gradient: the control of chain-online)", attack="chain", mode="online",
        options={"steps": 0}),
    Arm("chain-online", "flips + adversarial-chain rows (AdvChain) crafted per batch on the "
        "current model", attack="chain", mode="online"),
    Arm("chain-advprop", "flips + adversarial-chain rows per batch through twin BatchNorm "
        "(AdvProp)", attack="chain", mode="advprop"),
)}
FULL_METHOD = "multi-loss+projection"
BASELINES = ("none", "rotation", "mixup", "cutmix", "trivialaugment", "pgd-adv")
ABLATIONS = ("ls", "ls+lo", "multi-loss", FULL_METHOD)
ONLINE_ARMS = ("pgd-online", "pgd-advprop", "mladv-online", "mladv-advprop")
CHAIN_ARMS = ("chain-random", "chain-online", "chain-advprop")
# options the online grid sets (steps) or that keep the training module's online defaults
# (PGD's one-step FGSM step and no random start, MLAdv's refine=0): not taken from pgd: / mladv:
ONLINE_CONTROLLED = {"pgd": ("steps", "alpha", "random_start"), "mladv": ("steps", "refine"),
                     "chain": ("steps",)}


def register_arm(arm: Arm) -> None:
    """Add ``arm`` to :data:`ARMS` (its transform must be a key of :data:`TRANSFORMS`)."""
    if arm.transform not in TRANSFORMS:
        raise ValueError(f"arm {arm.name!r}: unknown transform {arm.transform!r}; "
                         f"valid: {', '.join(TRANSFORMS)}")
    ARMS[arm.name] = arm


def check_arm(name: str) -> Arm:
    """The arm called ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}; valid arms: {', '.join(ARMS)}")
    return ARMS[name]


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
