"""Time per step of MLAdv (its defaults, and with ``refine=0``) vs torchattacks PGD on a TRAINED
model: same model, batch and size, one run; one JSON line on stdout.

MLAdv's ``refine`` (up to 10 PGD steps for the samples the main loop leaves unfooled) costs
what the model makes it cost: nothing when every sample is fooled, 10 more backward passes when
none is. On an untrained model every sample is fooled at once (the cost is hidden) or, for some
random weights, almost none is (inflated); so the model is trained first (``--train-epochs``,
default 6, on ``--data``, default the phantoms) or loaded (``--checkpoint``, a ``mladv train``
``model.pt``), and the batch is held-out images the model classifies correctly, with their
labels (misclassified ones would be fooled for free; in real use some are, so ``refine`` costs
at most this much). MLAdv is timed twice, with its defaults (``refine`` included, as used) and
with ``refine=0`` (the fixed per-step cost); ``ratio`` and ``ratio_refine0`` are each over PGD
in the same run.

    python benchmarks/attack_step.py --arch resnet18 --size 64 --batch 16 --repeats 3 --threads 1
    python benchmarks/attack_step.py --arch resnet50 --size 224 --batch 32 --device cuda \\
        --precision bf16 --channels-last --profile 25

The three attacks alternate (rotating order, so machine noise hits them alike); each time is the
median of ``--repeats`` calls. Per-step time = (one full call with ``--steps`` steps) / steps, so
it includes each attack's one-off work (MLAdv's success checks and ``refine``, PGD's random
start). The CPU time of the process is reported too (``*_cpu_s``, ``ratio_cpu``): on a shared,
busy machine run with ``--threads 1`` and read ``ratio_cpu``. ``--precision bf16`` and
``--channels-last`` apply to all three attacks (the Attack base's ``precision`` /
``channels_last``; the model is put in channels_last once, before timing).

``--profile N`` profiles one call of MLAdv (defaults) and one of PGD (torch.profiler) and prints
to stderr MLAdv's top-N operators by self time (CUDA time on a GPU, else CPU time) and the top-N
operators by self time MLAdv spends beyond PGD (MLAdv minus PGD per operator): where the rest
goes. The JSON line then also holds that difference (``profile_beyond_pgd_ms``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from _common import environment, timed
from mladv.attacks import make_attack, parse_options
from mladv.attacks.base import Attack
from mladv.data import DataError, ImageSet, load_source, split_imageset
from mladv.data.split import choose_split
from mladv.models import build_model, load_checkpoint, save_checkpoint
from mladv.training import train_classifier
from mladv.utils import resolve_device


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=None,
                   help="image side (default: the checkpoint's, else 128)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--checkpoint", default=None, help="a mladv checkpoint (model.pt) to attack")
    p.add_argument("--data", default="phantoms:64",
                   help="data source (mladv's --data syntax): trains the model, gives the batch")
    p.add_argument("--train-epochs", type=int, default=6,
                   help="epochs to train when no --checkpoint (0: untrained, random weights)")
    p.add_argument("--train-lr", type=float, default=1e-3)
    p.add_argument("--save-checkpoint", default=None, metavar="PATH",
                   help="save the model trained here (reuse it with --checkpoint PATH)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--mladv-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra MLAdv option, e.g. balance=calibrated (repeatable)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="print the top ROWS operators of one MLAdv call, and beyond PGD")
    args = p.parse_args(argv)
    if min(args.batch, args.steps, args.repeats) < 1 or args.train_epochs < 0:
        p.error("--batch, --steps and --repeats must be >= 1, --train-epochs >= 0")
    return args


def _held_out(data: ImageSet, ckpt: dict[str, Any], checkpoint: str, source: str) -> ImageSet:
    """The checkpoint's own test split of ``data`` without any image it trained on: the
    library's one held-out selection (:func:`mladv.data.split.choose_split`, as ``mladv attack
    --split test``)."""
    try:
        return choose_split(data, ckpt, "test", checkpoint=checkpoint, data=source)[0]
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def _model_and_batch(args: argparse.Namespace, device: torch.device
                     ) -> tuple[nn.Module, Tensor, Tensor, dict[str, Any]]:
    """The trained (or loaded) model in eval mode and ``--batch`` held-out images + labels."""
    if args.checkpoint:
        model, ckpt = load_checkpoint(args.checkpoint)
        size = args.size or int(ckpt["image_size"])
        data = load_source(args.data, size, classes=list(ckpt["classes"]))
        held_out = _held_out(data, ckpt, args.checkpoint, args.data)
        info: dict[str, Any] = {"model": args.checkpoint, "arch": ckpt["arch"]}
    else:
        size = args.size or 128
        data = load_source(args.data, size)
        train, held_out = split_imageset(data, test_size=0.25, seed=0)
        torch.manual_seed(0)
        model = build_model(args.arch, len(data.classes)).to(device)
        if args.train_epochs:
            train_classifier(model, train, epochs=args.train_epochs, batch_size=32,
                             lr=args.train_lr, seed=0, progress=False,
                             precision=args.precision, channels_last=args.channels_last)
        if args.save_checkpoint:
            save_checkpoint(args.save_checkpoint, model, classes=data.classes, image_size=size,
                            epoch=args.train_epochs, train_images=train.images)
        info = {"model": f"trained {args.train_epochs} epochs on {len(train.labels)} images"
                if args.train_epochs else "untrained (random weights)", "arch": args.arch}
    model = model.to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)  # once, outside the timings
    with torch.no_grad():
        n = len(held_out.labels)
        right = torch.cat([model(held_out.images[i:i + 64].to(device)).argmax(1).cpu()
                           == held_out.labels[i:i + 64] for i in range(0, n, 64)])
    info["held_out_accuracy"] = round(right.float().mean().item(), 4)
    if right.sum() < 2:
        print(f"warning: the model classifies {int(right.sum())} held-out images correctly; "
              f"attack times on misclassified images say little (train longer)", file=sys.stderr)
        right[:] = True
    # correctly classified images only: none of them is fooled for free
    pool_x, pool_y = held_out.images[right], held_out.labels[right]
    reps = -(-args.batch // len(pool_y))
    images = pool_x.repeat(reps, 1, 1, 1)[:args.batch].to(device)
    labels = pool_y.repeat(reps)[:args.batch].to(device)
    return model, images, labels, {**info, "size": size, "data": args.data}


def _profile(fn: Callable[[], Any], device: torch.device) -> Any:
    """Operator averages of one call of ``fn``, recorded after one unrecorded call under the
    profiler (its start-up cost would otherwise land on the first operator)."""
    from torch.profiler import ProfilerActivity, profile, schedule
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, schedule=schedule(wait=0, warmup=1, active=1),
                 acc_events=True) as prof:
        for _ in range(2):
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            prof.step()
    return prof.key_averages()


def _self_ms(averages: Any, key: str) -> dict[str, tuple[float, int]]:
    return {e.key: (getattr(e, key) / 1000.0, e.count) for e in averages}


def _beyond(mladv: dict[str, tuple[float, int]], pgd: dict[str, tuple[float, int]], rows: int
            ) -> list[tuple[str, float, float, int, int]]:
    """(op, MLAdv ms, PGD ms, MLAdv calls, PGD calls), largest MLAdv - PGD first."""
    names = set(mladv) | set(pgd)
    table = [(n, mladv.get(n, (0.0, 0))[0], pgd.get(n, (0.0, 0))[0], mladv.get(n, (0.0, 0))[1],
              pgd.get(n, (0.0, 0))[1]) for n in names]
    return sorted(table, key=lambda r: r[2] - r[1])[:rows]


def _print_profile(runs: dict[str, Callable[[], Any]], device: torch.device, rows: int
                   ) -> list[list[Any]]:
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    mladv = _profile(runs["mladv"], device)
    pgd = _profile(runs["pgd"], device)
    print(f"== MLAdv (defaults), one call: top {rows} operators by {key}", file=sys.stderr)
    print(mladv.table(sort_by=key, row_limit=rows), file=sys.stderr)
    beyond = _beyond(_self_ms(mladv, key), _self_ms(pgd, key), rows)
    total_m = sum(v for v, _ in _self_ms(mladv, key).values())
    total_p = sum(v for v, _ in _self_ms(pgd, key).values())
    print(f"== where MLAdv's time beyond PGD goes ({key}, one call each; MLAdv {total_m:.1f} ms,"
          f" PGD {total_p:.1f} ms, difference {total_m - total_p:.1f} ms)", file=sys.stderr)
    print(f"{'operator':<44}{'MLAdv ms':>11}{'PGD ms':>11}{'diff ms':>11}{'calls':>14}",
          file=sys.stderr)
    for name, m, p, cm, cp in beyond:
        name = "(Python between ops: ProfilerStep)" if name.startswith("ProfilerStep") else name
        print(f"{name[:43]:<44}{m:>11.2f}{p:>11.2f}{m - p:>11.2f}{f'{cm}/{cp}':>14}",
              file=sys.stderr)
    return [[name, round(m - p, 3), cm, cp] for name, m, p, cm, cp in beyond]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    try:
        opts = parse_options(args.mladv_option)
        model, images, labels, info = _model_and_batch(args, device)
        compute = {"precision": args.precision, "channels_last": args.channels_last}
        attacks: dict[str, Attack] = {
            "mladv": make_attack("mladv", model, steps=args.steps, seed=0, **compute, **opts),
            "mladv_refine0": make_attack("mladv", model, steps=args.steps, seed=0, **compute,
                                         **{**opts, "refine": 0}),
            "pgd": make_attack("pgd", model, steps=args.steps, seed=0, **compute),
        }
    except (ValueError, DataError) as exc:
        raise SystemExit(f"error: {exc}") from None

    adv: dict[str, Tensor] = {}

    def call(name: str) -> Callable[[], None]:
        def run() -> None:
            adv[name] = attacks[name](images, labels)
        return run

    runs = {name: call(name) for name in attacks}
    for fn in runs.values():  # warm-up (allocator, oneDNN kernels, cuDNN autotune)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu_times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % 3:] + names[:r % 3]:
            wall, cpu = timed(runs[name], device)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    beyond = _print_profile(runs, device, args.profile) if args.profile else None

    step = {k: statistics.median(v) / args.steps for k, v in times.items()}
    step_cpu = {k: statistics.median(v) / args.steps for k, v in cpu_times.items()}
    with torch.no_grad():
        fooled = {k: round((model(x).argmax(1) != labels).float().mean().item(), 4)
                  for k, x in adv.items()}
    result: dict[str, Any] = {
        "benchmark": "attack_step", **info, "batch": args.batch, "steps": args.steps,
        "repeats": args.repeats, "device": str(device), "threads": torch.get_num_threads(),
        "precision": args.precision, "channels_last": args.channels_last, "mladv_options": opts,
        "ratio": round(step["mladv"] / step["pgd"], 3),
        "ratio_refine0": round(step["mladv_refine0"] / step["pgd"], 3),
        "ratio_cpu": round(step_cpu["mladv"] / step_cpu["pgd"], 3),
        "ratio_refine0_cpu": round(step_cpu["mladv_refine0"] / step_cpu["pgd"], 3),
        **{f"{k}_step_s": round(v, 5) for k, v in step.items()},
        **{f"{k}_step_cpu_s": round(v, 5) for k, v in step_cpu.items()},
        "mladv_backward_passes": getattr(attacks["mladv"], "backward_passes", None),
        "mladv_refine0_backward_passes": getattr(attacks["mladv_refine0"], "backward_passes",
                                                 None),
        "fooled": fooled,
        **{f"{k}_call_s": [round(t, 4) for t in v] for k, v in times.items()},
        **environment(device),
    }
    if beyond is not None:
        result["profile_beyond_pgd_ms"] = beyond
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
