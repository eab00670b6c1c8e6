"""image_clinical: fast end-to-end run; the clinical vector reaches the head and carries signal."""

import json

import numpy as np
import torch
from click.testing import CliRunner

from fusefn import Rng, models
from fusefn_recipes import image_clinical as ic

SMALL = [
    "--n-train",
    "32",
    "--n-validation",
    "16",
    "--n-test",
    "32",
    "--size",
    "24",
    "--channels",
    "8",
    "--channels",
    "16",
    "--n-boot",
    "100",
]


def test_all_fast_writes_a_report(tmp_path, assert_threshold_from_validation):
    r = CliRunner().invoke(ic.cli, ["all", "--out", str(tmp_path), "--debug", "fast", *SMALL])
    assert r.exit_code == 0, r.output
    report = (tmp_path / "report" / "report.md").read_text()
    assert "image + clinical: ROC AUC" in report and "clinical only" in report
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert m["clinical only ROC AUC"]["value"] > 0.6  # the synthetic age/sex carry signal
    assert_threshold_from_validation(tmp_path, m, report, prefix="image + clinical: ")


def test_image_only_variant(tmp_path):
    r = CliRunner().invoke(ic.cli, ["all", "--out", str(tmp_path), "--debug", "fast", "--no-clinical", *SMALL])
    assert r.exit_code == 0, r.output
    assert "image only" in (tmp_path / "report" / "report.md").read_text()


def test_clinical_features_change_the_prediction():
    model = ic.make_model((4,), (), 0.0, clinical=True)
    params, buffers = models.init(model, rng=Rng(0))
    s = ic.MakeCase(rng=Rng(0), size=16)({"data": {"sample_id": "case_00001"}})
    img = s["data"]["input"]["img"][None]
    outs = []
    for clin in ([0.0, 0.0], [3.0, 1.0]):
        batch = {"data": {"input": {"img": img, "clinical": torch.tensor([clin])}}}
        out, _ = models.apply(model, params, buffers, batch, train=False)
        outs.append(out["model"]["head_0"]["probs"])
    assert not torch.allclose(outs[0], outs[1])
    assert s["data"]["input"]["clinical"].shape == (2,)
    assert np.isfinite(s["data"]["input"]["clinical"].numpy()).all()


def test_help_lists_the_phases_and_options():
    r = CliRunner().invoke(ic.cli, ["--help"])
    assert r.exit_code == 0
    assert all(c in r.output for c in ("train", "infer", "analyze", "all"))
    r = CliRunner().invoke(ic.cli, ["all", "--help"])
    assert all(o in r.output for o in ("--out", "--seed", "--debug", "--compile", "--device"))
