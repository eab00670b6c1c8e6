"""The generated phantoms are deterministic from (seed, index), well-formed and learnable."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fusefn import Rng
from fusefn_recipes import phantoms as ph


def test_lesion_phantom_is_a_pure_function_of_seed_and_index():
    a = ph.lesion_phantom(rng=Rng(3), index=5, size=32)
    b = ph.lesion_phantom(rng=Rng(3), index=5, size=32)
    c = ph.lesion_phantom(rng=Rng(4), index=5, size=32)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert not np.array_equal(a["image"], c["image"])
    # a sample does not depend on how many others were generated, nor on their order
    batch = ph.lesion_phantoms(8, rng=Rng(3), size=32)
    assert np.array_equal(batch["images"][5], a["image"])
    assert np.array_equal(ph.lesion_phantoms(3, rng=Rng(3), start=5, size=32)["images"][0], a["image"])


def test_lesion_phantom_shapes_ranges_and_label_matches_mask():
    d = ph.lesion_phantoms(60, rng=Rng(0), size=32)
    assert d["images"].shape == (60, 1, 32, 32) and d["images"].dtype == np.float32
    assert d["masks"].shape == (60, 1, 32, 32) and d["masks"].dtype == np.int64
    assert d["images"].min() >= 0.0 and d["images"].max() <= 1.0
    assert set(np.unique(d["masks"])) <= {0, 1}
    has_lesion = d["masks"].reshape(60, -1).any(1)
    assert np.array_equal(has_lesion.astype(np.int64), d["labels"])
    assert 0 < d["labels"].mean() < 1
    assert len(set(d["ids"])) == 60


def test_lesion_count_and_contrast_vary():
    s = [ph.lesion_phantom(rng=Rng(1), index=i, size=32, p_lesion=1.0) for i in range(40)]
    assert {x["n_lesions"] for x in s} == {1, 2, 3}
    assert np.ptp([x["contrast"] for x in s]) > 0.1
    assert all(ph.lesion_phantom(rng=Rng(1), index=i, size=32, p_lesion=0.0)["label"] == 0 for i in range(5))


def test_lesions_are_brighter_than_their_surroundings():
    d = ph.lesion_phantoms(40, rng=Rng(2), size=32, p_lesion=1.0)
    inside = d["images"][d["masks"] == 1].mean()
    outside = d["images"][d["masks"] == 0].mean()
    assert inside > outside + 0.1


def test_volume_phantom_deterministic_and_well_formed():
    a = ph.volume_phantom(rng=Rng(0), index=2, size=16)
    assert np.array_equal(a["image"], ph.volume_phantom(rng=Rng(0), index=2, size=16)["image"])
    d = ph.volume_phantoms(20, rng=Rng(0), size=16)
    assert d["images"].shape == (20, 1, 16, 16, 16) and d["images"].dtype == np.float32
    assert np.array_equal(d["images"][2], a["image"])
    assert 0 < d["labels"].mean() < 1
    has_blob = d["masks"].reshape(20, -1).sum(1) > 0
    assert np.array_equal(has_blob.astype(np.int64), d["labels"])  # detect: positives hold blobs, negatives none
    shape = ph.volume_phantoms(10, rng=Rng(0), size=16, task="shape")
    assert (shape["masks"].reshape(10, -1).sum(1) > 0).all()  # shape: every volume holds blobs


def test_volume_label_is_shape_not_size():
    """Blob volume is matched between classes; the label is learnable from shape moments."""
    d = ph.volume_phantoms(120, rng=Rng(0), size=20, max_blobs=1, task="shape")
    vol = d["masks"].reshape(120, -1).sum(1)
    assert abs(vol[d["labels"] == 1].mean() / vol[d["labels"] == 0].mean() - 1) < 0.25
    # anisotropy of the mask's second moments separates the classes
    feats = []
    grid = np.stack(np.meshgrid(*[np.arange(20)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for m in d["masks"].reshape(120, -1):
        pts = grid[m == 1].astype(float)
        ev = np.linalg.eigvalsh(np.cov(pts.T))
        feats.append(ev[-1] / ev[0])
    assert roc_auc_score(d["labels"], feats) > 0.95


def test_clinical_features_carry_signal_and_are_deterministic():
    labels = np.array([i % 2 for i in range(400)])
    f = [ph.clinical_features(rng=Rng(0), index=i, label=int(y)) for i, y in enumerate(labels)]
    assert f[7] == ph.clinical_features(rng=Rng(0), index=7, label=int(labels[7]))
    x = np.array([[r["age"], r["sex"]] for r in f])
    p = LogisticRegression().fit(x, labels).predict_proba(x)[:, 1]
    assert 0.65 < roc_auc_score(labels, p) < 0.95
    assert set(x[:, 1]) == {0, 1}


def test_labels_can_be_read_without_drawing_the_images():
    for i in range(30):
        assert ph.lesion_phantom(rng=Rng(5), index=i, size=16)["n_lesions"] == ph.lesion_count(rng=Rng(5), index=i)
        assert ph.volume_phantom(rng=Rng(5), index=i, size=8)["label"] == ph.volume_label(rng=Rng(5), index=i)


def test_volume_affine_is_a_scanner_like_grid_and_written_with_the_phantom(tmp_path):
    pytest.importorskip("nibabel")
    from fusefn.data.ops import ReadNifti

    a = ph.volume_affine(4, rng=Rng(0), size=16)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    assert 2.5 <= spacing[0] <= 3.5 and np.allclose(spacing[1], spacing[2]) and 0.7 <= spacing[1] <= 0.9
    centre = a @ [7.5, 7.5, 7.5, 1]
    assert np.abs(centre[:3]).max() <= 20
    assert np.array_equal(ph.volume_phantom(4, rng=Rng(0), size=16)["affine"], a)
    paths = ph.write_volume_phantom(tmp_path, 4, rng=Rng(0), size=16)
    v = ph.volume_phantom(4, rng=Rng(0), size=16)
    img = ReadNifti(path=paths["image"])({"data": {"sample_id": "v"}})["data"]["input"]
    mask = ReadNifti(path=paths["mask"])({"data": {"sample_id": "v"}})["data"]["input"]
    np.testing.assert_array_equal(img["img"], v["image"])
    np.testing.assert_array_equal(mask["img"], v["mask"])
    np.testing.assert_allclose(img["affine"], a, atol=1e-4)
    assert paths["label"] == v["label"]


def test_dicom_series_reads_back_with_its_spacing(tmp_path):
    pytest.importorskip("pydicom")
    from fusefn.data.ops.dicom_series import read_dicom_series

    stored = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    ph.write_dicom_series(tmp_path, stored, spacing=(2.0, 0.5, 0.75), origin=(1.0, 2.0, 3.0), intercept=-1024.0)
    vol, affine, _ = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol[0], stored - 1024.0)
    np.testing.assert_allclose(affine, [[0, 0, -0.75, -1], [0, -0.5, 0, -2], [2, 0, 0, 3], [0, 0, 0, 1]], atol=1e-9)
