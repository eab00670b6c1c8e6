"""volumes3d: fast end-to-end run with slice montages; the static op is the phantom."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusefn import Rng
from fusefn.data.ops import ReadNifti
from fusefn_recipes import phantoms
from fusefn_recipes import volumes3d as v3

SMALL = [
    "--n-train",
    "24",
    "--n-validation",
    "8",
    "--n-test",
    "16",
    "--size",
    "16",
    "--width",
    "4",
    "--n-boot",
    "100",
    "--batch-size",
    "8",
]


@pytest.mark.parametrize("backbone", ["resnet18", "smallcnn"])
def test_all_fast_writes_report_and_montages(tmp_path, backbone, assert_threshold_from_validation):
    args = ["all", "--out", str(tmp_path), "--debug", "fast", *SMALL, "--backbone", backbone]
    r = CliRunner().invoke(v3.cli, args)
    assert r.exit_code == 0, r.output
    rd = tmp_path / "report"
    report = (rd / "report.md").read_text()
    assert "| ROC AUC |" in report and "montage_label" in report
    assert list(rd.glob("montage_label*.png"))
    m = json.loads((rd / "metrics.json").read_text())
    assert 0 <= m["ROC AUC"]["value"] <= 1
    assert_threshold_from_validation(tmp_path, m, report)
    # the montage volumes as NIfTI on their grids: what the static op made, read back by ReadNifti
    written = sorted((rd / "volumes").glob("volume_*_blobs.nii.gz"))
    assert written
    sid = written[0].name.removesuffix("_blobs.nii.gz")
    made = v3.MakeVolume(rng=Rng(0), size=16, with_mask=True)({"data": {"sample_id": sid}})["data"]
    back = ReadNifti(path=str(rd / "volumes" / f"{sid}.nii.gz"))({"data": {"sample_id": sid}})["data"]["input"]
    np.testing.assert_array_equal(back["img"], made["input"]["img"].numpy())
    np.testing.assert_allclose(back["affine"], made["input"]["affine"], atol=1e-4)


def test_make_volume_is_the_phantom():
    s = v3.MakeVolume(rng=Rng(1), size=12)({"data": {"sample_id": "volume_00003"}})
    p = phantoms.volume_phantom(3, rng=Rng(1), size=12)
    assert torch.equal(s["data"]["input"]["img"], torch.from_numpy(p["image"]))
    assert s["data"]["gt"]["label"] == p["label"] == phantoms.volume_label(3, rng=Rng(1))
    assert s["data"]["input"]["original_shape"] == (12, 12, 12)
    np.testing.assert_array_equal(s["data"]["input"]["affine"], phantoms.volume_affine(3, rng=Rng(1), size=12))
    np.testing.assert_array_equal(s["data"]["input"]["original_affine"], s["data"]["input"]["affine"])
    with pytest.raises(Exception, match="volume_x"):
        v3.MakeVolume()({"data": {"sample_id": "volume_x"}})


def test_static_pipeline_keeps_the_affine_in_the_cache(tmp_path):
    from fusefn import nd
    from fusefn.data import H5Cache

    cache = H5Cache(root=tmp_path, pipeline=v3.MakeVolume(rng=Rng(2), size=8), progress=False)
    assert cache.build(["volume_00001", "volume_00002"]).computed == 2
    with cache.open() as reader:
        s = reader.read("volume_00002")
    np.testing.assert_array_equal(nd.get(s, "data.input.affine"), phantoms.volume_affine(2, rng=Rng(2), size=8))
    assert nd.get(s, "data.input.original_shape") == (8, 8, 8)


def test_help_lists_the_phases_and_options():
    r = CliRunner().invoke(v3.cli, ["--help"])
    assert r.exit_code == 0
    assert all(c in r.output for c in ("train", "infer", "analyze", "all"))
    r = CliRunner().invoke(v3.cli, ["all", "--help"])
    assert all(o in r.output for o in ("--out", "--seed", "--debug", "--compile", "--device"))
