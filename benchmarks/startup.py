"""Start-up time (issue 25): ``mladv --help``, ``mladv train --help`` and ``import mladv`` beside
``python -c "import torch"`` (what the help texts no longer pay) and ``python -c pass`` (the
interpreter alone), each a fresh subprocess, the commands rotating their order each repeat; the
median of ``--repeats`` runs of each, wall seconds and CPU seconds (user + system of the child:
on a shared machine the CPU time moves much less than the wall time). One JSON line::

    python benchmarks/startup.py --repeats 5

This script imports neither torch nor mladv itself (versions from the installed metadata).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path


def commands(python: str) -> dict[str, list[str]]:
    """Name -> argv; ``mladv`` is the console script beside ``python`` (``-m mladv`` if none)."""
    script = Path(python).parent / "mladv"
    mladv = [str(script)] if script.is_file() else [python, "-m", "mladv"]
    return {"mladv_help": [*mladv, "--help"], "mladv_train_help": [*mladv, "train", "--help"],
            "import_mladv": [python, "-c", "import mladv"],
            "import_torch": [python, "-c", "import torch"], "python": [python, "-c", "pass"]}


def run_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run of ``argv``; a failure raises."""
    before = os.times()
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                          - before.children_system)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    todo = commands(args.python)
    names = list(todo)
    for argv in todo.values():  # warm the file cache once: every timed run then reads from RAM
        run_once(argv)
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = run_once(todo[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    out: dict[str, object] = {f"{n}_s": round(statistics.median(walls[n]), 3) for n in names}
    out |= {f"{n}_cpu_s": round(statistics.median(cpus[n]), 3) for n in names}
    torch_s = statistics.median(cpus["import_torch"])
    out |= {f"{n}_over_import_torch_cpu": round(statistics.median(cpus[n]) / torch_s, 3)
            for n in ("mladv_help", "mladv_train_help", "import_mladv")}
    out |= {"repeats": args.repeats, "torch": version("torch"), "mladv": version("mladv"),
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "mladv_script": shutil.which("mladv", path=str(Path(args.python).parent)) is not None,
            "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
