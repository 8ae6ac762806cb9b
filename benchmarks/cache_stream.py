"""Peak memory and throughput of the on-disk uint8 cache (``mladv.data.memmap``) vs the in-RAM
float load, on a generated folder of small PNGs; one JSON line on stdout.

    python benchmarks/cache_stream.py --n 20000 --size 64 --batch 256

Each path runs in its own subprocess, so that its peak resident set
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own; ``peak_rss_over_imports_mb`` is that
peak minus the peak right after importing torch and mladv (the floor all paths share):

- ``ram``: ``load_folder(..., cache=False)`` (every PNG decoded and resized into one
  ``N x 1 x S x S`` float32 tensor), then one pass over it in batches;
- ``memmap_build``: the cache built from the same files into an empty cache folder (decode,
  resize, write), then one pass streamed from disk in batches;
- ``memmap_warm``: a new process finding the cache by its fingerprint (no decode), one pass in
  batches, and one shuffled epoch through ``MemmapDataset`` + ``DataLoader``.

Images/s counts images per second of wall time for each phase (``load`` / ``build``, ``stream``).
The images are ``--size`` px already, so nothing is resized and the memmap values equal the
in-RAM ones bit for bit (checked on the first batch). The folder is deleted afterwards unless
``--keep`` names one.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def peak_rss_mb() -> float:
    """This process's peak resident set in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` grey PNGs of ``size`` px in two class folders: a smooth gradient plus noise (so
    they compress like radiographs, not like pure noise)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, size, dtype=np.float32)[None, :] * np.ones((size, 1), np.float32)
    for i in range(n):
        folder = root / ("a" if i % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        img = np.clip(ramp + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:06d}.png", compress_level=1)


def _files(root: Path) -> list[str]:
    from mladv.data.folder import list_images
    return [str(p) for c in ("a", "b") for p in list_images(root / c)]


def _stream(batches: Any) -> tuple[int, float]:
    start, n, total = time.perf_counter(), 0, 0.0
    for x in batches:
        n += int(x.shape[0])
        total += float(x.sum())  # touch every value
    return n, time.perf_counter() - start


def worker(mode: str, root: Path, size: int, batch: int, cache: Path) -> dict[str, Any]:
    """One measured path (module doc), in this process."""
    import torch

    from mladv.data import load_folder
    from mladv.data.memmap import MemmapDataset, build_memmap

    torch.set_num_threads(1)
    imported_mb = peak_rss_mb()  # torch + mladv: the floor every path shares
    out: dict[str, Any] = {}
    if mode == "ram":
        start = time.perf_counter()
        data = load_folder(root, size, cache=False)
        load_s = time.perf_counter() - start
        n, stream_s = _stream(data.images[i:i + batch] for i in range(0, len(data), batch))
        out = {"load_s": load_s, "load_images_per_s": n / load_s, "stream_s": stream_s,
               "stream_images_per_s": n / stream_s,
               "tensor_mb": data.images.numel() * 4 / 2**20}
    else:
        files = _files(root)
        start = time.perf_counter()
        cached = build_memmap(files, size, cache=cache, progress=False)
        build_s = time.perf_counter() - start
        n, stream_s = _stream(cached.batches(batch))
        out = {"build_s" if mode == "memmap_build" else "find_s": build_s,
               "stream_s": stream_s, "stream_images_per_s": n / stream_s,
               "file_mb": cached.path.stat().st_size / 2**20}
        if mode == "memmap_build":
            out["build_images_per_s"] = n / build_s
        else:
            labels = torch.tensor([0 if "/a/" in f else 1 for f in files])
            loader = torch.utils.data.DataLoader(MemmapDataset(cached, labels),
                                                 batch_size=batch, shuffle=True)
            n, epoch_s = _stream(x for x, _ in loader)
            out["shuffled_dataset_images_per_s"] = n / epoch_s
            first = next(cached.batches(batch))
            from mladv.data.folder import read_image
            ref = torch.stack([torch.from_numpy(read_image(f))[None]
                               for f in files[:first.shape[0]]])
            out["bit_identical_first_batch"] = bool(torch.equal(first, ref))
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_rss_over_imports_mb"] = out["peak_rss_mb"] - imported_mb
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="images to generate")
    parser.add_argument("--size", type=int, default=64, help="image side in px")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--keep", type=Path, default=None, help="generate into / reuse FOLDER")
    parser.add_argument("--worker", choices=("ram", "memmap_build", "memmap_warm"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.root, args.size, args.batch, args.cache)))
        return
    base = args.keep or Path(tempfile.mkdtemp(prefix="mladv-cache-stream-"))
    root, cache = base / "images", base / "cache"
    try:
        start = time.perf_counter()
        if not (root / "a").is_dir():
            generate(root, args.n, args.size)
        generate_s = time.perf_counter() - start
        shutil.rmtree(cache, ignore_errors=True)
        result: dict[str, Any] = {"n": args.n, "size": args.size, "batch": args.batch,
                                  "generate_s": round(generate_s, 1)}
        for mode in ("ram", "memmap_build", "memmap_warm"):
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--root",
                                   str(root), "--cache", str(cache), "--size", str(args.size),
                                   "--batch", str(args.batch)],
                                  capture_output=True, text=True, check=True)
            result[mode] = {k: round(v, 2) if isinstance(v, float) else v
                            for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
        result["peak_rss_ratio_ram_over_memmap"] = round(
            result["ram"]["peak_rss_mb"] / result["memmap_warm"]["peak_rss_mb"], 2)
        result["rss_over_imports_ratio_ram_over_memmap"] = round(
            result["ram"]["peak_rss_over_imports_mb"]
            / max(result["memmap_warm"]["peak_rss_over_imports_mb"], 1.0), 2)
        from _common import environment
        result.update(environment())
        print(json.dumps(result))
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
