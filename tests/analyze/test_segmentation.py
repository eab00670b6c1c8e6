"""evaluate_segmentations / `analyze-seg`: folders of NIfTI label maps in, one output set out; bad cases recorded."""

import json
import math

import numpy as np
import pytest

from fusefn import Rng
from fusefn.analyze.segmentation import evaluate_segmentations, parse_classes, segmentation_command
from fusefn.errors import ConfigError, FusefnError
from fusefn.metrics.segmentation import case_scores

nib = pytest.importorskip("nibabel")
click_testing = pytest.importorskip("click.testing")

AFFINE = np.array([[0.0, 0.0, -0.8, 50.0], [0.0, -0.8, 0.0, 20.0], [-2.5, 0.0, 0.0, 10.0], [0, 0, 0, 1.0]])
SPACING = (2.5, 0.8, 0.8)


def save(path, labels, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(labels), affine), path)


def make_case(rng, shape=(10, 24, 22), tumour=True):
    ref = np.zeros(shape, np.uint8)
    c = rng.integers(6, 14, 2)
    ref[2:8, c[0] - 5 : c[0] + 5, c[1] - 4 : c[1] + 5] = 1
    if tumour:
        ref[3:6, c[0] - 2 : c[0] + 2, c[1] - 1 : c[1] + 2] = 2
    pred = np.where(rng.random(shape) < 0.97, ref, 0).astype(np.uint8)
    pred = np.roll(pred, int(rng.integers(-1, 2)), axis=1)
    return pred, ref


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(5):
        pred, ref = make_case(rng, tumour=i != 4)
        cases[f"case_{i}"] = (pred, ref)
        save(tmp_path / "pred" / f"case_{i}.nii.gz", pred)
        # references in the KiTS layout: one folder per case
        save(tmp_path / "ref" / f"case_{i}" / "segmentation.nii.gz", ref)
    return tmp_path, cases


CLASSES = {"kidney": (1, 2), "tumour": (2,)}


def test_end_to_end_outputs_and_values(folders):
    root, cases = folders
    out = root / "out"
    r = evaluate_segmentations(
        root / "pred", root / "ref", classes=CLASSES, tolerance_mm=1.5, n_boot=500, rng=Rng(1), out=out
    )
    assert r["num_cases"] == 5 and not r["failed"]
    assert sorted(r["per_case"]) == sorted(cases)
    for case, (pred, ref) in cases.items():
        want = case_scores(pred, ref, tuple(CLASSES.values()), spacing=SPACING, tolerance=1.5)
        for name, key in zip(CLASSES, want):
            for m in ("dice", "iou", "nsd", "volume_diff"):
                got = r["per_case"][case][name][m]
                if case == "case_4" and name == "tumour":  # both empty: the documented rule
                    assert got == (0.0 if m == "volume_diff" else 1.0)
                else:
                    assert got == pytest.approx(want[key][m]), (case, name, m)
    kid = r["classes"]["kidney"]
    dice = [r["per_case"][c]["kidney"]["dice"] for c in cases]
    assert kid["dice"]["value"] == pytest.approx(np.mean(dice))
    assert kid["dice"]["lower"] <= kid["dice"]["value"] <= kid["dice"]["upper"]
    assert r["classes"]["tumour"]["counts"]["both_empty"] == 1
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [".fusefn-set", "metrics.json", "report.md", "boxplots.png", "worst_1.png", "worst_2.png", "worst_3.png"]
    )
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["settings"]["seed"] == 1 and on_disk["settings"]["tolerance_mm"] == 1.5
    assert [w["case"] for w in on_disk["worst_cases"]] == [w["case"] for w in r["worst_cases"]]
    md = (out / "report.md").read_text()
    assert md.startswith("# Segmentation evaluation") and "| case_3 | tumour |" in md and "both_empty" in md
    assert "![worst case 1" in md and "NSD tolerance 1.5 mm" in md
    # the same seed gives the same intervals
    again = evaluate_segmentations(
        root / "pred", root / "ref", classes=CLASSES, tolerance_mm=1.5, n_boot=500, rng=Rng(1)
    )
    assert again["classes"] == r["classes"]


def test_one_empty_mask_is_zero_overlap_and_left_out_of_distance_means(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        pred, ref = make_case(rng)
        if i == 0:
            pred[pred == 2] = 1  # the tumour is missed
        save(tmp_path / "p" / f"c{i}.nii", pred)
        save(tmp_path / "r" / f"c{i}.nii", ref)
    r = evaluate_segmentations(tmp_path / "p", tmp_path / "r", classes=CLASSES, n_boot=0)
    row = r["per_case"]["c0"]["tumour"]
    assert row["status"] == "pred_empty" and row["dice"] == 0.0 and row["nsd"] == 0.0
    assert math.isnan(row["hd95"]) and row["raw_hd95"] == math.inf
    tum = r["classes"]["tumour"]
    assert tum["hd95"]["n"] == 2 and tum["dice"]["n"] == 3 and tum["counts"]["pred_empty"] == 1
    others = [r["per_case"][c]["tumour"]["hd95"] for c in ("c1", "c2")]
    assert tum["hd95"]["value"] == pytest.approx(np.mean(others))
    assert set(tum["dice"]) == {"value", "n"}  # n_boot = 0: no interval


def test_bad_cases_are_recorded_and_the_rest_evaluated(folders, tmp_path):
    root, cases = folders
    pred, _ = cases["case_1"]
    save(root / "pred" / "case_1.nii.gz", pred[:, :20])  # another shape
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    save(root / "pred" / "case_2.nii.gz", cases["case_2"][0], affine=shifted)  # another affine
    stray = cases["case_3"][0].copy()
    stray[0, 0, 0] = 7
    save(root / "pred" / "case_3.nii.gz", stray)  # a label outside the declared set
    with pytest.warns(UserWarning, match="3 case"):
        r = evaluate_segmentations(root / "pred", root / "ref", classes=CLASSES, n_boot=50, out=tmp_path / "o")
    assert sorted(r["per_case"]) == ["case_0", "case_4"]
    errors = {f["case"]: f["error"] for f in r["failed"]}
    assert "shape (10, 20, 22)" in errors["case_1"] and "shape (10, 24, 22)" in errors["case_1"]
    assert "55" in errors["case_2"] and "50" in errors["case_2"]  # both translations are named
    assert "[7]" in errors["case_3"] and "prediction" in errors["case_3"]
    assert "case_3" in (tmp_path / "o" / "report.md").read_text()
    # declaring the label makes case_3 valid
    with pytest.warns(UserWarning, match="2 case"):
        r = evaluate_segmentations(root / "pred", root / "ref", classes=CLASSES, labels=(0, 1, 2, 7), n_boot=0)
    assert "case_3" in r["per_case"]


def test_missing_cases_are_listed_or_skipped_with_allow_missing(folders):
    root, _ = folders
    (root / "pred" / "case_0.nii.gz").unlink()
    save(root / "pred" / "extra.nii.gz", np.zeros((10, 24, 22), np.uint8))
    with pytest.raises(FusefnError, match=r"'case_0'.*--allow-missing") as e:
        evaluate_segmentations(root / "pred", root / "ref", classes=CLASSES)
    assert "'extra'" in str(e.value)
    r = evaluate_segmentations(root / "pred", root / "ref", classes=CLASSES, n_boot=0, allow_missing=True)
    assert r["num_cases"] == 4
    assert r["missing"] == {"pred_only": ["extra"], "ref_only": ["case_0"]}


def test_every_case_failing_is_one_error(folders):
    root, cases = folders
    for case, (pred, _) in cases.items():
        save(root / "pred" / f"{case}.nii.gz", pred[:5])
    with pytest.raises(FusefnError, match="no case could be evaluated"), pytest.warns(UserWarning):
        evaluate_segmentations(root / "pred", root / "ref", classes=CLASSES, n_boot=0)


def test_command_line(folders):
    root, _ = folders
    runner = click_testing.CliRunner()
    args = [str(root / "pred"), str(root / "ref"), "--out", str(root / "cli"), "--classes", "kidney=1+2,tumour=2"]
    res = runner.invoke(segmentation_command, [*args, "--n-boot", "100", "--seed", "3", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "kidney: dice" in res.output and "5 case(s) evaluated" in res.output
    assert json.loads((root / "cli" / "metrics.json").read_text())["settings"]["seed"] == 3
    save(root / "pred" / "case_0.nii.gz", np.zeros((3, 3, 3), np.uint8))
    res = runner.invoke(segmentation_command, [*args, "--n-boot", "0", "--no-plots"])
    assert res.exit_code == 1 and "case 'case_0'" in res.output


def test_parse_classes():
    assert parse_classes("1,2") == {"1": (1,), "2": (2,)}
    assert parse_classes("1+2+3,2+3") == {"1+2+3": (1, 2, 3), "2+3": (2, 3)}
    for bad in ("", "a=b", "x=1,x=2", "-1"):
        with pytest.raises(ConfigError):
            parse_classes(bad)
    with pytest.raises(ConfigError, match="n_boot"):
        evaluate_segmentations(".", ".", classes="1", n_boot=1)
