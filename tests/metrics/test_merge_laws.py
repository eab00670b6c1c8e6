"""merge(update(a), update(b)) == update(a + b) for the fixed-size and per-volume states too."""

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import Rng
from fusefn.metrics import ECE, Accuracy, Bootstrap, Dice, GroupBy, IoU, McNemar

METRICS = [
    ("p", Dice(pred="lab", target="t", classes=(1, 2, (1, 2)))),
    ("p", IoU(pred="lab", target="t", average="micro")),
    ("p", ECE(pred="prob", target="y", n_bins=4)),
    ("p", GroupBy(Accuracy(pred="prob", target="y"), by="g")),
    ("p", McNemar(pred1="prob", pred2="prob2", target="y")),
    ("p", Bootstrap(Accuracy(pred="prob", target="y"), n=50, rng=Rng(0))),
]


def make(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 3, (n, 3, 4))
    return {
        "lab": np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, 3, t.shape)),
        "t": t,
        "prob": rng.random(n).round(2),
        "prob2": rng.random(n).round(2),
        "y": rng.integers(0, 2, n),
        "g": rng.integers(0, 3, n),
    }


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), n=st.integers(2, 30), cut=st.integers(0, 30), which=st.integers(0, len(METRICS) - 1)
)
def test_merge_law(seed, n, cut, which):
    data = make(seed, n)
    cut = min(cut, n)
    m = METRICS[which][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = m.compute(m.update(m.init(), data))
        a = m.update(m.init(), {k: v[:cut] for k, v in data.items()})
        b = m.update(m.init(), {k: v[cut:] for k, v in data.items()})
        assert_close(m.compute(m.merge(a, b)), whole)


def assert_close(x, y):
    """Equal structure; numbers equal up to float summation order."""
    if isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            assert_close(x[k], y[k])
    else:
        np.testing.assert_allclose(np.asarray(x, dtype=float), np.asarray(y, dtype=float), rtol=1e-12, atol=1e-15)
