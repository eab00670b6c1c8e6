"""Helpers for DDP runs (``torchrun``): rank/world, joining and leaving the process group, metric-state merging.

Joining is explicit: :func:`process_group` joins the group torchrun describes for the
duration of a ``with`` block and leaves it at the end (``fit`` runs inside one). Nothing
is registered to run at interpreter exit.

>>> with process_group() as active:  # not launched by torchrun: nothing to join
...     active, rank(), world_size()
(False, 0, 1)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "rank",
    "world_size",
    "is_main",
    "process_group",
    "init_process_group",
    "destroy_process_group",
    "merge_across_ranks",
    "barrier",
    "broadcast_object",
    "gather_to_main",
]


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

    Returns whether a group is active. Does nothing when not launched by torchrun. The caller
    leaves the group with :func:`destroy_process_group` (a group left alive at interpreter exit
    can abort the process while its communication threads are torn down); :func:`process_group`
    does both.
    """
    if _active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return True


def destroy_process_group() -> None:
    """Leave the active process group (no-op without one)."""
    if _active():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def process_group(backend: str | None = None) -> Iterator[bool]:
    """Join torchrun's process group for a ``with`` block; leave it at the end if this block joined it.

    Yields whether a group is active. A group the caller joined already is used and left
    alone, so blocks nest: a recipe may hold one around several ``fit`` calls (and the work
    between them, such as rank 0 building a cache while the others wait at a barrier).
    """
    joined = not _active() and init_process_group(backend)
    try:
        yield _active()
    finally:
        if joined:
            destroy_process_group()


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


def gather_to_main(obj: Any) -> list | None:
    """Every rank's ``obj`` on rank 0 (a list in rank order), ``None`` on the others; ``[obj]`` alone.

    >>> gather_to_main({"rows": 3})
    [{'rows': 3}]
    """
    if not _active():
        return [obj]
    main = rank() == 0
    out: list | None = [None] * world_size() if main else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


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
