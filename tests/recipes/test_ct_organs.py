"""ct_organs: phantoms written as DICOM + NIfTI read back on their grids; the fast run end to end, both layouts."""

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from fusefn import Rng
from fusefn import affine as geo
from fusefn.data.ops.dicom_series import read_dicom_series
from fusefn.recipe import RecipeInputError, Run

# imported directly: the entry point is only seen after a reinstall
from fusefn_recipes import ct_organs as ct
from fusefn_recipes import ct_organs_data as ctd

SMALL = [
    "--debug",
    "fast",
    "--device",
    "cpu",
    "--n-validation",
    "1",
    "--n-test",
    "2",
    "--fov",
    "48",
    "--spacing",
    "2.5",
    "--patch",
    "16",
    "--patches",
    "2",
    "--channels",
    "4",
    "--channels",
    "8",
    "--epochs",
    "1",
    "--n-boot",
    "50",
    "--workers",
    "1",
]


def _check_run(out, cases_dir_label):
    """The report, and one mask per test case on the grid of its reference label map."""
    m = json.loads((out / "report" / "metrics.json").read_text())
    assert m["num_cases"] == 2 and m["failed"] == []
    assert set(m["classes"]) == cases_dir_label
    for name in cases_dir_label:
        assert 0.0 <= m["classes"][name]["dice"]["value"] <= 1.0
        assert "lower" in m["classes"][name]["dice"] and "hd95" in m["classes"][name]
    report = (out / "report" / "report.md").read_text()
    assert "curves.png" in report and (out / "report" / "boxplots.png").stat().st_size > 0
    masks = sorted((out / "infer" / "masks").glob("*.nii.gz"))
    assert len(masks) == 2
    for mask in masks:
        ref = nib.load(out / "infer" / "reference" / mask.name)
        pred = nib.load(mask)
        assert pred.shape == ref.shape  # the scan's own grid, not the resampled one
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-3)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_all_fast_from_generated_dicom(tmp_path):
    r = CliRunner().invoke(ct.cli, ["all", "--out", str(tmp_path), "--n-cases", "6", *SMALL])
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("test cases 2:") and "liver Dice" in last and "lesion Dice" in last
    assert len(list((tmp_path / "example" / "dicom").iterdir())) == 6
    assert any((tmp_path / "cache").iterdir())  # volumes and their indices went through the HDF5 cache
    _check_run(tmp_path, {"liver", "kidney", "lesion"})
    # analyze alone re-reads what infer left
    again = CliRunner().invoke(ct.cli, ["analyze", "--out", str(tmp_path), "--n-cases", "6", *SMALL])
    assert again.exit_code == 0, again.output
    assert again.output.strip().splitlines()[-1] == last


@pytest.mark.slow
def test_all_fast_from_a_decathlon_folder(tmp_path):
    data = tmp_path / "Task99_Phantoms"
    r = CliRunner().invoke(ct.cli, ["make-example", str(data), "--n", "5", "--fov", "48", "--layout", "msd"])
    assert r.exit_code == 0, r.output
    assert (data / "dataset.json").is_file() and len(list((data / "imagesTr").iterdir())) == 5
    out = tmp_path / "run"
    r = CliRunner().invoke(ct.cli, ["all", "--out", str(out), "--data", str(data), *SMALL])
    assert r.exit_code == 0, r.output
    assert not (out / "example").exists()
    _check_run(out, {"liver", "kidney", "lesion"})  # named by dataset.json, each label alone


def test_dicom_series_and_labels_read_back_on_the_phantom_grid(tmp_path):
    rng = Rng(3)
    ids = ctd.write_example(tmp_path, 6, rng=rng, size=(40.0, 40.0, 32.0))
    frame, names, kind = ctd.find_cases(tmp_path)
    assert kind == "dicom" and names == ctd.CLASSES and frame["sample_id"].to_list() == ids
    codes = set()
    for i, case in enumerate(ids):
        c = ctd.ct_phantom(i, rng=rng, size=(40.0, 40.0, 32.0))
        volume, affine, _ = read_dicom_series(tmp_path / "dicom" / case)
        assert np.array_equal(volume[0], c["hu"].astype(np.float32))  # HU after the rescale intercept
        np.testing.assert_allclose(affine, ctd.ras_affine(c["grid"]), atol=1e-4)
        sp = sorted(geo.spacing(affine))
        assert 0.7 <= sp[0] <= sp[1] <= 0.9 and 2.0 <= sp[2] <= 3.0  # anisotropic, as CT
        label = nib.load(tmp_path / "labels" / f"{case}.nii.gz")
        assert np.array_equal(np.asarray(label.dataobj), c["labels"])
        np.testing.assert_allclose(label.affine, affine, atol=1e-3)
        codes.add(geo.axcodes(affine))
        # the organs are where their HU say: the lesion darker than the liver, the kidney brighter
        hu = c["hu"].astype(float)
        means = {k: hu[c["labels"] == k].mean() for k in (1, 2, 3)}
        assert means[3] < means[1] - 20 and means[2] > means[1] + 40
    assert len(codes) >= 2  # varied orientations


def test_phantom_grid_matches_simpleitk_oracle(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    rng = Rng(0)
    tilted = next(
        i for i in range(40) if ctd._grid(rng.child("ct_organs", i).numpy(), (40.0,) * 3)["name"] == "axial-tilted"
    )
    ctd.write_example(tmp_path, tilted + 1, rng=rng, size=(40.0, 40.0, 32.0))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom" / f"ct_{tilted:03d}")))
    img = reader.Execute()
    _, affine, _ = read_dicom_series(tmp_path / "dicom" / f"ct_{tilted:03d}")
    # ITK: index (column, row, slice) -> LPS; ours: (slice, row, column) -> RAS
    direction = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3][:, ::-1]
    np.testing.assert_allclose(lps, direction, atol=1e-4)
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3], img.GetOrigin(), atol=1e-3)


def test_bad_data_folders_are_named(tmp_path):
    with pytest.raises(RecipeInputError, match="neither a Decathlon task folder"):
        ctd.find_cases(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}}))
    with pytest.raises(RecipeInputError, match="not a Decathlon task description"):
        ctd.find_cases(tmp_path)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"0": "bg", "1": "liver"}, "training": [{"image": "./imagesTr/a.nii.gz", "label": "x"}]})
    )
    with pytest.raises(RecipeInputError, match="absent"):
        ctd.find_cases(tmp_path)
    r = CliRunner().invoke(ct.cli, ["train", "--out", str(tmp_path / "o"), "--data", str(tmp_path), *SMALL])
    assert r.exit_code != 0 and "absent" in r.output


def test_organs_scored_with_their_lesion_and_kept_whole():
    names = dict(ctd.CLASSES)
    assert ct.scored_classes(names, "dicom") == {"liver": (1, 3), "kidney": (2,), "lesion": (3,)}
    assert ct.scored_classes({1: "liver", 2: "cancer"}, "msd") == {"liver": (1,), "cancer": (2,)}
    run = Run(name="ct_organs", out="/tmp/unused", hp={"keep_largest": ()})
    assert ct._organs(run, names) == (1, 2)
    assert ct._organs(run, {1: "kidney", 2: "Tumour"}) == (1,)
    assert ct._organs(Run(name="t", out="/tmp/unused", hp={"keep_largest": (2,)}), names) == (2,)


def test_label_map_op_drops_the_channel():
    lab = np.zeros((1, 4, 5, 6), np.uint8)
    lab[0, 1, 2, 3] = 3
    out = ct.LabelMap()({"data": {"sample_id": "a", "gt": {"mask": lab}}})
    seg = out["data"]["gt"]["seg"]
    assert tuple(seg.shape) == (4, 5, 6) and str(seg.dtype) == "torch.int64" and int(seg[1, 2, 3]) == 3
    assert "mask" not in out["data"]["gt"]
