"""Survival metrics against scikit-survival and lifelines (test-only oracles); merge and bootstrap laws.

Every comparison is to 1e-9 (observed differences are ~1e-15): the definitions coincide,
with risks drawn on a coarse grid so that scikit-survival's ``tied_tol=1e-8`` and exact
ties agree.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test, multivariate_logrank_test
from lifelines.utils import concordance_index
from sksurv import metrics as sks
from sksurv.util import Surv

from fusefn import Rng
from fusefn.errors import SampleError
from fusefn.metrics import _base, survival
from fusefn.metrics.bootstrap import Bootstrap, resample_counts
from fusefn.metrics.survival import (
    CumulativeDynamicAUC,
    HarrellC,
    IntegratedBrierScore,
    KaplanMeier,
    LogRank,
    UnoC,
    censoring_survival,
    kaplan_meier,
    logrank,
    step_at,
)

TOL = 1e-9
TIMES = (3.0, 7.0, 12.0)


def _data(seed, n=90):
    rng = np.random.default_rng(seed)
    t = rng.integers(1, 20, n).astype(float)  # many tied times
    e = rng.random(n) < 0.6
    t[0], e[0] = 25.0, True  # the last time an event: the censoring survival stays positive (sksurv needs it)
    r = rng.integers(0, 8, n) / 2  # many tied risks
    surv = np.clip(1 - np.outer(r / 5, np.array(TIMES) / 20) + rng.normal(0, 0.02, (n, 3)), 0, 1)
    g = rng.integers(0, 3, n)
    return {"r": r, "t": t, "e": e.astype(int), "S": surv, "g": g}


def _value(m, b):
    return m.compute(m.update(m.init(), b))


def _y(b):
    return Surv.from_arrays(b["e"].astype(bool), b["t"])


@pytest.mark.parametrize("seed", range(6))
def test_harrell_c_equals_sksurv_and_lifelines(seed):
    b = _data(seed)
    got = _value(HarrellC(pred="r", time="t", event="e"), b)
    assert got == pytest.approx(sks.concordance_index_censored(b["e"].astype(bool), b["t"], b["r"])[0], abs=TOL)
    assert got == pytest.approx(concordance_index(b["t"], -b["r"], b["e"]), abs=TOL)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tau", [None, 10.0, 15.5])
def test_uno_c_equals_sksurv_ipcw(seed, tau):
    b = _data(seed)
    want = sks.concordance_index_ipcw(_y(b), _y(b), b["r"], tau=tau)[0]
    assert _value(UnoC(pred="r", time="t", event="e", tau=tau), b) == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize("seed", range(6))
def test_cumulative_dynamic_auc_equals_sksurv(seed):
    b = _data(seed)
    aucs, mean = sks.cumulative_dynamic_auc(_y(b), _y(b), b["r"], list(TIMES))
    got = _value(CumulativeDynamicAUC(pred="r", time="t", event="e", times=TIMES), b)
    np.testing.assert_allclose([got["3"], got["7"], got["12"], got["mean"]], [*aucs, mean], atol=TOL)
    # time-dependent risks: one column per time
    per_time = b["r"][:, None] + np.array([0.0, 0.5, 1.0]) * b["g"][:, None]
    aucs, mean = sks.cumulative_dynamic_auc(_y(b), _y(b), per_time, list(TIMES))
    got = _value(CumulativeDynamicAUC(pred="q", time="t", event="e", times=TIMES), {**b, "q": per_time})
    np.testing.assert_allclose(list(got.values()), [*aucs, mean], atol=TOL)
    one = _value(CumulativeDynamicAUC(pred="r", time="t", event="e", times=7.0), b)
    assert (
        one["7"] == one["mean"] == pytest.approx(sks.cumulative_dynamic_auc(_y(b), _y(b), b["r"], 7.0)[0][0], abs=TOL)
    )


@pytest.mark.parametrize("seed", range(6))
def test_integrated_brier_score_equals_sksurv(seed):
    b = _data(seed)
    want = sks.integrated_brier_score(_y(b), _y(b), b["S"], list(TIMES))
    assert _value(IntegratedBrierScore(pred="S", time="t", event="e", times=TIMES), b) == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize("seed", range(6))
def test_kaplan_meier_equals_lifelines(seed):
    b = _data(seed)
    kmf = KaplanMeierFitter().fit(b["t"], b["e"])
    times, surv = kaplan_meier(b["t"], b["e"])
    np.testing.assert_allclose(surv, kmf.survival_function_at_times(times).to_numpy(), atol=TOL)
    at = np.array([0.5, 4.0, 4.5, 19.0])
    got = _value(KaplanMeier(time="t", event="e", times=at), b)
    np.testing.assert_allclose(list(got.values()), kmf.survival_function_at_times(at).to_numpy(), atol=TOL)
    # weights are multiplicities
    w = np.random.default_rng(seed).integers(0, 3, b["t"].size)
    np.testing.assert_allclose(
        step_at(*kaplan_meier(b["t"], b["e"], w), times),
        step_at(*kaplan_meier(np.repeat(b["t"], w), np.repeat(b["e"], w)), times),
        atol=1e-12,
    )


def test_censoring_survival_is_kaplan_meier_of_the_censorings_with_events_first():
    t = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    e = np.array([0, 1, 0, 1, 0])
    # at 2.0 the event leaves first: 3 at risk for the censoring there
    np.testing.assert_allclose(censoring_survival(t, e)[1], [0.8, 0.8 * 2 / 3, 0.8 * 2 / 3, 0.0])


@pytest.mark.parametrize("seed", range(6))
def test_logrank_equals_lifelines(seed):
    b = _data(seed)
    t, e, g = b["t"], b["e"], b["g"]
    three = multivariate_logrank_test(t, g, e)
    r = _value(LogRank(group="g", time="t", event="e"), b)
    assert r["statistic"] == pytest.approx(three.test_statistic, abs=TOL)
    assert r["p_value"] == pytest.approx(three.p_value, abs=TOL) and r["dof"] == 2
    two = logrank_test(t[g == 0], t[g > 0], e[g == 0], e[g > 0])
    r = logrank(t, e, np.where(g > 0, "high", "low"))
    assert r["statistic"] == pytest.approx(two.test_statistic, abs=TOL)
    assert r["p_value"] == pytest.approx(two.p_value, abs=TOL)


def test_logrank_is_symmetric_in_the_group_labels():
    b = _data(1)
    a = logrank(b["t"], b["e"], b["g"])
    z = logrank(b["t"], b["e"], 2 - b["g"])
    assert a["statistic"] == pytest.approx(z["statistic"], abs=1e-9)


def _metrics():
    return [
        HarrellC(pred="r", time="t", event="e"),
        UnoC(pred="r", time="t", event="e", tau=15.0),
        CumulativeDynamicAUC(pred="r", time="t", event="e", times=TIMES),
        IntegratedBrierScore(pred="S", time="t", event="e", times=TIMES),
        KaplanMeier(time="t", event="e", times=TIMES),
        LogRank(group="g", time="t", event="e"),
    ]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 39), st.sampled_from(range(6)))
def test_merge_of_states_equals_update_on_the_whole(seed, cut, which):
    m = _metrics()[which]
    b = _data(seed, n=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _base.UndefinedMetricWarning)
        whole = _value(m, b)
        a = m.update(m.init(), {k: v[:cut] for k, v in b.items()})
        rest = m.update(m.init(), {k: v[cut:] for k, v in b.items()})
        merged = m.compute(m.merge(a, rest))
    w = np.array(list(whole.values()) if isinstance(whole, dict) else [whole], float)
    got = np.array(list(merged.values()) if isinstance(merged, dict) else [merged], float)
    np.testing.assert_allclose(got, w, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 4)), min_size=1, max_size=45))
def test_pair_counts_equal_the_brute_force_over_all_pairs(rows):
    t = np.array([a for a, _, _ in rows], float)
    e = np.array([b for _, b, _ in rows])
    r = np.array([c for _, _, c in rows], float)
    conc, comp = survival._pair_counts(t, e, r)
    a = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :]))
    k = a * ((r[:, None] > r[None, :]) + 0.5 * (r[:, None] == r[None, :]))
    np.testing.assert_array_equal(comp, a.sum(axis=1))
    np.testing.assert_array_equal(conc, k.sum(axis=1))


def test_harrell_c_resampled_equals_compute_on_each_resample():
    b = _data(5, n=50)
    m = HarrellC(pred="r", time="t", event="e")
    counts = resample_counts(20, np.zeros(50, int), rng=Rng(0))
    fast = m.resampled(m.extract(b), counts)
    slow = [
        sks.concordance_index_censored(np.repeat(b["e"], c).astype(bool), np.repeat(b["t"], c), np.repeat(b["r"], c))[0]
        for c in counts
    ]
    np.testing.assert_allclose(fast, slow, atol=TOL)


def test_harrell_c_is_one_minus_itself_for_the_negated_risk_without_ties():
    rng = np.random.default_rng(0)
    b = {"r": rng.random(60), "t": rng.random(60), "e": rng.integers(0, 2, 60)}
    m = HarrellC(pred="r", time="t", event="e")
    assert _value(m, b) + _value(m, {**b, "r": -b["r"]}) == pytest.approx(1.0, abs=1e-12)


def test_bootstrap_intervals():
    b = _data(2)
    for m in (HarrellC(pred="r", time="t", event="e"), UnoC(pred="r", time="t", event="e", tau=15.0)):
        ci = Bootstrap(m, n=100, rng=Rng(0))
        r = ci.compute(ci.update(ci.init(), b))
        assert r["lower"] <= r["value"] <= r["upper"]


def test_undefined_values_warn():
    b = {"r": np.array([1.0, 2.0]), "t": np.array([1.0, 2.0]), "e": np.array([0, 0])}
    with pytest.warns(_base.UndefinedMetricWarning, match="no comparable pairs"):
        assert np.isnan(_value(HarrellC(pred="r", time="t", event="e"), b))
    b = {"r": np.array([1.0, 2.0, 3.0]), "t": np.array([1.0, 2.0, 3.0]), "e": np.array([1, 1, 0])}
    with pytest.warns(_base.UndefinedMetricWarning, match="censoring survival is zero"):
        assert np.isnan(_value(UnoC(pred="r", time="t", event="e"), {**b, "t": np.array([1.0, 3.0, 3.0])}))
    with pytest.warns(_base.UndefinedMetricWarning) as caught:
        r = _value(CumulativeDynamicAUC(pred="r", time="t", event="e", times=(1.5, 3.0)), b)
    assert np.isnan(r["3"]) and not np.isnan(r["1.5"])
    assert any("outside the follow-up" in str(w.message) for w in caught)


def test_errors_name_the_key():
    b = _data(0)
    with pytest.raises(SampleError, match="'e'"):
        _value(HarrellC(pred="r", time="t", event="e"), {**b, "e": b["e"] * 2})
    with pytest.raises(SampleError, match="'S'"):
        _value(IntegratedBrierScore(pred="S", time="t", event="e", times=(3.0, 7.0)), b)
    with pytest.raises(SampleError, match="'r'"):
        _value(HarrellC(pred="r", time="t", event="e"), {**b, "r": b["S"]})
