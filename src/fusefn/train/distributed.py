"""Helpers for DDP runs (``torchrun``): rank/world, process group set-up, metric-state merging."""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["rank", "world_size", "is_main", "init_process_group", "merge_across_ranks", "barrier", "broadcast_object"]


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return torch.distributed.get_world_size() if _active() else 1


def is_main() -> bool:
    """Whether this process writes logs and checkpoints (rank 0)."""
    return rank() == 0


def init_process_group(backend: str | None = None) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); gloo on CPU, NCCL on GPU.

    Returns whether a group is active. Does nothing when not launched by torchrun.
    """
    if _active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    # a group left alive at interpreter exit can abort the process ("terminate called without an
    # active exception") while its communication threads are torn down: close it first
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if _active():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if _active():
        torch.distributed.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def merge_across_ranks(state: Any, merge: Callable[[Any, Any], Any]) -> Any:
    """Fold a reducer state over all ranks with ``merge`` (every rank gets the merged state)."""
    if not _active():
        return state
    states: list = [None] * world_size()
    torch.distributed.all_gather_object(states, state)
    out = states[0]
    for s in states[1:]:
        out = merge(out, s)
    return out
