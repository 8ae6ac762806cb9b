"""The miniature experiment runs that several test modules share as module fixtures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mladv.experiment import run_experiment
from mladv.experiment.config import validate_config
from mladv.experiment.state import quiet_log


def run_quietly(factory: pytest.TempPathFactory, name: str,
                raw: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Run the experiment ``raw`` (a config dict) in a fresh folder, silently -> (out, results)."""
    out = factory.mktemp(name) / "run"
    return out, run_experiment(validate_config(raw), out, log=quiet_log)
