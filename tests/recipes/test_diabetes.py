"""diabetes: a regression recipe on real patients, end to end in fast mode; the default run reaches a sensible R²."""

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from fusefn_recipes import diabetes


def test_all_fast_writes_a_regression_report(tmp_path):
    r = CliRunner().invoke(diabetes.cli, ["all", "--out", str(tmp_path), "--debug", "fast", "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    # the table went to disk and was read back from there
    table = pl.read_parquet(tmp_path / "data" / "diabetes.parquet")
    assert table.height == 442
    pred = pl.read_parquet(tmp_path / "infer" / "predictions.parquet")
    assert set(pred["sample_id"]) <= set(table["sample_id"])
    # predictions in the study's units: the standardized output times the training folds' SD plus their mean
    assert 25 < pred["pred"].mean() < 346
    truth = table.filter(pl.col("sample_id").is_in(pred["sample_id"].to_list())).sort("sample_id")
    np.testing.assert_allclose(pred.sort("sample_id")["target"].to_numpy(), truth["target"].to_numpy())
    report = (tmp_path / "report" / "report.md").read_text()
    for text in ("| R² |", "| Spearman ρ |", "scatter.png", "bland_altman.png", "curves.png"):
        assert text in report, text
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["task"] == "regression"
    assert (
        metrics["metrics"]["mae"]["lower"] <= metrics["metrics"]["mae"]["value"] <= metrics["metrics"]["mae"]["upper"]
    )


def test_load_frame_is_the_real_study():
    frame = diabetes.load_frame()
    assert frame.height == 442 and frame.width == 12  # sample_id, 10 baseline variables, target
    assert frame["target"].min() == 25 and frame["target"].max() == 346
    assert set(frame["sex"].unique()) == {1.0, 2.0}  # original units, not scikit-learn's scaled copy


def test_own_table_with_a_text_column_is_one_clear_line(tmp_path):
    bad = tmp_path / "mine.csv"
    pl.DataFrame({"sample_id": ["a", "b"], "site": ["x", "y"], "target": [1.0, 2.0]}).write_csv(bad)
    r = CliRunner().invoke(diabetes.cli, ["train", "--out", str(tmp_path / "o"), "--table", str(bad)])
    assert r.exit_code != 0 and "numeric" in r.output and "site" in r.output
    assert "Traceback" not in r.output


def test_infer_before_train_is_one_clear_line(tmp_path):
    r = CliRunner().invoke(diabetes.cli, ["infer", "--out", str(tmp_path), "--debug", "fast"])
    assert r.exit_code == 2 and "run `train` first" in r.output


@pytest.mark.slow
def test_default_run_reaches_a_sensible_r2(tmp_path):
    result = diabetes.RECIPE.run("all", tmp_path, n_boot=200)
    assert result["r2"]["value"] > 0.35, result
    assert result["pearson"]["value"] > 0.6, result
