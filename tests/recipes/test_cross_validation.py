"""cross_validation: k folds of a recipe, out-of-fold and held-out metrics, the ensemble."""

import json

import pytest
from click.testing import CliRunner

from fusefn import Rng
from fusefn.data import DataSource
from fusefn.recipe import Run
from fusefn_recipes import cross_validation as cv


def test_all_fast_breast_cancer(tmp_path):
    args = ["all", "--out", str(tmp_path), "--debug", "fast", "--folds", "3", "--n-boot", "100"]
    r = CliRunner().invoke(cv.cli, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for f in range(3):
        assert 0 <= m[f"fold_{f}.out_of_fold_auc"]["value"] <= 1
        assert (tmp_path / "folds" / f"fold_{f}" / "model").is_dir()
    assert "ensemble.held_out_auc" in m and "pooled.out_of_fold_auc" in m
    assert "ensemble of 3" in (tmp_path / "report" / "report.md").read_text()


def test_all_fast_image_recipe_with_overrides(tmp_path):
    args = [
        "all",
        "--out",
        str(tmp_path),
        "--debug",
        "fast",
        "--folds",
        "2",
        "--n-boot",
        "50",
        "--recipe",
        "image_clinical",
        "--set",
        "n_train=24",
        "--set",
        "n_validation=8",
        "--set",
        "n_test=16",
        "--set",
        "size=16",
        "--set",
        "channels=4,8",
        "--set",
        "epochs=1",
    ]
    r = CliRunner().invoke(cv.cli, args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "infer" / "ensemble.parquet").is_file()


def test_folds_partition_the_pool_and_are_stratified():
    import polars as pl

    frame = pl.DataFrame({"sample_id": [f"s{i}" for i in range(40)], "label": [i % 4 == 0 for i in range(40)]})
    frame = frame.with_columns(pl.col("label").cast(pl.Int64))
    folds = cv.fold_sources(DataSource.from_frame(frame), 4, rng=Rng(0))
    vals = [set(va.ids) for _, va in folds]
    assert set().union(*vals) == set(frame["sample_id"]) and sum(len(v) for v in vals) == 40
    for tr, va in folds:
        assert not set(tr.ids) & set(va.ids)
        assert va.frame["label"].sum() in (2, 3)  # 10 positives spread over 4 folds


def test_set_rejects_unknown_names():
    run = Run(name="cv", out="/tmp/x", hp={"recipe": "breast_cancer", "set_": ("nope=1",)})
    with pytest.raises(ValueError, match="nope"):
        cv.recipe_run(run)
    run = Run(name="cv", out="/tmp/x", hp={"recipe": "breast_cancer", "set_": ("epochs=7", "layers=8,4")})
    hp = cv.recipe_run(run).hp
    assert hp["epochs"] == 7 and hp["layers"] == (8, 4) and hp["n_folds"] == 5


def test_help_lists_the_phases_and_options():
    r = CliRunner().invoke(cv.cli, ["--help"])
    assert r.exit_code == 0
    assert all(c in r.output for c in ("train", "infer", "analyze", "all"))
    r = CliRunner().invoke(cv.cli, ["all", "--help"])
    assert all(o in r.output for o in ("--out", "--seed", "--debug", "--compile", "--device"))


def test_all_fast_lesions2d(tmp_path):
    args = [
        "all",
        "--out",
        str(tmp_path),
        "--debug",
        "fast",
        "--folds",
        "2",
        "--n-boot",
        "50",
        "--recipe",
        "lesions2d",
        "--set",
        "n_train=24",
        "--set",
        "n_validation=8",
        "--set",
        "n_test=16",
        "--set",
        "size=32",
        "--set",
        "channels=8,16",
        "--set",
        "epochs=1",
    ]
    r = CliRunner().invoke(cv.cli, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert "fold_1.held_out_auc" in m
