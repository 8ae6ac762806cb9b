"""What the steps of an experiment run share: the :class:`Run` (config, folder, device, data)
and the :class:`Timer`. Both ``run.py`` and ``report.py`` import it; neither imports the other
for it."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import ImageSet
from ..logs import Log, quiet_log, stderr_log
from ..models import ImageClassifier
from .config import ExperimentConfig

__all__ = ["Log", "Run", "Timer", "quiet_log", "stderr_log"]


@dataclass
class Timer:
    """Wall-clock and process CPU seconds of a block (CPU time sums all threads, so
    ``cpu / threads`` estimates the wall time on an unshared machine)."""

    wall: float = 0.0
    cpu: float = 0.0

    @contextmanager
    def __call__(self) -> Iterator[Timer]:
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield self
        finally:
            self.wall += time.perf_counter() - w0
            self.cpu += time.process_time() - c0

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_wall_s": round(self.wall, 3), f"{prefix}_cpu_s": round(self.cpu, 3)}


@dataclass
class Run:
    """One experiment run: its config, folder, device and data."""

    cfg: ExperimentConfig
    out: Path
    device: torch.device
    train: ImageSet
    test: ImageSet
    split_info: dict[str, Any]
    robust_index: list[int]
    log: Log = stderr_log
    bases: dict[int, tuple[ImageClassifier, dict[str, Any]]] = field(default_factory=dict)
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)  # online arm -> grid point

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed-{seed}"
