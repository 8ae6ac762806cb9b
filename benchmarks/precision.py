"""bf16 autocast and channels_last on the CPU (issue 24): images/s of a training step, a PGD step
and an MLAdv step for the paper's architectures, fp32 vs bf16 vs bf16 + channels_last, measured
in ONE process, alternating, so the ratios share the machine's noise; one JSON line on stdout.

For each ``--archs`` x ``--sizes``: a fixed random batch of ``--batch`` 1-channel images, the
model from :func:`mladv.models.build_model` (3 classes, from scratch); each variant is timed over
``--steps`` training steps (AdamW, cross-entropy, autocast around forward and loss as
:func:`mladv.training.train_classifier` does) and over one ``--attack-steps``-step call of PGD
and of MLAdv (``refine=0``: the fixed per-step cost), the variants rotating their order each
repeat (variants: fp32, fp32 + channels_last, bf16, bf16 + channels_last); each time is the
median of ``--repeats``. Reported: images/s (wall) and the CPU seconds of the process per
image (``*_cpu``): on a shared machine read ``ratio_cpu`` (speed over fp32 in CPU time, > 1 is
faster).

With ``--accuracy N`` it also trains a flips model each way (fp32 and bf16, same seed and
split) for ``N`` epochs on ``--data`` and reports the test accuracy of each (issue 24: bf16 is
adopted only if its accuracy is within the seed spread of fp32)::

    python benchmarks/precision.py --archs resnet50,resnet101,resnet152,vgg16_bn --sizes 64,96 \
        --batch 16 --steps 3 --repeats 3 --threads 2
    python benchmarks/precision.py --archs resnet50 --sizes 64 --accuracy 6 \
        --data ../shared/data/cxr3-full --threads 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from _common import environment, timed
from mladv.models import build_model
from mladv.utils import amp_context

VARIANTS: dict[str, tuple[str, bool]] = {
    "fp32": ("fp32", False),
    "fp32_cl": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16_cl": ("bf16", True),
}


def train_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                precision: str, channels_last: bool) -> None:
    """``steps`` AdamW steps on one batch (the training loop's inner body)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with amp_context(x.device, precision):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


def attack_call(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                steps: int, precision: str, channels_last: bool) -> None:
    """One ``steps``-step call of PGD or MLAdv (refine 0) at 8/255."""
    from mladv.attacks import make_attack
    options: dict[str, Any] = {"steps": steps, "precision": precision,
                               "channels_last": channels_last}
    if name == "mladv":
        options["refine"] = 0
    make_attack(name, model, eps=8 / 255, seed=0, **options)(x, y)


def _median(times: list[tuple[float, float]]) -> tuple[float, float]:
    return (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times))


def speed(arch: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of training, PGD and MLAdv per variant for one architecture and size."""
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, size, size, generator=g)
    y = torch.randint(0, 3, (args.batch,), generator=g)
    torch.manual_seed(0)
    model = build_model(arch, 3)
    jobs: dict[str, Callable[[str, bool], None]] = {
        "train": lambda p, cl: train_steps(model, x, y, steps=args.steps, precision=p,
                                           channels_last=cl),
        "pgd": lambda p, cl: attack_call("pgd", model, x, y, steps=args.attack_steps,
                                         precision=p, channels_last=cl),
        "mladv": lambda p, cl: attack_call("mladv", model, x, y, steps=args.attack_steps,
                                           precision=p, channels_last=cl),
    }
    out: dict[str, Any] = {"arch": arch, "size": size}
    for job, fn in jobs.items():
        if job not in args.jobs:
            continue
        per = {"train": args.steps, "pgd": args.attack_steps, "mladv": args.attack_steps}[job]
        names = list(VARIANTS)
        for name in names:  # warm-up: oneDNN primitive creation, autocast caches
            fn(*VARIANTS[name])
        times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                prec, cl = VARIANTS[name]
                times[name].append(timed(lambda f=fn, p=prec, c=cl: f(p, c), device))
                if cl:
                    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        for name in names:
            wall, cpu = _median(times[name])
            images = args.batch * per
            out[f"{job}_{name}_img_s"] = round(images / wall, 2)
            out[f"{job}_{name}_cpu_ms_per_img"] = round(1000 * cpu / images, 2)
        for name in names[1:]:
            out[f"{job}_ratio_{name}"] = round(out[f"{job}_{name}_img_s"]
                                               / out[f"{job}_fp32_img_s"], 3)
            out[f"{job}_ratio_cpu_{name}"] = round(out[f"{job}_fp32_cpu_ms_per_img"]
                                                   / out[f"{job}_{name}_cpu_ms_per_img"], 3)
    return out


def accuracy(arch: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Test accuracy of a flips model trained fp32 vs bf16 (same seed, split and epochs)."""
    from mladv.data import load_source, split_imageset
    from mladv.models import predict_logits
    from mladv.training import train_classifier

    data = load_source(args.data, size)
    train, test = split_imageset(data, test_size=0.15, seed=0)
    out: dict[str, Any] = {"arch": arch, "size": size, "epochs": args.accuracy,
                           "n_train": len(train), "n_test": len(test)}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(arch, len(data.classes))
        start = time.perf_counter()
        train_classifier(model, train, epochs=args.accuracy, batch_size=32, lr=2e-3, seed=0,
                         progress=False, precision=precision,  # type: ignore[arg-type]
                         channels_last=False)
        out[f"train_s_{precision}"] = round(time.perf_counter() - start, 1)
        pred = predict_logits(model, test.images, precision=precision).argmax(1)
        out[f"acc_{precision}"] = round(float((pred == test.labels).float().mean()), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="resnet50,resnet101,resnet152,vgg16_bn")
    p.add_argument("--sizes", default="64,96")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    p.add_argument("--attack-steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--jobs", default="train,pgd,mladv")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--accuracy", type=int, default=0,
                   help="also train a flips model fp32 vs bf16 for this many epochs on --data")
    p.add_argument("--data", default="../shared/data/cxr3-full")
    args = p.parse_args(argv)
    args.jobs = set(args.jobs.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [speed(a, int(s), args) for a in args.archs.split(",") for s in args.sizes.split(",")]
    result: dict[str, Any] = {"benchmark": "precision", **environment(torch.device("cpu")),
                              "threads": torch.get_num_threads(), "batch": args.batch,
                              "steps": args.steps, "attack_steps": args.attack_steps,
                              "repeats": args.repeats, "speed": rows}
    if args.accuracy:
        result["accuracy"] = [accuracy(a, int(s), args) for a in args.archs.split(",")
                              for s in args.sizes.split(",")]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
