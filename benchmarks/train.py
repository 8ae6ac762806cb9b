"""Training throughput: ``mladv.training.train_classifier`` vs a plain torchvision loop.

Both train the same architecture from the same initial weights on the same in-memory images with
the same optimiser and schedule (AdamW + one-cycle), no augmentation; the plain loop is the
textbook one (``DataLoader(TensorDataset)``, shuffle, ``model(x)``, ``cross_entropy``,
``backward``, ``step``). One run, alternating, median of ``--repeats`` epochs; one JSON line.

    python benchmarks/train.py --arch resnet18 --size 128 --batch 32 --n 128 --repeats 3
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from _common import environment, timed
from mladv.data import ImageSet
from mladv.models import build_model
from mladv.training import amp_context, train_classifier
from mladv.utils import resolve_device


def plain_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
               batch_size: int, lr: float, device: torch.device, precision: str,
               channels_last: bool) -> None:
    """One epoch of the textbook loop (the baseline)."""
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True,
                        pin_memory=device.type == "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(loader),
                                                pct_start=0.2)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with amp_context(device, precision):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--n", type=int, default=128, help="images per epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    images = torch.rand(args.n, 1, args.size, args.size)
    labels = torch.arange(args.n) % 3
    data = ImageSet(images, labels, ["a", "b", "c"], [""] * args.n, [str(i) for i in range(args.n)])
    init = build_model(args.arch, 3)

    def fresh() -> torch.nn.Module:
        return copy.deepcopy(init).to(device)

    runs = {
        "mladv": lambda: train_classifier(fresh(), data, epochs=1, batch_size=args.batch,
                                          lr=1e-3, transform=None, progress=False,
                                          precision=args.precision,
                                          channels_last=args.channels_last),
        "plain": lambda: plain_loop(fresh(), images, labels, batch_size=args.batch, lr=1e-3,
                                    device=device, precision=args.precision,
                                    channels_last=args.channels_last),
    }
    for fn in runs.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            w, c = timed(runs[name], device)
            wall[name].append(w)
            cpu[name].append(c)

    rate = {k: args.n / statistics.median(v) for k, v in wall.items()}
    cpu_rate = {k: args.n / statistics.median(v) for k, v in cpu.items()}
    result = {
        "benchmark": "train", "arch": args.arch, "size": args.size, "batch": args.batch,
        "n": args.n, "repeats": args.repeats, "device": str(device),
        "threads": torch.get_num_threads(), "precision": args.precision,
        "channels_last": args.channels_last,
        "mladv_img_s": round(rate["mladv"], 2), "plain_img_s": round(rate["plain"], 2),
        "ratio": round(rate["mladv"] / rate["plain"], 3),
        "mladv_img_per_cpu_s": round(cpu_rate["mladv"], 2),
        "plain_img_per_cpu_s": round(cpu_rate["plain"], 2),
        "ratio_cpu": round(cpu_rate["mladv"] / cpu_rate["plain"], 3),
        "mladv_epoch_s": [round(t, 3) for t in wall["mladv"]],
        "plain_epoch_s": [round(t, 3) for t in wall["plain"]],
        **environment(device),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
