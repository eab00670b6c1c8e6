import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import Rng
from fusefn.data import BalancedBatchSampler
from fusefn.errors import ConfigError

LABELS = ["a"] * 20 + ["b"] * 5 + ["c"] * 3


def counts(batch, labels=LABELS):
    return collections.Counter(labels[i] for i in batch)


def test_equal_split_and_default_num_batches():
    s = BalancedBatchSampler(LABELS, batch_size=6, rng=Rng(0))
    batches = list(s)
    assert len(batches) == len(s) == 10  # the largest class (20) seen once at 2 per batch
    assert all(counts(b) == {"a": 2, "b": 2, "c": 2} for b in batches)
    # the largest class is seen exactly once; small classes cycle, reshuffled
    seen_a = [i for b in batches for i in b if LABELS[i] == "a"]
    assert sorted(seen_a) == list(range(20))


def test_weights_and_probs():
    s = BalancedBatchSampler(LABELS, batch_size=5, weights={"a": 3, "b": 1, "c": 1}, rng=Rng(1))
    assert all(counts(b) == {"a": 3, "b": 1, "c": 1} for b in s)
    p = BalancedBatchSampler(LABELS, batch_size=8, probs=[0.5, 0.25, 0.25], num_batches=200, rng=Rng(2))
    total = collections.Counter(LABELS[i] for b in p for i in b)
    assert abs(total["a"] / 1600 - 0.5) < 0.05 and all(len(b) == 8 for b in p)


def test_seeded_by_seed_and_epoch():
    s = BalancedBatchSampler(LABELS, batch_size=6, rng=Rng(5))
    e0 = list(s)
    assert list(s) == e0 == BalancedBatchSampler(LABELS, batch_size=6, rng=Rng(5)).batches(0)
    s.set_epoch(1)
    assert list(s) != e0
    assert BalancedBatchSampler(LABELS, batch_size=6, rng=Rng(6)).batches(0) != e0


def test_ddp_ranks_get_disjoint_batches_of_one_stream():
    full = BalancedBatchSampler(LABELS, batch_size=6, rng=Rng(3), num_batches=10).batches()
    ranks = [
        BalancedBatchSampler(LABELS, batch_size=6, rng=Rng(3), num_batches=10, rank=r, world_size=2) for r in (0, 1)
    ]
    assert [len(r) for r in ranks] == [5, 5]
    assert ranks[0].batches() == full[0::2] and ranks[1].batches() == full[1::2]


def test_bad_config():
    with pytest.raises(ConfigError, match=r"classes \['d'\] have no samples"):
        BalancedBatchSampler(LABELS, batch_size=4, classes=["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="weights must be ints >= 0 summing to 4"):
        BalancedBatchSampler(LABELS, batch_size=4, weights=[1, 1, 1])
    with pytest.raises(ConfigError, match="3 entries for 2 classes"):
        BalancedBatchSampler(LABELS, batch_size=4, classes=["a", "b"], weights=[1, 1, 2])
    with pytest.raises(ConfigError, match="probs"):
        BalancedBatchSampler(LABELS, batch_size=4, probs=[0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="not both"):
        BalancedBatchSampler(LABELS, batch_size=3, probs=[1, 0, 0], weights=[3, 0, 0])
    with pytest.raises(ConfigError, match="rank"):
        BalancedBatchSampler(LABELS, batch_size=3, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="empty"):
        BalancedBatchSampler([], batch_size=3)


def test_missing_labels_raise():
    with pytest.raises(ConfigError, match=r"2 of 6 labels are missing \(NaN/None\), first at positions \[4, 5\]"):
        BalancedBatchSampler(np.array([0, 0, 1, 1, np.nan, np.nan]), batch_size=4)
    with pytest.raises(ConfigError, match=r"1 of 3 labels are missing.*positions \[1\]"):
        BalancedBatchSampler(["a", None, "b"], batch_size=2)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40), st.integers(1, 9), st.integers(0, 100))
def test_every_batch_full_and_indices_valid(labels, batch_size, seed):
    s = BalancedBatchSampler(labels, batch_size=batch_size, rng=Rng(seed))
    batches = list(s)
    assert batches and all(len(b) == batch_size and all(0 <= i < len(labels) for i in b) for b in batches)
    k = len(set(labels))
    for b in batches:  # each class gets its share, off by at most one
        c = collections.Counter(labels[i] for i in b)
        assert max(c.values()) - min(c.get(v, 0) for v in set(labels)) <= 1 or batch_size < k
