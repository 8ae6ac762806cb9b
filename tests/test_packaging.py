"""mladv as a library (issue 25, item 1): the wheel asks for ranges, not the tested pins, so that
``pip install mladv`` keeps its user's torch; the exact tested versions live in
``constraints.txt``, which ``make setup`` (and so CI) installs with.

The wheel is built once per module from a copy of the sources (``pip wheel --no-deps
--no-build-isolation``: no download, no ``build/`` left in the checkout) and its METADATA read
with :mod:`packaging` (PEP 508 requirements)."""
from __future__ import annotations

import email
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# A torch 2.x other than the tested 2.14.1: its CPU wheel lies on this machine's disk
# (/opt/wheels), and PyPI's torchvision 0.28.0 is the release built for it (Requires torch==2.13.0).
OTHER_TORCH, ITS_TORCHVISION = "2.13.0", "0.28.0"


def pip(*args: str | Path, python: str | Path = sys.executable,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [str(python), "-m", "pip", "--disable-pip-version-check", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mladv's wheel, built from a copy of pyproject.toml, README.md and src/mladv."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src" / "mladv", src / "src" / "mladv",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    done = pip("wheel", "--no-deps", "--no-build-isolation", "-q", src, "-w", dist)
    assert done.returncode == 0, done.stderr
    (found,) = dist.glob("mladv-*.whl")
    return found


@pytest.fixture(scope="module")
def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(z.read(name))
    return [Requirement(line) for line in meta.get_all("Requires-Dist") or []]


def runtime(reqs: list[Requirement]) -> dict[str, Requirement]:
    """What ``pip install mladv`` asks for: the requirements with no ``extra ==`` marker."""
    return {canonicalize_name(r.name): r for r in reqs if r.marker is None}


def extra(reqs: list[Requirement], name: str) -> dict[str, Requirement]:
    """What ``pip install mladv[name]`` adds."""
    return {canonicalize_name(r.name): r for r in reqs
            if r.marker is not None and r.marker.evaluate({"extra": name})
            and not r.marker.evaluate({"extra": ""})}


# -- the wheel's metadata ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["torch", "torchvision"])
def test_torch_and_torchvision_are_required_by_range_not_pinned(requirements, name):
    req = runtime(requirements)[name]
    assert req.specifier, f"{name} has no lower bound"
    assert not [s for s in req.specifier if s.operator in ("==", "===")], str(req)


@pytest.mark.parametrize(("name", "versions"), [
    ("torch", ["2.13.0", "2.14.1", "2.20.0"]), ("torchvision", ["0.28.0", "0.29.1", "0.35.0"])])
def test_the_torch_ranges_admit_other_2x_releases_than_the_tested_one(requirements, name,
                                                                      versions):
    req = runtime(requirements)[name]
    assert all(req.specifier.contains(v) for v in versions), str(req)


def test_torchattacks_is_not_a_runtime_requirement(requirements):
    assert "torchattacks" not in runtime(requirements)


def test_torchattacks_stays_in_the_dev_extra_as_the_test_reference(requirements):
    assert "torchattacks" in extra(requirements, "dev")


def test_the_official_autoattack_is_a_runtime_requirement(requirements):
    assert "pyautoattack" in runtime(requirements)


def test_the_xrv_extra_brings_torchxrayvision(requirements):
    assert set(extra(requirements, "xrv")) == {"torchxrayvision"}


def test_the_dicom_extra_brings_the_pylibjpeg_decoders(requirements):
    assert set(extra(requirements, "dicom")) == {
        "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"}


def test_the_dev_extra_pulls_the_xrv_and_dicom_extras(requirements):
    (self_ref,) = [r for r in extra(requirements, "dev").values() if r.name == "mladv"]
    assert {"xrv", "dicom"} <= self_ref.extras


# -- constraints.txt: the lock make setup installs with ----------------------------------------
def pins() -> dict[str, str]:
    """``name==version`` lines of constraints.txt."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): str(r.specifier) for r in reqs}


def test_the_constraints_pin_the_torch_make_setup_installs_from_this_disk():
    assert (pins()["torch"], pins()["torchvision"]) == ("==2.14.1", "==0.29.1")


def test_the_constraints_pin_every_runtime_and_dev_requirement(requirements):
    wanted = {**runtime(requirements), **extra(requirements, "xrv"),
              **extra(requirements, "dicom"), **extra(requirements, "dev")}
    wanted.pop("mladv")
    unpinned = [n for n in wanted if not pins().get(n, "").startswith("==")]
    assert not unpinned, f"not pinned in constraints.txt: {unpinned}"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("changed", ["pyproject.toml", "constraints.txt"])
def test_make_setup_reinstalls_with_the_constraints_when_either_file_changes(tmp_path, changed):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt", ".venv/.installed"):  # stamp newest
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (time.time() - 100, time.time() - 100))
    os.utime(tmp_path / ".venv/.installed")

    def planned() -> str:
        return subprocess.run(["make", "-n", "setup"], cwd=tmp_path, capture_output=True,
                              text=True, check=True).stdout

    assert "pip install" not in planned()
    os.utime(tmp_path / changed, (time.time() + 10, time.time() + 10))
    assert "pip install -q -c constraints.txt -e '.[dev]'" in planned()


# -- resolution: the user's torch stays ----------------------------------------------------------
def fake_installed(site: Path, name: str, version: str, requires: str = "") -> None:
    """A distribution pip sees as installed (a dist-info with its METADATA only)."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + (f"Requires-Dist: {requires}\n" if requires else ""))
    (info / "INSTALLER").write_text("pip\n")


def would_install(report: Path) -> dict[str, str]:
    """``pip install --report``'s install list: name -> version."""
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def test_installing_into_an_environment_with_torch_2_13_keeps_its_torch_and_torchvision(
        wheel, tmp_path):
    """A user's virtual environment holding torch 2.13.0 and torchvision 0.28.0 and, through a
    .pth file after its own site-packages, everything else mladv needs (this test interpreter's
    packages: its torch 2.14.1 is shadowed). ``pip install --dry-run`` of the wheel, offline
    (``--no-index``), must install mladv and nothing else."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(tmp_path / "user")], check=True)
    python = tmp_path / "user" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    fake_installed(site, "torch", OTHER_TORCH)
    fake_installed(site, "torchvision", ITS_TORCHVISION, f"torch=={OTHER_TORCH}")
    (site / "zz_rest.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    report = tmp_path / "report.json"
    done = pip("install", "--dry-run", "--no-index", "--report", report, wheel, python=python)
    assert done.returncode == 0, done.stderr
    assert would_install(report) == {"mladv": "0.1.0"}


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not pypi_reachable(),
                    reason="pypi.org:443 unreachable: resolving mladv's requirements needs the "
                    "index's metadata")
def test_a_fresh_resolution_under_a_torch_2_13_constraint_keeps_that_torch(wheel, tmp_path):
    """``pip install --dry-run --ignore-installed -c torch==2.13.0``: the whole dependency tree
    resolved from the index as for an empty environment; it must take the constrained torch,
    its torchvision, and none of what torchattacks used to bring (requests 2.25, robustbench)."""
    (tmp_path / "c.txt").write_text(f"torch=={OTHER_TORCH}\n")
    report = tmp_path / "report.json"
    done = pip("install", "--dry-run", "--ignore-installed", "-q", "--report", report,
               "-c", tmp_path / "c.txt", wheel)
    assert done.returncode == 0, done.stderr
    chosen = would_install(report)
    assert Version(chosen["torch"]).public == OTHER_TORCH  # 2.13.0+cpu is that file
    assert chosen["torchvision"] == ITS_TORCHVISION
    assert not {"torchattacks", "robustbench", "requests"} & set(chosen), sorted(chosen)
