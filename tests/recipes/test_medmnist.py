"""medmnist: the layout is read from the file; every kind of file runs end to end on a tiny .npz."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fusefn_recipes import medmnist as mm

SMALL = ["--max-per-split", "24", "--channels", "8", "--channels", "16", "--n-boot", "100", "--batch-size", "16"]


def _npz(tmp_path, **kw):
    return mm.write_example(tmp_path / "tiny.npz", sizes=(24, 12, 24), **kw)


@pytest.mark.parametrize(
    ("kw", "expect"),
    [
        ({"task": "binary"}, (2, 1, "binary", 2)),
        ({"task": "multi-class"}, (2, 1, "multi-class", 4)),
        ({"task": "multi-label"}, (2, 1, "multi-label", 3)),
        ({"task": "binary", "channels": 3}, (2, 3, "binary", 2)),
        ({"task": "binary", "dims": 3, "size": 16}, (3, 1, "binary", 2)),
    ],
)
def test_describe_reads_the_layout_from_the_file(tmp_path, kw, expect):
    lay = mm.describe(_npz(tmp_path, **kw))
    assert (lay.dims, lay.channels, lay.task, lay.num_classes) == expect


def test_info_entry_overrides_and_names_classes(tmp_path):
    path = _npz(tmp_path, task="binary")
    arrays = dict(np.load(path))
    info = '{"task": "binary-class", "label": {"0": "normal", "1": "pneumonia"}}'
    np.savez(tmp_path / "named.npz", info=np.array(info), **arrays)
    lay = mm.describe(tmp_path / "named.npz")
    assert lay.class_names == ("normal", "pneumonia") and lay.task == "binary"


@pytest.mark.parametrize(
    "kw", [{"task": "binary"}, {"task": "multi-class"}, {"task": "multi-label"}, {"dims": 3, "size": 16}]
)
def test_all_fast(tmp_path, kw):
    npz = _npz(tmp_path, **kw)
    out = tmp_path / "out"
    r = CliRunner().invoke(mm.cli, ["all", "--npz", str(npz), "--out", str(out), "--debug", "fast", *SMALL])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "report" / "metrics.json").read_text())
    assert m["layout"]["task"] == kw.get("task", "binary")
    report = (out / "report" / "report.md").read_text()
    assert "ROC AUC" in report
    # binary: the threshold is chosen on the validation split; otherwise argmax (nothing to tune)
    binary = m["layout"]["task"] == "binary"
    assert (out / "infer" / "validation.parquet").is_file() == binary
    tuned = "| decision threshold (youden on the validation set) |" in report
    assert tuned == ("decision threshold" in m["metrics"])
    # one epoch on a tiny split may separate the validation cases no better than chance: then it is not tuned
    assert tuned or not binary or "not tuned" in report
    assert not tuned or binary


def test_bad_inputs_are_one_clear_line(tmp_path):
    r = CliRunner().invoke(mm.cli, ["train", "--out", str(tmp_path), "--debug", "fast"])
    assert r.exit_code == 2 and "give --npz" in r.output
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    r = CliRunner().invoke(mm.cli, ["train", "--npz", str(tmp_path / "bad.npz"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "not the MedMNIST layout" in r.output


def test_make_example_command(tmp_path):
    r = CliRunner().invoke(mm.cli, ["make-example", str(tmp_path / "e.npz"), "--task", "multi-class"])
    assert r.exit_code == 0, r.output
    assert mm.describe(tmp_path / "e.npz").task == "multi-class"


def test_help_lists_the_phases_and_options():
    r = CliRunner().invoke(mm.cli, ["--help"])
    assert r.exit_code == 0
    assert all(c in r.output for c in ("train", "infer", "analyze", "all"))
    r = CliRunner().invoke(mm.cli, ["all", "--help"])
    assert all(o in r.output for o in ("--out", "--seed", "--debug", "--compile", "--device"))
