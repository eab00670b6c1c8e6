"""Bootstrap: resampling, vectorized paths vs the generic loop they replace, methods, coverage."""

import warnings

import numpy as np
import polars as pl
import pytest
from scipy.stats import norm

from fusefn.core import Rng, from_config, record, to_config
from fusefn.errors import ConfigError
from fusefn.metrics import (
    AUCROC,
    ECE,
    MCC,
    Accuracy,
    AveragePrecision,
    BalancedAccuracy,
    Bootstrap,
    ConfusionMatrix,
    Dice,
    PartialAUC,
    ROCCurve,
    UndefinedMetricWarning,
)
from fusefn.metrics._base import ColumnStore, MetricBase
from fusefn.metrics.bootstrap import resample_counts


def run(metric, batch):
    return metric.compute(metric.update(metric.init(), batch))


def test_resample_counts_keep_strata_sizes_and_are_seeded():
    strata = np.array([0] * 7 + [1] * 3 + [2] * 5)
    c = resample_counts(200, strata, rng=Rng(0))
    assert c.shape == (200, 15)
    for s in (0, 1, 2):
        assert (c[:, strata == s].sum(axis=1) == (strata == s).sum()).all()
    np.testing.assert_array_equal(c, resample_counts(200, strata, rng=Rng(0)))
    # each sample is drawn with probability 1/size of its stratum
    big = resample_counts(20_000, strata, rng=Rng(1))
    assert big.mean(axis=0) == pytest.approx(np.ones(15), abs=0.05)


@pytest.mark.parametrize(
    "metric",
    [
        AUCROC(pred="s", target="y"),
        AveragePrecision(pred="s", target="y"),
        PartialAUC(pred="s", target="y", max_fpr=0.3),
        PartialAUC(pred="s", target="y", min_tpr=0.7),
        Accuracy(pred="s", target="y"),
        BalancedAccuracy(pred="s", target="y"),
        MCC(pred="s", target="y"),
        ConfusionMatrix(pred="s", target="y"),
        ECE(pred="s", target="y", n_bins=5),
    ],
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("multiclass", [False, True])
def test_vectorized_resamples_equal_generic_loop(metric, multiclass):
    rng = np.random.default_rng(0)
    n = 40
    if multiclass:
        y = rng.integers(0, 3, n)
        s = rng.dirichlet(np.ones(3), n).round(1)
    else:
        y = rng.integers(0, 2, n)
        s = rng.integers(0, 10, n) / 10
    cols = metric.extract({"s": s, "y": y})
    counts = resample_counts(30, y, rng=Rng(1))
    fast = metric.resampled(cols, counts)
    slow = MetricBase.resampled(metric, cols, counts)
    if isinstance(fast, dict):  # compute() may add leaves that are not numbers (the matrix itself)
        slow = {k: slow[k] for k in fast}
    np.testing.assert_equal(_round(fast), _round(slow))


def _round(tree):
    if isinstance(tree, dict):
        return {k: _round(v) for k, v in tree.items()}
    return np.round(np.asarray(tree, dtype=np.float64), 12)


def test_dice_resamples_equal_generic_loop():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, (6, 5, 7, 7))
    p = np.where(rng.random(t.shape) < 0.8, t, rng.integers(0, 3, t.shape))
    for avg in ("volume", "micro"):
        m = Dice(pred="p", target="t", average=avg, classes=(1, 2, (1, 2)))
        cols = m.extract({"p": p, "t": t})
        counts = resample_counts(20, np.zeros(6, int), rng=Rng(1))
        np.testing.assert_equal(_round(m.resampled(cols, counts)), _round(MetricBase.resampled(m, cols, counts)))


def test_methods_and_reproducibility():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 40)
    b = {"s": rng.normal(size=80) + y, "y": y}
    auc = AUCROC(pred="s", target="y")
    p = run(Bootstrap(auc, n=2000, rng=Rng(3), stratify="y"), b)
    assert p == run(Bootstrap(auc, n=2000, rng=Rng(3), stratify="y"), b)
    assert p != run(Bootstrap(auc, n=2000, rng=Rng(4), stratify="y"), b)
    basic = run(Bootstrap(auc, n=2000, rng=Rng(3), stratify="y", method="basic"), b)
    assert basic["lower"] == pytest.approx(2 * p["value"] - p["upper"])
    assert basic["upper"] == pytest.approx(2 * p["value"] - p["lower"])
    normal = run(Bootstrap(auc, n=2000, rng=Rng(3), stratify="y", method="normal"), b)
    assert normal["upper"] - normal["value"] == pytest.approx(norm.ppf(0.975) * p["std"])
    narrow = run(Bootstrap(auc, n=2000, rng=Rng(3), stratify="y", level=0.5), b)
    assert p["lower"] < narrow["lower"] < narrow["upper"] < p["upper"]


def test_unstratified_resamples_missing_a_class_are_left_out_with_warning():
    y = np.array([0] * 20 + [1])
    b = {"s": np.linspace(0, 1, 21), "y": y}
    with pytest.warns(UndefinedMetricWarning, match="resamples gave an undefined value"):
        r = run(Bootstrap(AUCROC(pred="s", target="y"), n=200, rng=Rng(0)), b)
    assert r["value"] == 1.0


def test_dict_metrics_give_intervals_per_leaf():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 20)
    s = rng.dirichlet(np.ones(3), 60)
    r = run(
        Bootstrap(AUCROC(pred="s", target="y", class_names=("a", "b", "c")), n=300, rng=Rng(0), stratify="y"),
        {"s": s, "y": y},
    )
    assert set(r) == {"a", "b", "c", "macro"}
    assert set(r["macro"]) == {"value", "mean", "std", "lower", "upper"}


def test_config_validation_and_round_trip():
    auc = AUCROC(pred="s", target="y")
    with pytest.raises(ConfigError, match="method"):
        Bootstrap(auc, method="studentized")
    with pytest.raises(ConfigError, match="level"):
        Bootstrap(auc, level=95)
    with pytest.raises(ConfigError, match="ROC curve"):
        Bootstrap(ROCCurve(pred="s", target="y"))
    with pytest.raises(ConfigError, match="metric"):
        Bootstrap(lambda b: 0)
    b = Bootstrap(auc, n=100, rng=Rng(1), stratify="y")
    assert from_config(to_config(b)) == b


def test_merge_of_halves_equals_whole():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 50)
    s = rng.random(50)
    m = Bootstrap(AUCROC(pred="s", target="y"), n=500, rng=Rng(0), stratify="y")
    a = m.update(m.init(), {"s": s[:20], "y": y[:20]})
    b = m.update(m.init(), {"s": s[20:], "y": y[20:]})
    assert m.compute(m.merge(a, b)) == run(m, {"s": s, "y": y})


def test_coverage_of_95_percent_interval_on_binormal_data():
    """400 simulated studies with a known AUC: the 95 % interval covers it 93-97 % of the time."""
    d, n = 1.0, 100
    truth = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], n)
    covered = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rep in range(400):
            s = rng.normal(size=2 * n) + d * y
            r = run(Bootstrap(AUCROC(pred="s", target="y"), n=1000, rng=Rng(rep), stratify="y"), {"s": s, "y": y})
            covered += r["lower"] <= truth <= r["upper"]
    assert 0.93 <= covered / 400 <= 0.97


def test_pairwise_and_sorted_auc_paths_agree():
    from fusefn.metrics import _curves

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 70)
    s = rng.integers(0, 12, 70) / 12
    counts = resample_counts(500, np.zeros(70, int), rng=Rng(0))
    pos = y == 1
    order, starts, _ = _curves.tie_blocks(s)
    sorted_path = _curves.auc(*_curves.block_counts(pos, order, starts, counts))
    pairwise = _curves.auc_pairwise(s[pos], s[~pos], counts[:, pos], counts[:, ~pos])
    np.testing.assert_allclose(pairwise, sorted_path, rtol=0, atol=1e-12)


def test_stratified_strata_survive_batches_with_different_class_sets():
    # batch 2 holds only positives: per-batch stratum codes would file them under the negatives' stratum
    from fusefn.metrics import AUCROC, Bootstrap

    rng = np.random.default_rng(3)
    y = np.array([0] * 20 + [1] * 10 + [1] * 10)
    s = rng.random(40) + y * 0.3
    boot = Bootstrap(AUCROC(pred="s", target="y"), n=300, rng=Rng(5), stratify="y")
    whole = boot.compute(boot.update(boot.init(), {"s": s, "y": y}))
    a = boot.update(boot.init(), {"s": s[:30], "y": y[:30]})
    b = boot.update(boot.init(), {"s": s[30:], "y": y[30:]})
    assert boot.compute(boot.merge(a, b)) == whole
    batched = boot.update(boot.update(boot.init(), {"s": s[:30], "y": y[:30]}), {"s": s[30:], "y": y[30:]})
    assert boot.compute(batched) == whole


def test_state_does_not_alias_the_callers_array():
    from fusefn.metrics import AUCROC

    s = np.array([0.1, 0.9, 0.2, 0.8])
    y = np.array([0, 1, 0, 1])
    auc = AUCROC(pred="s", target="y")
    state = auc.update(auc.init(), {"s": s, "y": y})
    s[:] = s[::-1]
    assert auc.compute(state) == 1.0


# ----------------------------------------------------------------- chunks at 10^6 rows (issue 19)


def _head_bootstrap(metric, batch, n, rng, stratify):
    """HEAD's Bootstrap.compute before the chunked draws moved to iter_resample_counts (the reference)."""
    from fusefn.metrics._curves import row_chunks
    from fusefn.metrics.bootstrap import _concat, _draw_counts, summarize

    cols = dict(metric.extract(batch))
    value = metric.compute(metric.accumulate(metric.init(), cols))
    gen = rng.numpy()
    _, strata = np.unique(batch[stratify], return_inverse=True)
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for rows in row_chunks(n, len(strata) * 4):
            parts.append(metric.resampled(cols, _draw_counts(gen, rows.stop - rows.start, strata.reshape(-1))))
    return summarize(value, _concat(parts), 0.95, "percentile")


def _binary(n, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    return {"s": np.round(rng.normal(size=n) + y, 2), "y": y}  # rounded: tie blocks too


@pytest.mark.parametrize("n_boot", [1000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_chunked_bootstrap_is_bit_identical_to_head(n_boot):
    batch = _binary(3000)
    for metric in (AUCROC(pred="s", target="y"), Accuracy(pred="s", target="y", threshold=0.5)):
        b = Bootstrap(metric, n=n_boot, rng=Rng(1234), stratify="y")
        assert run(b, batch) == _head_bootstrap(metric, batch, n_boot, Rng(1234), "y")


def test_chunked_roc_band_is_bit_identical_to_one_matrix_on_a_few_thousand_rows():
    from fusefn.analyze import read_predictions, roc_curves, select_inputs

    batch = _binary(3000)
    frame, id = read_predictions(pl.DataFrame({"id": [str(i) for i in range(3000)], **batch}))
    inputs = select_inputs(frame, id=id, score="s", label="y", scores="raw")
    _, band = roc_curves(inputs, ci=10_000, rng=Rng(1234))
    # HEAD: all 1,000 band resamples as one (1000, N) matrix
    roc = ROCCurve(pred="s", target="y")
    head = roc.resampled(roc.update(roc.init(), batch), resample_counts(1000, batch["y"], rng=Rng(1234)))
    assert np.array_equal(band["1"]["tpr"], head["tpr"]) and np.array_equal(band["1"]["fpr"], head["fpr"])


def test_iter_resample_counts_continue_one_stream_in_bounded_chunks(monkeypatch):
    from fusefn.metrics import _curves
    from fusefn.metrics.bootstrap import iter_resample_counts

    strata = np.repeat([0, 1, 2], [50, 30, 20])
    one = np.concatenate(list(iter_resample_counts(40, strata, rng=Rng(5))))
    assert np.array_equal(one, resample_counts(40, strata, rng=Rng(5)))  # small: one chunk
    monkeypatch.setattr(_curves, "_CELLS", 4 * 100 * 7)  # 7 rows a chunk
    chunks = list(iter_resample_counts(40, strata, rng=Rng(5)))
    assert [c.shape[0] for c in chunks] == [7] * 5 + [5]
    counts = np.concatenate(chunks)
    assert (counts[:, :50].sum(1) == 50).all() and (counts[:, 80:].sum(1) == 20).all()
    assert np.array_equal(counts, np.concatenate(list(iter_resample_counts(40, strata, rng=Rng(5)))))


@pytest.mark.slow
def test_roc_band_memory_is_bounded():
    # HEAD drew the band's (1000, N) count matrix at once and weighted it in float64: a 600 MB peak at
    # N = 30,000 (19 GB at 10^6); chunks of about 5 million cells keep it near 120 MB whatever N
    import tracemalloc

    from fusefn.analyze import read_predictions, roc_curves, select_inputs

    batch = _binary(30_000)
    frame, id = read_predictions(pl.DataFrame({"id": [str(i) for i in range(30_000)], **batch}))
    inputs = select_inputs(frame, id=id, score="s", label="y", scores="raw")
    tracemalloc.start()
    try:
        _, band = roc_curves(inputs, ci=1000, rng=Rng(0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert band["1"]["tpr"].shape == (1000, 101)
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MB"


# ----------------------------------------------------------------- BCa (issue 20, item 5)


@record
class _Mean(ColumnStore):
    """The mean of ``x``: a statistic whose sampling distribution is skewed on exponential data."""

    key: str = "x"

    def extract(self, batch):
        return {"x": np.asarray(batch[self.key], dtype=np.float64)}

    def compute(self, state):
        return float(state["x"].mean())

    def resampled(self, cols, counts):
        return counts @ cols["x"] / counts.sum(axis=1)


def test_bca_matches_scipy_on_a_skewed_statistic():
    """scipy.stats.bootstrap(method="BCa") as the oracle: same interval up to Monte Carlo noise."""
    from scipy.stats import bootstrap

    x = np.random.default_rng(0).exponential(size=40)
    m = Bootstrap(_Mean(), n=20_000, rng=Rng(1), method="bca")
    ours = run(m, {"x": x})
    ref = bootstrap((x,), np.mean, n_resamples=20_000, method="BCa", rng=np.random.default_rng(2)).confidence_interval
    width = ref.high - ref.low
    assert ours["lower"] == pytest.approx(ref.low, abs=0.03 * width)
    assert ours["upper"] == pytest.approx(ref.high, abs=0.03 * width)
    # the skew moves BCa's interval to the right of the percentile one
    pct = run(Bootstrap(_Mean(), n=20_000, rng=Rng(1)), {"x": x})
    assert ours["lower"] > pct["lower"] and ours["upper"] > pct["upper"]


def test_bca_without_bias_or_skew_is_the_percentile_interval():
    from fusefn.metrics.bootstrap import bca_interval

    x = np.random.default_rng(3).normal(size=1000)
    boots = np.concatenate([x, -x])
    assert bca_interval(0.0, boots, np.array([1.0, -1.0, 2.0, -2.0])) == pytest.approx(
        tuple(np.quantile(boots, [0.025, 0.975]))
    )


def test_bca_moves_toward_an_estimate_every_resample_exceeds():
    """ECE's case: a resample repeats samples and so looks less calibrated: the percentile interval sits above
    the estimate (in the demo it missed it), BCa's bias correction centres it back toward it."""
    rng = np.random.default_rng(4)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)  # calibrated scores: ECE near 0, biased upward by resampling
    ece = ECE(pred="s", target="y", n_bins=10)
    pct = run(Bootstrap(ece, n=2000, rng=Rng(0), stratify="y"), {"s": p, "y": y})["ece"]
    bca = run(Bootstrap(ece, n=2000, rng=Rng(0), stratify="y", method="bca"), {"s": p, "y": y})["ece"]

    def off_centre(r):
        return abs((r["lower"] + r["upper"]) / 2 - r["value"])

    assert pct["mean"] > 1.5 * pct["value"]  # the resamples are biased upward
    assert off_centre(bca) < off_centre(pct) / 2
    assert bca["lower"] < pct["lower"] and bca["upper"] < pct["upper"]


def test_grouped_jackknife_keeps_the_acceleration():
    """Above JACKKNIFE_EXACT samples the acceleration comes from 1,000 random groups: the same a as leave-one-out."""
    from fusefn.metrics import bootstrap as B

    x = np.random.default_rng(5).exponential(size=3000)
    m = _Mean()
    cols = m.extract({"x": x})
    grouped = np.concatenate([m.resampled(cols, c) for c in B.iter_jackknife_counts(3000, rng=Rng(0))])
    assert grouped.shape == (B.JACKKNIFE_GROUPS,)
    loo = (x.sum() - x) / (x.size - 1)  # leave-one-out means, in closed form
    assert B._acceleration(grouped) == pytest.approx(B._acceleration(loo), rel=0.2)


@pytest.mark.slow
def test_coverage_of_bca_95_percent_interval_on_a_skewed_statistic():
    """800 simulated studies of the mean of 60 exponential values (truth 1): BCa covers it 93-97 % of the time."""
    rng = np.random.default_rng(7)
    covered = 0
    for rep in range(800):
        r = run(Bootstrap(_Mean(), n=1000, rng=Rng(rep), method="bca"), {"x": rng.exponential(size=60)})
        covered += r["lower"] <= 1.0 <= r["upper"]
    assert 0.93 <= covered / 800 <= 0.97
