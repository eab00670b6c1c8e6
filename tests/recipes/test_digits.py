"""The digits hello-world recipe end to end (fast mode), its determinism, and its bad-input errors."""

import json
import os

import polars as pl
import pytest
from click.testing import CliRunner

from fusefn import Rng
from fusefn.errors import FusefnError
from fusefn.recipe import OutputError, RecipeInputError
from fusefn_recipes import digits


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return out, digits.RECIPE.run("all", out, rng=Rng(0), debug="fast", device="cpu")


def test_fast_run_writes_every_phase(fast_run):
    out, summary = fast_run
    assert {"accuracy", "auc_macro", "n_samples"} <= set(summary)
    assert 0.0 <= summary["accuracy"] <= 1.0
    ck = out / "model" / "checkpoints"
    assert (ck / "last.pt").is_file()
    assert (ck / "best_validation.metrics.auc.macro.pt").is_file()
    frame = pl.read_parquet(out / "infer" / "test.parquet")
    assert frame.columns == ["sample_id", "fold", "probabilities", "label"]
    assert set(frame["fold"].to_list()) == {0}
    assert len(frame["probabilities"][0]) == 10
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"]["value"] == pytest.approx(summary["accuracy"])
    assert "accuracy" in (out / "report" / "report.txt").read_text()
    assert (out / "fusefn.log").is_file()
    # the debug log holds what the main log leaves out (DEBUG records: environment, run configuration)
    main, debug = (out / "fusefn.log").read_text(), (out / "fusefn_debug.log").read_text()
    assert " DEBUG " in debug and " DEBUG " not in main and "run_id" in debug


def test_same_seed_same_metrics(fast_run, tmp_path):
    out, summary = fast_run
    again = digits.RECIPE.run("all", tmp_path, rng=Rng(0), debug="fast", device="cpu")
    assert again == summary
    a = pl.read_parquet(out / "infer" / "test.parquet")
    b = pl.read_parquet(tmp_path / "infer" / "test.parquet")
    assert a.equals(b)


def test_source_folds_are_stratified():
    src = digits.source(rng=Rng(0))
    assert len(src) == 1797
    counts = src.frame.group_by("fold").len().sort("fold")["len"].to_list()
    assert max(counts) - min(counts) <= 1 + 10  # stratified: about 360 each
    test_labels = set(src.fold(0).frame["label"].to_list())
    assert test_labels == set(range(10))


def test_read_digit_names_a_bad_sample():
    with pytest.raises(FusefnError, match="'digit_x'"):
        digits.ReadDigit()({"data": {"sample_id": "digit_x"}})


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        digits.RECIPE.run("all", f, debug="fast", device="cpu")
    assert f.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_out_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="not writable|cannot create"):
        digits.RECIPE.run("all", ro / "sub", debug="fast", device="cpu")


def test_infer_without_checkpoint(tmp_path):
    with pytest.raises(RecipeInputError, match="run `train` first"):
        digits.RECIPE.run("infer", tmp_path, debug="fast", device="cpu")
    assert not (tmp_path / "infer" / "test.parquet").exists()


def test_analyze_missing_file(tmp_path):
    with pytest.raises(RecipeInputError, match="run `infer` first"):
        digits.RECIPE.run("analyze", tmp_path)
    assert not (tmp_path / "report" / "metrics.json").exists()


@pytest.mark.parametrize("content", [b"not parquet at all", None])
def test_analyze_malformed_file(tmp_path, content):
    path = tmp_path / "infer" / "test.parquet"
    path.parent.mkdir()
    if content is None:
        pl.DataFrame({"sample_id": ["a"], "score": [0.5]}).write_parquet(path)
    else:
        path.write_bytes(content)
    with pytest.raises(RecipeInputError, match="run `infer` again"):
        digits.RECIPE.run("analyze", tmp_path)
    assert not (tmp_path / "report").exists()


def test_cli_prints_one_line_error(tmp_path):
    res = CliRunner().invoke(digits.cli, ["analyze", "--out", str(tmp_path)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "run `infer` first" in lines[0]


@pytest.mark.slow
def test_full_run_reaches_target_accuracy(tmp_path):
    summary = digits.RECIPE.run("all", tmp_path, rng=Rng(0), device="cpu")
    assert summary["accuracy"] >= 0.95
    assert summary["n_samples"] == 360
