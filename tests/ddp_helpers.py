"""Run a test body in 2 CPU processes as ``torchrun`` would start them (gloo, env variables,
:func:`mladv.distributed.init_from_env`): the one launcher of the DDP tests."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp

from mladv.distributed import cleanup, init_from_env

# body(rank, world_size, out_dir): module-level (spawned processes import it by name)
Body = Callable[[int, int, str], None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, body: Body, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert init_from_env("cpu") == torch.device("cpu")
    try:
        body(rank, world, out_dir)
    finally:
        cleanup()


def spawn_ranks(body: Body, out_dir: Path, world: int = 2) -> Path:
    """Run ``body(rank, world, str(out_dir))`` in ``world`` processes (one torch thread each)
    joined in one gloo process group; returns ``out_dir``, where the bodies write their
    results. A failing rank fails the caller (``mp.spawn`` re-raises)."""
    mp.spawn(_rank, args=(world, free_port(), body, str(out_dir)), nprocs=world, join=True)
    return out_dir
