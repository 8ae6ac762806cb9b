"""Mutation testing of the modules that produce numbers: mutmut 3, once per module, with only the
tests that cover that module; the results go to ``docs/mutation.json`` and ``docs/mutation.md``.

    python benchmarks/mutate.py                      # every module (about 30 min on 2 CPU cores)
    python benchmarks/mutate.py claims projection    # only these; the others keep their results
    python benchmarks/mutate.py --report             # rewrite docs/mutation.md from the JSON

mutmut 3 reads its configuration from ``pyproject.toml`` in the folder it runs in, and picks the
tests of each mutant among ``pytest_add_cli_args_test_selection`` (the tests that call the
mutated function). To give each module its own tests, every module runs in its own folder,
``build/mutate/<module>/``: a copy of ``src/`` and ``tests/`` and a ``pyproject.toml`` whose
``[tool.mutmut]`` mutates that one file with those test files (``-k`` where a file holds more).
mutmut is run with ``--max-children 1`` and one torch thread, at the priority of the caller (the
Makefile uses ``nice -n 19``).

A survivor is either killed by a new test or explained in ``benchmarks/mutation_notes.toml``
(``[equivalent]``: mutant name -> why no test can tell it from the original); the report lists
every survivor with its file:line, its diff and that note, or UNEXPLAINED.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutate"
RESULTS = ROOT / "docs" / "mutation.json"
REPORT = ROOT / "docs" / "mutation.md"
NOTES = ROOT / "benchmarks" / "mutation_notes.toml"


@dataclass(frozen=True)
class Module:
    """One module to mutate: its source file, the test files that cover it, a ``-k`` filter."""

    path: str
    tests: tuple[str, ...]
    keyword: str = ""


MODULES: dict[str, Module] = {
    "claims": Module("src/mladv/experiment/claims.py", ("tests/test_claims.py",)),
    "projection": Module("src/mladv/attacks/projection.py", ("tests/test_projection.py",)),
    "balance": Module("src/mladv/attacks/balance.py",
                      ("tests/test_balance.py", "tests/test_mladv.py"),
                      "balance or tau or grad_norm or realism"),
    "metrics": Module("src/mladv/metrics.py", ("tests/test_metrics.py",)),
    "experiment_metrics": Module("src/mladv/experiment/metrics.py", ("tests/test_metrics.py",)),
    "splitbn": Module("src/mladv/splitbn.py",
                      ("tests/test_splitbn.py", "tests/test_adversarial_training.py",
                       "tests/test_online_named.py")),
    "adversarial_training": Module("src/mladv/adversarial_training.py",
                                   ("tests/test_adversarial_training.py",
                                    "tests/test_online_named.py", "tests/test_splitbn.py")),
    "selection": Module("src/mladv/experiment/selection.py", ("tests/test_selection.py",)),
    "experiment_state": Module("src/mladv/experiment/state.py",
                               ("tests/test_experiment_state.py", "tests/test_selection.py")),
    "robustness": Module("src/mladv/robustness.py",
                         ("tests/test_robustness.py", "tests/test_evaluation.py")),
    "evaluation": Module("src/mladv/experiment/measure.py",
                         ("tests/test_robustness.py", "tests/test_evaluation.py")),
    "tasks": Module("src/mladv/tasks.py", ("tests/test_tasks.py",)),
    "eval_multilabel": Module("src/mladv/evaluation/multilabel.py",
                              ("tests/test_multilabel_metrics.py",)),
    "eval_stats": Module("src/mladv/evaluation/stats.py", ("tests/test_stats.py",)),
    "eval_corruptions": Module("src/mladv/evaluation/corruptions.py",
                               ("tests/test_corruptions.py",)),
}

STATUS_BY_EXIT_CODE: dict[int | None, str] = {
    1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
    36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
    37: "caught by type check", -11: "segfault", -9: "segfault", None: "not checked",
}


def mutmut_section(module: Module) -> str:
    """The ``[tool.mutmut]`` table of one module's folder (TOML text)."""
    tests = [t for t in module.tests if (ROOT / t).exists()]
    add = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    if module.keyword:
        add += ["-k", module.keyword]
    return ("\n[tool.mutmut]\n"
            f'source_paths = ["src"]\nonly_mutate = ["{module.path}"]\n'
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
            f"pytest_add_cli_args = {json.dumps(add)}\n"
            "mutate_only_covered_lines = false\nuse_git_change_detection = false\n")


def prepare(name: str, module: Module) -> Path:
    """A fresh ``build/mutate/<name>/``: src/, tests/ and a pyproject with mutmut's table."""
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", folder / "src", ignore=skip)
    shutil.copytree(ROOT / "tests", folder / "tests", ignore=skip)
    text = (ROOT / "pyproject.toml").read_text()
    own = text.split("\n[tool.mutmut]")[0] + mutmut_section(module)
    (folder / "pyproject.toml").write_text(own)
    return folder


def mutmut(folder: Path, *args: str, timeout: float | None = None) -> str:
    """Run the mutmut next to this Python in ``folder`` with one torch / BLAS thread; its
    stdout and stderr. Past ``timeout`` seconds its whole process group (the workers it forked
    included) is stopped and the results so far stand."""
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    with subprocess.Popen([str(exe), *args], cwd=folder, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as proc:
        try:
            return proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate()
            return f"stopped after {timeout:.0f} s"


def statuses(folder: Path, module: Module) -> dict[str, str]:
    """Mutant name -> status, from mutmut's ``mutants/<path>.meta``."""
    meta = folder / "mutants" / (module.path + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {key: STATUS_BY_EXIT_CODE.get(code, "suspicious") for key, code in codes.items()}


def file_line(module: Module, diff: str, mutant: str) -> int:
    """The line of ``module``'s file that the mutant changes: the diff's first removed line,
    looked up inside the mutated function (its first line when the text is not found)."""
    base = re.sub(r"__mutmut_\d+$", "", mutant.rsplit(".", 1)[-1])
    func = base.split("ǁ")[-1] if "ǁ" in base else base.removeprefix("x_")
    source = (ROOT / module.path).read_text()
    lines = source.splitlines()
    spans = [(n.lineno, n.end_lineno or n.lineno) for n in ast.walk(ast.parse(source))
             if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == func]
    start, end = spans[0] if spans else (1, len(lines))
    removed = [ln[1:].strip() for ln in diff.splitlines()
               if ln.startswith("-") and not ln.startswith("---")]
    for number in range(start, end + 1):
        if removed and lines[number - 1].strip() == removed[0]:
            return number
    return start


def changed_lines(diff: str) -> str:
    """The ``-`` / ``+`` lines of a unified diff, without its headers."""
    return "\n".join(ln for ln in diff.splitlines()
                     if ln[:1] in "-+" and not ln.startswith(("---", "+++")))


def run_module(name: str, timeout: float, resume: bool = False) -> dict[str, Any]:
    """Mutate one module with its tests; counts per status and every survivor with its diff.
    ``resume``: go on with the mutants an interrupted run left unchecked (same code and tests:
    the folder is not refreshed)."""
    module = MODULES[name]
    folder = WORK / name if resume and (WORK / name / "mutants").is_dir() else prepare(name, module)
    start = time.monotonic()
    tail = mutmut(folder, "run", "--max-children", "1", timeout=timeout)[-2000:]
    found = statuses(folder, module)
    counts: dict[str, int] = {}
    for status in found.values():
        counts[status] = counts.get(status, 0) + 1
    survivors = []
    for key in sorted(k for k, s in found.items() if s in ("survived", "no tests", "suspicious")):
        diff = mutmut(folder, "show", key)
        survivors.append({"name": key, "status": found[key], "line": file_line(module, diff, key),
                          "diff": changed_lines(diff)})
    if not found:
        print(tail, file=sys.stderr)
    return {"path": module.path, "tests": list(module.tests), "keyword": module.keyword,
            "seconds": round(time.monotonic() - start), "counts": counts,
            "survivors": survivors, "date": time.strftime("%Y-%m-%d")}


def survived(entry: dict[str, Any], equivalent: dict[str, str]) -> tuple[int, int]:
    """(non-equivalent survivors, non-equivalent mutants) of one module's entry."""
    counts = entry["counts"]
    total = sum(counts.get(s, 0) for s in ("killed", "survived", "timeout", "no tests",
                                            "suspicious", "segfault"))
    eq = sum(1 for s in entry["survivors"] if s["name"] in equivalent)
    return len(entry["survivors"]) - eq, total - eq


def table_rows(results: dict[str, Any], equivalent: dict[str, str]) -> list[str]:
    """One Markdown row per module, and a total row."""
    rows = ["| module | tests | mutants | killed | survived | no tests | timeout | not run "
            "| equivalent | surviving non-equivalent | minutes |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    sums = [0] * 9
    for name in MODULES:
        if name not in results:
            continue
        e = results[name]
        c = e["counts"]
        left, base = survived(e, equivalent)
        eq = len(e["survivors"]) - left
        values = [sum(c.values()), c.get("killed", 0),
                  c.get("survived", 0) + c.get("suspicious", 0), c.get("no tests", 0),
                  c.get("timeout", 0), c.get("not checked", 0), eq, left, base]
        sums = [a + b for a, b in zip(sums, values, strict=True)]
        tests = " ".join(f"`{t.removeprefix('tests/')}`" for t in e["tests"])
        tests += f" `-k {e['keyword']}`" if e["keyword"] else ""
        share = f"{left} / {base} ({100 * left / max(base, 1):.0f} %)"
        cells = " | ".join(str(v) for v in values[:7])
        rows.append(f"| `{e['path'].removeprefix('src/mladv/')}` | {tests} | {cells} | {share} | "
                    f"{e['seconds'] / 60:.1f} |")
    share = f"{sums[7]} / {sums[8]} ({100 * sums[7] / max(sums[8], 1):.1f} %)"
    rows.append(f"| **all** | | {' | '.join(str(v) for v in sums[:7])} | **{share}** | |")
    return rows


def survivor_lines(results: dict[str, Any], equivalent: dict[str, str]) -> list[str]:
    """Every survivor: file:line, the mutation, and why it is equivalent (or UNEXPLAINED)."""
    out: list[str] = []
    for name in MODULES:
        for s in results.get(name, {}).get("survivors", []):
            note = equivalent.get(s["name"], "**UNEXPLAINED** — needs a test")
            where = f"`{results[name]['path']}:{s['line']}` `{s['name']}` ({s['status']})"
            out += [f"- {where}: {note}",
                    "  ```diff", *("  " + ln for ln in s["diff"].splitlines()), "  ```"]
    return out or ["None."]


def write_report(results: dict[str, Any]) -> None:
    """docs/mutation.md from the results and the notes (equivalents, the counts before)."""
    notes = tomllib.loads(NOTES.read_text()) if NOTES.exists() else {}
    equivalent: dict[str, str] = notes.get("equivalent", {})
    missing = [f"`{n}`" for n in MODULES if n not in results]
    missing += [f"`{n}` in part ({results[n]['counts']['not checked']} of "
                f"{sum(results[n]['counts'].values())} mutants not run: `--resume`)"
                for n in MODULES if results.get(n, {}).get("counts", {}).get("not checked")]
    text = [notes.get("header", "# Mutation testing").rstrip(), "",
            "## Now", "", *table_rows(results, equivalent), "",
            "Not yet run: " + (", ".join(missing) if missing else "none") + ".",
            "", notes.get("before", "").rstrip(), "",
            "## Every survivor", "", *survivor_lines(results, equivalent), ""]
    REPORT.write_text("\n".join(text).replace("\n\n\n", "\n\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default all)")
    parser.add_argument("--report", action="store_true", help="only rewrite docs/mutation.md")
    parser.add_argument("--timeout-min", type=float, default=15.0,
                        help="per module (default 15); past it the unchecked mutants are 'not run'")
    parser.add_argument("--resume", action="store_true",
                        help="continue interrupted runs (build/mutate/<module> kept as it is)")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        raise SystemExit(f"modules: unknown {', '.join(unknown)} (known: {', '.join(MODULES)})")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in [] if args.report else (args.modules or list(MODULES)):
        print(f"mutating {name} ...", flush=True)
        results[name] = run_module(name, args.timeout_min * 60, args.resume)
        print(f"  {results[name]['counts']} in {results[name]['seconds']} s", flush=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_report(results)


if __name__ == "__main__":
    main()
