"""Small shared chores: seeding, devices, output folders, atomic writes, progress bars."""
from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


DEVICE_FORMS = "auto, cpu, cpu:N, cuda, cuda:N or mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:(\d+))?$")


def parse_device(device: str, option: str = "--device") -> str:
    """The one check of a device name, before any compute: ``auto``, ``cpu``, ``cpu:N`` (read
    as ``cpu``: torch has one CPU device, and ``cpu:0`` as a ``map_location`` is not what
    checkpoints were saved with), ``cuda``, ``cuda:N`` or ``mps``; anything else (``tpu``,
    ``gpu``, ``cuda:x``) is one ``ValueError`` line naming ``option`` (none: a config's
    validator, whose error names the key) and the valid forms.
    Imports nothing: the command line and the configs call it as given."""
    text = str(device).strip()
    match = _DEVICE.match(text)
    if match is None or (match.group(2) and match.group(1) in ("auto", "mps")):
        named = f"{option} " if option else ""
        raise ValueError(f"{named}{device!r} is not a device; use {DEVICE_FORMS}")
    return "cpu" if match.group(1) == "cpu" else text


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; other names are checked by
    :func:`parse_device` (one line for ``tpu``) and CUDA's presence is checked."""
    if isinstance(device, torch.device):
        return device
    device = parse_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if device == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: MPS is not available on this machine")
    return torch.device(device)


# -- autocast ------------------------------------------------------------------------------
Precision = Literal["fp32", "bf16"]
PRECISIONS = ("fp32", "bf16")


def amp_context(device: torch.device | str,
                precision: str = "fp32") -> AbstractContextManager[object]:
    """The autocast context for ``precision``: ``"fp32"`` -> nothing, ``"bf16"`` ->
    ``torch.autocast(device.type, torch.bfloat16)`` (CPU and CUDA; no gradient scaler needed).

    Usable around a model's forward pass in training and around an attack call when crafting
    (``with amp_context(dev, "bf16"): adv = atk(x, y)``); gradients come back in float32 for
    float32 leaves.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


# -- output folders and atomic writes ---------------------------------------------------------
# mkstemp's names in atomic_path: "." + final name + "." + 8 random characters + ".tmp"
_STALE_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


#: The errnos of a full disk (ENOSPC) and of a spent quota (EDQUOT, where the OS has it).
DISK_FULL = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


def _free_space(path: Path) -> str:
    """The free space on ``path``'s file system, e.g. ``12.3 MB free`` (``free space unknown``
    when it cannot be read)."""
    for folder in (path.parent, *path.parent.parents):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        return f"{free / 1e6:.1f} MB free"
    return "free space unknown"


def _os_error(exc: OSError, path: Path) -> OSError:
    """``exc`` re-raised as the same kind of ``OSError`` naming ``path`` (the file the user
    asked for, not the temporary file beside it); a full disk or quota (:data:`DISK_FULL`) also
    says how much space is free there (``shutil.disk_usage``)."""
    reason = exc.strerror or str(exc)
    if exc.errno in DISK_FULL:
        reason = f"{reason}; the disk is full ({_free_space(path)}), nothing was written"
    try:
        return type(exc)(exc.errno, reason, str(path))
    except TypeError:  # an OSError subclass with another constructor
        return OSError(exc.errno, reason, str(path))


def clean_stale_tmp(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_path` left under ``folder``
    (recursively); returns them. Call it once, before a run writes into ``folder`` (under
    torchrun: on rank 0, before the ranks start writing)."""
    folder = Path(folder)
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file() and _STALE_TMP.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def prepare_output_dir(out: str | os.PathLike[str], *, option: str = "--out",
                       clean: bool = True) -> Path:
    """Check that ``out`` can take a run's outputs before any work starts: create the folder,
    write and delete a probe file, and (``clean``) delete stale temporary files of an earlier,
    interrupted run. Any problem is one ``ValueError`` naming the option and the path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{option} {out}: cannot write there ({exc.strerror or exc})") from None
    if clean:
        clean_stale_tmp(out)
    return out


LOCK_FILE = ".mladv.lock"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``os.kill(pid, 0)``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a check the OS refuses: assume alive
    return True


def _holder(fh: Any) -> dict[str, Any]:
    """The holder a lock file records (``pid``, ``host``, ``command``, ``started``); empty when
    it records none or cannot be read."""
    try:
        fh.seek(0)
        holder = json.loads(fh.read() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _holder_text(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder not recorded"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, "
            f"'{holder.get('command')}', started {holder.get('started')}")


def lock_folder(out: str | os.PathLike[str], option: str = "--out",
                log: Callable[[str], None] | None = None) -> Any:
    """The one lock of an output folder: an exclusive, non-blocking ``flock`` on
    ``out/.mladv.lock``, held until the returned file is closed. The OS drops it when the
    process dies, so a killed run leaves no live lock; the file records its holder (``pid``,
    ``host``, ``command``, ``started``, UTC ISO 8601) so that a second run is refused in one
    ``ValueError`` line naming it. A lock file left by a dead pid on this host (a killed run) is
    taken over, with a ``log`` line (stderr by default) naming that pid.

    Every command that writes an ``--out`` folder takes it through :func:`output_dir`
    (``train``, ``augment``, ``attack``, ``experiment``, ``transfer``, ``export``)."""
    out = Path(out)
    fh = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - closed by the caller (output_dir)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, as before
        return fh
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder_text(_holder(fh))
        fh.close()
        raise ValueError(f"{option} {out}: another mladv run is writing there now ({holder}); "
                         "wait for it or choose another folder") from None
    old = _holder(fh)
    host = socket.gethostname()
    pid = old.get("pid")
    if (old.get("host") == host and isinstance(pid, int) and pid != os.getpid()
            and not _pid_alive(pid)):
        (log or _stderr_line)(f"{out / LOCK_FILE}: taking over the stale lock of pid {pid} "
                              f"(no longer running; started {old.get('started')})")
    import datetime

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    command = " ".join(["mladv", *sys.argv[1:]]) if sys.argv else "mladv"
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": host, "command": command,
                         "started": started}))
    fh.flush()
    return fh


def _stderr_line(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def output_dir(out: str | os.PathLike[str], *, option: str = "--out", clean: bool = True,
               enabled: bool = True) -> Iterator[Path]:
    """:func:`prepare_output_dir` held for a run: the folder is locked (a second run on it is
    refused in one line instead of deleting the first run's live temporary files), stale
    temporary files are cleaned only under the lock, and a folder this call created is removed
    again when the run fails before writing anything into it (a data or device error leaves no
    empty ``--out``). ``enabled=False`` (a torchrun rank other than 0) only yields the path."""
    out = Path(out)
    if not enabled:
        yield out
        return
    created = not out.exists()
    prepare_output_dir(out, option=option, clean=False)
    fh = lock_folder(out, option)
    try:
        if clean:
            clean_stale_tmp(out)
        yield out
    except BaseException:
        if created and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        fh.close()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash never leaves a half-written file under the final name; an ``OSError`` (disk full,
    permissions) names ``path``. A hard kill can leave the temporary file: :func:`clean_stale_tmp`
    (run by :func:`prepare_output_dir`) removes it on the next run.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _os_error(exc, path) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give normal permissions
        os.replace(tmp_path, path)
    except OSError as exc:
        raise _os_error(exc, path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`atomic_path` (through a Python file, so a failed write is
    an ``OSError`` naming ``path`` rather than torch's ``RuntimeError``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_safe(obj: Any) -> Any:
    """NaN / inf -> None, recursively (dicts, lists, tuples), so the JSON written is strict JSON
    (RFC 8259 has no NaN or Infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` as indented strict JSON through :func:`atomic_path`: every non-finite float
    (NaN, inf, e.g. the PSNR of an unchanged image) is written as ``null`` (:func:`json_safe`),
    so any JSON parser reads every file the package writes."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_text(text + "\n", path)


# -- downloads, warnings ------------------------------------------------------------------------
def download_timeout_s() -> float:
    """Seconds a download may wait for an answer (``$MLADV_DOWNLOAD_TIMEOUT``, default 60): a
    proxy that accepts and never answers must not hang a run forever."""
    text = os.environ.get("MLADV_DOWNLOAD_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"MLADV_DOWNLOAD_TIMEOUT={text!r}: expected seconds, e.g. 60") from None
    if not value > 0:
        raise ValueError(f"MLADV_DOWNLOAD_TIMEOUT={text!r}: must be > 0 seconds")
    return value


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Every socket opened inside the block times out after ``seconds`` without an answer
    (``TimeoutError``, an ``OSError``); the previous default is restored afterwards."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """``warnings.formatwarning`` for the command line: ``warning: MESSAGE`` without the source
    file and line (they mean nothing to a user)."""
    return f"warning: {message}\n"


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (progress bars are drawn only there)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


# -- models and progress bars ---------------------------------------------------------------------
def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a parameter-free model."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True) -> Any:
    """A tqdm bar that shows images/s and the ETA; silent when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=0.5,
                disable=None if enabled else True)
