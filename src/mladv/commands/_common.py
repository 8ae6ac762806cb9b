"""Pieces the commands share: the Ctrl-C message of a command that does not resume and the help
of the data argument (the attack flags: :mod:`._attack_flags`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

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
