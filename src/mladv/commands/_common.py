"""Pieces the commands share: the Ctrl-C message of a command that does not resume, the help
of the data argument, ``--device`` and ``--dicom-mode`` (the attack flags:
:mod:`._attack_flags`)."""
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


# -- --device and --dicom-mode -----------------------------------------------------------------
DEVICE_HELP = "auto, cpu, cpu:N, cuda, cuda:N or mps."
DICOM_MODE_HELP = ("DICOM files: voi (modality LUT, VOI LUT / window, MONOCHROME1 inverted; "
                   "the default) or raw (the stored values over the bit depth).")


def check_device(device: str, option: str = "--device") -> str:
    """``device`` checked in one line before any compute (:func:`mladv.utils.parse_device`;
    ``cpu:N`` comes back as ``cpu``)."""
    from ..utils import parse_device  # run time only: --help imports no torch

    return parse_device(device, option)


def check_dicom_mode(mode: str, option: str = "--dicom-mode") -> str:
    """``mode`` if it is one of :data:`mladv.data.dicom.DICOM_MODES`; one ``ValueError`` line
    naming ``option`` otherwise."""
    from ..data.dicom import DICOM_MODES  # run time only: --help imports no torch

    if mode not in DICOM_MODES:
        raise ValueError(f"{option} {mode!r}: use one of {', '.join(DICOM_MODES)}")
    return mode


# -- the data argument (see mladv.data.source; "\\[" is a literal "[" in typer's rich help) ---
DATA_HELP = ("An ImageFolder root (ROOT/<class>/<image>), or a source preset: "
             "'covid-radiography:ROOT' (COVID-19 Radiography Database as published; "
             "'covid-radiography\\[COVID,Normal,Viral Pneumonia]:ROOT' picks classes), "
             "'kermany:ROOT' (Kermany pediatric set, published train part; 'kermany\\[test]:ROOT' "
             "its test part), 'csv:FILE' (path,label[,patient_id]) or 'phantoms[:N]' (synthetic, "
             "N per class).")
