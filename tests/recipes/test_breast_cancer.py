"""breast_cancer: the recipe runs end to end in fast mode; its ops and augmentation are pure."""

import json
import os

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from fusefn import Rng
from fusefn_recipes import breast_cancer as bc


def test_all_fast_writes_a_report(tmp_path):
    r = CliRunner().invoke(bc.cli, ["all", "--out", str(tmp_path), "--debug", "fast", "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| ROC AUC |" in report and "roc.png" in report
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert 0.0 <= metrics["ROC AUC"]["value"] <= 1.0
    assert (tmp_path / "model" / "metrics.csv").is_file()
    _assert_threshold_from_validation(tmp_path, metrics, report)


def _assert_threshold_from_validation(out, metrics, report):
    """The decision threshold is Youden's J point of the validation fold's predictions, applied to the test fold."""
    val = pl.read_parquet(out / "infer" / "validation.parquet")
    test = pl.read_parquet(out / "infer" / "predictions.parquet")
    assert not set(val["sample_id"]) & set(test["sample_id"])  # fold 1, not the test fold
    s, y = np.asarray(val["probs"].to_list())[:, 1], val["label"].to_numpy()
    j = {float(t): ((s >= t)[y == 1]).mean() + ((s < t)[y == 0]).mean() - 1 for t in s}
    t = metrics["decision threshold"]
    assert j[t] == pytest.approx(max(j.values()))
    assert "| decision threshold (youden on the validation set) |" in report
    ts, ty = np.asarray(test["probs"].to_list())[:, 1], test["label"].to_numpy()
    assert metrics["accuracy"]["value"] == pytest.approx(((ts >= t) == ty).mean())  # decided at t, not 0.5


def test_infer_before_train_is_one_clear_line(tmp_path):
    r = CliRunner().invoke(bc.cli, ["infer", "--out", str(tmp_path), "--debug", "fast"])
    assert r.exit_code == 2
    assert "run `train` first" in r.output


def test_table_and_standardize():
    frame = bc.load_table()
    assert frame.height == 569 and int(frame["label"].sum()) == 212  # 212 malignant
    feats = tuple(c for c in frame.columns if c not in ("sample_id", "label"))
    assert len(feats) == 30
    x = frame.select(feats).to_numpy()
    st = bc.Standardize.fit(x)
    op = bc.ReadFeatures(table=frame, features=feats)
    s = {"data": {"sample_id": "patient_007"}}
    out = st(op(s))
    expected = (x[7] - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(out["data"]["input"]["features"].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert s == {"data": {"sample_id": "patient_007"}}  # input untouched


def test_unknown_sample_names_the_id():
    frame = bc.load_table()
    op = bc.ReadFeatures(table=frame, features=("mean_radius",))
    with pytest.raises(Exception, match="nobody"):
        op({"data": {"sample_id": "nobody"}})


def test_tabular_augment_is_reproducible_and_pure():
    aug = bc.TabularAugment(std=0.5, drop=0.2, p=1.0)
    x = torch.randn(16, 30)
    batch = {"data": {"input": {"features": x}}}
    a = aug(batch, rng=Rng(3))
    b = aug(batch, rng=Rng(3))
    assert torch.equal(a["data"]["input"]["features"], b["data"]["input"]["features"])
    assert batch["data"]["input"]["features"] is x
    params = aug.sample(16, rng=Rng(3), shapes={"data.input.features": (30,)})
    assert torch.equal(aug.apply(batch, params)["data"]["input"]["features"], a["data"]["input"]["features"])
    off = bc.TabularAugment(p=0.0)(batch, rng=Rng(0))
    assert torch.equal(off["data"]["input"]["features"], x)
    with pytest.raises(ValueError, match="drop"):
        bc.TabularAugment(drop=1.5)


def test_help_lists_the_phases_and_options():
    r = CliRunner().invoke(bc.cli, ["--help"])
    assert r.exit_code == 0
    assert all(c in r.output for c in ("train", "infer", "analyze", "all"))
    r = CliRunner().invoke(bc.cli, ["all", "--help"])
    assert all(o in r.output for o in ("--out", "--seed", "--debug", "--compile", "--device"))


@pytest.mark.slow
def test_compiled_step_runs(tmp_path):
    args = ["all", "--out", str(tmp_path), "--debug", "fast", "--n-boot", "100", "--compile", "--device", "cpu"]
    r = CliRunner().invoke(bc.cli, args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report" / "report.md").is_file()


@pytest.mark.slow
def test_all_under_torchrun_on_two_ranks(tmp_path):
    # every rank trains in the run's process group; rank 0 then infers and analyzes alone, and must not try to
    # join a group again there (it would wait for ranks that have returned)
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "fusefn_recipes.breast_cancer", "all", "--out", str(out), "--debug", "fast"]
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "report" / "report.md").is_file() and (out / "infer" / "predictions.parquet").is_file()
