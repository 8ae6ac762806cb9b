"""``mladv evaluate``: the robustness report card of a model (:mod:`mladv.evaluate`)."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import (
    CHANNELS_HELP,
    DATA_HELP,
    INPUT_RANGE_HELP,
    MODEL_HELP,
    MODEL_TASK_HELP,
    WEIGHTS_FILE_HELP,
    interrupt_message,
    model_from_flags,
)

INTERRUPTED = ("interrupted: the report is written only when every number is measured (mladv "
               "evaluate does not resume); rerun the same command to start again")


@interrupt_message(INTERRUPTED)
def evaluate(
    inputs: list[str] = typer.Argument(..., metavar="[CHECKPOINT [B.pt]] DATA", help=(
        "A model.pt written by 'mladv train' (or 'mladv experiment'), then the data; two "
        "checkpoints then the data: an A/B comparison (paired CIs, McNemar, a verdict per "
        "column; OUT/compare.md). With "
        "--arch / --state-dict or --model: the data only. " + DATA_HELP)),
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP + " Every image of DATA "
                                     "is scored, its labels in the model's class order."),
    weights_file: str | None = typer.Option(None, "--weights-file", help=WEIGHTS_FILE_HELP),
    input_range: str | None = typer.Option(None, "--input-range", help=INPUT_RANGE_HELP),
    channels: int | None = typer.Option(None, "--channels", help=CHANNELS_HELP),
    task: str | None = typer.Option(None, "--task", help=MODEL_TASK_HELP),
    arch: str | None = typer.Option(None, help="torchvision architecture of --state-dict, "
                                    "e.g. resnet18."),
    state_dict: Path | None = typer.Option(None, "--state-dict", help=(
        "A local state-dict file of --arch (a model trained elsewhere; classes: the data's, "
        "its head must have as many outputs).")),
    image_size: int | None = typer.Option(None, help="Default: the checkpoint's; 224 with "
                                          "--state-dict; --model's input size (xrv: 224), "
                                          "else 224."),
    split: str | None = typer.Option(None, help=(
        "Default for a checkpoint: every image when DATA holds none it trained on, else its "
        "held-out split minus its training images; 'test' or 'all' to choose ('all' is the "
        "default with --state-dict).")),
    pgd_eps: list[float] = typer.Option([0.5, 1.0, 2.0, 4.0, 8.0], "--pgd-eps", help=(
        "Own-model PGD budgets, 1/255 units (repeatable): the robust-accuracy curve.")),
    pgd_steps: int = typer.Option(10, min=1),
    max_images: int = typer.Option(64, min=1, help="Fixed seeded subset for the attacks."),
    autoattack_images: int = typer.Option(0, min=0, help="AutoAttack (standard, 2/255) on "
                                          "this many images of the subset (0: off; slow)."),
    bm3d_images: int = typer.Option(0, min=0, help="BM3D-denoised accuracy on this many "
                                    "images of the subset (0: off; ~1 s per image)."),
    min_eps_images: int = typer.Option(16, min=0, help="Smallest flipping eps by bisection "
                                       "(PGD, up to 8/255) on this many images of the subset; "
                                       "the card gives its median (0: off)."),
    noise_sigma: list[float] = typer.Option([0.02, 0.05], "--noise-sigma", help=(
        "Gaussian noise sigma in [0, 1] units on every image (repeatable).")),
    bootstrap: int = typer.Option(1000, min=0, help="Patient-level bootstrap resamples of "
                                  "the 95% CIs (0: none)."),
    corruptions: str = typer.Option("all", help=(
        "Common-corruption families (ImageNet-C / MedMNIST-C protocol, 5 severities) on the "
        "attack subset: 'all', 'none' or a comma-separated list, e.g. "
        "gaussian_noise,shot_noise,gaussian_blur.")),
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
    """The robustness report card of a model: clean accuracy, macro-F1, ECE, AUROC, per class
    sensitivity / specificity, own-model PGD over eps (curve) and the median smallest flipping
    eps, MLAdv, the adversarial chain, AutoAttack, noise, acquisition shift, BM3D, with
    patient-level bootstrap CIs and a provenance header; the same numbers as mladv experiment
    for the same options; OUT/report.json, OUT/report.md, OUT/report.html (self-contained),
    OUT/curve.png, OUT/shift.png, OUT/examples.png."""
    from ..attacks import parse_options  # run time only: --help imports no torch
    from ..evaluate import check_card_options, command_inputs, evaluate_to_folder
    from ..robustness import RobustnessOptions

    checkpoint, checkpoint_b, data = command_inputs(inputs, arch, state_dict, model, split)
    from ..evaluation.corruptions import CORRUPTIONS
    families = (tuple(CORRUPTIONS) if corruptions == "all" else () if corruptions == "none"
                else tuple(c.strip() for c in corruptions.split(",") if c.strip()))
    opts = RobustnessOptions(
        attacks=("mladv",) if mladv else (), eps=8.0, pgd_eps=tuple(pgd_eps),
        pgd_options={"steps": pgd_steps}, chain_options=parse_options(chain_option or []),
        max_images=max_images, subset_seed=seed, autoattack_images=autoattack_images,
        noise_sigmas=tuple(noise_sigma), acquisition_shift=shift, batch_size=batch_size,
        chain=chain, min_eps_images=min_eps_images, bm3d_images=bm3d_images,
        bootstrap=bootstrap, corruptions=families)
    check_card_options(opts)  # bad options: one line before the model is loaded
    adapter = model_from_flags(model, weights_file=weights_file, input_range=input_range,
                               channels=channels, task=task)  # before DATA is read
    if checkpoint is not None and checkpoint_b is not None:
        from ..evaluate import compare_to_folder
        ab = compare_to_folder(checkpoint, checkpoint_b, data, out, opts, seed=seed,
                               split=split, device=device, skip_bad=skip_bad)
        typer.echo(ab["scored"])
        for key, v in ab["columns"].items():
            typer.echo(f"{key}: A {v['a']:.3f}, B {v['b']:.3f}, A - B {v['diff']:+.3f} "
                       f"[{v['low']:+.3f}, {v['high']:+.3f}]: {v['verdict']}")
        typer.echo(f"wrote {out / 'compare.md'}")
        return
    card = evaluate_to_folder(checkpoint, data, out, opts, seed=seed, arch=arch,
                              state_dict=state_dict, image_size=image_size, split=split,
                              device=device, skip_bad=skip_bad, adapter=adapter,
                              weights_file=weights_file)
    typer.echo(card["scored"])
    if adapter is not None:
        units = card["provenance"]["eps in the model's units"]
        typer.echo(f"{adapter.source}: eps {units}")
    if card.get("task") == "multilabel":
        macro = card["macro"]
        typer.echo(f"macro AUROC {macro['clean']:.3f} on every image; on the "
                   f"{card['n_robust']}-image attack subset clean {macro['clean_subset']:.3f}"
                   + "".join(f", {k} {v:.3f}" for k, v in macro.items()
                             if k.startswith("auroc_pgd"))
                   + f"; wrote {out / 'report.md'}")
        return
    m = card["metrics"]
    typer.echo(f"accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, ECE {m['ece']:.3f}"
               + "".join(f", {k} {m[k]:.3f}" for k in ("acc_chain", "acc_shift_mean")
                         if k in m)
               + f"; wrote {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
