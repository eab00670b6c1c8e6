"""Comparing models: DeLong against the O(n²) structural components, McNemar against SciPy (and statsmodels),
the paired bootstrap's shared resamples."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import roc_auc_score

from fusefn import Rng
from fusefn.errors import ConfigError
from fusefn.metrics import AUCROC, Accuracy, AveragePrecision, UndefinedMetricWarning
from fusefn.metrics.bootstrap import iter_jackknife_counts, resample_counts
from fusefn.metrics.comparison import (
    MCNEMAR_EXACT_BELOW,
    default_pairs,
    delong,
    mcnemar,
    paired_bootstrap,
    paired_resamples,
)


def delong_quadratic(a, b, y):
    """DeLong et al. (1988) written out: the kernel over every positive-negative pair, then the covariance of the
    structural components V10 (per positive) and V01 (per negative)."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    v10, v01, aucs = [], [], []
    for s in (a, b):
        k = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        aucs.append(k.sum() / (m * n))
        v10.append(k.sum(axis=1) / n)
        v01.append(k.sum(axis=0) / m)
    s10 = np.array([[np.sum((x - x.mean()) * (z - z.mean())) / (m - 1) for z in v10] for x in v10])
    s01 = np.array([[np.sum((x - x.mean()) * (z - z.mean())) / (n - 1) for z in v01] for x in v01])
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return aucs[0], aucs[1], var


@pytest.mark.parametrize("seed", range(20))
def test_delong_equals_structural_components_with_ties(seed):
    gen = np.random.default_rng(seed)
    n = int(gen.integers(6, 120))
    y = gen.integers(0, 2, n)
    y[:4] = [0, 0, 1, 1]
    a = np.round(gen.normal(size=n) + y, 1)  # one decimal: many ties
    b = gen.integers(0, 4, n).astype(float) + 0.5 * y  # four levels per class: ties within and across classes
    auc_a, auc_b, var = delong_quadratic(a, b, y)
    r = delong(a, b, y)
    assert r["auc_a"] == pytest.approx(auc_a, abs=1e-12)
    assert r["auc_b"] == pytest.approx(auc_b, abs=1e-12)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert r["variance"] == pytest.approx(var, abs=1e-12)
    assert r["difference"] == pytest.approx(auc_a - auc_b, abs=1e-12)
    z = (auc_a - auc_b) / np.sqrt(var)
    assert r["z"] == pytest.approx(z, rel=1e-9, abs=1e-12)
    assert r["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9, abs=1e-12)
    half = stats.norm.ppf(0.975) * np.sqrt(var)
    assert (r["lower"], r["upper"]) == pytest.approx((auc_a - auc_b - half, auc_a - auc_b + half), abs=1e-12)
    assert (r["positives"], r["negatives"]) == (int(y.sum()), int((1 - y).sum()))


def test_delong_on_the_case_checked_against_r():
    """FuseMedML's DeLong reference (13 cases; its authors checked z and p against R's pROC)."""
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    a = np.array([0.1, 0.2, 0.05, 0.3, 0.1, 0.6, 0.6, 0.7, 0.8, 0.99, 0.8, 0.67, 0.5])
    b = np.array([0.3, 0.6, 0.2, 0.1, 0.1, 0.9, 0.23, 0.7, 0.9, 0.4, 0.77, 0.3, 0.89])
    r = delong(a, b, y)
    assert (round(r["z"], 3), round(r["p_value"], 5)) == (1.672, 0.09453)
    assert (round(r["auc_a"], 4), round(r["auc_b"], 4)) == (0.9643, 0.7381)


def test_delong_level_widens_the_interval():
    gen = np.random.default_rng(3)
    y = np.repeat([0, 1], 40)
    a, b = gen.normal(size=80) + y, gen.normal(size=80) + 0.5 * y
    r90, r99 = delong(a, b, y, level=0.90), delong(a, b, y, level=0.99)
    assert r99["lower"] < r90["lower"] < r90["difference"] < r90["upper"] < r99["upper"]


scores_and_labels = st.integers(8, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 6), min_size=n, max_size=n),
        st.lists(st.integers(0, 6), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 2 <= sum(y) <= len(y) - 2),
    )
)


@settings(max_examples=60, deadline=None)
@given(scores_and_labels)
def test_delong_swapping_the_models_negates_the_difference(data):
    a, b, y = (np.asarray(x, dtype=float) for x in data)
    ab, ba = delong(a, b, y), delong(b, a, y)
    assert ba["difference"] == pytest.approx(-ab["difference"], abs=1e-12)
    assert ba["variance"] == pytest.approx(ab["variance"], abs=1e-12)
    assert ba["p_value"] == pytest.approx(ab["p_value"], abs=1e-12)
    assert (ba["lower"], ba["upper"]) == pytest.approx((-ab["upper"], -ab["lower"]), abs=1e-12)
    assert 0 <= ab["p_value"] <= 1


@settings(max_examples=40, deadline=None)
@given(scores_and_labels)
def test_delong_identical_models_differ_by_zero_with_p_one(data):
    a, _, y = (np.asarray(x, dtype=float) for x in data)
    r = delong(a, a.copy(), y)
    assert r["difference"] == 0 and r["variance"] == 0 and r["p_value"] == 1
    # a monotone transform ranks the cases the same: the same AUC, no evidence of a difference
    r = delong(a, np.exp(a), y)
    assert r["difference"] == 0 and r["p_value"] == 1


def test_delong_undefined_with_fewer_than_two_cases_of_a_class():
    with pytest.warns(UndefinedMetricWarning, match="1 positive"):
        r = delong([0.1, 0.2, 0.9], [0.3, 0.1, 0.5], [0, 0, 1])
    assert r["auc_a"] == 1.0 and np.isnan(r["p_value"]) and np.isnan(r["variance"])


def test_delong_rejects_bad_inputs():
    with pytest.raises(ConfigError, match="binary"):
        delong([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ConfigError, match="scores_b 2"):
        delong([0.1, 0.2, 0.3], [0.1, 0.2], [0, 1, 1])
    with pytest.raises(ConfigError, match="NaN"):
        delong([0.1, np.nan, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])


# ------------------------------------------------------------------ McNemar


def _pair(b, c, both_right=5, both_wrong=3):
    ra = np.array([1] * b + [0] * c + [1] * both_right + [0] * both_wrong, dtype=bool)
    rb = np.array([0] * b + [1] * c + [1] * both_right + [0] * both_wrong, dtype=bool)
    return ra, rb


@pytest.mark.parametrize("b, c", [(0, 1), (1, 0), (3, 0), (5, 9), (12, 12), (2, 20), (30, 11), (100, 70), (0, 40)])
def test_mcnemar_exact_and_chi_square_match_scipy(b, c):
    ra, rb = _pair(b, c)
    ex = mcnemar(ra, rb, exact=True)
    assert (ex["a_only"], ex["b_only"], ex["both_right"], ex["both_wrong"]) == (b, c, 5, 3)
    assert ex["p_value"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, abs=1e-12)
    assert ex["statistic"] == min(b, c) and ex["method"] == "exact binomial"
    ch = mcnemar(ra, rb, exact=False)
    stat = max(abs(b - c) - 1, 0) ** 2 / (b + c)
    assert ch["statistic"] == pytest.approx(stat, abs=1e-12)
    assert ch["p_value"] == pytest.approx(stats.chi2.sf(stat, 1), abs=1e-12)
    assert ch["difference"] == pytest.approx((b - c) / ra.size)
    auto = mcnemar(ra, rb)
    assert auto["method"] == ("exact binomial" if b + c < MCNEMAR_EXACT_BELOW else ch["method"])


@pytest.mark.parametrize("b, c", [(0, 1), (5, 9), (2, 20), (30, 11), (100, 70)])
def test_mcnemar_matches_statsmodels(b, c):
    sm = pytest.importorskip("statsmodels.stats.contingency_tables")
    ra, rb = _pair(b, c)
    table = [[5, b], [c, 3]]
    assert mcnemar(ra, rb, exact=True)["p_value"] == pytest.approx(sm.mcnemar(table, exact=True).pvalue, abs=1e-12)
    chi = sm.mcnemar(table, exact=False, correction=True)
    r = mcnemar(ra, rb, exact=False)
    assert (r["statistic"], r["p_value"]) == pytest.approx((chi.statistic, chi.pvalue), abs=1e-12)


def test_mcnemar_without_discordant_cases_has_p_one_and_swapping_swaps_counts():
    ra, rb = _pair(0, 0)
    assert mcnemar(ra, rb)["p_value"] == 1.0
    ra, rb = _pair(7, 2)
    ab, ba = mcnemar(ra, rb), mcnemar(rb, ra)
    assert (ba["a_only"], ba["b_only"]) == (2, 7) and ba["p_value"] == ab["p_value"]
    assert ba["difference"] == -ab["difference"]


# ------------------------------------------------------------------ paired bootstrap


def _two_models(n=60, seed=0):
    gen = np.random.default_rng(seed)
    y = (gen.random(n) < 0.4).astype(int)
    y[:2] = [0, 1]
    a = np.clip(0.35 * y + gen.random(n) * 0.65, 0, 1)
    b = np.clip(0.2 * y + gen.random(n) * 0.8, 0, 1)
    return y, {"a": {"p": a, "y": y}, "b": {"p": b, "y": y}}


def test_paired_resamples_use_the_same_rows_for_every_model():
    y, batches = _two_models()
    metrics = {"acc": Accuracy(pred="p", target="y"), "auc": AUCROC(pred="p", target="y")}
    boots, _ = paired_resamples(metrics, batches, n=300, rng=Rng(7), stratify="y")
    counts = resample_counts(300, y, rng=Rng(7)).astype(float)
    right = {m: ((b["p"] >= 0.5).astype(int) == y).astype(float) for m, b in batches.items()}
    # the difference of the per-resample accuracies is the resampled mean of the per-case difference
    expected = counts @ (right["a"] - right["b"]) / counts.sum(axis=1)
    assert np.allclose(boots["a"]["acc"] - boots["b"]["acc"], expected, atol=1e-12)
    for row in (0, 17, 299):
        idx = np.repeat(np.arange(y.size), counts[row].astype(int))
        for m in ("a", "b"):
            assert boots[m]["auc"][row] == pytest.approx(roc_auc_score(y[idx], batches[m]["p"][idx]), abs=1e-12)


def test_paired_bootstrap_differences_are_the_resampled_differences():
    y, batches = _two_models(seed=2)
    metrics = {"auc": AUCROC(pred="p", target="y"), "ap": AveragePrecision(pred="p", target="y")}
    r = paired_bootstrap(metrics, batches, n=400, rng=Rng(3), stratify="y", method={"auc": "percentile", "ap": "bca"})
    boots, jack = paired_resamples(metrics, batches, n=400, rng=Rng(3), stratify="y", jackknife=["ap"])
    d = r["differences"]["b - a"]["auc"]
    diff = boots["b"]["auc"] - boots["a"]["auc"]
    assert d["value"] == pytest.approx(roc_auc_score(y, batches["b"]["p"]) - roc_auc_score(y, batches["a"]["p"]))
    assert (d["lower"], d["upper"]) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])), abs=1e-12)
    assert d["sign_flip"] == pytest.approx(np.mean(np.sign(diff) == -np.sign(d["value"])) + 0.5 * np.mean(diff == 0))
    # BCa's jackknife rows are shared too: leave-one-out, the same for both models
    rows = np.concatenate(list(iter_jackknife_counts(y.size, rng=Rng(3).child("jackknife"))))
    assert rows.shape == (y.size, y.size) and jack["a"]["ap"].shape == (y.size,)
    assert r["models"]["a"]["auc"]["value"] == pytest.approx(roc_auc_score(y, batches["a"]["p"]))
    ap = r["differences"]["b - a"]["ap"]
    assert ap["lower"] <= ap["upper"] and 0 <= ap["sign_flip"] <= 1


def test_paired_bootstrap_is_reproducible_from_its_rng():
    _, batches = _two_models(seed=4)
    metrics = {"auc": AUCROC(pred="p", target="y")}
    one = paired_bootstrap(metrics, batches, n=200, rng=Rng(11), stratify="y")
    two = paired_bootstrap(metrics, batches, n=200, rng=Rng(11), stratify="y")
    other = paired_bootstrap(metrics, batches, n=200, rng=Rng(12), stratify="y")
    assert one == two
    assert one["differences"]["b - a"]["auc"]["lower"] != other["differences"]["b - a"]["auc"]["lower"]


def test_paired_bootstrap_identical_models_differ_by_exactly_zero():
    y, batches = _two_models(seed=5)
    batches["b"] = {"p": batches["a"]["p"].copy(), "y": y}
    r = paired_bootstrap({"auc": AUCROC(pred="p", target="y")}, batches, n=100, rng=Rng(0), stratify="y")
    d = r["differences"]["b - a"]["auc"]
    assert d["value"] == d["lower"] == d["upper"] == 0 and np.isnan(d["sign_flip"])


def test_paired_bootstrap_multiclass_has_per_class_and_macro_differences():
    gen = np.random.default_rng(6)
    y = np.tile([0, 1, 2], 30)
    batches = {}
    for m, k in (("a", 1.0), ("b", 2.0)):
        z = gen.normal(size=(90, 3))
        z[np.arange(90), y] += k
        batches[m] = {"p": np.exp(z) / np.exp(z).sum(1, keepdims=True), "y": y}
    r = paired_bootstrap({"auc": AUCROC(pred="p", target="y")}, batches, n=200, rng=Rng(0), stratify="y")
    d = r["differences"]["b - a"]["auc"]
    assert set(d) == {"0", "1", "2", "macro"}
    ova = [
        roc_auc_score(y == c, batches["b"]["p"][:, c]) - roc_auc_score(y == c, batches["a"]["p"][:, c])
        for c in range(3)
    ]
    assert [d[str(c)]["value"] for c in range(3)] == pytest.approx(ova, abs=1e-12)
    assert d["macro"]["value"] == pytest.approx(np.mean(ova), abs=1e-12)


def test_paired_bootstrap_rejects_unpaired_inputs():
    y, batches = _two_models()
    batches["b"] = {"p": batches["b"]["p"][:-1], "y": y[:-1]}
    with pytest.raises(ConfigError, match="different numbers of cases"):
        paired_bootstrap({"auc": AUCROC(pred="p", target="y")}, batches, n=10, rng=Rng(0))
    y, batches = _two_models()
    batches["b"] = {"p": batches["b"]["p"], "y": y[::-1].copy()}
    with pytest.raises(ConfigError, match="differs between the models"):
        paired_bootstrap({"auc": AUCROC(pred="p", target="y")}, batches, n=10, rng=Rng(0), stratify="y")
    with pytest.raises(ConfigError, match="names a model"):
        paired_bootstrap({"auc": AUCROC(pred="p", target="y")}, _two_models()[1], n=10, rng=Rng(0), pairs=[("a", "c")])


def test_default_pairs_read_later_minus_earlier():
    assert default_pairs(["x", "y"]) == [("y", "x")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(default_pairs(list("abcd"))) == 6
