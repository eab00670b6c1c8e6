"""``analyze(task="regression")``: values equal scikit-learn / SciPy, intervals resample cases, report and figures."""

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from scipy import stats
from sklearn import metrics as skm

from fusefn import Rng
from fusefn.analyze import analyze
from fusefn.analyze.task_plots import plot_bland_altman, plot_scatter
from fusefn.analyze.task_regression import BlandAltman
from fusefn.cli import analyze_command
from fusefn.errors import ConfigError
from fusefn.metrics import MAE, Bootstrap


def _frame(n=80, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(20, 60, n).astype(float)  # integers: ties in both columns (Spearman's average ranks)
    p = np.round(y + rng.normal(2, 6, n))
    return pl.DataFrame({"id": [f"c{i}" for i in range(n)], "pred": p, "target": y})


def test_values_equal_sklearn_and_scipy():
    df = _frame()
    p, y = df["pred"].to_numpy(), df["target"].to_numpy()
    m = analyze(df, task="regression", ci=0)["metrics"]
    assert m["mae"]["value"] == pytest.approx(skm.mean_absolute_error(y, p), abs=1e-9)
    assert m["mse"]["value"] == pytest.approx(skm.mean_squared_error(y, p), abs=1e-9)
    assert m["rmse"]["value"] == pytest.approx(skm.root_mean_squared_error(y, p), abs=1e-9)
    assert m["r2"]["value"] == pytest.approx(skm.r2_score(y, p), abs=1e-9)
    assert m["pearson"]["value"] == pytest.approx(stats.pearsonr(p, y).statistic, abs=1e-9)
    assert m["spearman"]["value"] == pytest.approx(stats.spearmanr(p, y).statistic, abs=1e-9)
    d = p - y
    ba = m["bland_altman"]
    assert ba["bias"]["value"] == pytest.approx(d.mean(), abs=1e-9)
    assert ba["sd"]["value"] == pytest.approx(d.std(ddof=1), abs=1e-9)
    assert ba["upper_loa"]["value"] == pytest.approx(d.mean() + 1.959963984540054 * d.std(ddof=1), abs=1e-9)


def test_intervals_resample_whole_cases_like_bootstrap():
    df = _frame()
    r = analyze(df, task="regression", ci=300, rng=Rng(5))
    alone = Bootstrap(MAE(pred="p", target="y"), n=300, rng=Rng(5))
    want = alone.compute(alone.update(alone.init(), {"p": df["pred"].to_numpy(), "y": df["target"].to_numpy()}))
    assert r["metrics"]["mae"]["lower"] == pytest.approx(want["lower"], abs=1e-12)
    assert r["metrics"]["mae"]["upper"] == pytest.approx(want["upper"], abs=1e-12)
    assert r["settings"]["stratified"] == "whole cases resampled (not stratified)"
    ba = r["metrics"]["bland_altman"]
    assert ba["lower_loa"]["lower"] < ba["lower_loa"]["value"] < ba["lower_loa"]["upper"] < ba["bias"]["lower"]


def test_bland_altman_resamples_equal_explicit_resamples():
    rng = np.random.default_rng(1)
    cols = {"pred": rng.normal(size=30), "target": rng.normal(size=30)}
    counts = rng.multinomial(30, np.full(30, 1 / 30), size=4)
    m = BlandAltman(pred="pred", target="target")
    got = m.resampled(cols, counts)
    for row, c in enumerate(counts):
        idx = np.repeat(np.arange(30), c)
        want = m.compute({k: v[idx] for k, v in cols.items()})
        for k in want:
            assert got[k][row] == pytest.approx(want[k], abs=1e-9)


def test_report_sections_and_figures(tmp_path):
    out = tmp_path / "reg"
    analyze(_frame(), task="regression", out=out, ci=200)
    md = (out / "report.md").read_text()
    assert "- **bootstrap**: 200 resamples, whole cases resampled (not stratified)" in md
    assert "## Regression" in md and "### Agreement (Bland–Altman)" in md
    assert "![Bland–Altman plot](bland_altman.png)" in md and "(scatter.png)" in md
    assert "| R² |" in md
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["task"] == "regression" and set(saved["metrics"]["bland_altman"]) == {
        "bias",
        "sd",
        "lower_loa",
        "upper_loa",
    }
    for name in ("scatter.png", "bland_altman.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_figures_are_labelled():
    df = _frame()
    p, y = df["pred"].to_numpy(), df["target"].to_numpy()
    r = analyze(df, task="regression", ci=100)
    ax = plot_scatter(p, y, r["metrics"], None).axes[0]
    assert ax.get_title().startswith("predicted vs true") and "R²" in ax.get_title()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("true value", "prediction")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("identity" in t for t in labels)
    line = next(ln for ln in ax.get_lines() if "identity" in ln.get_label())
    xs, ys = line.get_data()
    assert np.allclose(xs, ys)  # the identity line is y = x
    ax = plot_bland_altman(p, y, r["metrics"]["bland_altman"], None).axes[0]
    assert "Bland–Altman" in ax.get_title()
    assert ax.get_ylabel() == "prediction − target"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("mean difference") for t in labels) and sum("1.96 SD" in t for t in labels) == 2
    bias = next(ln for ln in ax.get_lines() if ln.get_label().startswith("mean difference"))
    assert bias.get_ydata()[0] == pytest.approx((p - y).mean())


def test_bad_input_is_one_clear_line():
    df = _frame(10).with_columns(pl.when(pl.col("id") == "c3").then(None).otherwise(pl.col("pred")).alias("pred"))
    with pytest.raises(ConfigError, match=r"prediction column 'pred': case 'c3' has no finite value"):
        analyze(df, task="regression", ci=0)
    r = analyze(df, task="regression", ci=0, skip_invalid=True)
    assert r["skipped"] == [{"id": "c3", "reason": "NaN or missing prediction"}] and r["num_samples"] == 9
    with pytest.raises(ConfigError, match="target column 'nope' not found"):
        analyze(_frame(10), task="regression", label="nope", ci=0)
    text = _frame(10).with_columns(pl.col("target").cast(pl.Utf8).str.replace("^", "x"))
    with pytest.raises(ConfigError, match="target column 'target' holds text"):
        analyze(text, task="regression", ci=0)
    with pytest.raises(ConfigError, match="does not take operating_point"):
        analyze(_frame(10), task="regression", operating_point="youden", ci=0)


def test_cli(tmp_path):
    path = tmp_path / "reg.csv"
    _frame().write_csv(path)
    args = ["--pred", str(path), "--task", "regression", "--score", "pred", "--label", "target", "--ci", "100"]
    res = CliRunner().invoke(analyze_command, [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "bland_altman.upper_loa" in res.output and (tmp_path / "o" / "bland_altman.png").is_file()


def test_task_is_checked_and_auto_keeps_classification():
    with pytest.raises(ConfigError, match="analyze.task must be one of auto, binary, multiclass"):
        analyze(_frame(10), task="segmentation", ci=0)
    binary = pl.DataFrame({"id": list("abcd"), "s": [0.1, 0.6, 0.4, 0.9], "y": [0, 0, 1, 1]})
    assert analyze(binary, score="s", label="y", ci=0)["task"] == "binary"
    with pytest.raises(ConfigError, match="task='multiclass' but the scores give 2 classes"):
        analyze(binary, score="s", label="y", ci=0, task="multiclass")
    with pytest.raises(ConfigError, match=r"task='regression' does not take group="):
        analyze(_frame(10), task="regression", group="id", ci=0)


def test_a_list_column_of_one_value_per_case_is_a_prediction_column():
    df = _frame(20)
    as_lists = df.with_columns(pl.col("pred").map_elements(lambda v: [v], return_dtype=pl.List(pl.Float64)))
    assert analyze(as_lists, task="regression", ci=0)["metrics"] == analyze(df, task="regression", ci=0)["metrics"]
    two = df.with_columns(pl.col("pred").map_elements(lambda v: [v, v], return_dtype=pl.List(pl.Float64)))
    with pytest.raises(ConfigError, match="prediction column 'pred' holds 2 values per case"):
        analyze(two, task="regression", ci=0)
