"""DeLong and McNemar tests."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from fusefn.metrics import DeLong, McNemar, UndefinedMetricWarning


def run(metric, batch):
    return metric.compute(metric.update(metric.init(), batch))


def test_delong_aucs_match_sklearn_and_identical_scores_give_z_zero():
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = rng.integers(0, 2, 40)
        y[:2] = [0, 1]
        a, b = rng.integers(0, 5, 40) / 5, rng.random(40)
        r = run(DeLong(pred1="a", pred2="b", target="y"), {"a": a, "b": b, "y": y})
        assert r["auc1"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
        assert r["auc2"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
        assert 0 <= r["p_value"] <= 1
    same = run(DeLong(pred1="a", pred2="a", target="y"), {"a": a, "y": y})
    assert same["z"] == 0 and same["p_value"] == 1


def test_delong_variance_matches_single_auc_formula():
    """Var(AUC1 - AUC2) with an independent-looking pair equals the sum of DeLong single variances minus 2cov."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    a = rng.normal(size=60) + y
    r = run(DeLong(pred1="a", pred2="b", target="y"), {"a": a, "b": -a, "y": y})
    # b ranks exactly opposite: AUC2 = 1 - AUC1 and the two are perfectly anti-correlated
    assert r["auc2"] == pytest.approx(1 - r["auc1"])


def test_delong_single_class_is_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning, match="single class"):
        r = run(DeLong(pred1="a", pred2="b", target="y"), {"a": [0.1, 0.2], "b": [0.3, 0.1], "y": [1, 1]})
    assert np.isnan(r["z"])


def test_mcnemar_table_exact_and_chi2():
    y = np.array([1] * 20)
    p1 = np.array([1] * 12 + [0] * 8)
    p2 = np.array([1] * 6 + [0] * 6 + [1] * 2 + [0] * 6)
    b = {"y": y, "p1": p1, "p2": p2}
    r = run(McNemar(pred1="p1", pred2="p2", target="y"), b)
    assert r["table"] == [[6, 6], [2, 6]]
    assert r["p_value"] == pytest.approx(stats.binomtest(2, 8, 0.5).pvalue)
    r2 = run(McNemar(pred1="p1", pred2="p2", target="y", exact=False), b)
    assert r2["statistic"] == pytest.approx((abs(6 - 2) - 1) ** 2 / 8)
    assert r2["p_value"] == pytest.approx(stats.chi2.sf(9 / 8, 1))
    m = McNemar(pred1="p1", pred2="p2", target="y")
    half = m.merge(
        m.update(m.init(), {k: v[:7] for k, v in b.items()}), m.update(m.init(), {k: v[7:] for k, v in b.items()})
    )
    assert m.compute(half) == r
    with pytest.warns(UndefinedMetricWarning, match="never disagree"):
        run(m, {"y": y, "p1": p1, "p2": p1})
