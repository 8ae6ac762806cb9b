"""``mladv evaluate``: the robustness report card of a model (:mod:`mladv.evaluate`)."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import DATA_HELP, interrupt_message

INTERRUPTED = ("interrupted: the report is written only when every number is measured (mladv "
               "evaluate does not resume); rerun the same command to start again")


@interrupt_message(INTERRUPTED)
def evaluate(
    inputs: list[str] = typer.Argument(..., metavar="[CHECKPOINT] DATA", help=(
        "A model.pt written by 'mladv train' (or 'mladv experiment'), then the data. With "
        "--arch / --state-dict: the data only. " + DATA_HELP)),
    arch: str | None = typer.Option(None, help="torchvision architecture of --state-dict, "
                                    "e.g. resnet18."),
    state_dict: Path | None = typer.Option(None, "--state-dict", help=(
        "A local state-dict file of --arch (a model trained elsewhere; classes: the data's, "
        "its head must have as many outputs).")),
    image_size: int | None = typer.Option(None, help="Default: the checkpoint's; 224 with "
                                          "--state-dict."),
    split: str | None = typer.Option(None, help="'test' (default for a checkpoint: its "
                                     "held-out split) or 'all' (default with --state-dict)."),
    pgd_eps: list[float] = typer.Option([2.0, 8.0], "--pgd-eps", help="Own-model PGD budget, "
                                        "1/255 units (repeatable)."),
    pgd_steps: int = typer.Option(10, min=1),
    max_images: int = typer.Option(64, min=1, help="Fixed seeded subset for the attacks."),
    autoattack_images: int = typer.Option(0, min=0, help="AutoAttack (standard, 2/255) on "
                                          "this many images of the subset (0: off; slow)."),
    bm3d_images: int = typer.Option(0, min=0, help="BM3D-denoised accuracy on this many "
                                    "images of the subset (0: off; ~1 s per image)."),
    mladv: bool = typer.Option(True, "--mladv/--no-mladv", help="Own-model MLAdv at 8/255."),
    chain: bool = typer.Option(True, "--chain/--no-chain", help="The adversarial chain."),
    shift: bool = typer.Option(True, "--shift/--no-shift", help="Acquisition shift per "
                               "transform and severity."),
    chain_option: list[str] | None = typer.Option(None, "--chain-option", help=(
        "A chain option, KEY=VALUE (repeatable), e.g. --chain-option rotation=3.")),
    batch_size: int = typer.Option(32, min=1),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/evaluate")),
    device: str = typer.Option("auto"),
    skip_bad: bool = typer.Option(False),
) -> None:
    """The robustness report card of a model: clean accuracy, macro-F1, ECE, own-model PGD,
    MLAdv, the adversarial chain, AutoAttack, acquisition shift, BM3D; OUT/report.json,
    OUT/report.md, OUT/report.html (self-contained), OUT/shift.png, OUT/examples.png."""
    from ..attacks import parse_options  # run time only: --help imports no torch
    from ..evaluate import CardOptions, command_inputs, evaluate_to_folder

    checkpoint, data = command_inputs(inputs, arch, state_dict)
    opts = CardOptions(pgd_eps=tuple(pgd_eps), pgd_steps=pgd_steps, max_images=max_images,
                       mladv=mladv, chain=chain, shift=shift,
                       autoattack_images=autoattack_images, bm3d_images=bm3d_images,
                       batch_size=batch_size, seed=seed,
                       chain_options=parse_options(chain_option or []))
    card = evaluate_to_folder(checkpoint, data, out, opts, arch=arch, state_dict=state_dict,
                              image_size=image_size, split=split, device=device,
                              skip_bad=skip_bad)
    m = card["metrics"]
    typer.echo(f"accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, ECE {m['ece']:.3f}"
               + "".join(f", {k} {m[k]:.3f}" for k in ("chain", "shift_mean") if k in m)
               + f"; wrote {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
