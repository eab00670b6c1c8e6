"""The order of an epoch: which sample indices form each batch, seeded, split by rank.

This is the one seeded shuffle of fusefn: :func:`fusefn.train.fit` and
:func:`fusefn.data.loader` both order their batches through :func:`index_batches`.

>>> from fusefn import Rng
>>> index_batches(5, batch_size=2)
[[0, 1], [2, 3], [4]]
>>> index_batches(5, batch_size=2, rng=Rng(0).child("shuffle", 0))
[[2, 3], [1, 0], [4]]
>>> index_batches(5, batch_size=2, rank=1, world=2)  # the tail that does not divide by world is dropped
[[1, 3]]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from fusefn.core import Rng
from fusefn.errors import ConfigError

__all__ = ["EpochSampler", "index_batches"]


@runtime_checkable
class EpochSampler(Protocol):
    """A batch sampler whose order depends on the epoch: told the epoch before each is iterated.

    :class:`~fusefn.data.BalancedBatchSampler` is one; ``loader`` and ``fit`` call ``set_epoch``
    on a batch sampler that is one, and iterate any other as it is.
    """

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[list[int]]: ...


def index_batches(
    n: int,
    *,
    batch_size: int,
    rng: Rng | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world: int = 1,
) -> list[list[int]]:
    """Indices ``0..n-1`` in batches of ``batch_size``: shuffled by ``rng`` (in order when ``None``), this rank's share.

    Args:
        rng: the stream of this epoch's permutation (``fit`` passes ``Rng(seed).child("shuffle", epoch)``).
        drop_last: leave out a last batch smaller than ``batch_size``.
        rank, world: with ``world > 1`` every rank gets ``n // world`` indices (the permutation's
            first ``n // world * world``, dealt round-robin), so all ranks run the same number of steps.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"index_batches: batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1 or not 0 <= rank < world:
        raise ConfigError(f"index_batches: needs 0 <= rank < world, got rank={rank!r}, world={world!r}")
    if rng is None:
        order = list(range(n))
    else:
        import torch

        order = torch.randperm(n, generator=rng.generator()).tolist()
    if world > 1:
        order = order[: n // world * world][rank::world]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
