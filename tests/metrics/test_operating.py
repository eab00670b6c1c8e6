"""Operating points against scikit-learn's ROC curve and a brute-force threshold sweep; merge, bootstrap, symmetry."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_curve

from fusefn import Rng
from fusefn.errors import SampleError
from fusefn.metrics import _base
from fusefn.metrics.bootstrap import Bootstrap, resample_counts
from fusefn.metrics.classification import Accuracy
from fusefn.metrics.operating import SensitivityAtSpecificity, SpecificityAtSensitivity, YoudenJ, roc_table


def _data(seed, n=120):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return {"s": (rng.random(n) + 0.5 * y).round(1), "y": y}  # coarse scores: many ties


def _value(m, b):
    return m.compute(m.update(m.init(), b))


def _sweep(b):
    """(threshold, sensitivity, specificity) of every cut-off ``score >= t``, brute force."""
    s, y = b["s"], b["y"] == 1
    out = [(np.inf, 0.0, 1.0)]
    for t in np.unique(s)[::-1]:
        d = s >= t
        out.append((t, (d & y).sum() / y.sum(), (~d & ~y).sum() / (~y).sum()))
    return np.array(out)


@pytest.mark.parametrize("seed", range(8))
def test_roc_table_equals_sklearn_roc_curve(seed):
    b = _data(seed)
    fpr, tpr, thr = roc_curve(b["y"], b["s"], drop_intermediate=False)
    t = roc_table(b["s"], b["y"] == 1)
    np.testing.assert_allclose(t["sensitivity"][0], tpr, atol=1e-12)
    np.testing.assert_allclose(1 - t["specificity"][0], fpr, atol=1e-12)
    np.testing.assert_array_equal(t["thresholds"], thr)


@pytest.mark.parametrize("seed", range(8))
def test_youden_is_the_first_maximum_of_j(seed):
    b = _data(seed)
    fpr, tpr, thr = roc_curve(b["y"], b["s"], drop_intermediate=False)
    k = int(np.argmax(tpr - fpr))
    r = _value(YoudenJ(pred="s", target="y"), b)
    assert r["j"] == pytest.approx(tpr[k] - fpr[k], abs=1e-12)
    assert r["threshold"] == thr[k] and r["sensitivity"] == pytest.approx(tpr[k], abs=1e-12)
    # the threshold is a real cut-off: applied with score >= threshold it gives the same rates
    d = b["s"] >= r["threshold"]
    assert (d & (b["y"] == 1)).sum() / (b["y"] == 1).sum() == pytest.approx(r["sensitivity"], abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0, 0.0])
def test_step_rule_is_the_best_achievable_cut_off(seed, target):
    b = _data(seed)
    sweep = _sweep(b)
    ok = sweep[sweep[:, 2] >= target - 1e-12]
    r = _value(SensitivityAtSpecificity(pred="s", target="y", specificity=target), b)
    assert r["sensitivity"] == pytest.approx(ok[:, 1].max(), abs=1e-12)
    assert r["specificity"] >= target - 1e-12
    ok = sweep[sweep[:, 1] >= target - 1e-12]
    r = _value(SpecificityAtSensitivity(pred="s", target="y", sensitivity=target), b)
    assert r["specificity"] == pytest.approx(ok[:, 2].max(), abs=1e-12)
    assert r["sensitivity"] >= target - 1e-12


def _interp_upper(x, xs, ys):
    """Linear interpolation on a monotone curve, the largest y at a vertical run at x."""
    hits = ys[np.abs(xs - x) <= 1e-12]
    if hits.size:
        return hits.max()
    k = np.searchsorted(xs, x) - 1
    return ys[k] + (ys[k + 1] - ys[k]) * (x - xs[k]) / (xs[k + 1] - xs[k])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("target", [0.5, 0.77, 0.9, 0.95])
def test_interpolated_rule_reads_the_piecewise_linear_roc_curve(seed, target):
    b = _data(seed)
    fpr, tpr, _ = roc_curve(b["y"], b["s"], drop_intermediate=False)
    r = _value(SensitivityAtSpecificity(pred="s", target="y", specificity=target, interpolate=True), b)
    assert r["sensitivity"] == pytest.approx(_interp_upper(1 - target, fpr, tpr), abs=1e-9)
    assert r["specificity"] == target
    r = _value(SpecificityAtSensitivity(pred="s", target="y", sensitivity=target, interpolate=True), b)
    # the left end of a horizontal run: the smallest FPR reaching that TPR
    want_fpr = (
        -_interp_upper(target, tpr, -fpr) if not np.isclose(tpr, target).any() else fpr[np.isclose(tpr, target)].min()
    )
    assert r["specificity"] == pytest.approx(1 - want_fpr, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.95), st.booleans())
def test_swapping_the_classes_and_negating_the_score_swaps_the_two_rates(seed, target, interpolate):
    b = _data(seed, n=40)
    flipped = {"s": -b["s"], "y": 1 - b["y"]}
    a = _value(SensitivityAtSpecificity(pred="s", target="y", specificity=target, interpolate=interpolate), b)
    z = _value(SpecificityAtSensitivity(pred="s", target="y", sensitivity=target, interpolate=interpolate), flipped)
    assert a["sensitivity"] == pytest.approx(z["specificity"], abs=1e-12)
    assert a["specificity"] == pytest.approx(z["sensitivity"], abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 39))
def test_merge_of_states_equals_update_on_the_whole(seed, cut):
    b = _data(seed, n=40)
    for m in (YoudenJ(pred="s", target="y"), SensitivityAtSpecificity(pred="s", target="y", specificity=0.8)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _base.UndefinedMetricWarning)
            whole = _value(m, b)
            a = m.update(m.init(), {k: v[:cut] for k, v in b.items()})
            z = m.update(m.init(), {k: v[cut:] for k, v in b.items()})
            assert m.compute(m.merge(a, z)) == whole


@pytest.mark.parametrize(
    "m",
    [
        YoudenJ(pred="s", target="y"),
        SensitivityAtSpecificity(pred="s", target="y", specificity=0.85),
        SensitivityAtSpecificity(pred="s", target="y", specificity=0.85, interpolate=True),
        SpecificityAtSensitivity(pred="s", target="y", sensitivity=0.9, interpolate=True),
    ],
)
def test_resampled_equals_compute_on_each_resample(m):
    b = _data(4, n=50)
    counts = resample_counts(30, b["y"], rng=Rng(0))
    fast = m.resampled(m.extract(b), counts)
    for row, c in enumerate(counts):
        slow = _value(m, {k: np.repeat(v, c) for k, v in b.items()})
        for k in slow:
            assert fast[k][row] == pytest.approx(slow[k], abs=1e-12), k


def test_bootstrap_interval_and_threshold_transfer():
    val, test = _data(1, 200), _data(2, 200)
    ci = Bootstrap(SensitivityAtSpecificity(pred="s", target="y", specificity=0.9), n=200, rng=Rng(0), stratify="y")
    r = ci.compute(ci.update(ci.init(), val))
    assert r["sensitivity"]["lower"] <= r["sensitivity"]["value"] <= r["sensitivity"]["upper"]
    youden = _value(YoudenJ(pred="s", target="y"), val)
    acc = _value(Accuracy(pred="s", target="y", threshold=youden["threshold"]), test)
    assert acc == pytest.approx(np.mean((test["s"] >= youden["threshold"]) == test["y"]))


def test_one_class_is_undefined_and_errors_name_the_key():
    with pytest.warns(_base.UndefinedMetricWarning, match="one class"):
        r = _value(YoudenJ(pred="s", target="y"), {"s": np.array([0.1, 0.2]), "y": np.array([1, 1])})
    assert np.isnan(r["j"])
    with pytest.raises(SampleError, match="'s'.*binary"):
        _value(YoudenJ(pred="s", target="y"), {"s": np.ones((3, 3)), "y": np.array([0, 1, 1])})
    with pytest.raises(SampleError, match="'y'"):
        _value(YoudenJ(pred="s", target="y"), {"s": np.ones(3), "y": np.array([0, 1, 2])})
