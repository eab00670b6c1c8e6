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


def _small_example(folder, n):
    return ctd.write_example(folder, n, rng=Rng(0), size=(40.0, 40.0, 32.0))


def test_cache_build_and_visualize_accept_ct_organs(tmp_path):
    """``fusefn cache build`` fills the very store ``train`` reads; ``fusefn visualize`` draws the cases."""
    from fusefn import keys, nd
    from fusefn.cli import main
    from fusefn.data import Dataset

    ids = _small_example(tmp_path / "run" / "example", 3)  # what `all --out tmp/run` generates on first use
    cache = tmp_path / "run" / "cache"
    r = CliRunner().invoke(main, ["cache", "build", "ct_organs", "--cache-dir", str(cache), "--workers", "0"])
    assert r.exit_code == 0, r.output
    store, src = ct.static_data(cache, rng=Rng(0))
    assert src.ids == ids and str(store.path) in r.output
    run = ct.RECIPE.make_run(tmp_path / "run", rng=Rng(0), device="cpu", hp={"n_validation": 1, "n_test": 1})
    assert ct.datasets(run)["train"].cache.path == store.path  # train finds the samples built
    sample = Dataset(source=src, cache=store).build()[0]
    image, seg = nd.get(sample, keys.IMAGE), nd.get(sample, ct.SEG)
    assert tuple(seg.shape) == tuple(image.shape[1:]) and set(np.unique(np.asarray(seg)).tolist()) == {0, 1, 2, 3}
    fig = tmp_path / "fig"
    r = CliRunner().invoke(main, ["visualize", "ct_organs", "--out", str(fig), "-n", "1", "--cache-dir", str(cache)])
    assert r.exit_code == 0, r.output
    (png,) = fig.glob("ct_organs_samples*.png")
    assert png.stat().st_size > 2_000


def test_cv_task_pools_train_and_validation_and_scores_by_dice(tmp_path):
    """cross_validation's view of ct_organs: the pool, the held-out test cases, and a Dice score of masks."""
    import shutil

    ids = _small_example(tmp_path / "example", 6)
    run = ct.RECIPE.make_run(tmp_path, rng=Rng(0), device="cpu", hp={"n_validation": 1, "n_test": 2, "n_boot": 50})
    task = ct.cv_task(run)
    parts = ct.splits(run)
    assert sorted(task.pool.ids) == sorted(parts["train"].ids + parts["validation"].ids)
    assert task.held_out.ids == parts["test"].ids and sorted(task.pool.ids + task.held_out.ids) == ids
    assert task.fit is ct.fit_model and task.dataset(task.held_out).cache is not None
    out = tmp_path / "cv" / "held_out.parquet"
    masks = out.with_suffix("") / "masks"
    masks.mkdir(parents=True)
    for row in task.held_out.frame.iter_rows(named=True):  # perfect predictions
        shutil.copyfile(row["label"], masks / f"{row['sample_id']}.nii.gz")
    score = ct.cv_score(run, out, task.held_out)
    assert score["value"] == pytest.approx(1.0) and set(score["per_class"]) == {"liver", "kidney", "lesion"}
    first = masks / f"{task.held_out.ids[0]}.nii.gz"  # one case loses its lesion: the mean Dice drops
    img = nib.load(first)
    lab = np.asarray(img.dataobj).copy()
    lab[lab == 3] = 1
    nib.save(nib.Nifti1Image(lab, img.affine), first)
    worse = ct.cv_score(run, out, task.held_out)
    assert worse["value"] < 0.9 and worse["lower"] <= worse["value"] <= worse["upper"]
    assert worse["per_class"]["lesion"]["value"] == pytest.approx(0.5)


@pytest.mark.slow
def test_cross_validation_of_ct_organs_scores_folds_and_ensemble_by_dice(tmp_path):
    """``cross_validation --recipe ct_organs``: unstratified folds, sliding-window masks, mean Dice, no ROC."""
    from fusefn_recipes import cross_validation as cv

    sets = ["n_cases=6", "n_validation=1", "n_test=2", "fov=48", "spacing=2.5", "patch=16", "patches=2"]
    args = ["all", "--out", str(tmp_path), "--recipe", "ct_organs", "--folds", "2", "--n-boot", "50"]
    args += ["--debug", "fast", "--device", "cpu", "--epochs", "1", "--workers", "1", "--set", "channels=4,8"]
    r = CliRunner().invoke(cv.cli, [*args, *(x for s in sets for x in ("--set", s))])
    assert r.exit_code == 0, r.output
    assert "ensemble held-out mean Dice" in r.output.strip().splitlines()[-1]
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    keys = [f"fold_{f}.{w}" for f in range(2) for w in ("out_of_fold", "held_out")] + ["ensemble.held_out"]
    for key in keys:
        assert 0.0 <= m[key]["lower"] <= m[key]["value"] <= m[key]["upper"] <= 1.0, key
    assert m["score"] == "mean Dice" and set(m["ensemble.held_out"]["per_class"]) == {"liver", "kidney", "lesion"}
    assert not any("auc" in k or "threshold" in k for k in m)  # nothing of the classification report
    assert not list((tmp_path / "report").glob("*.png"))
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| ensemble of 2: held-out mean Dice (2 cases) |" in report and "ROC" not in report
    assert "| fold 1: out-of-fold mean Dice (2 cases) |" in report
    # the out-of-fold masks partition the pool; every model (and the ensemble) predicted the held-out cases
    hp = {"recipe": "ct_organs", "set_": (*sets, "channels=4,8", "n_boot=50")}
    inner = cv.recipe_run(cv.RECIPE.make_run(tmp_path, rng=Rng(0), device="cpu", hp=hp))
    task = ct.cv_task(inner)
    oof = [
        {p.name[:-7] for p in (tmp_path / "infer" / f"fold_{f}" / "out_of_fold" / "masks").iterdir()} for f in (0, 1)
    ]
    assert not oof[0] & oof[1] and oof[0] | oof[1] == set(task.pool.ids)
    ens = tmp_path / "infer" / "ensemble.parquet"
    assert {p.name[:-7] for p in (ens.with_suffix("") / "masks").iterdir()} == set(task.held_out.ids)
    # the reported ensemble score is the Dice of the ensemble's masks
    assert ct.cv_score(inner, ens, task.held_out)["value"] == pytest.approx(m["ensemble.held_out"]["value"])
