"""fusefn reproduces FuseMedML 0.4.1's published values on the real KNIGHT inputs (../shared/peer-data/fuse-eval)."""

import numpy as np
import polars as pl
import pytest

from fusefn import Rng
from fusefn.metrics import AUCROC, Bootstrap, DeLong, Dice, GroupBy, evaluate

CLASSES = ("B", "LR", "IR", "HR", "VHR")


def test_binary_auc(fuse_eval_dir):
    auc = evaluate(
        AUCROC(pred="CanAT-score", target="Task1-target"),
        fuse_eval_dir / "example1_predictions.csv",
        target=fuse_eval_dir / "example1_targets.csv",
        id="id",
    )
    assert round(auc, 3) == 0.845


def test_bootstrap_ci_within_monte_carlo_error(fuse_eval_dir):
    metric = Bootstrap(
        AUCROC(pred="CanAT-score", target="Task1-target"), n=10_000, rng=Rng(1234), stratify="Task1-target"
    )
    r = evaluate(
        metric, fuse_eval_dir / "example1_predictions.csv", target=fuse_eval_dir / "example1_targets.csv", id="id"
    )
    assert r["value"] == pytest.approx(0.845, abs=5e-4)
    for key, ref in {"mean": 0.8456, "std": 0.0622, "lower": 0.712, "upper": 0.954}.items():
        assert abs(r[key] - ref) <= 0.005, (key, r[key], ref)


def test_two_folds_concatenated_and_per_fold(fuse_eval_dir):
    files = [fuse_eval_dir / "example2_predictions_fold0.csv", fuse_eval_dir / "example2_predictions_fold1.csv"]
    auc = AUCROC(pred="CanAT-score", target="Task1-target")
    r = evaluate(
        {"all": auc, "per_fold": GroupBy(auc, by="fold")}, files, target=fuse_eval_dir / "example2_targets.csv", id="id"
    )
    assert round(r["all"], 3) == 0.845
    assert [round(v, 3) for v in r["per_fold"]["groups"].values()] == [0.841, 0.837]
    assert round(r["per_fold"]["mean"], 3) == 0.839


def test_multiclass_one_vs_rest(fuse_eval_dir):
    cols = tuple(f"{c}-score" for c in CLASSES)
    r = evaluate(
        AUCROC(pred=cols, target="Task2-target", class_names=CLASSES),
        fuse_eval_dir / "example7_predictions.csv",
        target=fuse_eval_dir / "example1_targets.csv",
        id="id",
    )
    expected = {"B": 0.877, "LR": 0.857, "IR": 0.670, "HR": 0.911, "VHR": 0.723, "macro": 0.808}
    assert {k: round(v, 3) for k, v in r.items()} == expected


def test_delong_matches_r():
    batch = {
        "y": np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
        "p1": np.array([0.1, 0.2, 0.05, 0.3, 0.1, 0.6, 0.6, 0.7, 0.8, 0.99, 0.8, 0.67, 0.5]),
        "p2": np.array([0.3, 0.6, 0.2, 0.1, 0.1, 0.9, 0.23, 0.7, 0.9, 0.4, 0.77, 0.3, 0.89]),
    }
    r = evaluate(DeLong(pred1="p1", pred2="p2", target="y"), batch)
    assert round(r["z"], 3) == 1.672
    assert round(r["p_value"], 5) == 0.09453
    assert round(r["auc1"], 4) == 0.9643
    assert round(r["auc2"], 4) == 0.7381


def test_3d_dice_on_nifti_volumes(fuse_eval_dir):
    nib = pytest.importorskip("nibabel")
    seg = fuse_eval_dir / "semantic_segmentation"

    def volumes():
        for i in range(4):
            pred = np.asarray(nib.load(seg / "predicted" / f"id_{i}.nii.gz").dataobj)
            target = np.asarray(nib.load(seg / "labeled" / f"id_{i}" / "seg.nii.gz").dataobj)
            yield {"pred": pred[None], "target": target[None], "data": {"sample_id": [f"id_{i}"]}}

    dice = Dice(pred="pred", target="target", classes=((1, 2, 3), (2, 3), 2), class_names=("123", "23", "2"))
    r = evaluate(dice, volumes())
    assert round(r["123"], 4) == 0.8741
    assert round(r["23"], 4) == 0.7164
    assert round(r["2"], 4) == 0.7184


def test_reference_tables_have_expected_shape(fuse_eval_dir):
    df = pl.read_csv(fuse_eval_dir / "example1_predictions.csv")
    assert df.height == 60
