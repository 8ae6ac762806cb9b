"""Images/s of ``mladv augment`` end to end vs the attack alone, and the peak memory of each.

Each measurement runs in a fresh child process (so peak RSS is its own): ``augment`` is the
command exactly as a user runs it (read the checkpoint, load the data, craft every shard, write
it atomically, merge the shards and compute the metrics), ``attack`` loads the same checkpoint
and data untimed and then times only :func:`mladv.crafting.craft` on the same images with the
same attack options. One run, the two alternating, median of ``--repeats``; one JSON line.

    python benchmarks/generate.py --arch resnet18 --size 64 --data phantoms:8 --steps 5 --repeats 3

``ratio`` = augment seconds / attack seconds (the target: <= 1.15). Both child timings exclude
the interpreter start and the imports (a fixed cost per run, not per image; the whole child
process, imports included, is reported as ``*_process_s``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
import torch
if args["threads"]:
    torch.set_num_threads(args["threads"])
if args["mode"] == "augment":
    from mladv.cli import app  # imported before the clock starts: a fixed cost, not per image
    start = time.perf_counter()
    cmd = ["augment", args["checkpoint"], args["data"], "--split", "all", "--attack", "mladv",
           "--steps", str(args["steps"]), "--batch-size", str(args["batch"]),
           "--shard-size", str(args["shard_size"]), "--out", args["out"],
           "--device", args["device"]]
    app(args=cmd, standalone_mode=False)
    n = None
else:
    from mladv.attacks import make_attack
    from mladv.crafting import craft
    from mladv.data import load_source
    from mladv.models import load_checkpoint
    from mladv.utils import resolve_device
    model, ckpt = load_checkpoint(args["checkpoint"], map_location=resolve_device(args["device"]))
    data = load_source(args["data"], ckpt["image_size"], classes=ckpt["classes"])
    atk = make_attack("mladv", model, eps=8 / 255, steps=args["steps"], seed=0)
    start = time.perf_counter()
    adv = craft(atk, data.images, data.labels, batch_size=args["batch"], progress=False)
    if adv.device.type == "cuda":
        torch.cuda.synchronize()
    n = adv.shape[0]
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
print("RESULT " + json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "gpu_peak_mb": gpu_mb,
                              "n": n}))
"""


def _child(options: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(options)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {options['mode']} child failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "process_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--data", default="phantoms:8", help="'phantoms:N' (3N images) or a folder")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from _common import environment
    from mladv.data import load_source
    from mladv.models import build_model, save_checkpoint

    with tempfile.TemporaryDirectory(prefix="mladv-generate-") as tmp:
        classes = load_source(args.data, args.size).classes
        torch.manual_seed(0)
        ckpt = Path(tmp) / "model.pt"
        save_checkpoint(ckpt, build_model(args.arch, len(classes)), classes=classes,
                        image_size=args.size)
        base = {"checkpoint": str(ckpt), "data": args.data, "steps": args.steps,
                "batch": args.batch, "shard_size": args.shard_size, "device": args.device,
                "threads": args.threads}
        runs: dict[str, list[dict[str, Any]]] = {"augment": [], "attack": []}
        for r in range(args.repeats):
            for mode in (("augment", "attack") if r % 2 == 0 else ("attack", "augment")):
                out = str(Path(tmp) / f"out-{r}")  # a fresh folder: nothing to resume
                runs[mode].append(_child({**base, "mode": mode, "out": out}))
        n = next(x["n"] for x in runs["attack"])

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[mode])

    aug_s, atk_s = med("augment", "seconds"), med("attack", "seconds")
    result = {
        "benchmark": "generate", "arch": args.arch, "size": args.size, "data": args.data,
        "n": n, "steps": args.steps, "batch": args.batch, "shard_size": args.shard_size,
        "repeats": args.repeats, "device": args.device, "threads": args.threads,
        "augment_img_s": round(n / aug_s, 3), "attack_img_s": round(n / atk_s, 3),
        "ratio": round(aug_s / atk_s, 3),
        "augment_peak_rss_mb": round(med("augment", "peak_rss_mb"), 1),
        "attack_peak_rss_mb": round(med("attack", "peak_rss_mb"), 1),
        "augment_gpu_peak_mb": runs["augment"][0]["gpu_peak_mb"],
        "attack_gpu_peak_mb": runs["attack"][0]["gpu_peak_mb"],
        "augment_s": [round(x["seconds"], 2) for x in runs["augment"]],
        "attack_s": [round(x["seconds"], 2) for x in runs["attack"]],
        "augment_process_s": round(med("augment", "process_s"), 2),
        "attack_process_s": round(med("attack", "process_s"), 2),
        **environment(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
