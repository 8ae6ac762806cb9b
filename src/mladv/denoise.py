"""BM3D denoising of (adversarial) images in a process pool, and what it removes of a perturbation.

BM3D (the ``bm3d`` package) takes about a second per 128 x 128 image on one core, so images run
in a :class:`concurrent.futures.ProcessPoolExecutor` over all cores, and callers cap how many
images it sees (:func:`select_for_bm3d`).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import Tensor


def select_for_bm3d(n: int, max_images: int | None, seed: int) -> Tensor:
    """Indices of the images BM3D will see: all ``n`` when within the cap, else a sorted sample
    of ``max_images`` drawn with ``seed`` (and a warning saying so).

    Shape: -> ``min(n, max_images)`` int64.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"the BM3D image cap must be >= 1, got {max_images}")
    if max_images is None or n <= max_images:
        return torch.arange(n)
    warnings.warn(f"BM3D: {n} images exceed the cap of {max_images}; denoising a sample of "
                  f"{max_images} drawn with seed {seed}", stacklevel=2)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:max_images].sort().values


def _bm3d_one(image: np.ndarray, sigma: float, profile: str) -> np.ndarray:
    """BM3D of one ``H x W`` float image (worker function; top level so it pickles)."""
    import bm3d

    out = bm3d.bm3d(image.astype(np.float32), sigma_psd=sigma, profile=profile)
    return np.clip(np.asarray(out, dtype=np.float32).reshape(image.shape), 0.0, 1.0)


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux, else ``spawn``. The workers run only NumPy and bm3d's C library (no
    OpenMP; it never touches torch), so forking is safe, and it saves every worker from
    re-importing torch and the main module: measured on a busy 2-core machine, a 2-worker pool
    took 3.5 s with fork and 36 s with spawn."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def bm3d_denoise(images: Tensor, sigma: float, *, workers: int | None = None,
                 profile: str = "np", progress: bool = False) -> Tensor:
    """Denoise every channel of every image with BM3D (noise standard deviation ``sigma`` in
    [0, 1] units), ``workers`` processes at once (default: all cores; 1 runs in-process).

    Shape: ``N x C x H x W`` in [0, 1] -> ``N x C x H x W`` float32 in [0, 1], on the CPU.
    """
    if not sigma > 0:
        raise ValueError(f"BM3D sigma must be > 0 (in [0, 1] units), got {sigma}")
    arr = images.detach().float().cpu().numpy()
    planes = [arr[i, c] for i in range(arr.shape[0]) for c in range(arr.shape[1])]
    workers = max(1, min(workers or os.cpu_count() or 1, len(planes)))
    from .utils import progress_bar

    bar = progress_bar(len(planes), "BM3D", "img", enabled=progress)
    if workers == 1:
        done = []
        for p in planes:
            done.append(_bm3d_one(p, sigma, profile))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            futures = [pool.submit(_bm3d_one, p, sigma, profile) for p in planes]
            done = []
            for f in futures:
                done.append(f.result())
                bar.update(1)
    bar.close()
    out = np.stack(done).reshape(arr.shape) if done else arr.copy()
    return torch.from_numpy(out)


def energy_removed(clean: Tensor, adv: Tensor, clean_denoised: Tensor,
                   adv_denoised: Tensor) -> Tensor:
    """Share of the perturbation's energy that denoising removed, per image:

        ``1 - ||D(x_a) - D(x)||^2 / ||x_a - x||^2``

    where ``D`` is the denoiser: what is left of the perturbation is the difference between the
    denoised adversarial and the denoised clean image (comparing against the undenoised clean
    image would count BM3D's smoothing of the anatomy as remaining noise). 1 = all removed,
    0 = untouched, < 0 = amplified; NaN where ``delta`` is 0.

    Shape: four ``N x C x H x W`` tensors -> ``N``.
    """
    before = (adv - clean).flatten(1).double().pow(2).sum(1)
    after = (adv_denoised - clean_denoised).flatten(1).double().pow(2).sum(1)
    ratio = torch.where(before > 0, after / before.clamp_min(1e-30),
                        torch.full_like(before, float("nan")))
    return (1.0 - ratio).float()
