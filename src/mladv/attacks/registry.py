"""Attacks by name, for the CLI and the configs."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .base import Attack
from .baselines import fgsm, mifgsm, pgd, pifgsm
from .gama import GAMA
from .mladv import MLAdv
from .rays import RayS

ATTACKS: dict[str, Callable[..., Attack]] = {
    "mladv": MLAdv,
    "fgsm": fgsm,
    "pgd": pgd,
    "mifgsm": mifgsm,
    "pifgsm": pifgsm,
    "gama": GAMA,
    "rays": RayS,
}


def register_attack(name: str, factory: Callable[..., Attack]) -> None:
    ATTACKS[name] = factory


def make_attack(name: str, model: nn.Module, **options: Any) -> Attack:
    """Build attack ``name`` on ``model``; unknown names list the valid ones."""
    key = name.lower()
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    try:
        return ATTACKS[key](model, **options)
    except TypeError as exc:
        raise ValueError(f"attack {name!r}: {exc}") from None
