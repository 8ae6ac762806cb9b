"""Time per step of MLAdv (full method) vs torchattacks PGD on the same model, batch and size.

One run, the two attacks alternating (so machine noise hits both alike), the median of
``--repeats`` timings each; one JSON line on stdout. ``--profile`` also prints the top operators
of one MLAdv call (torch.profiler) to stderr.

    python benchmarks/attack_step.py --arch resnet18 --size 128 --batch 16 --repeats 5 --device cpu

Per-step time = (wall time of one full attack call with ``--steps`` steps) / steps, so it includes
each attack's one-off work (MLAdv's reference forward passes, PGD's random start). The CPU time
of the process is reported too (``*_cpu_s``, ``ratio_cpu``): on a shared, busy machine, run with
``--threads 1`` and read ``ratio_cpu``, which other processes' load barely moves. MLAdv's own
count of backward passes through the model in its last call is reported when it keeps one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import torch

from _common import environment, timed
from mladv.attacks import make_attack, parse_options
from mladv.models import build_model
from mladv.utils import resolve_device


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--channels", type=int, default=1, choices=(1, 3))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--channels-last", action="store_true", help="model in channels_last memory")
    p.add_argument("--mladv-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra MLAdv option, e.g. balance=literal (repeatable)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="print the top ROWS operators of one MLAdv call to stderr")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.arch, 3).to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = torch.rand(args.batch, args.channels, args.size, args.size, device=device)
    labels = torch.arange(args.batch, device=device) % 3
    try:
        opts = parse_options(args.mladv_option)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    mladv = make_attack("mladv", model, steps=args.steps, seed=0, **opts)
    pgd = make_attack("pgd", model, steps=args.steps, seed=0)

    runs = {"mladv": lambda: mladv(images, labels), "pgd": lambda: pgd(images, labels)}
    for fn in runs.values():  # warm-up (allocator, oneDNN kernels, cuDNN autotune)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu_times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            wall, cpu = timed(runs[name], device)
            times[name].append(wall)
            cpu_times[name].append(cpu)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            runs["mladv"]()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile), file=sys.stderr)

    mladv_step = statistics.median(times["mladv"]) / args.steps
    pgd_step = statistics.median(times["pgd"]) / args.steps
    mladv_cpu = statistics.median(cpu_times["mladv"]) / args.steps
    pgd_cpu = statistics.median(cpu_times["pgd"]) / args.steps
    result = {
        "benchmark": "attack_step", "arch": args.arch, "size": args.size, "batch": args.batch,
        "channels": args.channels, "steps": args.steps, "repeats": args.repeats,
        "device": str(device), "threads": torch.get_num_threads(),
        "channels_last": args.channels_last, "mladv_options": opts,
        "mladv_step_s": round(mladv_step, 5), "pgd_step_s": round(pgd_step, 5),
        "ratio": round(mladv_step / pgd_step, 3),
        "mladv_step_cpu_s": round(mladv_cpu, 5), "pgd_step_cpu_s": round(pgd_cpu, 5),
        "ratio_cpu": round(mladv_cpu / pgd_cpu, 3),
        "mladv_backward_passes": getattr(mladv, "backward_passes", None),
        "mladv_call_s": [round(t, 4) for t in times["mladv"]],
        "pgd_call_s": [round(t, 4) for t in times["pgd"]],
        **environment(device),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
