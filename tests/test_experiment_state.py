"""What the steps of an experiment run share (mladv.experiment.state): the Timer, the Run's
folders, and the readers of a run folder (the selection readers are tested in test_selection)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from mladv.experiment import state
from mladv.experiment.state import Run, Timer, pick, point_name, selection_dir


def test_timer_adds_the_wall_and_cpu_seconds_of_every_block(monkeypatch):
    clock = iter([10.0, 12.5, 20.0, 21.0])  # two blocks: 2.5 s and 1.0 s of wall time
    cpu = iter([100.0, 104.0, 200.0, 200.25])  # 4.0 s and 0.25 s of CPU time
    monkeypatch.setattr(state.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(state.time, "process_time", lambda: next(cpu))
    timer = Timer()
    with timer():
        pass
    with timer():
        pass
    assert (timer.wall, timer.cpu) == (3.5, 4.25)
    assert timer.as_dict("craft") == {"craft_wall_s": 3.5, "craft_cpu_s": 4.25}


def test_timer_counts_a_block_that_raises(monkeypatch):
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(state.time, "perf_counter", lambda: next(clock))
    timer = Timer()
    with pytest.raises(RuntimeError), timer():
        raise RuntimeError
    assert timer.wall == 2.0


def test_timer_rounds_to_milliseconds():
    assert Timer(wall=1.23456, cpu=0.0004).as_dict("eval") == {"eval_wall_s": 1.235,
                                                               "eval_cpu_s": 0.0}


def test_run_folders_and_classes():
    run = Run(SimpleNamespace(), Path("out"), None, SimpleNamespace(classes=["a", "b"]),  # type: ignore[arg-type]
              None, {}, [])  # type: ignore[arg-type]
    assert run.seed_dir(2) == Path("out") / "seed-2" and run.classes == ["a", "b"]
    assert selection_dir(run) == Path("out") / "selection"


@pytest.mark.parametrize(("point", "name"), [
    ({"eps": 1, "steps": 1, "fraction": None}, "eps1-steps1-fracall"),
    ({"eps": 0.5, "steps": 3, "fraction": 0.25}, "eps0.5-steps3-frac0.25"),
    ({"eps": 8.0, "steps": 10, "fraction": 1.0}, "eps8-steps10-frac1"),
])
def test_point_name_spells_each_grid_point(point, name):
    assert point_name(point) == name


def test_pick_keeps_the_keys_in_the_order_given():
    assert list(pick({"a": 1, "b": 2, "c": 3}, ("c", "a"))) == ["c", "a"]
    assert pick({"a": 1, "b": 2, "c": 3}, ("c", "a")) == {"c": 3, "a": 1}
