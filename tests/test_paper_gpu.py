"""benchmarks/paper_gpu.sh, the prepared paper-scale GPU run (issue 15), end to end on the CPU.

``--smoke`` runs the very script the GPU machine runs (calibration, plan, sizing, both studies,
summary) at 32 px on phantoms, so the GPU session cannot be lost to a typo.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper_gpu.sh"
Proc = subprocess.CompletedProcess[str]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paper_gpu", ROOT / "benchmarks" / "paper_gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: float = 2400) -> Proc:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Proc, Path]:
    out = tmp_path_factory.mktemp("paper-gpu")
    # a generous budget: the smoke test checks the pipeline, not this machine's speed
    proc = _run("phantoms:6", str(out), "all", "--smoke", "--budget-s", "1800")
    return proc, out


def test_smoke_run_exits_cleanly(smoke: tuple[Proc, Path]) -> None:
    proc, _ = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_each_part_prints_its_plan_before_it_runs(smoke: Any) -> None:
    proc, _ = smoke
    plans = [json.loads(line.split("plan ", 1)[1]) for line in proc.stdout.splitlines()
             if line.startswith("[paper_gpu] plan ")]
    assert [p["part"] for p in plans] == ["table2", "table1"]
    assert all(p["image_size"] == 32 and p["device"] == "cpu" for p in plans)


def test_summary_holds_both_parts_finished_within_budget(smoke: Any) -> None:
    proc, out = smoke
    summary = json.loads((out / "summary.json").read_text())
    for part in ("table2", "table1"):
        assert summary[part]["returncode"] == 0, proc.stderr[-3000:]
        assert summary[part]["stopped_at_budget"] is False
        assert summary[part]["results"] is not None
    assert summary["torch"] == torch.__version__


def test_sized_configs_are_written_and_are_what_ran(smoke: Any) -> None:
    _, out = smoke
    summary = json.loads((out / "summary.json").read_text())
    cfg = yaml.safe_load((out / "configs" / "paper-gpu.yaml").read_text())
    assert cfg["image_size"] == 32 and cfg["train"]["epochs"] == summary["table2"]["plan"]["epochs"]
    results = summary["table2"]["results"]
    arms = {r["arm"] for r in results["runs"]}
    assert arms == set(cfg["arms"])
    assert len(results["runs"]) == 2 * len(cfg["arms"])  # 2 seeds x every arm


def test_both_reports_are_written(smoke: Any) -> None:
    _, out = smoke
    assert (out / "table2" / "report.md").is_file()
    assert (out / "table1" / "transfer.md").is_file()


def test_missing_data_folder_is_one_line_before_any_work(tmp_path: Path) -> None:
    proc = _run(str(tmp_path / "nope"), str(tmp_path / "out"), "table2", "--smoke", timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"{tmp_path / 'nope'}: data folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_gpu_run_on_a_cpu_refuses_with_one_line(tmp_path: Path) -> None:
    proc = _run("phantoms:6", str(tmp_path / "out"), "table2", timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("[paper_gpu] no CUDA device: this is the GPU run "
                                   "(use --smoke on a CPU)")


def test_epochs_are_the_largest_count_that_fits_the_budget() -> None:
    pg = _module()
    cfg = pg.read_config("table2")
    n, rate = 1868, 900.0
    budget = pg.table2_units(cfg, n, 4) / rate + 1.0  # 4 epochs fit, 5 do not
    sized = pg.size_table2(cfg, n, rate, budget)
    assert sized == {"epochs": 4, "fits": True,
                     "estimate_s": round(pg.table2_units(cfg, n, 4) / rate, 1)}
    assert pg.table2_units(cfg, n, 5) / rate > budget


def test_nothing_fits_gives_one_epoch_and_says_so() -> None:
    pg = _module()
    cfg = pg.read_config("table2")
    sized = pg.size_table2(cfg, 1868, 1.0, 1.0)
    assert sized["epochs"] == 1 and sized["fits"] is False


def test_table2_cost_is_linear_in_epochs() -> None:
    pg = _module()
    cfg = pg.read_config("table2")
    n_tr = 1868 * (1 - cfg["split"]["test_size"])
    n_sel = n_tr * (1 - cfg["online"]["selection"]["val_size"])
    grid = len(cfg["online"]["grid"]["eps"]) * len(cfg["online"]["grid"]["steps"])
    per_epoch = cfg["seeds"] * 13 * n_tr + 2 * grid * 3 * n_sel  # module doc's cost model
    step = pg.table2_units(cfg, 1868, 3) - pg.table2_units(cfg, 1868, 2)
    assert step == pytest.approx(per_epoch, rel=1e-12)
