import numpy as np
import polars as pl
import pytest


def _threshold_from_validation(out, metrics, report, prefix=""):
    """The test decisions use the threshold chosen on infer/validation.parquet, and the report says so."""
    val = pl.read_parquet(out / "infer" / "validation.parquet")
    test = pl.read_parquet(out / "infer" / "predictions.parquet")
    assert val.height and not set(val["sample_id"]) & set(test["sample_id"])  # the validation split
    assert f"| {prefix}decision threshold (youden on the validation set) |" in report
    t = metrics["decision threshold"]
    ts, ty = np.asarray(test["probs"].to_list())[:, 1], test["label"].to_numpy()
    assert metrics["accuracy"]["value"] == pytest.approx(((ts >= t) == ty).mean())  # decided at t, not 0.5


@pytest.fixture
def assert_threshold_from_validation():
    """The check every binary recipe's fast run passes: test decisions at the validation fold's Youden threshold."""
    return _threshold_from_validation
