"""gbsg2: a survival recipe on a real trial, end to end in fast mode; the default run reaches a sensible C index."""

import json
import sys

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from fusefn.errors import FusefnError
from fusefn.losses import breslow_baseline, cox_survival
from fusefn_recipes import gbsg2


def test_all_fast_writes_a_survival_report(tmp_path):
    r = CliRunner().invoke(gbsg2.cli, ["all", "--out", str(tmp_path), "--debug", "fast", "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    table = pl.read_parquet(tmp_path / "data" / "gbsg2.parquet")
    assert table.height == 686 and int(table["event"].sum()) == 299
    pred = pl.read_parquet(tmp_path / "infer" / "predictions.parquet")
    fitted = pl.read_parquet(tmp_path / "infer" / "train_predictions.parquet")
    assert not set(pred["sample_id"]) & set(fitted["sample_id"])  # the baseline never sees a test case
    # S(t) from the training folds' Breslow baseline, non-increasing in t, higher risk lower survival
    times = gbsg2.survival_times(pred["time"].to_numpy(), pred["event"].to_numpy())
    surv = np.array(pred["survival"].to_list())
    base = breslow_baseline(*(fitted[c].to_numpy() for c in ("risk", "time", "event")))
    np.testing.assert_allclose(surv, cox_survival(pred["risk"].to_numpy(), times, base).numpy())
    assert surv.shape == (pred.height, len(times)) and np.all(np.diff(surv, axis=1) <= 0)
    order = np.argsort(pred["risk"].to_numpy())
    assert np.all(np.diff(surv[order, -1]) <= 1e-12)
    report = (tmp_path / "report" / "report.md").read_text()
    for text in ("| Harrell's C |", "| Uno's C |", "integrated Brier score", "kaplan_meier.png", "Log-rank"):
        assert text in report, text
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["task"] == "survival" and 0.0 <= metrics["metrics"]["harrell_c"]["value"] <= 1.0
    assert metrics["metrics"]["ibs"]["value"] > 0


def test_load_frame_is_the_trial():
    frame = gbsg2.load_frame()
    assert frame.height == 686 and int(frame["event"].sum()) == 299
    assert set(frame["tumour_grade"].unique()) == {1.0, 2.0, 3.0}
    assert frame["time"].min() > 0 and frame["time"].max() < 7.5  # years


def test_missing_scikit_survival_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sksurv.datasets", None)  # import fails as if not installed
    with pytest.raises(FusefnError, match=r"fusefn\[survival\]"):
        gbsg2.load_frame()
    r = CliRunner().invoke(gbsg2.cli, ["train", "--out", str(tmp_path), "--debug", "fast"])
    assert r.exit_code != 0 and "fusefn[survival]" in r.output and "Traceback" not in r.output


def test_bad_event_in_own_table_names_the_case(tmp_path):
    mine = tmp_path / "mine.parquet"
    pl.DataFrame({"sample_id": ["a", "b"], "x": [1.0, 2.0], "time": [1.0, 2.0], "event": [1, 2]}).write_parquet(mine)
    r = CliRunner().invoke(gbsg2.cli, ["train", "--out", str(tmp_path / "o"), "--table", str(mine)])
    assert r.exit_code != 0 and "'b'" in r.output and "events 0 or 1" in r.output


@pytest.mark.slow
def test_default_run_reaches_a_sensible_concordance(tmp_path):
    result = gbsg2.RECIPE.run("all", tmp_path, n_boot=200)
    assert result["harrell_c"]["value"] > 0.62, result
