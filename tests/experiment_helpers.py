"""The miniature experiment runs that several test modules share as module fixtures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mladv.experiment import run_experiment
from mladv.experiment.config import validate_config
from mladv.experiment.metrics import mean_std
from mladv.logs import quiet_log


def run_quietly(factory: pytest.TempPathFactory, name: str,
                raw: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Run the experiment ``raw`` (a config dict) in a fresh folder, silently -> (out, results)."""
    out = factory.mktemp(name) / "run"
    return out, run_experiment(validate_config(raw), out, log=quiet_log)


def hand_results(values: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """A ``results.json``-shaped dict from hand-written per-seed values ``{arm: {metric:
    [seed 0, seed 1, ...]}}``: ``arms``, ``seeds``, ``runs`` (every run took 1 s) and the
    ``summary`` that ``collect_results`` would compute from them."""

    n = max(len(v) for arm in values.values() for v in arm.values())
    runs = [{"arm": arm, "seed": s, "timings": {"train_wall_s": 1.0, "train_cpu_s": 1.0},
             "metrics": {m: v[s] for m, v in metrics.items() if s < len(v)}}
            for arm, metrics in values.items() for s in range(n)
            if any(s < len(v) for v in metrics.values())]
    summary = {arm: {m: mean_std(v) for m, v in metrics.items()} for arm, metrics in values.items()}
    return {"arms": list(values), "seeds": list(range(n)), "runs": runs, "summary": summary,
            "config": {"arms": list(values)}}
