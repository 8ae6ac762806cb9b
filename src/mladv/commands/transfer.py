"""``mladv transfer``: the transfer table (Table 1), BM3D resistance and Grad-CAM (Fig. 3)."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import DATA_HELP, DEVICE_HELP, check_device


def transfer(
    config: Path = typer.Argument(..., help="Transfer YAML (see configs/transfer-*.yaml)."),
    data: str | None = typer.Option(None, help=DATA_HELP + " Overrides the YAML's data."),
    test_data: str | None = typer.Option(None, help="Train on all of --data, test on this "
                                         "source (same forms as --data, same classes), e.g. "
                                         "'kermany\\[test]:ROOT'."),
    out: Path | None = typer.Option(None, help="Run folder (default runs/<name>)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP + " Overrides the YAML's."),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads (default: the "
                                          "YAML's, else torch's)."),
) -> None:
    """Train (or load) the source and target models of CONFIG, craft every attack on the source
    at the same eps and write transfer.json/.csv/.md/.html and the Fig. 3 grid into OUT, with
    the resolved config.yaml. Rerun the same command to resume: trained models and finished
    attacks are reused."""
    # run time only: --help imports no torch
    from ..transfer import load_config, main_table, run_transfer

    if device is not None:  # the flag, named as such; the YAML's is checked with the YAML
        check_device(device)
    cfg = load_config(config, {"data": data, "test_data": test_data, "device": device,
                               "threads": threads})
    out = out or Path("runs") / cfg.name
    results = run_transfer(cfg, out)  # progress on stderr and in OUT/log.txt
    head, rows = main_table(results)
    keep = head.index("black-box avg") + 1
    typer.echo(" | ".join(head[:keep]))
    for row in rows:
        typer.echo(" | ".join(row[:keep]))
    for claim in results["claims"]:
        typer.echo(claim["sentence"])
    typer.echo(f"wrote {out / 'transfer.html'}, {out / 'transfer.md'}, {out / 'transfer.json'}, "
               f"{out / 'transfer.csv'} in {results['wall_seconds']:.0f} s")


def register(app: typer.Typer) -> None:
    app.command()(transfer)
