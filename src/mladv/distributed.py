"""Many processes, one job: ``torchrun`` environment, process groups, shards and reductions.

``torchrun --nproc_per_node N -m mladv <command> ...`` starts N copies of the command with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment.
A command calls :func:`init_from_env` once: it returns the device this process should use and,
when ``WORLD_SIZE > 1``, initialises the default process group (NCCL on CUDA, gloo on CPU).
Launched without torchrun, everything here is a no-op (rank 0 of a world of 1), so the same
code runs on a laptop and on a cluster.

Examples::
    >>> dev = init_from_env("auto")          # cuda:LOCAL_RANK under torchrun on GPUs
    >>> rank, world = rank_and_world()        # (0, 1) without torchrun
    >>> mine = shards_for_rank(num_shards, rank, world)  # mladv.augment: this rank's shards
    >>> if is_main_process(): save(...)
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .utils import resolve_device


@dataclass(frozen=True)
class DistEnv:
    """What ``torchrun`` told this process (``rank 0 of 1`` without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def env_from_environment() -> DistEnv:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them; ``DistEnv()`` if unset."""
    env = DistEnv(rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1),
                  local_rank=_env_int("LOCAL_RANK", 0))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise ValueError(f"RANK={env.rank} / WORLD_SIZE={env.world_size} from the environment "
                         f"are inconsistent (need 0 <= RANK < WORLD_SIZE)")
    return env


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from the initialised process group if there is
    one, else from the torchrun environment, else ``(0, 1)``. Pass them to sharded commands
    (e.g. ``augment``'s ``rank`` / ``world_size`` arguments)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env = env_from_environment()
    return env.rank, env.world_size


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes shared outputs and prints."""
    return rank_and_world()[0] == 0


def init_from_env(device: str | torch.device = "auto", *, backend: str | None = None,
                  timeout_s: float | None = None) -> torch.device:
    """Resolve the device for this process and, under torchrun with ``WORLD_SIZE > 1``,
    initialise the default process group (idempotent).

    On CUDA each process takes ``cuda:LOCAL_RANK`` (``--device cuda`` / ``auto``; an explicit
    ``cuda:N`` is kept) and the backend is NCCL; on CPU it is gloo.

    The group is destroyed when the process exits (or by :func:`cleanup`).

    Returns:
        the ``torch.device`` this process should put its model on.
    """
    env = env_from_environment()
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if env.is_distributed and not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if timeout_s is not None:
            from datetime import timedelta
            kwargs["timeout"] = timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"),
                                rank=env.rank, world_size=env.world_size, **kwargs)
        atexit.register(cleanup)  # commands need not tear the group down themselves
    return dev


def cleanup() -> None:
    """Destroy the default process group if there is one (safe to call always)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def rank_batch(chunk: torch.Tensor, rank: int,
               world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of one *global* batch, the way ``DistributedSampler`` deals it out.

    ``chunk`` (``B`` indices) is padded to a multiple of ``world_size`` by repeating its first
    items, and rank ``r`` takes ``padded[r::world_size]``; the padding gets weight 0. So every
    rank has the same batch shape, the union of the ranks' real items is ``chunk`` exactly once,
    and a loss ``sum(weight * loss_i) * world_size / sum(all weights)`` averaged over ranks (as
    DDP does with gradients) equals the single-process mean over ``chunk``.

    Shape: ``B`` -> (``ceil(B / world_size)`` indices, same-length float weights in {0, 1}).
    """
    b = chunk.shape[0]
    per_rank = -(-b // world_size)
    pad = per_rank * world_size - b
    padded = torch.cat([chunk, chunk[:pad].repeat(-(-pad // max(b, 1)))[:pad]]) if pad else chunk
    weights = torch.ones(padded.shape[0])
    weights[b:] = 0.0
    return padded[rank::world_size], weights[rank::world_size]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks (returned, not in place); identity in a single process."""
    if not is_distributed():
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
