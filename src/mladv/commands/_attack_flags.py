"""The attack option flags of ``mladv attack`` and ``mladv augment``: declared once, only the
given ones forwarded, through :func:`mladv.attacks.registry.options_from_flags`."""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

from ..defaults import ATTACK_NAMES

F = TypeVar("F", bound=Callable[..., Any])


# -- the attack flags (unset = the attack's own default) ---------------------------------------
ATTACK_FLAGS: dict[str, tuple[Any, Any]] = {  # parameter: (type with its typer option, default)
    "name": (Annotated[str, typer.Option("--attack", help=", ".join(ATTACK_NAMES) + " "
                                         "(targeted-finding: multilabel models).")], "mladv"),
    "eps": (Annotated[float, typer.Option(help="L-inf budget in 1/255 units.")], 8.0),
    "steps": (Annotated[int | None, typer.Option(min=1, help="Iterations (default: the "
                                                 "attack's).")], None),
    "style_weight": (Annotated[float | None, typer.Option(help="MLAdv w_s (0 = off).")], None),
    "origin_weight": (Annotated[float | None, typer.Option(help="MLAdv w_o (0 = off).")], None),
    "detail_weight": (Annotated[float | None, typer.Option(help="MLAdv w_d (0 = off).")], None),
    "realism_scale": (Annotated[float | None, typer.Option(
        help="MLAdv weight of the realism terms relative to the adversarial one "
        "(balance grad-norm / calibrated).")], None),
    "tau": (Annotated[float | None, typer.Option(
        help="MLAdv eq. 2 weight of L_adv (balance=literal only).")], None),
    "beta": (Annotated[float | None, typer.Option(help="MLAdv amplification factor.")], None),
    "projection": (Annotated[bool | None, typer.Option(
        "--projection/--no-projection", help="MLAdv heuristic projection (eq. 9).")], None),
    "option": (Annotated[list[str] | None, typer.Option(
        "--option", help="Any other attack option, KEY=VALUE (repeatable), e.g. "
        "--option balance=literal.")], None),
}


@dataclass(frozen=True)
class AttackFlags:
    """The attack flags as given: ``name`` (``--attack``), ``eps`` (1/255 units), ``steps``,
    ``switches`` (the MLAdv flags, None where not given) and ``option`` (``KEY=VALUE``)."""

    name: str
    eps: float
    steps: int | None
    switches: dict[str, Any]
    option: list[str] | None

    def options(self, *, seed: int, **switches: Any) -> dict[str, Any]:
        """The keyword arguments for :func:`mladv.attacks.make_attack`
        (:func:`~mladv.attacks.registry.options_from_flags`); ``switches`` are a command's own
        flags that are attack options (``mladv attack --targeted``), None where not given."""
        from ..attacks.registry import options_from_flags  # run time only: --help imports no torch
        from ..units import check_eps_255

        check_eps_255(self.eps, "--eps")  # 0.03 looks like [0, 1] units: refused in one line
        return options_from_flags(self.name, eps=self.eps, seed=seed, steps=self.steps,
                                  flags={**self.switches, **switches}, pairs=self.option or [])


def with_attack_flags(command: F) -> F:
    """Give ``command`` the attack flags: :data:`ATTACK_FLAGS` stand in its CLI (help and
    parsing) where its keyword-only ``flags`` parameter stands, and reach it gathered in
    ``flags: AttackFlags``. One declaration serves ``mladv attack`` and ``mladv augment``."""
    sig = inspect.signature(command, eval_str=True)  # typer reads __signature__ as it is
    params: list[inspect.Parameter] = []
    for p in sig.parameters.values():
        if p.name != "flags":
            params.append(p)
            continue
        params += [inspect.Parameter(k, p.kind, annotation=kind, default=default)
                   for k, (kind, default) in ATTACK_FLAGS.items()]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        given = {k: kwargs.pop(k) for k in ATTACK_FLAGS}
        flags = AttackFlags(name=given.pop("name"), eps=given.pop("eps"),
                            steps=given.pop("steps"), option=given.pop("option"), switches=given)
        return command(*args, flags=flags, **kwargs)

    run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params} | {
        "return": sig.return_annotation}
    return run  # type: ignore[return-value]
