"""The batches of one epoch: a map-style dataset batched in its seeded order, or ready batches as they come.

>>> import torch
>>> from fusefn import Rng
>>> data = torch.utils.data.TensorDataset(torch.arange(6))
>>> batches, count = epoch_batches(data, 1, rng=Rng(0), batch_size=4, collate=list)
>>> count, [len(b) for b in batches]
(2, [4, 2])
>>> [[int(x) for (x,) in b] for b in epoch_batches(data, batch_size=4, collate=list)[0]]  # rng=None: in order
[[0, 1, 2, 3], [4, 5]]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from fusefn.core import Rng

__all__ = ["epoch_batches", "default_collate", "is_map_dataset", "MapDataset", "EpochDataset"]


@runtime_checkable
class MapDataset(Protocol):
    """A dataset indexed ``0..len-1`` (torch's map-style dataset)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


@runtime_checkable
class EpochDataset(Protocol):
    """A map-style dataset told the epoch before it is read (e.g. to reseed what it draws per sample)."""

    def set_epoch(self, epoch: int, /) -> None: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


def default_collate(samples: Sequence[Mapping]) -> dict:
    """Sample dicts into one batch_dict: :func:`fusefn.data.collate`."""
    from fusefn.data import collate

    return collate(samples)


def is_map_dataset(data) -> bool:
    """Whether ``data`` is a map-style dataset of samples (a list or tuple is taken as ready batches).

    >>> is_map_dataset(torch.utils.data.TensorDataset(torch.arange(3))), is_map_dataset([{"a": 1}])
    (True, False)
    """
    return isinstance(data, MapDataset) and not isinstance(data, (list, tuple))


def epoch_batches(
    data,
    epoch: int = 0,
    *,
    rng: Rng | None = None,
    batch_size: int = 32,
    drop_last: bool = False,
    collate: Callable | None = None,
    workers: int = 0,
    skip: int = 0,
    rank: int = 0,
    world: int = 1,
    batch_sampler=None,
) -> tuple[Iterable, int | None]:
    """``(batches, count)`` of epoch ``epoch``, the first ``skip`` batches left out.

    Args:
        data: a map-style dataset (batched here in the order of
            :func:`fusefn.data.index_batches`, this rank's share), an iterable of ready
            batch_dicts (used as is; its order is its own), or ``epoch -> iterable``.
        rng: the run's stream; epoch ``e`` is shuffled with ``rng.child("shuffle", e)``
            (what ``fit(seed=s)`` does with ``Rng(s)``). ``None``: in index order.
        collate: ``samples -> batch_dict`` (default :func:`default_collate`).
        workers: DataLoader worker processes.
        batch_sampler: replaces the seeded order (e.g. ``fusefn.data.BalancedBatchSampler``,
            which splits by rank itself); one that is a ``fusefn.data.EpochSampler`` is told the epoch first.

    Returns:
        the batches and how many there are (``None`` when an iterable has no length).
    """
    if is_map_dataset(data):
        from fusefn.data import EpochSampler, index_batches

        if isinstance(data, EpochDataset):
            data.set_epoch(epoch)
        if batch_sampler is not None:
            if isinstance(batch_sampler, EpochSampler):
                batch_sampler.set_epoch(epoch)
            batches = [list(b) for b in batch_sampler][skip:]
        else:
            order = None if rng is None else rng.child("shuffle", epoch)
            batches = index_batches(
                len(data), batch_size=batch_size, rng=order, drop_last=drop_last, rank=rank, world=world
            )[skip:]
        loader = torch.utils.data.DataLoader(
            data, batch_sampler=batches, collate_fn=collate or default_collate, num_workers=workers
        )
        return loader, len(batches)
    if callable(data) and not isinstance(data, Iterable):
        data = data(epoch)
    try:
        count = max(len(data) - skip, 0)
    except TypeError:
        count = None
    return itertools.islice(iter(data), skip, None), count
