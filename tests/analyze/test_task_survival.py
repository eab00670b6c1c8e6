"""``analyze(task="survival")``: values equal scikit-survival / lifelines, risk groups, report, figures, errors."""

import json
import warnings

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from sksurv import metrics as skv
from sksurv.util import Surv

from fusefn import Rng
from fusefn.analyze import analyze
from fusefn.analyze.task_plots import plot_kaplan_meier
from fusefn.analyze.task_survival import default_times, risk_groups
from fusefn.cli import analyze_command
from fusefn.errors import ConfigError
from fusefn.metrics import Bootstrap, HarrellC
from fusefn.metrics.survival import kaplan_meier


def _frame(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = np.ceil(rng.exponential(10 * np.exp(-0.8 * x)))  # whole days: tied times
    c = np.ceil(rng.exponential(25, n))
    time, event = np.minimum(t, c), (t <= c).astype(int)
    risk = np.round(x + rng.normal(0, 0.6, n), 1)  # one decimal: tied risks
    return pl.DataFrame({"id": [f"c{i}" for i in range(n)], "risk": risk, "time": time, "event": event})


def test_values_equal_scikit_survival_and_lifelines():
    df = _frame()
    risk, time, event = df["risk"].to_numpy(), df["time"].to_numpy(), df["event"].to_numpy().astype(bool)
    y = Surv.from_arrays(event, time)
    times = [4.0, 8.0, 12.0]
    r = analyze(df, task="survival", times=times, tau=15.0, ci=0)
    m = r["metrics"]
    assert m["harrell_c"]["value"] == pytest.approx(skv.concordance_index_censored(event, time, risk)[0], abs=1e-9)
    assert m["uno_c"]["value"] == pytest.approx(skv.concordance_index_ipcw(y, y, risk, tau=15.0)[0], abs=1e-9)
    auc, mean = skv.cumulative_dynamic_auc(y, y, risk, times)
    for t, a in zip(times, auc, strict=True):
        assert m["td_auc"][f"{t:g}"]["value"] == pytest.approx(a, abs=1e-9)
    assert m["td_auc"]["mean"]["value"] == pytest.approx(mean, abs=1e-9)
    # the median split's log-rank test, as lifelines computes it on the same groups
    group = (risk > np.median(risk)).astype(int)
    lr = multivariate_logrank_test(time, group, event)
    assert m["logrank"]["statistic"]["value"] == pytest.approx(lr.test_statistic, abs=1e-9)
    assert m["logrank"]["p_value"]["value"] == pytest.approx(lr.p_value, abs=1e-9)
    high = r["risk_groups"]["groups"]["high risk"]
    km = KaplanMeierFitter().fit(time[group == 1], event[group == 1])
    assert high["survival_at_8"] == pytest.approx(float(km.survival_function_at_times(8.0).iloc[0]), abs=1e-9)
    assert high["cases"] == int(group.sum())


def test_integrated_brier_score_of_given_survival_probabilities():
    df = _frame()
    time, event = df["time"].to_numpy(), df["event"].to_numpy().astype(bool)
    times = [3.0, 6.0, 9.0, 12.0]
    surv = np.exp(-np.outer(np.exp(df["risk"].to_numpy()), times) / 15)
    cols = {f"S{t:g}": surv[:, j] for j, t in enumerate(times)}
    y = Surv.from_arrays(event, time)
    want = skv.integrated_brier_score(y, y, surv, times)
    r = analyze(df.with_columns(**cols), task="survival", times=times, survival=list(cols), ci=0)
    assert r["metrics"]["ibs"]["value"] == pytest.approx(want, abs=1e-9)
    as_list = df.with_columns(pl.Series("S", surv.tolist()))
    assert analyze(as_list, task="survival", times=times, survival="S", ci=0)["metrics"]["ibs"]["value"] == (
        pytest.approx(want, abs=1e-12)
    )


def test_defaults_auto_task_and_intervals():
    df = _frame()
    r = analyze(df, time="time", event="event", score="risk", ci=200, rng=Rng(3))  # auto: survival
    assert r["task"] == "survival"
    time, event = df["time"].to_numpy(), df["event"].to_numpy()
    assert r["settings"]["times"] == default_times(time, event)
    assert r["settings"]["times"] == [float(q) for q in np.quantile(time[event == 1], [0.25, 0.5, 0.75])]
    alone = Bootstrap(HarrellC(pred="r", time="t", event="e"), n=200, rng=Rng(3))
    want = alone.compute(alone.update(alone.init(), {"r": df["risk"].to_numpy(), "t": time, "e": event}))
    assert r["metrics"]["harrell_c"]["lower"] == pytest.approx(want["lower"], abs=1e-12)
    assert r["metrics"]["uno_c"]["lower"] < r["metrics"]["uno_c"]["value"] < r["metrics"]["uno_c"]["upper"]
    assert r["class_counts"] == {"events": int(event.sum()), "censored": int((1 - event).sum())}


def test_risk_groups_quantiles_and_cut_points():
    risk = np.arange(9.0)
    g, names, cuts = risk_groups(risk, 3)
    assert names == ["low risk", "intermediate risk", "high risk"] and np.bincount(g).tolist() == [3, 3, 3]
    g, names, cuts = risk_groups(risk, [2.5])
    assert cuts == [2.5] and g.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    r = analyze(_frame(), task="survival", risk_groups=3, ci=0)
    assert r["metrics"]["logrank"] and r["risk_groups"]["logrank"]["dof"] == 2


def test_report_sections_and_figures(tmp_path):
    out = tmp_path / "surv"
    analyze(_frame(), task="survival", out=out, ci=100)
    md = (out / "report.md").read_text()
    assert "## Survival" in md and "### Predicted risk groups" in md and "Log-rank test" in md
    assert "| Harrell's C |" in md and "time-dependent AUC at" in md
    assert "(kaplan_meier.png)" in md and "(td_auc.png)" in md
    assert "- **samples**: 120 (events:" in md
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["task"] == "survival" and "harrell_c" in saved["metrics"]
    for name in ("kaplan_meier.png", "td_auc.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_kaplan_meier_figure_is_labelled():
    df = _frame()
    time, event = df["time"].to_numpy(), df["event"].to_numpy().astype(bool)
    group = df["risk"].to_numpy() > 0
    groups = {"low risk": (time[~group], event[~group]), "high risk": (time[group], event[group])}
    curves = {k: kaplan_meier(t, e) for k, (t, e) in groups.items()}
    fig = plot_kaplan_meier(groups, curves, {"p_value": 0.0123}, None, time_label="days")
    ax = fig.axes[0]
    assert ax.get_title() == "Kaplan–Meier by predicted risk group (log-rank p = 0.0123)"
    assert ax.get_ylabel() == "survival probability" and fig.axes[1].get_xlabel() == "days"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith(f"low risk (n = {int((~group).sum())}")
    step = ax.get_lines()[0]  # the low-risk curve starts at S = 1 and steps down to the KM estimate
    assert step.get_ydata()[0] == 1.0 and step.get_ydata()[-1] == pytest.approx(curves["low risk"][1][-1])


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ({"time": -1.0}, {}, r"time column 'time': case 'c5' has a negative time -1"),
        ({"event": 2}, {}, r"event column 'event': case 'c5' has 2, not 0 \(censored\) or 1"),
        ({"risk": None}, {}, r"risk score column 'risk': case 'c5' has no finite value"),
        ({}, {"times": [10_000.0]}, r"times \[10000.0\] are outside the follow-up"),
        ({}, {"survival": "risk"}, r"pass those times"),
        ({}, {"times": [4.0, 8.0], "survival": "risk"}, r"1 values per case for 2 times"),
        ({}, {"score": ["risk", "time"]}, r"takes one score column"),
    ],
)
def test_bad_input_is_one_clear_line(change, kwargs, message):
    df = _frame(30)
    for col, value in change.items():
        df = df.with_columns(pl.when(pl.col("id") == "c5").then(value).otherwise(pl.col(col)).alias(col))
    with pytest.raises(ConfigError, match=message):
        analyze(df, task="survival", ci=0, **kwargs)


def test_no_events_and_skip_invalid():
    df = _frame(30)
    with pytest.raises(ConfigError, match="no case has an event"):
        analyze(df.with_columns(pl.lit(0).alias("event")), task="survival", ci=0)
    nan = df.with_columns(pl.when(pl.col("id") == "c2").then(None).otherwise(pl.col("time")).alias("time"))
    r = analyze(nan, task="survival", ci=0, skip_invalid=True)
    assert r["skipped"] == [{"id": "c2", "reason": "NaN or missing time"}]


def test_cli(tmp_path):
    path = tmp_path / "s.csv"
    _frame().write_csv(path)
    args = ["--pred", str(path), "--task", "survival", "--times", "4,8", "--risk-groups", "0.5", "--ci", "50"]
    res = CliRunner().invoke(analyze_command, [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "td_auc.8" in res.output and "logrank.p_value" in res.output
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert saved["risk_groups"]["cuts"] == [0.5] and saved["settings"]["times"] == [4.0, 8.0]
    bad = CliRunner().invoke(analyze_command, [*args[:4], "--times", "a,b", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "comma-separated numbers" in bad.output


@pytest.mark.parametrize(
    ("name", "times", "tau"),
    [("uno_c", [5.0], None), ("uno_c", [5.0], 9.0), ("td_auc", [2.0, 5.0, 9.0, 30.0], None), ("td_auc", [6.0], None)],
)
def test_vectorized_resamples_equal_compute_on_each_resample(name, times, tau):
    from fusefn.analyze.task_survival import PRED, survival_metrics

    df = _frame(60, seed=4)
    cols = {"time": df["time"].to_numpy(), "event": df["event"].to_numpy().astype(bool), "pred": df["risk"].to_numpy()}
    metric = survival_metrics(times, tau=tau)[name]
    assert metric.pred == PRED
    counts = np.random.default_rng(0).multinomial(60, np.full(60, 1 / 60), size=25)
    fast = metric.resampled(cols, counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = [metric.compute({k: np.repeat(v, c) for k, v in cols.items()}) for c in counts]
    if name == "uno_c":
        assert np.allclose(fast, slow, atol=1e-12, equal_nan=True)
    else:
        for key in slow[0]:
            assert np.allclose(fast[key], [s[key] for s in slow], atol=1e-12, equal_nan=True), key
        assert not np.isnan(fast[f"{times[0]:g}"]).all()


def test_breslow_survival_equals_scikit_survival():
    from sksurv.linear_model.coxph import BreslowEstimator

    from fusefn.analyze.task_survival import breslow_survival

    train, test = _frame(100, seed=1), _frame(40, seed=2)
    risk, time, event = train["risk"].to_numpy(), train["time"].to_numpy(), train["event"].to_numpy()
    times = [0.5, 3.0, 7.0, 15.0]
    got = breslow_survival(risk, time, event, test["risk"].to_numpy(), times)
    est = BreslowEstimator().fit(risk, event.astype(bool), time)
    base = est.baseline_survival_
    s0 = np.array([1.0 if t < base.x[0] else base(t) for t in times])
    want = s0[None, :] ** np.exp(test["risk"].to_numpy())[:, None]
    assert np.allclose(got, want, atol=1e-12, rtol=0)
    # fed to the analysis, they give the integrated Brier score
    surv = test.with_columns(pl.Series("S", got[:, 1:].tolist()))
    r = analyze(surv, task="survival", times=times[1:], survival="S", ci=0)
    assert 0 < r["metrics"]["ibs"]["value"] < 0.25
