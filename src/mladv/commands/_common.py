"""Pieces the commands share: the Ctrl-C message of a command that does not resume, the help
of the data argument, the attack option flags of ``mladv attack`` and ``mladv augment`` (declared
once, only the given ones forwarded, through :mod:`mladv.attacks.registry`'s translator) and the
choice of a checkpoint's split that leaves out the images the checkpoint was trained on."""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
import typer

from ..attacks import attack_options, check_attack_options, parse_options
from ..data import ImageSet, choose_split, load_source
from ..distributed import is_main_process
from ..models import ImageClassifier, load_checkpoint

F = TypeVar("F", bound=Callable[..., Any])


# -- Ctrl-C ------------------------------------------------------------------------------------
def interrupt_message(message: str) -> Callable[[F], F]:
    """Mark a command that does not resume: on Ctrl-C the CLI (:mod:`mladv.cli`) prints
    ``message`` (what is true for this command) in place of its "finished outputs are kept;
    rerun the same command to resume", which holds for the resumable commands only."""
    def mark(command: F) -> F:
        command.interrupted = message  # type: ignore[attr-defined]
        return command
    return mark


# -- the data argument (see mladv.data.source; "\\[" is a literal "[" in typer's rich help) ---
DATA_HELP = ("An ImageFolder root (ROOT/<class>/<image>), or a source preset: "
             "'covid-radiography:ROOT' (COVID-19 Radiography Database as published; "
             "'covid-radiography\\[COVID,Normal,Viral Pneumonia]:ROOT' picks classes), "
             "'kermany:ROOT' (Kermany pediatric set, published train part; 'kermany\\[test]:ROOT' "
             "its test part), 'csv:FILE' (path,label[,patient_id]) or 'phantoms[:N]' (synthetic, "
             "N per class).")

# -- the attack flags (unset = the attack's own default) ---------------------------------------
ATTACK_FLAGS: dict[str, tuple[Any, Any]] = {  # parameter: (type with its typer option, default)
    "name": (Annotated[str, typer.Option("--attack", help="mladv, pgd, fgsm, mifgsm, pifgsm, "
                                         "gama, rays, chain.")], "mladv"),
    "eps": (Annotated[float, typer.Option(help="L-inf budget in 1/255 units.")], 8.0),
    "steps": (Annotated[int | None, typer.Option(min=1, help="Iterations (default: the "
                                                 "attack's).")], None),
    "style_weight": (Annotated[float | None, typer.Option(help="MLAdv w_s (0 = off).")], None),
    "origin_weight": (Annotated[float | None, typer.Option(help="MLAdv w_o (0 = off).")], None),
    "detail_weight": (Annotated[float | None, typer.Option(help="MLAdv w_d (0 = off).")], None),
    "tau": (Annotated[float | None, typer.Option(help="MLAdv realism weight.")], None),
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
        """The keyword arguments for :func:`mladv.attacks.make_attack`: only the flags given, so
        the attack's own defaults (MLAdv: the measured default) apply to the rest; ``switches``
        are a command's own flags that are attack options (``mladv attack --targeted``), None
        where not given. Names and values are checked here, on a throwaway model, before any
        data or checkpoint is read."""
        if not 0 < self.eps <= 255:
            raise ValueError(f"--eps must be in (0, 255] (1/255 units), got {self.eps}")
        extra = parse_options(self.option or [])
        given = {k: v for k, v in {**self.switches, **switches}.items() if v is not None}
        flags = set(given) | {"eps", "seed"} | ({"steps"} if self.steps is not None else set())
        twice = sorted(flags & set(extra))
        if twice:
            flag = "--" + twice[0].replace("_", "-")
            raise ValueError(f"--option {twice[0]}=...: give it once, as {flag}")
        options = attack_options(self.name, eps=self.eps, seed=seed, steps=self.steps,
                                 options={**given, **extra})
        check_attack_options(self.name, options)
        return options


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


# -- which images ---------------------------------------------------------------------------
def checkpoint_and_split(checkpoint: Path, data: str, split: str, *, device: torch.device,
                         skip_bad: bool) -> tuple[ImageClassifier, ImageSet, dict[str, Any]]:
    """CHECKPOINT's model on ``device`` and DATA read at the checkpoint's image size and
    classes, cut to ``split`` by :func:`choose_split` (whose record is returned; its note goes to
    stderr, from the main process only)."""
    model, ckpt = load_checkpoint(checkpoint, map_location=device)
    dataset = load_source(data, ckpt["image_size"], skip_bad=skip_bad, classes=ckpt["classes"],
                          seed=(ckpt.get("split") or {}).get("seed", 0))
    dataset, record = choose_split(dataset, ckpt, split, checkpoint=checkpoint, data=data)
    if record["note"] and is_main_process():
        typer.echo(record["note"], err=True)
    return model, dataset, record
