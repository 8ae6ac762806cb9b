"""Shared by the benchmarks: timing one call, and where the JSON line was measured."""
from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any

import torch


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """``torch``, ``machine`` and ``date``; with ``device`` also ``gpu`` (its name, or None)."""
    info: dict[str, Any] = {"torch": torch.__version__,
                            "machine": platform.processor() or platform.machine()}
    if device is not None:
        info["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {**info, "date": time.strftime("%Y-%m-%d")}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call of ``fn``; CUDA work is
    synchronised before and after, so the wall time includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu
