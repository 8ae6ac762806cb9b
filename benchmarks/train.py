"""Training cost: each adversarial training mode vs plain ``train_classifier``, and
``train_classifier`` vs a textbook torchvision loop.

Every run trains the same architecture from the same initial weights on the same in-memory images
with the same optimiser and schedule (AdamW + one-cycle), no augmentation; the textbook loop is
``DataLoader(TensorDataset)``, shuffle, ``model(x)``, ``cross_entropy``, ``backward``, ``step``.
Modes ``online-A`` / ``advprop-A`` craft each batch's adversarial copies with attack ``A`` against
the current weights (:class:`mladv.adversarial_training.AdversarialBatch`, ``--adv-eps`` in 1/255
units, ``--adv-steps``, ``--adv-fraction``; default: clean + adversarial rows). One run,
alternating, median of ``--repeats`` epochs; ``ratio`` = seconds per epoch of a mode / plain
(wall), ``ratio_cpu`` the same in CPU seconds of the process; one JSON line.

    python benchmarks/train.py --arch small_cnn --size 64 --n 64 --repeats 2 --threads 1  # ~1 min
    python benchmarks/train.py --arch resnet18 --size 128 --batch 32 --n 128 --repeats 3

With ``--data FOLDER`` (an ImageFolder of PNGs, e.g. ``../shared/data/cxr3``) it instead times
our whole training path against the plain torchvision reference on the same ``--n`` images of
that folder: ``ours`` = ``load_folder`` (decoded once, through the uint8 cache) + one epoch of
``train_classifier`` with its flips done on the batch; ``reference`` = one epoch of
``ImageFolder`` (PIL decode, ``Grayscale``, ``Resize``, ``CenterCrop``, ``ToTensor``,
``RandomHorizontalFlip`` per image) + ``DataLoader`` (``num_workers=0``: the same thread count)
+ the same model, batch, optimiser and schedule. ``ratio`` = ours images/s / reference images/s
(>= 1 is faster); ``load_s``: our one-off decode (first, uncached) and cached reload::

    python benchmarks/train.py --data ../shared/data/cxr3 --arch resnet18 --size 64 --n 128 \
        --batch 32 --repeats 3 --threads 2
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from _common import environment, timed
from mladv.data import ImageSet
from mladv.models import build_model
from mladv.training import adversarial_from_options, amp_context, train_classifier
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


def reference_epoch(model: torch.nn.Module, root: str, indices: list[int], *, size: int,
                    batch_size: int, lr: float, device: torch.device) -> None:
    """One epoch of the plain torchvision reference: ImageFolder + DataLoader, PIL decode and
    per-image flips every epoch, AdamW + one-cycle, cross-entropy."""
    from torch.utils.data import Subset
    from torchvision import datasets
    from torchvision import transforms as T
    tf = T.Compose([T.Grayscale(1), T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                    T.RandomHorizontalFlip()])
    loader = DataLoader(Subset(datasets.ImageFolder(root, transform=tf), indices),
                        batch_size=batch_size, shuffle=True, num_workers=0,
                        pin_memory=device.type == "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(loader),
                                                pct_start=0.2)
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def folder_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """``--data``: ours (cached decode + train_classifier) vs the torchvision reference."""
    import tempfile
    import time

    from torchvision import datasets

    from mladv.data import load_folder
    from mladv.training import random_hflip

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n_all = len(datasets.ImageFolder(args.data))
    indices = sorted(torch.randperm(n_all, generator=torch.Generator().manual_seed(0))
                     [:min(args.n, n_all)].tolist())
    load_s = []
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(2):  # first: decode and store; second: from the cache
            start = time.perf_counter()
            data = load_folder(args.data, args.size, cache=cache).subset(indices)
            load_s.append(round(time.perf_counter() - start, 3))
    init = build_model(args.arch, len(data.classes))

    def fresh() -> torch.nn.Module:
        return copy.deepcopy(init).to(device)

    runs: dict[str, Callable[[], Any]] = {
        "ours": lambda: train_classifier(fresh(), data, epochs=1, batch_size=args.batch,
                                         lr=1e-3, transform=random_hflip, progress=False),
        "reference": lambda: reference_epoch(fresh(), args.data, indices, size=args.size,
                                             batch_size=args.batch, lr=1e-3, device=device),
    }
    for fn in runs.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            wall[name].append(timed(runs[name], device)[0])
    img_s = {k: round(len(indices) / statistics.median(v), 2) for k, v in wall.items()}
    result = {
        "benchmark": "train-vs-torchvision", "data": args.data, "arch": args.arch,
        "size": args.size, "batch": args.batch, "n": len(indices), "repeats": args.repeats,
        "device": str(device), "threads": torch.get_num_threads(),
        "ours_img_s": img_s["ours"], "reference_img_s": img_s["reference"],
        "ratio": round(img_s["ours"] / img_s["reference"], 3),
        "epoch_s": {k: [round(t, 3) for t in v] for k, v in wall.items()},
        "load_s": {"first": load_s[0], "cached": load_s[1]}, **environment(device),
    }
    print(json.dumps(result))
    return result


MODES = ("textbook", "plain", "online-pgd", "advprop-pgd", "online-mladv", "advprop-mladv")


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
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated, from {MODES} (plain is always run: the reference)")
    p.add_argument("--adv-eps", type=float, default=1.0, help="1/255 units")
    p.add_argument("--adv-steps", type=int, default=1)
    p.add_argument("--adv-fraction", type=float, default=None)
    p.add_argument("--data", default=None,
                   help="ImageFolder of PNGs: time ours vs the torchvision reference loop on it")
    args = p.parse_args(argv)
    if args.data is not None:
        return folder_benchmark(args)
    modes = ["plain"] + [m for m in args.modes.split(",") if m and m != "plain"]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode {unknown[0]!r}; choose from {MODES}")
    for m in modes[1:]:  # every adversarial option checked before any timing
        if m != "textbook":
            adversarial_from_options(m.split("-")[0], m.split("-")[1], adv_eps=args.adv_eps,
                                     adv_steps=args.adv_steps, adv_fraction=args.adv_fraction)

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

    def run(mode: str) -> Callable[[], Any]:
        if mode == "textbook":
            return lambda: plain_loop(fresh(), images, labels, batch_size=args.batch, lr=1e-3,
                                      device=device, precision=args.precision,
                                      channels_last=args.channels_last)

        def train() -> Any:
            adv = None if mode == "plain" else adversarial_from_options(
                mode.split("-")[0], mode.split("-")[1], adv_eps=args.adv_eps,
                adv_steps=args.adv_steps, adv_fraction=args.adv_fraction)
            return train_classifier(fresh(), data, epochs=1, batch_size=args.batch, lr=1e-3,
                                    transform=None, progress=False, precision=args.precision,
                                    channels_last=args.channels_last, adversarial=adv)
        return train

    runs = {m: run(m) for m in modes}
    for fn in runs.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            w, c = timed(runs[name], device)
            wall[name].append(w)
            cpu[name].append(c)

    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    per_mode = {k: {"img_s": round(args.n / med[k], 2), "epoch_s": [round(t, 3) for t in wall[k]],
                    "ratio": round(med[k] / med["plain"], 3),
                    "ratio_cpu": round(med_cpu[k] / med_cpu["plain"], 3)} for k in runs}
    result = {
        "benchmark": "train", "arch": args.arch, "size": args.size, "batch": args.batch,
        "n": args.n, "repeats": args.repeats, "device": str(device),
        "threads": torch.get_num_threads(), "precision": args.precision,
        "channels_last": args.channels_last, "adv_eps": args.adv_eps,
        "adv_steps": args.adv_steps, "adv_fraction": args.adv_fraction,
        "ratio": {k: v["ratio"] for k, v in per_mode.items()},
        "ratio_cpu": {k: v["ratio_cpu"] for k, v in per_mode.items()},
        "modes": per_mode, **environment(device),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
