"""The analyzer and `fusefn analyze` on the real KNIGHT files and on a fusefn inference Parquet file."""

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from fusefn import Rng
from fusefn.analyze import analyze
from fusefn.cli import analyze_command
from fusefn.errors import ConfigError, SampleError

OUTPUTS = {"metrics.json", "report.txt", "report.md", "roc.png", "confusion_matrix.png", "reliability.png"}


def test_cli_example_from_the_issue(fuse_eval_dir, tmp_path):
    out = tmp_path / "out"
    args = [
        "--pred",
        str(fuse_eval_dir / "example1_predictions.csv"),
        "--target",
        str(fuse_eval_dir / "example1_targets.csv"),
        "--id",
        "id",
        "--score",
        "CanAT-score",
        "--label",
        "Task1-target",
        "--ci",
        "10000",
        "--seed",
        "1234",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(analyze_command, args)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} >= OUTPUTS
    m = json.loads((out / "metrics.json").read_text())
    auc = m["metrics"]["auc"]
    assert round(auc["value"], 3) == 0.845
    assert abs(auc["lower"] - 0.712) <= 0.005 and abs(auc["upper"] - 0.954) <= 0.005
    report = (out / "report.txt").read_text()
    line = next(ln for ln in report.splitlines() if ln.startswith("auc "))
    assert "0.8450" in line and "[0.7" in line
    assert "| auc | 0.8450 |" in (out / "report.md").read_text()
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*tmp"))


def test_fold_files_give_per_fold_values(fuse_eval_dir):
    r = analyze(
        [fuse_eval_dir / "example2_predictions_fold0.csv", fuse_eval_dir / "example2_predictions_fold1.csv"],
        fuse_eval_dir / "example2_targets.csv",
        score="CanAT-score",
        label="Task1-target",
        ci=0,
    )
    assert round(r["metrics"]["auc"]["value"], 3) == 0.845
    assert set(r["metrics"]["accuracy"]) == {"value"}
    folds = r["groups"]["fold"]["auc"]
    assert [round(v, 3) for v in folds["groups"].values()] == [0.841, 0.837]


def test_multiclass_score_columns(fuse_eval_dir, tmp_path):
    cols = [f"{c}-score" for c in ("B", "LR", "IR", "HR", "VHR")]
    r = analyze(
        fuse_eval_dir / "example7_predictions.csv",
        fuse_eval_dir / "example1_targets.csv",
        score=cols,
        label="Task2-target",
        ci=300,
        rng=Rng(0),
        out=tmp_path,
        plots=False,
    )
    auc = r["metrics"]["auc"]
    assert round(auc["macro"]["value"], 3) == 0.808 and round(auc["IR"]["value"], 3) == 0.670
    assert set(r["metrics"]["operating_point"]) == {"B", "LR", "IR", "HR", "VHR"}
    assert "auc.VHR" in (tmp_path / "report.txt").read_text()


def test_inference_parquet_with_probability_list_column(tmp_path):
    """The layout fusefn's infer writes: sample_id, fold, label, model.head_0.probs."""
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(4), 25)
    logits = rng.normal(size=(100, 4)) + 2 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pl.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(100)],
            "fold": np.repeat([0, 1], 50),
            "label": y,
            "model.head_0.probs": probs.tolist(),
        }
    )
    df.write_parquet(tmp_path / "infer.parquet")
    r = analyze(tmp_path / "infer.parquet", out=tmp_path / "eval", ci=200, rng=Rng(1), class_names=("a", "b", "c", "d"))
    assert r["inputs"]["score"] == ["model.head_0.probs"] and r["inputs"]["id"] == "sample_id"
    assert r["metrics"]["accuracy"]["value"] == pytest.approx((probs.argmax(1) == y).mean())
    assert set(r["groups"]["fold"]["auc"]["groups"]) == {0, 1}
    assert {p.name for p in (tmp_path / "eval").iterdir()} >= OUTPUTS


def test_errors_are_clear(fuse_eval_dir, tmp_path):
    pred = fuse_eval_dir / "example1_predictions.csv"
    with pytest.raises(ConfigError, match="score column"):
        analyze(pred, fuse_eval_dir / "example1_targets.csv", score="nope", label="Task1-target", ci=0)
    with pytest.raises(ConfigError, match="label column"):
        analyze(pred, fuse_eval_dir / "example1_targets.csv", score="CanAT-score", label="nope", ci=0)
    df = pl.read_csv(pred)
    with pytest.raises(SampleError, match="no prediction"):
        analyze(df[:10], fuse_eval_dir / "example1_targets.csv", score="CanAT-score", label="Task1-target", ci=0)
    res = CliRunner().invoke(analyze_command, ["--pred", str(tmp_path / "missing.csv"), "--out", str(tmp_path)])
    assert res.exit_code != 0


def test_registered_as_fusefn_analyze():
    from fusefn.cli import main

    res = CliRunner().invoke(main, ["analyze", "--help"])
    assert res.exit_code == 0 and "--score" in res.output


def test_invalid_samples_stop_or_are_skipped_and_listed(fuse_eval_dir, tmp_path):
    df = pl.read_csv(fuse_eval_dir / "example1_predictions.csv")
    df = df.with_columns(
        pl.when(pl.col("id") == "case_00011").then(float("nan")).otherwise(pl.col("CanAT-score")).alias("CanAT-score")
    )
    targets = fuse_eval_dir / "example1_targets.csv"
    with pytest.raises(SampleError, match="case_00011"):
        analyze(df, targets, score="CanAT-score", label="Task1-target", ci=0)
    with pytest.warns(UserWarning, match="1 sample"):
        r = analyze(df, targets, score="CanAT-score", label="Task1-target", ci=0, skip_invalid=True)
    assert r["skipped"] == [{"id": "case_00011", "reason": "NaN or infinite score"}]
    assert r["num_samples"] == 59


def test_markdown_report_embeds_the_figures(tmp_path, fuse_eval_dir):
    from fusefn.analyze import analyze

    analyze(
        fuse_eval_dir / "example1_predictions.csv",
        fuse_eval_dir / "example1_targets.csv",
        id="id",
        score="CanAT-score",
        label="Task1-target",
        ci=200,
        out=tmp_path,
    )
    md = (tmp_path / "report.md").read_text()
    for name in ("roc.png", "confusion_matrix.png", "reliability.png"):
        assert f"]({name})" in md and (tmp_path / name).stat().st_size > 0


def test_the_three_steps_give_what_analyze_gives(fuse_eval_dir, tmp_path):
    from fusefn.analyze import (
        plot_confusion,
        plot_reliability,
        plot_roc,
        read_predictions,
        reliability,
        roc_curves,
        run_suite,
        select_inputs,
        write_markdown,
        write_results,
    )

    pred, target = fuse_eval_dir / "example1_predictions.csv", fuse_eval_dir / "example1_targets.csv"
    cols = {"score": "CanAT-score", "label": "Task1-target"}
    whole = analyze(pred, target, id="id", **cols, ci=300, rng=Rng(7), out=tmp_path / "a")
    frame, id = read_predictions(pred, target, id="id")
    inputs = select_inputs(frame, id=id, **cols)
    assert (inputs.num_samples, inputs.class_names, inputs.skipped) == (60, ("0", "1"), ())
    suite = run_suite(inputs, ci=300, rng=Rng(7))
    assert list(suite) == ["metrics", "groups", "confusion_matrix", "warnings"]
    assert {k: whole[k] for k in suite} == suite
    # the report step alone writes the same files from the same results
    out = tmp_path / "b"
    write_results(out, whole)
    curves, band = roc_curves(inputs, ci=300, rng=Rng(7))
    plot_roc(curves, band, out / "roc.png")
    plot_confusion(whole["confusion_matrix"]["matrix"], inputs.class_names, out / "confusion_matrix.png")
    plot_reliability(reliability(inputs), out / "reliability.png")
    figures = [("ROC curve", "roc.png"), ("confusion matrix", "confusion_matrix.png")]
    write_markdown(out, whole, figures=[*figures, ("reliability diagram", "reliability.png")])
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


def test_the_default_rng_is_the_clis_default_seed():
    df = pl.DataFrame(
        {"id": list("abcdefgh"), "s": [0.1, 0.2, 0.7, 0.4, 0.8, 0.9, 0.3, 0.6], "y": [0, 0, 0, 1, 1, 1, 0, 1]}
    )
    a = analyze(df, score="s", label="y", ci=100)
    assert a == analyze(df, score="s", label="y", ci=100, rng=Rng(1234))
    assert a["settings"]["seed"] == 1234
    assert a["metrics"]["auc"] != analyze(df, score="s", label="y", ci=100, rng=Rng(1))["metrics"]["auc"]


def test_group_columns_with_dots_in_their_names():
    df = pl.DataFrame(
        {"id": list("abcdefgh"), "s": [0.1, 0.2, 0.7, 0.4, 0.8, 0.9, 0.3, 0.6], "y": [0, 0, 0, 1, 1, 1, 0, 1]}
    ).with_columns(pl.Series("data.site", ["x", "y"] * 4))
    r = analyze(df, score="s", label="y", group="data.site", ci=0)
    assert set(r["groups"]["data.site"]["accuracy"]["groups"]) == {"x", "y"}


def test_the_library_imports_neither_click_nor_matplotlib():
    import subprocess
    import sys

    script = "import sys, fusefn.analyze; print(sorted({'click', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
