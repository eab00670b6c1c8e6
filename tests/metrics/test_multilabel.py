"""Multi-label metrics against scikit-learn (per label, macro, micro); merge and bootstrap laws."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from fusefn import Rng
from fusefn.errors import SampleError
from fusefn.metrics import _base
from fusefn.metrics.bootstrap import Bootstrap, resample_counts
from fusefn.metrics.multilabel import (
    MultiLabelAUC,
    MultiLabelAveragePrecision,
    MultiLabelSensitivity,
    MultiLabelSpecificity,
)

ALL = (MultiLabelAUC, MultiLabelAveragePrecision, MultiLabelSensitivity, MultiLabelSpecificity)


def _data(seed, n=150, num=4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, num)) < rng.uniform(0.2, 0.6, num)).astype(int)
    s = (rng.random((n, num)) + 0.6 * y).round(1)  # coarse: many tied scores
    return s, y


def _sens(y, d):
    return skm.recall_score(y, d, average=None, zero_division=np.nan)


def _reference(cls, s, y, t=0.5):
    d = (s >= t).astype(int)
    if cls is MultiLabelAUC:
        per, avg = skm.roc_auc_score(y, s, average=None), {a: skm.roc_auc_score(y, s, average=a) for a in AVG}
    elif cls is MultiLabelAveragePrecision:
        per = skm.average_precision_score(y, s, average=None)
        avg = {a: skm.average_precision_score(y, s, average=a) for a in AVG}
    elif cls is MultiLabelSensitivity:
        per, avg = _sens(y, d), {a: skm.recall_score(y, d, average=a) for a in AVG}
    else:  # specificity: the recall of the negatives
        per, avg = _sens(1 - y, 1 - d), {a: skm.recall_score(1 - y, 1 - d, average=a) for a in AVG}
    return {**{str(i): v for i, v in enumerate(per)}, **avg}


AVG = ("macro", "micro")


def _value(m, s, y):
    return m.compute(m.update(m.init(), {"s": s, "y": y}))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("seed", range(5))
def test_equals_sklearn_per_label_macro_and_micro(cls, seed):
    s, y = _data(seed)
    got, want = _value(cls(pred="s", target="y"), s, y), _reference(cls, s, y)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


@pytest.mark.parametrize("cls", ALL)
def test_resampled_equals_compute_on_each_resample(cls):
    s, y = _data(9, n=40, num=3)
    m = cls(pred="s", target="y", label_names=("a", "b", "c"))
    counts = resample_counts(15, np.zeros(40, int), rng=Rng(2))
    fast = m.resampled(m.extract({"s": s, "y": y}), counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _base.UndefinedMetricWarning)
        slow = [_value(m, np.repeat(s, c, axis=0), np.repeat(y, c, axis=0)) for c in counts]
    for k in fast:
        np.testing.assert_allclose(fast[k], [r[k] for r in slow], atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 29), st.sampled_from(ALL))
def test_merge_of_states_equals_update_on_the_whole(seed, cut, cls):
    s, y = _data(seed, n=30, num=3)
    m = cls(pred="s", target="y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _base.UndefinedMetricWarning)
        whole = _value(m, s, y)
        a = m.update(m.init(), {"s": s[:cut], "y": y[:cut]})
        b = m.update(m.init(), {"s": s[cut:], "y": y[cut:]})
        merged = m.compute(m.merge(a, b))
    np.testing.assert_allclose([merged[k] for k in whole], list(whole.values()), atol=1e-12)


def test_sensitivity_of_labels_swaps_with_specificity_when_everything_is_flipped():
    s, y = _data(1)
    sens = _value(MultiLabelSensitivity(pred="s", target="y", threshold=0.5), s, y)
    spec = _value(MultiLabelSpecificity(pred="s", target="y", threshold=-0.5), -s + 1e-9, 1 - y)
    for k in sens:
        assert sens[k] == pytest.approx(spec[k], abs=1e-12)


def test_an_undefined_label_warns_is_nan_and_is_left_out_of_macro():
    s, y = _data(2)
    y[:, 1] = 0
    with pytest.warns(_base.UndefinedMetricWarning, match="'1'.*no positive"):
        r = _value(MultiLabelAUC(pred="s", target="y"), s, y)
    assert np.isnan(r["1"])
    assert r["macro"] == pytest.approx(np.mean([r["0"], r["2"], r["3"]]))


def test_bootstrap_gives_an_interval_per_label_and_average():
    s, y = _data(3)
    ci = Bootstrap(MultiLabelAUC(pred="s", target="y"), n=200, rng=Rng(0))
    r = ci.compute(ci.update(ci.init(), {"s": s, "y": y}))
    assert set(r) == {"0", "1", "2", "3", "macro", "micro"}
    assert all(r[k]["lower"] <= r[k]["value"] <= r[k]["upper"] for k in r)


def test_errors_name_the_key():
    s, y = _data(0)
    with pytest.raises(SampleError, match="'y'.*0 or 1"):
        _value(MultiLabelAUC(pred="s", target="y"), s, y * 2)
    with pytest.raises(SampleError, match="'y'.*shape"):
        _value(MultiLabelAUC(pred="s", target="y"), s, y[:, :2])
    with pytest.raises(SampleError, match="'s'.*\\(N, L\\)"):
        _value(MultiLabelAUC(pred="s", target="y"), s[:, 0], y)
