"""Balanced batch sampler: batches balanced by a categorical value, drawn from ``rng`` and the epoch, DDP-aware.

Each class keeps its own stream of indices: a fresh permutation every time the
class runs out (so small classes cycle and reshuffle, large ones are seen about
once per epoch). A batch takes a fixed number of indices per class (``weights``)
or draws each position's class from ``probs``.

>>> from fusefn import Rng
>>> labels = [0] * 8 + [1] * 2
>>> sampler = BalancedBatchSampler(labels=labels, batch_size=4, rng=Rng(0))
>>> len(sampler), [sum(labels[i] for i in b) for b in sampler]
(4, [2, 2, 2, 2])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from fusefn._types import is_tensor
from fusefn.core import Rng
from fusefn.errors import ConfigError

__all__ = ["BalancedBatchSampler"]


def _hashable(v):
    # a 0-d array or tensor label (e.g. from a cache or a dataset) is its Python value
    if isinstance(v, (np.generic, np.ndarray)) or is_tensor(v):
        return v.item() if v.ndim == 0 else v
    return v


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class BalancedBatchSampler:
    """Yield lists of dataset indices, balanced over the classes in ``labels``.

    A torch ``batch_sampler``: ``DataLoader(ds, batch_sampler=sampler, collate_fn=collate)``.
    Not a frozen record on purpose: like ``DistributedSampler`` it carries the epoch,
    set with :meth:`set_epoch`; :meth:`batches` is the pure function of ``(rng, epoch)``.

    Args:
        labels: the class of each dataset index (any hashable values), e.g. ``dataset.values("data.gt.label")``;
            a NaN or ``None`` label raises.
        batch_size: indices per batch.
        classes: the classes to balance (default: those in ``labels``, sorted). A class with no
            sample raises here rather than hanging or failing mid-epoch.
        weights: per class, how many indices each batch takes (sums to ``batch_size``);
            default: an equal share, the remainder going to random classes per batch.
        probs: instead of ``weights``, the probability of each class at each batch position.
        num_batches: batches per epoch over all ranks; default: enough that the largest class is
            seen about once.
        rng: with the epoch, the only source of randomness (epoch ``e`` draws from
            ``rng.child("balanced-batch-sampler", e)``).
        rank, world_size: under DDP each rank takes every ``world_size``-th batch of one shared
            stream, so ranks get disjoint batches of the same epoch (default: from
            ``torch.distributed`` when it is initialized, else a single process).
    """

    def __init__(
        self,
        labels: Sequence,
        batch_size: int,
        *,
        classes: Sequence | None = None,
        weights: Sequence[int] | Mapping | None = None,
        probs: Sequence[float] | Mapping | None = None,
        num_batches: int | None = None,
        rng: Rng = Rng(0),
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if rank is None or world_size is None:
            dist_rank, dist_world = _distributed()
            rank = dist_rank if rank is None else rank
            world_size = dist_world if world_size is None else world_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"BalancedBatchSampler.batch_size must be a positive int, got {batch_size!r}")
        if weights is not None and probs is not None:
            raise ConfigError("BalancedBatchSampler: give weights or probs, not both")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"BalancedBatchSampler: rank {rank!r} must be in [0, world_size={world_size!r})")
        if not isinstance(rng, Rng):
            raise ConfigError(f"BalancedBatchSampler.rng must be a fusefn.Rng, got {rng!r}")
        labels = [_hashable(v) for v in labels]
        if not labels:
            raise ConfigError("BalancedBatchSampler.labels is empty")
        # NaN != NaN, so every NaN label would become a class of its own
        missing = [i for i, v in enumerate(labels) if _is_missing(v)]
        if missing:
            raise ConfigError(
                f"BalancedBatchSampler.labels: {len(missing)} of {len(labels)} labels are missing (NaN/None), "
                f"first at positions {missing[:5]}; drop those samples or give them a class"
            )
        present = sorted(set(labels), key=lambda v: (type(v).__name__, v))
        self.classes = list(classes) if classes is not None else present
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"BalancedBatchSampler.classes has duplicates: {self.classes}")
        by_class: dict = {c: [] for c in self.classes}
        for i, v in enumerate(labels):
            if v in by_class:
                by_class[v].append(i)
        empty = [c for c, idx in by_class.items() if not idx]
        if empty:
            raise ConfigError(f"BalancedBatchSampler: classes {empty} have no samples (classes present: {present})")
        self.indices = {c: np.asarray(idx, dtype=np.int64) for c, idx in by_class.items()}
        k = len(self.classes)

        def per_class(value, name):
            if isinstance(value, Mapping):
                unknown = set(value) - set(self.classes)
                if unknown:
                    raise ConfigError(f"BalancedBatchSampler.{name} names unknown classes {sorted(unknown, key=str)}")
                return [value.get(c, 0) for c in self.classes]
            value = list(value)
            if len(value) != k:
                raise ConfigError(f"BalancedBatchSampler.{name} has {len(value)} entries for {k} classes")
            return value

        self.weights = self.probs = None
        if probs is not None:
            p = np.asarray(per_class(probs, "probs"), dtype=np.float64)
            if (p < 0).any() or not math.isclose(p.sum(), 1.0, rel_tol=1e-6):
                raise ConfigError(f"BalancedBatchSampler.probs must be >= 0 and sum to 1, got {p.tolist()}")
            self.probs = p / p.sum()
            expected = self.probs * batch_size
        else:
            if weights is not None:
                w = per_class(weights, "weights")
                if any(not isinstance(x, (int, np.integer)) or x < 0 for x in w) or sum(w) != batch_size:
                    raise ConfigError(
                        f"BalancedBatchSampler.weights must be ints >= 0 summing to {batch_size}, got {w}"
                    )
                self.weights = np.asarray(w, dtype=np.int64)
            expected = self.weights if self.weights is not None else np.full(k, batch_size / k)
        self.batch_size = batch_size
        if num_batches is None:
            sizes = np.array([len(self.indices[c]) for c in self.classes], dtype=np.float64)
            largest = int(np.argmax(np.where(expected > 0, sizes, -1)))
            num_batches = max(1, math.ceil(sizes[largest] / expected[largest]))
        if not isinstance(num_batches, (int, np.integer)) or num_batches < 1:
            raise ConfigError(f"BalancedBatchSampler.num_batches must be a positive int, got {num_batches!r}")
        self.num_batches = -(-int(num_batches) // world_size) * world_size  # whole rounds over ranks
        self.rng, self.epoch, self.rank, self.world_size = rng, epoch, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Use the stream of ``epoch`` on the next iteration (call once per epoch, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches // self.world_size

    def _counts(self, rng: np.random.Generator) -> np.ndarray:
        k = len(self.classes)
        if self.probs is not None:
            return rng.multinomial(self.batch_size, self.probs)
        if self.weights is not None:
            return self.weights
        counts = np.full(k, self.batch_size // k, dtype=np.int64)
        counts[rng.choice(k, self.batch_size % k, replace=False)] += 1
        return counts

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (default: the current one); a pure function of the config."""
        epoch = self.epoch if epoch is None else epoch
        rng = self.rng.child("balanced-batch-sampler", int(epoch)).numpy()
        streams = {c: _Cycle(idx, rng) for c, idx in self.indices.items()}
        out = []
        for b in range(self.num_batches):
            counts = self._counts(rng)
            batch = np.concatenate([streams[c].take(int(n)) for c, n in zip(self.classes, counts)])
            rng.shuffle(batch)
            if b % self.world_size == self.rank:
                out.append(batch.tolist())
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())


def _distributed() -> tuple[int, int]:
    import sys

    dist = getattr(sys.modules.get("torch"), "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Cycle:
    """Endless reshuffled passes over one class's indices."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator):
        self.indices, self.rng = indices, rng
        self.order, self.pos = rng.permutation(indices), 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(self.indices), 0
            m = min(n, len(self.order) - self.pos)
            parts.append(self.order[self.pos : self.pos + m])
            self.pos += m
            n -= m
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
