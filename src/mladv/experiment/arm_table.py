"""The table of the experiment's arms as data: each arm's name, description, Table 2 row, batch
transform (by name) and attack (by registry name). No torch and no training code: the config
validates arm names against it; the builders (transforms, attacks) live in :mod:`.arms`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


def check_arm(name: str) -> Arm:
    """The arm called ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}; valid arms: {', '.join(ARMS)}")
    return ARMS[name]
