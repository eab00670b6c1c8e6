"""write_nifti: what it writes reads back as the same array on the same grid, whole or not at all."""

import os

import numpy as np
import pytest
import torch

from fusefn.data.ops import ReadNifti
from fusefn.data.write import write_nifti
from fusefn.errors import ConfigError

nib = pytest.importorskip("nibabel")


def oblique_affine():
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    a = np.eye(4)
    a[:3, :3] = q @ np.diag([0.7, 1.1, 2.5])
    a[:3, 3] = [-101.5, 22.25, 310.0]
    return a


def read_back(path):
    return ReadNifti(path=str(path))({"data": {"sample_id": "x"}})["data"]["input"]


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
@pytest.mark.parametrize("channel", [False, True])
def test_round_trip_array_and_affine(tmp_path, name, channel):
    vol = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    affine = oblique_affine()
    write_nifti(tmp_path / name, vol[None] if channel else vol, affine)
    back = read_back(tmp_path / name)
    np.testing.assert_array_equal(back["img"][0], vol)
    np.testing.assert_allclose(back["affine"], affine, atol=1e-5)  # NIfTI stores the sform as float32
    hdr = nib.load(tmp_path / name).header
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    np.testing.assert_allclose(hdr.get_qform(), affine, atol=1e-4)  # no shear here: the qform holds it too


def test_torch_labels_keep_their_values_in_a_small_integer_type(tmp_path):
    labels = torch.randint(0, 4, (1, 4, 5, 6))
    write_nifti(tmp_path / "seg.nii.gz", labels, torch.eye(4, dtype=torch.float64))
    img = nib.load(tmp_path / "seg.nii.gz")
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), labels[0].numpy())
    write_nifti(tmp_path / "m.nii", labels[0] > 1, np.eye(4))
    assert nib.load(tmp_path / "m.nii").get_data_dtype() == np.uint8
    write_nifti(tmp_path / "f.nii", labels[0], np.eye(4), dtype="float32")
    assert nib.load(tmp_path / "f.nii").get_data_dtype() == np.float32


def test_gzip_output_is_the_same_bytes_for_the_same_volume(tmp_path):
    vol = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    write_nifti(tmp_path / "a.nii.gz", vol, np.eye(4))
    write_nifti(tmp_path / "b.nii.gz", vol, np.eye(4))
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    write_nifti(tmp_path / "p.nii", np.ones((2, 2, 2), np.float32), np.eye(4))
    before = (tmp_path / "p.nii").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(tmp_path / "p.nii", np.zeros((2, 2, 2), np.float32), np.eye(4))
    assert (tmp_path / "p.nii").read_bytes() == before
    assert os.listdir(tmp_path) == ["p.nii"]


def test_bad_shapes_and_affines_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"write_nifti: expected a spatial .* got shape \(2, 3, 4, 5\)"):
        write_nifti(tmp_path / "x.nii", np.zeros((2, 3, 4, 5)), np.eye(4))
    with pytest.raises(ConfigError, match="affine must be an invertible 4×4"):
        write_nifti(tmp_path / "x.nii", np.zeros((3, 4, 5)), np.zeros((4, 4)))
    assert not list(tmp_path.iterdir())
