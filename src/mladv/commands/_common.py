"""Pieces the commands share: the Ctrl-C message of a command that does not resume, the help
of the data argument, ``--device`` and ``--dicom-mode`` (the attack flags:
:mod:`._attack_flags`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # type hints only: --help imports no torch
    from ..adapters import ModelAdapter

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
             "its test part), 'csv:FILE' (path,label[,patient_id]; without a label column: "
             "multilabel, path,patient_id,<finding columns>), 'nih:ROOT' (NIH ChestX-ray14 as "
             "published, multilabel; 'nih\\[Effusion,Mass]:ROOT' picks findings) or "
             "'phantoms[:N]' (synthetic, N per class).")


# -- --model SPEC: a practitioner's model (mladv.adapters) -------------------------------------
MODEL_HELP = ("A practitioner's model instead of a checkpoint: 'xrv:NAME' (a torchxrayvision "
              "DenseNet-121, e.g. xrv:densenet121-res224-all; pip install 'mladv\\[xrv]'), "
              "'torchscript:FILE' or 'python:pkg.module:factory'.")
WEIGHTS_FILE_HELP = ("--model's weights: a local state dict (xrv: or python:); xrv: without it "
                     "reads torchxrayvision's cache folder (mladv never downloads).")
INPUT_RANGE_HELP = ("LO,HI: --model's own pixel range, e.g. -1024,1024 (torchscript: / python:; "
                    "default 0,1; xrv: fixes its own).")
CHANNELS_HELP = "--model's input channels, 1 or 3 (the grey image repeated; default 1)."
MODEL_TASK_HELP = "--model's task: multiclass (softmax) or multilabel (one sigmoid per finding)."
MODEL_ONLY = ("--weights-file", "--input-range", "--channels", "--task")


def parse_input_range(text: str | None, option: str = "--input-range"
                      ) -> tuple[float, float] | None:
    """``"LO,HI"`` as ``(LO, HI)`` (None stays None); one ``ValueError`` naming ``option``."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{option} must be LO,HI (two numbers, e.g. -1024,1024), got "
                         f"{text!r}") from None
    return lo, hi


def model_from_flags(spec: str | None, *, weights_file: str | None, input_range: str | None,
                     channels: int | None, task: str | None) -> ModelAdapter | None:
    """The :class:`mladv.adapters.ModelAdapter` that ``--model SPEC`` and its flags name
    (:func:`mladv.adapters.load_model_spec`), or None without ``--model``, when the flags that
    only make sense with it are refused in one line. Every command taking ``--model`` builds
    its model here; a bad spec, option or missing weights file is one line (exit 2)."""
    given = dict(zip(MODEL_ONLY, (weights_file, input_range, channels, task)))
    if spec is None:
        stray = [k for k, v in given.items() if v is not None]
        if stray:
            raise ValueError(f"{stray[0]} applies to --model SPEC only (a checkpoint carries its "
                             "own weights, range, channels and task)")
        return None
    from ..adapters import load_model_spec  # run time only: --help imports no torch

    return load_model_spec(spec, weights_file=weights_file,
                           input_range=parse_input_range(input_range), channels=channels,
                           task=task)
