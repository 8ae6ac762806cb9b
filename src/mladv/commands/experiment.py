"""``mladv experiment``: the augmentation experiment of Table 2 (resumable), with its report."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import DEVICE_HELP, DICOM_MODE_HELP, check_device, check_dicom_mode

SOURCES = ("ImageFolder root, 'phantoms[:N]', or a preset: covid-radiography:ROOT, "
           "kermany:ROOT, csv:FILE")


def experiment(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    data: str | None = typer.Option(None, help=f"{SOURCES} (overrides the YAML's data)."),
    test_data: str | None = typer.Option(None, help="Train on all of --data, test on this "
                                            f"source (same classes): {SOURCES}."),
    seeds: int | None = typer.Option(None, min=1, help="Number of seeds (0..N-1)."),
    out: Path | None = typer.Option(None, help="Run folder (default runs/exp-<name>)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP + " Overrides the YAML's."),
    dicom_mode: str | None = typer.Option(None, help=DICOM_MODE_HELP + " Overrides the "
                                          "YAML's dicom_mode."),
    report_only: bool = typer.Option(False, "--report-only", help="Train nothing: write the "
                                     "report of the (seed, arm) runs finished so far."),
) -> None:
    """Train every arm of CONFIG over the seeds; write results.json/.csv and report.md/.html
    into OUT. Rerun the same command to resume an interrupted run. Under
    ``torchrun --nproc_per_node N -m mladv experiment ...`` training is DDP, each rank crafts its
    own shards of x'_train, and rank 0 writes every file. Online arms (pgd-online, pgd-advprop,
    mladv-online, mladv-advprop) first get their eps / steps / fraction from a grid searched on a
    validation split of the training set (selection/selection.json)."""
    from ..distributed import is_main_process  # run time only: --help imports no torch
    from ..experiment.config import load_config
    from ..experiment.run import report_experiment, run_experiment

    if device is not None:  # the flag, named as such; the YAML's is checked with the YAML
        check_device(device)
    if dicom_mode is not None:
        check_dicom_mode(dicom_mode)
    cfg = load_config(config, {"data": data, "test_data": test_data, "seeds": seeds,
                               "device": device, "dicom_mode": dicom_mode})
    out = out or Path("runs") / f"exp-{cfg.name}"
    results = (report_experiment if report_only else run_experiment)(cfg, out)
    if not is_main_process():
        return
    for c in results["comparisons"]:
        typer.echo(c["sentence"])
    typer.echo(f"wrote {out / 'report.html'}, {out / 'report.md'}, {out / 'results.json'}")


def register(app: typer.Typer) -> None:
    app.command()(experiment)
