"""Attacks with the torchattacks call shape ``x_adv = atk(images, labels)``."""
from .base import Attack, ComputeOptions, check_images, eval_mode
from .baselines import TorchAttack, fgsm, mifgsm, pgd, pifgsm
from .gama import GAMA
from .mladv import MLAdv
from .projection import cut_noise, heuristic_projection, projection_kernel
from .rays import RayS
from .registry import (
    ATTACKS,
    accepted_options,
    attack_options,
    check_attack_options,
    make_attack,
    parse_options,
    register_attack,
)
from .targeted_finding import TargetedFinding, targeted_success_rate
from .variants import MLAdvVariant

__all__ = ["ATTACKS", "Attack", "ComputeOptions", "accepted_options", "attack_options",
           "check_attack_options",
           "parse_options", "MLAdv", "MLAdvVariant", "TorchAttack", "check_images", "cut_noise",
           "eval_mode", "fgsm", "heuristic_projection", "make_attack", "mifgsm", "pgd", "pifgsm",
           "projection_kernel", "register_attack", "GAMA", "RayS", "TargetedFinding",
           "targeted_success_rate"]
