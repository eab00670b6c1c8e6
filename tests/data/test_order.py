"""The one seeded shuffle: fusefn.data.index_batches."""

import pytest
import torch

from fusefn import Rng
from fusefn.data import BalancedBatchSampler, EpochSampler, index_batches
from fusefn.errors import ConfigError


def _reference(n, epoch, seed, batch_size, shuffle, drop_last, rank, world):
    # fit's shuffle before index_batches existed, written out
    if shuffle:
        order = torch.randperm(n, generator=Rng(seed).child("shuffle", epoch).generator()).tolist()
    else:
        order = list(range(n))
    if world > 1:
        order = order[: n // world * world][rank::world]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


@pytest.mark.parametrize("n", [0, 1, 7, 33])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("rank", "world"), [(0, 1), (0, 2), (1, 2), (2, 3)])
def test_index_batches_is_fits_shuffle(n, shuffle, drop_last, rank, world):
    for epoch in (0, 5):
        rng = Rng(11).child("shuffle", epoch) if shuffle else None
        got = index_batches(n, batch_size=4, rng=rng, drop_last=drop_last, rank=rank, world=world)
        assert got == _reference(n, epoch, 11, 4, shuffle, drop_last, rank, world)


def test_index_batches_ranks_partition_the_permutation():
    rng = Rng(3).child("shuffle", 1)
    shares = [[i for b in index_batches(10, batch_size=3, rng=rng, rank=r, world=3) for i in b] for r in range(3)]
    assert all(len(s) == 3 for s in shares)
    assert len(set().union(*shares)) == 9
    whole = [i for b in index_batches(10, batch_size=3, rng=rng) for i in b]
    assert whole[:9] == [x for t in zip(*shares) for x in t]


def test_index_batches_rejects_bad_settings():
    with pytest.raises(ConfigError, match="batch_size"):
        index_batches(4, batch_size=0)
    with pytest.raises(ConfigError, match="rank"):
        index_batches(4, batch_size=1, rank=2, world=2)


def test_balanced_sampler_is_an_epoch_sampler():
    assert isinstance(BalancedBatchSampler([0, 1, 0, 1], batch_size=2), EpochSampler)
    assert not isinstance([[0, 1]], EpochSampler)
