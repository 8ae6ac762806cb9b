"""``mladv experiment``: the augmentation experiment of Table 2 (resumable), with its report."""
from __future__ import annotations

from pathlib import Path

import typer

from ..distributed import is_main_process
from ..experiment.config import load_config
from ..experiment.run import run_experiment


def experiment(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    data: str | None = typer.Option(None, help="ImageFolder root or 'phantoms[:N]' "
                                       "(overrides the YAML's data)."),
    test_data: str | None = typer.Option(None, help="Train on all of --data, test on this "
                                            "folder (same classes)."),
    seeds: int | None = typer.Option(None, min=1, help="Number of seeds (0..N-1)."),
    out: Path | None = typer.Option(None, help="Run folder (default runs/exp-<name>)."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Train every arm of CONFIG over the seeds; write results.json/.csv and report.md/.html
    into OUT. Rerun the same command to resume an interrupted run. Under
    ``torchrun --nproc_per_node N -m mladv experiment ...`` training is DDP, each rank crafts its
    own shards of x'_train, and rank 0 writes every file."""
    cfg = load_config(config, {"data": data, "test_data": test_data, "seeds": seeds,
                               "device": device})
    out = out or Path("runs") / f"exp-{cfg.name}"
    results = run_experiment(cfg, out)
    if not is_main_process():
        return
    for c in results["comparisons"]:
        typer.echo(c["sentence"])
    typer.echo(f"wrote {out / 'report.html'}, {out / 'report.md'}, {out / 'results.json'}")


def register(app: typer.Typer) -> None:
    app.command()(experiment)
