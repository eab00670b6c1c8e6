"""Batches fed to the device: pinned host memory, non-blocking copies, the next batch copied while a step runs.

On a CUDA device :func:`device_batches` copies batch ``k + 1`` on a side stream while the
step of batch ``k`` runs on the main one, so a step never waits on a host-to-device copy
(the main stream waits only for that batch's copy event, never the host). On the CPU the
batches pass through untouched: there is nothing to copy.

>>> batches = [{"x": i} for i in range(3)]
>>> [b["x"] for b in device_batches(batches, "cpu")]
[0, 1, 2]
>>> log = []
>>> def start(b):
...     log.append(("start", b))
...     return b
>>> for b in lookahead(range(3), start, lambda b: b, depth=1):
...     log.append(("use", b))
>>> log  # batch k+1 is under way before batch k is used; the order is kept
[('start', 0), ('start', 1), ('use', 0), ('start', 2), ('use', 1), ('use', 2)]
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

__all__ = ["device_batches", "lookahead", "pinned"]


def lookahead(items: Iterable, start: Callable, finish: Callable, *, depth: int = 1) -> Iterator:
    """``finish(start(item))`` for each item, in order, with ``start`` run ``depth`` items ahead.

    ``start`` launches the work of an item (an asynchronous copy) and ``finish`` waits for it
    just before the item is used, so the work of the next ``depth`` items overlaps the use of
    this one. Every item comes out once, in the order it came in.
    """
    queue: collections.deque = collections.deque()
    for item in items:
        queue.append(start(item))
        if len(queue) > depth:
            yield finish(queue.popleft())
    while queue:
        yield finish(queue.popleft())


def _tree_map(fn: Callable, tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(fn, v) for v in tree)
    return tree


def pinned(tree: Any) -> Any:
    """``tree`` with its CPU tensors in page-locked memory (already pinned ones are kept as they are).

    A copy from pinned memory runs asynchronously to the host; from pageable memory CUDA first
    stages it through a pinned buffer of its own and the host waits.
    """

    def pin(t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory() if t.device.type == "cpu" and not t.is_pinned() else t

    return _tree_map(pin, tree)


def _tensors(tree: Any) -> list:
    out: list = []
    _tree_map(out.append, tree)
    return out


def device_batches(batches: Iterable, device, *, prefetch: bool = True, pin: bool = True) -> Iterator:
    """``batches`` on ``device``: on CUDA pinned, copied without blocking, the next one while this one is used.

    Args:
        batches: batch_dicts (any tree of tensors); non-tensor leaves such as sample ids are kept.
        device: where the steps run; ``None`` or the CPU passes the batches through untouched.
        prefetch: copy one batch ahead on a side CUDA stream (else each batch is copied when it is asked for).
        pin: pin the host tensors first (skipped for tensors a DataLoader with ``pin_memory`` already pinned).
    """
    dev = None if device is None else torch.device(device)
    if dev is None or dev.type == "cpu":
        yield from batches
        return
    if dev.type != "cuda" or not prefetch:
        for b in batches:
            yield _tree_map(lambda t: t.to(dev, non_blocking=True), pinned(b) if pin and dev.type == "cuda" else b)
        return
    stream = torch.cuda.Stream(device=dev)

    def start(batch):
        host = pinned(batch) if pin else batch
        with torch.cuda.stream(stream):
            moved = _tree_map(lambda t: t.to(dev, non_blocking=True), host)
            done = torch.cuda.Event()
            done.record(stream)
        # the host tensors must live until the copy ran: kept with the batch until it is used
        return moved, done, host

    def finish(item):
        moved, done, _host = item
        main = torch.cuda.current_stream(dev)
        main.wait_event(done)
        for t in _tensors(moved):
            # made on the side stream, used on the main one: the allocator must not reuse it early
            t.record_stream(main)
        return moved

    yield from lookahead(batches, start, finish, depth=1)
