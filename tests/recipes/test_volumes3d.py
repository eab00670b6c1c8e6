"""volumes3d: fast end-to-end run with slice montages; the static op is the phantom."""

import json

import pytest
import torch
from click.testing import CliRunner

from fusefn import Rng
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
def test_all_fast_writes_report_and_montages(tmp_path, backbone):
    args = ["all", "--out", str(tmp_path), "--debug", "fast", *SMALL, "--backbone", backbone]
    r = CliRunner().invoke(v3.cli, args)
    assert r.exit_code == 0, r.output
    rd = tmp_path / "report"
    report = (rd / "report.md").read_text()
    assert "| ROC AUC |" in report and "montage_label" in report
    assert list(rd.glob("montage_label*.png"))
    assert 0 <= json.loads((rd / "metrics.json").read_text())["ROC AUC"]["value"] <= 1


def test_make_volume_is_the_phantom():
    s = v3.MakeVolume(rng=Rng(1), size=12)({"data": {"sample_id": "volume_00003"}})
    p = phantoms.volume_phantom(3, rng=Rng(1), size=12)
    assert torch.equal(s["data"]["input"]["img"], torch.from_numpy(p["image"]))
    assert s["data"]["gt"]["label"] == p["label"] == phantoms.volume_label(3, rng=Rng(1))
    with pytest.raises(Exception, match="volume_x"):
        v3.MakeVolume()({"data": {"sample_id": "volume_x"}})


def test_help_lists_the_phases_and_options():
    r = CliRunner().invoke(v3.cli, ["--help"])
    assert r.exit_code == 0
    assert all(c in r.output for c in ("train", "infer", "analyze", "all"))
    r = CliRunner().invoke(v3.cli, ["all", "--help"])
    assert all(o in r.output for o in ("--out", "--seed", "--debug", "--compile", "--device"))
