"""The one translation from CLI / YAML options to attack arguments, and the option checks."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from mladv.attacks import (
    ATTACKS,
    MLAdv,
    accepted_options,
    attack_options,
    check_attack_options,
    make_attack,
    parse_options,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def test_parse_options_reads_yaml_scalars_and_dashes():
    got = parse_options(["steps=5", "balance=literal", "tau=0.25", "projection=false",
                         "style-layers=[a, b]", "gamma=null"])
    assert got == {"steps": 5, "balance": "literal", "tau": 0.25, "projection": False,
                   "style_layers": ["a", "b"], "gamma": None}


@pytest.mark.parametrize("pair", ["steps", "=5", "steps=[1,"])
def test_parse_options_refuses_a_bad_pair_in_one_line(pair):
    with pytest.raises(ValueError, match=r"--option .*(KEY=VALUE|cannot read)"):
        parse_options([pair])


def test_attack_options_returns_only_what_was_given():
    assert attack_options("mladv") == {}
    assert attack_options("mladv", eps=8, seed=3, steps=4, options={"tau": 0.2}) == {
        "eps": 8 / 255, "seed": 3, "steps": 4, "tau": 0.2}
    assert attack_options("fgsm", eps=4) == {"eps": 4 / 255}


def test_attack_options_names_an_option_the_attack_does_not_take():
    with pytest.raises(ValueError, match="attack 'fgsm' has no option 'steps'"):
        attack_options("fgsm", steps=3)
    with pytest.raises(ValueError, match="attack 'pgd' has no option 'momentum'"):
        attack_options("pgd", options={"momentum": 1.0})
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        attack_options("nope")


def test_unset_options_fall_back_to_the_class_defaults():
    model = _model()
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 0])
    via = make_attack("mladv", model, **attack_options("mladv", eps=8, seed=0))
    assert torch.equal(via(x, y), MLAdv(model, seed=0)(x, y))


@pytest.mark.parametrize(("name", "options", "message"), [
    ("mladv", {"steps": 0}, "attack 'mladv': steps must be >= 1, got 0"),
    ("mladv", {"steps": "two"}, "attack 'mladv': steps must be int, got 'two'"),
    ("mladv", {"steps": 2.5}, "attack 'mladv': steps must be int"),
    ("mladv", {"eps": -0.1}, "attack 'mladv': eps must be in"),
    ("mladv", {"balance": "foo"}, "attack 'mladv': balance must be one of"),
    ("mladv", {"tau": -1, "balance": "literal"}, "attack 'mladv': tau must be >= 0"),
    ("mladv", {"realism_scale": -1}, "attack 'mladv': realism_scale must be >= 0"),
    ("mladv", {"tau": 0.2}, "attack 'mladv': tau is eq. 2's weight of L_adv (balance='literal' "
     "only); with balance='grad-norm' the realism terms' weight relative to the adversarial one "
     "is realism_scale (e.g. realism_scale=0.2)"),
    ("mladv", {"beta": 0}, "attack 'mladv': beta must be > 0"),
    ("mladv", {"kernel_size": 4}, "attack 'mladv': kernel_size must be an odd"),
    ("mladv", {"projection": "yes"}, "attack 'mladv': projection must be bool"),
    ("mladv", {"style_layers": 5}, "attack 'mladv': style_layers must be"),
    ("mladv", {"momentum": 1.0}, "attack 'mladv' has no option 'momentum'"),
    ("pgd", {"steps": 0}, "attack 'pgd': steps must be >= 1, got 0"),
    ("pgd", {"alpha": -1.0}, "attack 'pgd': alpha must be > 0"),
    ("mifgsm", {"steps": 0}, "attack 'mifgsm': steps must be >= 1, got 0"),
    ("mifgsm", {"decay": -1.0}, "attack 'mifgsm': decay must be >= 0"),
    ("pifgsm", {"steps": 0}, "attack 'pifgsm': steps must be >= 1, got 0"),
    ("gama", {"steps": 0}, "attack 'gama': steps must be >= 1, got 0"),
    ("gama", {"drop_at": "late"}, "attack 'gama': drop_at must be"),
    ("rays", {"budget": 0}, "attack 'rays': RayS budget must be a positive"),
    ("rays", {"tol": "fine"}, "attack 'rays': tol must be float"),
    ("fgsm", {"targeted": "no"}, "attack 'fgsm': targeted must be bool"),
])
def test_check_attack_options_needs_no_model_and_names_the_option(name, options, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        check_attack_options(name, options)


def test_valid_options_pass_the_check_including_layer_names_of_the_real_model():
    check_attack_options("mladv", {"steps": 3, "balance": "literal", "tau": 0.5, "eps": 0.03,
                                   "style_weight": 1, "style_layers": ["layer1.0.conv1"],
                                   "origin_layer": "layer3", "origin_weight": 1.0})
    check_attack_options("gama", {"steps": 5, "drop_at": [0.5, 0.9]})
    check_attack_options("pgd", {"steps": 3, "alpha": 0.01, "random_start": False})


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_steps_zero_or_a_wrong_type_is_one_value_error_at_construction(name):
    """Not ZeroDivisionError / TypeError, and not a silent no-op (PGD returned its random
    start): every attack's every option with a value of the wrong type names the option."""
    model = _model()
    accepted = accepted_options(name)
    if "steps" in accepted and name != "chain":  # chain: steps=0 is its random control
        with pytest.raises(ValueError, match=f"attack '{name}': steps must be >= 1"):
            make_attack(name, model, steps=0)
    for option in accepted:
        with pytest.raises(ValueError, match=f"attack '{name}': {option} must be"):
            make_attack(name, model, **{option: object()})


def test_make_attack_names_the_valid_attacks_for_an_unknown_one():
    with pytest.raises(ValueError, match=r"unknown attack 'pdg'; choose one of \[.*'pgd'"):
        make_attack("pdg", _model())


def test_the_help_texts_attack_names_are_the_registrys_built_in_attacks():
    """mladv.defaults.ATTACK_NAMES (torch-free, for --help) lists exactly the registry's
    built-in attacks: the help cannot drift from what make_attack accepts."""
    from mladv.attacks.registry import ATTACKS
    from mladv.defaults import ATTACK_NAMES

    assert sorted(ATTACK_NAMES) == sorted(ATTACKS)
