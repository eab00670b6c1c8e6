"""The analyzer and `fusefn analyze` on the real KNIGHT files and on a fusefn inference Parquet file."""

import importlib.metadata
import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from fusefn import Rng
from fusefn.analyze import analyze, classification_metrics
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
        draw_figures,
        read_predictions,
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
    assert list(suite) == ["metrics", "groups", "confusion_matrix", "methods", "notes", "warnings"]
    assert {k: whole[k] for k in suite} == suite
    # the report step alone writes the same files from the same results
    out = tmp_path / "b"
    write_results(out, whole)
    figures = draw_figures(out, whole, inputs, ci=300, rng=Rng(7))
    write_markdown(out, whole, figures=figures)
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


# ------------------------------------------------------------ issue 20 (intervals, scores) and 17 (reports, size)


def _binary_frame(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    s = 1 / (1 + np.exp(-(rng.normal(size=n) * 1.5 + y * 1.5 - 0.8)))
    return pl.DataFrame({"id": [f"s{i}" for i in range(n)], "s": s, "y": y})


@pytest.mark.slow
def test_cells_resample_like_rows(monkeypatch):
    """The cell path's resamples have the row bootstrap's distribution (mean, spread, tails) for every metric."""
    from fusefn.analyze import resampling
    from fusefn.analyze.inputs import PRED, TARGET
    from fusefn.metrics import ConfusionMatrix, evaluate

    frame = _binary_frame(8000)
    batch = {PRED: frame["s"].to_numpy(), TARGET: frame["y"].to_numpy()}
    metrics = {**classification_metrics(("0", "1"), threshold=0.5)}
    metrics["op"] = ConfusionMatrix(pred=PRED, target=TARGET, threshold=0.5, num_classes=2)
    values = evaluate(metrics, batch)
    rows, _ = resampling.resample_suite(metrics, batch, n=2000, rng=Rng(1), values=values)
    monkeypatch.setattr(resampling, "CELLS_FROM", 1000)
    monkeypatch.setattr(resampling, "SCORE_BINS", 256)
    assert resampling._cells_of(metrics, batch).size.size < 1500  # 8000 rows became cells
    cells, jack = resampling.resample_suite(metrics, batch, n=2000, rng=Rng(1), values=values, jackknife=["ece"])
    assert jack["ece"]["ece"].shape == (resampling.JACKKNIFE_GROUPS,)
    pairs = [(rows[k], cells[k]) for k in ("auc", "average_precision", "accuracy", "balanced_accuracy", "mcc")]
    pairs += [
        (rows["ece"]["ece"], cells["ece"]["ece"]),
        (rows["op"]["classes"]["1"]["sensitivity"], cells["op"]["classes"]["1"]["sensitivity"]),
    ]
    for a, b in pairs:
        sd = a.std()
        assert b.std() == pytest.approx(sd, rel=0.08)
        assert abs(b.mean() - a.mean()) < 0.1 * sd
        assert np.abs(np.quantile(b, [0.025, 0.975]) - np.quantile(a, [0.025, 0.975])).max() < 0.2 * sd


def test_a_large_file_keeps_exact_estimates_and_intervals_around_them(monkeypatch):
    from fusefn.analyze import resampling

    monkeypatch.setattr(resampling, "CELLS_FROM", 1000)
    frame = _binary_frame(3000, seed=1)
    with_ci = analyze(frame, score="s", label="y", ci=500, rng=Rng(0))
    point = analyze(frame, score="s", label="y", ci=0)
    for name in ("auc", "average_precision", "accuracy", "mcc"):
        m = with_ci["metrics"][name]
        assert m["value"] == point["metrics"][name]["value"]
        assert m["lower"] < m["value"] < m["upper"]
    assert with_ci["notes"] == []


def test_logits_are_turned_into_probabilities():
    frame = _binary_frame(300, seed=2)
    logit = frame.with_columns(np.log(pl.col("s") / (1 - pl.col("s"))).alias("s"))
    a = analyze(frame, score="s", label="y", ci=0)
    b = analyze(logit, score="s", label="y", ci=0, scores="logits")
    for name in ("auc", "accuracy"):
        assert b["metrics"][name]["value"] == pytest.approx(a["metrics"][name]["value"])
    assert b["metrics"]["ece"]["ece"]["value"] == pytest.approx(a["metrics"]["ece"]["ece"]["value"])
    with pytest.raises(ConfigError, match=r"outside \[0, 1\].*scores='logits'"):
        analyze(logit, score="s", label="y", ci=0)
    three = pl.DataFrame(
        {"id": list("abc"), "a": [2.0, 0.1, -1.0], "b": [0.5, 1.5, 0.0], "c": [0.0, 0.0, 3.0], "y": [0, 1, 1]}
    )
    soft = analyze(three, score=["a", "b", "c"], label="y", ci=0, scores="logits")
    assert soft["metrics"]["accuracy"]["value"] == pytest.approx(2 / 3)
    raw = analyze(logit, score="s", label="y", ci=0, scores="raw", threshold=0.0)
    assert raw["metrics"]["auc"] == a["metrics"]["auc"] and "ece" not in raw["metrics"]


def test_bca_is_the_default_for_ece_and_ap_and_outside_values_get_a_note():
    from fusefn.analyze import format_report, outside_notes

    frame = _binary_frame(200, seed=3)
    r = analyze(frame, score="s", label="y", ci=300, rng=Rng(0))
    assert r["methods"] == {
        "auc": "percentile",
        "average_precision": "bca",
        "accuracy": "percentile",
        "balanced_accuracy": "percentile",
        "mcc": "percentile",
        "ece": "bca",
        "operating_point": "percentile",
    }
    pct = analyze(frame, score="s", label="y", ci=300, rng=Rng(0), method="percentile")
    assert pct["metrics"]["auc"] == r["metrics"]["auc"]  # the same resamples
    assert pct["metrics"]["ece"]["ece"] != r["metrics"]["ece"]["ece"]
    # the demo's case: an estimate below its own interval is marked and explained
    shown = {"ece": {"ece": {"value": 0.0109, "mean": 0.018, "std": 0.004, "lower": 0.0111, "upper": 0.0257}}}
    notes = outside_notes(shown, {"ece": "percentile"})
    assert len(notes) == 1 and notes[0].startswith("ece.ece 0.0109 lies below its 95% percentile interval")
    assert "--method bca" in notes[0]
    text = format_report({"metrics": shown, "notes": notes})
    assert "[0.0111, 0.0257] *" in text and "* ece.ece 0.0109 lies below" in text


def test_report_md_opens_with_what_a_reader_needs(fuse_eval_dir, tmp_path):
    import datetime

    pred, target = fuse_eval_dir / "example1_predictions.csv", fuse_eval_dir / "example1_targets.csv"
    analyze(pred, target, id="id", score="CanAT-score", label="Task1-target", ci=200, out=tmp_path / "o", plots=False)
    md = (tmp_path / "o" / "report.md").read_text()
    head = md.split("| metric |")[0]
    assert head.startswith("# Analysis of example1_predictions.csv\n")
    for needle in (
        "example1_targets.csv",
        "joined on `id`",
        "scores `CanAT-score` (probabilities), label `Task1-target`",
        "**samples**: 60 (0: 40, 1: 20)",
        "200 resamples, stratified by target, 95% intervals by BCa for average_precision, ece, percentile",
        "seed 1234",
        "**decision threshold**: 0.5 — the default, on the positive-class probability",
        f"**fusefn** {importlib.metadata.version('fusefn')}, {datetime.date.today().isoformat()}",
    ):
        assert needle in head, needle
    txt = (tmp_path / "o" / "report.txt").read_text()
    assert txt.startswith("samples: 60 (0: 40, 1: 20)\nbootstrap: 200 resamples")
