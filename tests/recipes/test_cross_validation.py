"""cross_validation: k folds of a recipe, out-of-fold and held-out metrics, the ensemble."""

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from fusefn import Rng
from fusefn.data import DataSource
from fusefn.data.visualize import figure_caption
from fusefn.recipe import Run
from fusefn_recipes import cross_validation as cv


def test_all_fast_breast_cancer(tmp_path):
    args = ["all", "--out", str(tmp_path), "--debug", "fast", "--folds", "3", "--n-boot", "100"]
    r = CliRunner().invoke(cv.cli, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for f in range(3):
        assert 0 <= m[f"fold_{f}.out_of_fold_auc"]["value"] <= 1
        assert (tmp_path / "model" / f"fold_{f}" / "checkpoints").is_dir()
        assert (tmp_path / "infer" / f"fold_{f}" / "out_of_fold.parquet").is_file()
    assert "ensemble.held_out_auc" in m and "pooled.out_of_fold_auc" in m
    report = (tmp_path / "report" / "report.md").read_text()
    assert "ensemble of 3" in report
    # the ensemble's threshold: Youden's J of the pooled out-of-fold predictions, applied to the held-out set
    oof = pl.concat([pl.read_parquet(tmp_path / "infer" / f"fold_{f}" / "out_of_fold.parquet") for f in range(3)])
    s, y = np.asarray(oof["probs"].to_list())[:, 1], oof["label"].to_numpy()
    j = [((s >= t)[y == 1]).mean() + ((s < t)[y == 0]).mean() - 1 for t in s]
    t = m["ensemble.threshold"]["threshold"]
    assert m["ensemble.threshold"]["tuned"] and max(j) == pytest.approx(j[list(s).index(t)])
    assert "ensemble decision threshold (Youden's J on the pooled out-of-fold predictions)" in report
    ens = pl.read_parquet(tmp_path / "infer" / "ensemble.parquet")
    es, ey = np.asarray(ens["probs"].to_list())[:, 1], ens["label"].to_numpy()
    assert m["ensemble.sensitivity"]["value"] == pytest.approx(((es >= t)[ey == 1]).mean())
    assert m["ensemble.specificity"]["value"] == pytest.approx(((es < t)[ey == 0]).mean())
    caption = figure_caption(tmp_path / "report" / "roc_ensemble.png")
    auc = m["ensemble.held_out_auc"]
    assert f"(95% CI {auc['lower']:.3f}–{auc['upper']:.3f})" in caption and f"threshold {t:.3g}" in caption


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
        "--epochs",
        "1",
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


def test_common_training_flags_reach_the_cross_validated_recipe():
    run = cv.RECIPE.make_run("/tmp/x", rng=Rng(0), device="cpu", hp={"epochs": 3, "lr": 0.5})
    hp = cv.recipe_run(run).hp
    assert hp["epochs"] == 3 and hp["lr"] == 0.5 and hp["batch_size"] == 32  # not given: breast_cancer's own
    both = cv.RECIPE.make_run("/tmp/x", rng=Rng(0), device="cpu", hp={"epochs": 3, "set_": ("epochs=4",)})
    with pytest.raises(ValueError, match="--epochs and --set epochs"):
        cv.recipe_run(both)


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


def test_folds_need_no_label_without_stratify():
    frame = pl.DataFrame({"sample_id": [f"c{i}" for i in range(7)], "label": [f"/x/c{i}.nii.gz" for i in range(7)]})
    folds = cv.fold_sources(DataSource.from_frame(frame), 3, rng=Rng(0), stratify=None)
    vals = [set(va.ids) for _, va in folds]
    assert set().union(*vals) == set(frame["sample_id"]) and sorted(len(v) for v in vals) == [2, 2, 3]
    again = cv.fold_sources(DataSource.from_frame(frame), 3, rng=Rng(0), stratify=None)
    assert [set(va.ids) for _, va in again] == vals  # the same folds in train, infer and analyze


def test_set_values_pass_the_options_own_checks():
    """``--set spacing=2.5`` reaches ct_organs as its ``--spacing 2.5`` would: through the option's callback."""
    hp = {"recipe": "ct_organs", "set_": ("spacing=2.5", "channels=4,8")}
    inner = cv.recipe_run(Run(name="cv", out="/tmp/x", hp=hp)).hp
    assert inner["spacing"] == 2.5 and inner["channels"] == (4, 8)
    inner = cv.recipe_run(Run(name="cv", out="/tmp/x", hp={"recipe": "ct_organs", "set_": ("spacing=1,1,2",)})).hp
    assert inner["spacing"] == (1.0, 1.0, 2.0)
    with pytest.raises(Exception, match="one number or three"):
        cv.recipe_run(Run(name="cv", out="/tmp/x", hp={"recipe": "ct_organs", "set_": ("spacing=1,2",)}))
