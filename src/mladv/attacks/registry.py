"""Attacks by name, and the one translation from CLI / YAML options to attack arguments.

Every entry point (``mladv attack``, ``augment``, ``transfer``, ``experiment``) goes through
:func:`parse_options` (``--option KEY=VALUE``), :func:`attack_options` (eps in 1/255 units, only
what was given) and :func:`make_attack`; configs call :func:`check_attack_options` when they are
read, before any training. Every bad option is one ``ValueError`` line naming the option and the
attack.
"""
from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Unpack

import yaml
from torch import Tensor, nn

from .base import Attack
from .baselines import fgsm, mifgsm, pgd, pifgsm
from .chain import Chain
from .gama import GAMA
from .mladv import MLAdv
from .rays import RayS
from .targeted_finding import TargetedFinding

ATTACKS: dict[str, Callable[..., Attack]] = {
    "mladv": MLAdv,
    "fgsm": fgsm,
    "pgd": pgd,
    "mifgsm": mifgsm,
    "pifgsm": pifgsm,
    "gama": GAMA,
    "rays": RayS,
    "chain": Chain,
    "targeted-finding": TargetedFinding,
}


def register_attack(name: str, factory: Callable[..., Attack]) -> None:
    """Make ``factory(model, **options)`` available as attack ``name``."""
    ATTACKS[name.lower()] = factory


def _factory(name: str) -> Callable[..., Attack]:
    key = name.lower()
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[key]


def _signature_target(factory: Callable[..., Attack]) -> Callable[..., Any]:
    return factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]


def accepted_options(name: str) -> dict[str, Any]:
    """The keyword options attack ``name`` takes, with their type hints (``model`` excluded).
    ``**kwargs: Unpack[SomeTypedDict]`` contributes that TypedDict's keys: the
    :class:`~mladv.attacks.base.ComputeOptions` (``precision``, ``channels_last``) every attack
    passes to :class:`~mladv.attacks.Attack`."""
    target = _signature_target(_factory(name))
    params = inspect.signature(target).parameters
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):  # pragma: no cover - unresolvable hint: accept any value
        hints = {}
    accepted = {p: hints.get(p, Any) for p, spec in params.items()
                if p not in ("self", "model") and spec.kind is inspect.Parameter.KEYWORD_ONLY}
    for p, spec in params.items():
        hint = hints.get(p)
        if spec.kind is inspect.Parameter.VAR_KEYWORD and typing.get_origin(hint) is Unpack:
            accepted.update(typing.get_type_hints(typing.get_args(hint)[0]))
    return accepted


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["steps=5", "balance=literal"]`` -> ``{"steps": 5, "balance": "literal"}``.

    Values are read as YAML scalars (``5`` -> int, ``0.5`` -> float, ``true`` -> bool, ``[a, b]``
    -> list); ``-`` in a key becomes ``_``. A pair without ``=`` is a one-line ``ValueError``.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option steps=5")
        try:
            options[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"--option {pair!r}: cannot read the value {value!r}") from None
    return options


def attack_options(name: str, *, eps: float | None = None, seed: int | None = None,
                   steps: int | None = None, options: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The keyword arguments for :func:`make_attack`: ONLY what was given, so the attack's own
    defaults apply to everything else. ``eps`` is in 1/255 units and becomes ``eps / 255``.

    Raises ``ValueError`` naming the option and the attack for an option ``name`` does not take.
    """
    accepted = accepted_options(name)
    given = dict(options or {})
    for key, value in (("eps", eps), ("seed", seed), ("steps", steps)):
        if value is not None:
            given[key] = value / 255 if key == "eps" else value
    unknown = [k for k in given if k not in accepted]
    if unknown:
        raise ValueError(f"attack {name!r} has no option {unknown[0]!r}; "
                         f"it takes {', '.join(sorted(accepted))}")
    return given


# -- value checks ---------------------------------------------------------------------------
def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type ``hint`` (the subset of typing the attacks use;
    an int is a float, a bool is not a number)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, Sequence, list) or hint in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(_fits(v, item) for v in value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # pragma: no cover - a hint this checker does not know


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if origin is not None:
        return str(hint).replace("typing.", "").replace("collections.abc.", "")
    return getattr(hint, "__name__", str(hint))


def check_types(name: str, options: dict[str, Any]) -> None:
    """``ValueError`` ("attack 'mladv': steps must be int, got 'two'") for a value of the wrong
    type or an option attack ``name`` does not take."""
    accepted = accepted_options(name)
    for key, value in options.items():
        if key not in accepted:
            raise ValueError(f"attack {name!r} has no option {key!r}; "
                             f"it takes {', '.join(sorted(accepted))}")
        if not _fits(value, accepted[key]):
            raise ValueError(f"attack {name!r}: {key} must be {_describe(accepted[key])}, "
                             f"got {value!r}")


def make_attack(name: str, model: nn.Module, **options: Any) -> Attack:
    """Build attack ``name`` on ``model``. Unknown names list the valid ones; every invalid
    option (unknown, wrong type, out of range) is one ``ValueError`` naming the option and the
    attack, raised here, before any compute."""
    factory = _factory(name)
    check_types(name, options)
    try:
        return factory(model, **options)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"attack {name!r}: {exc}") from None


class _Throwaway(nn.Module):
    """A 2-class, 1-channel CNN with two conv layers: enough to construct any attack."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.conv2(self.conv1(x).relu()).mean((2, 3)))
        return out


# module names of the real model; the targeted attack's finding name (the real model's classes)
_MODEL_SPECIFIC = ("style_layers", "origin_layer", "finding")


def check_attack_options(name: str, options: dict[str, Any]) -> None:
    """Validate option names AND values of attack ``name`` without a trained model (the attack
    is built on a tiny throwaway CNN on the CPU), e.g. ``steps=0``, ``steps="two"``,
    ``balance="foo"``. Layer names and a finding name are checked for type only (they name
    modules / findings of the real model). Raises a one-line ``ValueError`` such as
    "attack 'mladv': steps must be >= 1, got 0".
    """
    check_types(name, options)
    given = {k: v for k, v in options.items()
             if not (k in _MODEL_SPECIFIC and v not in ("all-conv", "early-conv", None)
                     and (k != "finding" or isinstance(v, str)))}
    make_attack(name, _Throwaway(), **given)


def options_from_flags(name: str, *, eps: float, seed: int, steps: int | None = None,
                       flags: dict[str, Any] | None = None, pairs: Sequence[str] = ()
                       ) -> dict[str, Any]:
    """The :func:`make_attack` keywords of a command's attack flags: ``eps`` (1/255 units, in
    (0, 255]), ``seed``, ``steps`` (None: the attack's), ``flags`` (the command's other flags
    that are attack options, None where not given) and ``--option KEY=VALUE`` ``pairs``. Only
    what was given, so the attack's own defaults apply to the rest; a setting given both as a
    flag and in ``--option`` is refused, naming the flag. Names and values are checked here
    (:func:`check_attack_options`), before any data or checkpoint is read."""
    if not 0 < eps <= 255:
        raise ValueError(f"--eps must be in (0, 255] (1/255 units), got {eps}")
    extra = parse_options(list(pairs))
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    own = set(given) | {"eps", "seed"} | ({"steps"} if steps is not None else set())
    twice = sorted(own & set(extra))
    if twice:
        flag = "--" + twice[0].replace("_", "-")
        raise ValueError(f"--option {twice[0]}=...: give it once, as {flag}")
    options = attack_options(name, eps=eps, seed=seed, steps=steps, options={**given, **extra})
    check_attack_options(name, options)
    return options

