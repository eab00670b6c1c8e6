"""ECE / MCE and reliability data."""

import numpy as np
import pytest

from fusefn.errors import SampleError
from fusefn.metrics import ECE


def run(metric, batch):
    return metric.compute(metric.update(metric.init(), batch))


def test_ece_matches_direct_binning_multiclass():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), 500)
    y = rng.integers(0, 4, 500)
    r = run(ECE(pred="p", target="y", n_bins=10), {"p": p, "y": y})
    conf, correct = p.max(1), (p.argmax(1) == y)
    b = np.minimum((conf * 10).astype(int), 9)
    gaps = [abs(conf[b == k].mean() - correct[b == k].mean()) for k in range(10) if (b == k).any()]
    ece = sum((b == k).sum() * abs(conf[b == k].mean() - correct[b == k].mean()) for k in range(10) if (b == k).any())
    assert r["ece"] == pytest.approx(ece / 500, abs=1e-12)
    assert r["mce"] == pytest.approx(max(gaps), abs=1e-12)
    assert sum(r["bins"]["count"]) == 500


def test_perfectly_calibrated_is_zero_and_merge():
    p = np.array([1.0, 0.0, 1.0, 0.0])
    y = np.array([1, 0, 1, 0])
    m = ECE(pred="p", target="y")
    assert run(m, {"p": p, "y": y})["ece"] == 0.0
    a, b = m.update(m.init(), {"p": p[:1], "y": y[:1]}), m.update(m.init(), {"p": p[1:], "y": y[1:]})
    np.testing.assert_equal(m.compute(m.merge(a, b)), run(m, {"p": p, "y": y}))


def test_logits_are_refused():
    with pytest.raises(SampleError, match="probabilities"):
        run(ECE(pred="p", target="y"), {"p": np.array([2.0, -1.0]), "y": np.array([1, 0])})
