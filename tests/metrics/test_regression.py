"""Regression metrics against scikit-learn and SciPy; merge and bootstrap laws."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm

from fusefn import Rng
from fusefn.errors import SampleError
from fusefn.metrics import _base
from fusefn.metrics.bootstrap import Bootstrap, resample_counts
from fusefn.metrics.regression import MAE, MSE, R2, RMSE, Pearson, Spearman

ALL = (MAE, MSE, RMSE, R2, Pearson, Spearman)


def _reference(cls, p, t):
    return {
        MAE: lambda: skm.mean_absolute_error(t, p),
        MSE: lambda: skm.mean_squared_error(t, p),
        RMSE: lambda: skm.root_mean_squared_error(t, p),
        R2: lambda: skm.r2_score(t, p),
        Pearson: lambda: stats.pearsonr(p, t)[0],
        Spearman: lambda: stats.spearmanr(p, t)[0],
    }[cls]()


def _data(seed, n=200):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 12, n).astype(float) * 0.5  # many ties
    p = t * rng.uniform(0.2, 1.5) + rng.integers(-3, 4, n) + rng.uniform(-100, 100)
    return p, t


def _value(m, p, t):
    return m.compute(m.update(m.init(), {"p": p, "y": t}))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("seed", range(6))
def test_equals_sklearn_and_scipy_with_ties(cls, seed):
    p, t = _data(seed)
    assert _value(cls(pred="p", target="y"), p, t) == pytest.approx(_reference(cls, p, t), abs=1e-9, rel=1e-9)


@pytest.mark.parametrize("cls", ALL)
def test_batches_merge_to_the_whole(cls):
    p, t = _data(7, n=301)
    m = cls(pred="p", target="y")
    states = [m.update(m.init(), {"p": p[i : i + 37], "y": t[i : i + 37]}) for i in range(0, 301, 37)]
    merged = states[0]
    for s in states[1:]:
        merged = m.merge(merged, s)
    assert m.compute(merged) == pytest.approx(_reference(cls, p, t), abs=1e-9, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-20, 20), st.integers(-20, 20)), min_size=3, max_size=40),
    st.integers(1, 39),
    st.sampled_from(ALL),
)
def test_merge_of_states_equals_update_on_the_whole(pairs, cut, cls):
    p = np.array([a for a, _ in pairs], float) / 4
    t = np.array([b for _, b in pairs], float) / 4
    cut = min(cut, len(pairs) - 1)
    m = cls(pred="p", target="y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _base.UndefinedMetricWarning)
        whole = _value(m, p, t)
        a = m.update(m.init(), {"p": p[:cut], "y": t[:cut]})
        b = m.update(m.init(), {"p": p[cut:], "y": t[cut:]})
        ab, ba = m.compute(m.merge(a, b)), m.compute(m.merge(b, a))
    if np.isnan(whole):
        assert np.isnan(ab) and np.isnan(ba)
    else:
        assert ab == pytest.approx(whole, abs=1e-9) and ba == pytest.approx(whole, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-9, 9), st.integers(-9, 9)), min_size=3, max_size=30))
def test_symmetric_metrics_do_not_care_which_is_the_prediction(pairs):
    p = np.array([a for a, _ in pairs], float)
    t = np.array([b for _, b in pairs], float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _base.UndefinedMetricWarning)
        for cls in (MAE, MSE, RMSE, Pearson, Spearman):
            x, y = _value(cls(pred="p", target="y"), p, t), _value(cls(pred="p", target="y"), t, p)
            assert (np.isnan(x) and np.isnan(y)) or x == pytest.approx(y, abs=1e-12)


@pytest.mark.parametrize("cls", ALL)
def test_resampled_equals_compute_on_each_resample(cls):
    p, t = _data(3, n=40)
    m = cls(pred="p", target="y")
    cols = m.extract({"p": p, "y": t})
    counts = resample_counts(25, np.zeros(40, int), rng=Rng(0))
    fast = m.resampled(cols, counts)
    slow = [_reference(cls, np.repeat(p, c), np.repeat(t, c)) for c in counts]
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


def test_bootstrap_interval_brackets_the_value():
    p, t = _data(4, n=120)
    ci = Bootstrap(Pearson(pred="p", target="y"), n=300, rng=Rng(1))
    r = ci.compute(ci.update(ci.init(), {"p": p, "y": t}))
    assert r["lower"] < r["value"] < r["upper"]
    assert r["value"] == pytest.approx(stats.pearsonr(p, t)[0], abs=1e-12)


def test_undefined_values_warn_and_give_nan():
    m = R2(pred="p", target="y")
    with pytest.warns(_base.UndefinedMetricWarning, match="constant"):
        assert np.isnan(_value(m, np.array([1.0, 2.0]), np.array([3.0, 3.0])))
    with pytest.warns(_base.UndefinedMetricWarning, match="no samples"):
        assert np.isnan(m.compute(m.init()))


def test_errors_name_the_key_and_sample():
    m = MAE(pred="p", target="y")
    with pytest.raises(SampleError, match="'b'") as e:
        batch = {"p": np.array([1.0, np.nan]), "y": np.array([1.0, 2.0])}
        m.update(m.init(), {**batch, "data": {"sample_id": ["a", "b"]}})
    assert "p" in str(e.value)
    with pytest.raises(SampleError, match="one value per sample"):
        m.update(m.init(), {"p": np.ones((3, 2)), "y": np.ones(3)})
