"""``fusefn compare``: models on the same cases -> metrics.json, report.md, roc_compare.png; refusals."""

import json

import click
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, roc_auc_score

from fusefn import Rng
from fusefn.analyze import analyze
from fusefn.analyze.compare import compare, load_models
from fusefn.analyze.compare_cli import compare_command
from fusefn.analyze.compare_plots import plot_roc_compare
from fusefn.analyze.compare_report import roc_inputs
from fusefn.cli_errors import UserErrorGroup
from fusefn.data.visualize import figure_caption
from fusefn.errors import ConfigError
from fusefn.metrics.comparison import delong, mcnemar


@click.group(cls=UserErrorGroup)
def cli():
    """The command as ``fusefn`` will carry it (``main.add_command(compare_command)``)."""


cli.add_command(compare_command)


def _binary(tmp_path, n=120, seed=0):
    gen = np.random.default_rng(seed)
    y = (gen.random(n) < 0.4).astype(int)
    ids = [f"c{i:03d}" for i in range(n)]
    a = np.round(1 / (1 + np.exp(-(2 * y - 1 + gen.normal(size=n) * 1.3))), 3)
    b = np.round(1 / (1 + np.exp(-(3 * y - 1.5 + gen.normal(size=n)))), 3)
    pa, pb = tmp_path / "baseline.csv", tmp_path / "new.csv"
    pl.DataFrame({"id": ids, "prob": a, "label": y}).write_csv(pa)
    order = gen.permutation(n)  # another case order: compare pairs on the id
    pl.DataFrame({"id": [ids[i] for i in order], "prob": b[order], "label": y[order]}).write_csv(pb)
    return pa, pb, y, a, b


def test_cli_end_to_end_binary(tmp_path):
    pa, pb, y, a, b = _binary(tmp_path)
    out = tmp_path / "cmp"
    r = CliRunner().invoke(cli, ["compare", str(pa), str(pb), "--score", "prob", "--out", str(out), "--ci", "300"])
    assert r.exit_code == 0, r.output
    assert "new − baseline: AUC" in r.output and "DeLong p" in r.output and "McNemar p" in r.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "metrics.json",
        "report.md",
        "roc_compare.png",
    ]
    m = json.loads((out / "metrics.json").read_text())
    assert m["pairs"] == ["new - baseline"] and m["num_samples"] == y.size
    assert m["models"]["baseline"]["auc"]["value"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert m["models"]["new"]["auc"]["value"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    d = m["differences"]["new - baseline"]
    assert d["auc"]["value"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a), abs=1e-12)
    acc = accuracy_score(y, b >= 0.5) - accuracy_score(y, a >= 0.5)
    assert d["accuracy"]["value"] == pytest.approx(acc, abs=1e-12)
    assert d["auc"]["lower"] <= d["auc"]["value"] <= d["auc"]["upper"] and 0 <= d["auc"]["sign_flip"] <= 1
    t = m["tests"]["new - baseline"]
    assert t["delong"]["p_value"] == pytest.approx(delong(b, a, y)["p_value"], abs=1e-12)
    assert t["mcnemar"] == mcnemar((b >= 0.5) == y, (a >= 0.5) == y)
    assert m["settings"]["seed"] == 1234 and m["settings"]["threshold"] == 0.5

    md = (out / "report.md").read_text()
    assert md.startswith("# Comparison of baseline, new\n")
    for part in (
        "- **samples**: 120",
        "- **bootstrap**: 300 resamples",
        "- **decision threshold**: 0.5",
        "- **fusefn**",
        "## Metrics of each model",
        "| metric | baseline | new |",
        "## Differences",
        "| new − baseline | auc |",
        "| DeLong |",
        "| McNemar |",
        "### DeLong: ROC AUC",
        "### McNemar: accuracy at the decision",
        "![ROC curves of the models](roc_compare.png)",
    ):
        assert part in md, part
    assert "not adjusted" not in md  # one comparison: nothing to adjust
    caption = figure_caption(out / "roc_compare.png")  # stored in the PNG, shown under it in the report
    assert caption.startswith("The ROC curve of each model on the same 120 cases") and caption in md


def test_each_model_matches_analyze_on_its_own(tmp_path):
    pa, pb, *_ = _binary(tmp_path, seed=1)
    r = compare([pa, pb], score="prob", ci=0)
    for name, path in (("baseline", pa), ("new", pb)):
        alone = analyze(path, score="prob", ci=0)["metrics"]
        for metric in ("auc", "average_precision", "accuracy", "balanced_accuracy", "mcc"):
            assert r["models"][name][metric]["value"] == pytest.approx(alone[metric]["value"], abs=1e-12)
        assert r["models"][name]["operating_point"] == alone["operating_point"]
    d = r["differences"]["new - baseline"]
    assert set(d["auc"]) == {"value"}  # no resampling: values only
    assert d["mcc"]["value"] == pytest.approx(
        r["models"]["new"]["mcc"]["value"] - r["models"]["baseline"]["mcc"]["value"]
    )


def test_same_bootstrap_for_each_model_as_analyze(tmp_path):
    """A model's interval in the comparison is the one analyze gives with the same seed: the same resamples."""
    pa, pb, *_ = _binary(tmp_path, seed=2)
    r = compare([pa, pb], score="prob", ci=200, rng=Rng(5), method="percentile")
    alone = analyze(pa, score="prob", ci=200, rng=Rng(5), method="percentile")["metrics"]["auc"]
    assert r["models"]["baseline"]["auc"]["lower"] == pytest.approx(alone["lower"], abs=1e-12)
    assert r["models"]["baseline"]["auc"]["upper"] == pytest.approx(alone["upper"], abs=1e-12)


def test_figure_legend_and_labels(tmp_path):
    pa, pb, *_ = _binary(tmp_path, seed=3)
    r = compare([pa, pb], names=["A", "B"], score="prob", ci=100, rng=Rng(0))
    models = load_models([pa, pb], names=["A", "B"], score="prob")
    curves, aucs, points = roc_inputs(r, models, rng=Rng(0))
    fig = plot_roc_compare(curves, aucs, points, tmp_path / "roc.png", title="ROC")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    auc = r["models"]["A"]["auc"]
    assert f"A: AUC {auc['value']:.3f} [{auc['lower']:.3f}, {auc['upper']:.3f}]" in texts
    assert any(t.startswith("B: AUC ") for t in texts) and "A: operating point" in texts
    assert ax.get_legend().get_title().get_text() == "AUC [95% CI]"
    assert "false positive rate" in ax.get_xlabel() and "true positive rate" in ax.get_ylabel()
    op = r["models"]["B"]["operating_point"]
    marker = next(ln for ln in ax.get_lines() if ln.get_label() == "B: operating point")
    x, y = marker.get_xdata()[0], marker.get_ydata()[0]
    assert (x, y) == pytest.approx((1 - op["specificity"]["value"], op["sensitivity"]["value"]))
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_mismatched_ids_are_one_error_listing_a_few(tmp_path):
    pa, pb, *_ = _binary(tmp_path)
    df = pl.read_csv(pb)
    cut = tmp_path / "cut.csv"
    df.filter(~pl.col("id").is_in([f"c{i:03d}" for i in range(8)])).vstack(
        pl.DataFrame({"id": ["x1"], "prob": [0.2], "label": [0]})
    ).write_csv(cut)
    r = CliRunner().invoke(cli, ["compare", str(pa), str(cut), "--score", "prob", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error: compare: the prediction files do not hold the same cases")
    assert "baseline lacks 1 case(s): 'x1'" in err
    assert "cut lacks 8 case(s): 'c000', 'c001', 'c002', 'c003', 'c004' and 3 more" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_disagreeing_targets_are_refused(tmp_path):
    pa, pb, *_ = _binary(tmp_path)
    df = pl.read_csv(pb)
    flipped = tmp_path / "flipped.csv"
    df.with_columns(
        pl.when(pl.col("id").is_in(["c005", "c007"]))
        .then(1 - pl.col("label"))
        .otherwise(pl.col("label"))
        .alias("label")
    ).write_csv(flipped)
    with pytest.raises(ConfigError, match=r"targets of flipped disagree with those of baseline on 2 case\(s\): 'c005'"):
        compare([pa, flipped], score="prob", ci=0)


def test_one_file_names_and_duplicates_are_refused(tmp_path):
    pa, pb, *_ = _binary(tmp_path)
    r = CliRunner().invoke(cli, ["compare", str(pa), "--score", "prob", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "two or more" in r.stderr
    with pytest.raises(ConfigError, match="1 names for 2"):
        compare([pa, pb], names=["x"], score="prob", ci=0)
    with pytest.raises(ConfigError, match="must differ"):
        compare([pa, pb], names=["x", "x"], score="prob", ci=0)
    # the same file twice (a sanity check of the pipeline): no two names from its stem
    same = compare([pa, pa], score="prob", ci=0)
    assert list(same["models"]) == ["model 1", "model 2"]
    assert same["tests"]["model 2 - model 1"]["delong"]["p_value"] == 1.0


def _multiclass(tmp_path, models=("cnn", "vit", "ens"), n=90):
    gen = np.random.default_rng(7)
    y = np.tile([0, 1, 2], n // 3)
    paths, probs = [], {}
    for k, m in enumerate(models):
        z = gen.normal(size=(n, 3))
        z[np.arange(n), y] += 1.0 + 0.6 * k
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        probs[m] = p
        path = tmp_path / f"{m}.csv"
        pl.DataFrame(
            {"id": np.arange(n), "a-score": p[:, 0], "b-score": p[:, 1], "c-score": p[:, 2], "y": y}
        ).write_csv(path)
        paths.append(path)
    return paths, y, probs


def test_multiclass_three_models(tmp_path):
    paths, y, probs = _multiclass(tmp_path)
    out = tmp_path / "cmp"
    r = compare(paths, out=out, score=["a-score", "b-score", "c-score"], label="y", ci=150, rng=Rng(1))
    assert r["pairs"] == ["vit - cnn", "ens - cnn", "ens - vit"]
    d = r["differences"]["ens - cnn"]["auc"]
    assert set(d) == {"a", "b", "c", "macro"}
    dl = r["tests"]["ens - cnn"]["delong"]
    for i, c in enumerate("abc"):
        want = roc_auc_score(y == i, probs["ens"][:, i]) - roc_auc_score(y == i, probs["cnn"][:, i])
        assert d[c]["value"] == pytest.approx(want, abs=1e-12)
        assert dl[c]["difference"] == pytest.approx(want, abs=1e-12)
    right = {m: probs[m].argmax(1) == y for m in probs}
    assert r["tests"]["ens - vit"]["mcnemar"]["p_value"] == mcnemar(right["ens"], right["vit"])["p_value"]
    md = (out / "report.md").read_text()
    assert "| ens − cnn | auc.macro |" in md and "| ens − cnn | auc.b |" in md and "not adjusted for the 3" in md
    assert "- **decision**: argmax" in md
    models = load_models(paths, score=["a-score", "b-score", "c-score"], label="y")
    fig = plot_roc_compare(*roc_inputs(r, models, rng=Rng(0)), tmp_path / "roc.png")
    panels = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in panels] == ["class a vs rest", "class b vs rest", "class c vs rest"]
    assert all(len([t for t in a.get_legend().get_texts() if "AUC" in t.get_text()]) == 3 for a in panels)


def test_targets_from_their_own_file_and_names_from_the_command_line(tmp_path):
    pa, pb, y, _, b = _binary(tmp_path, seed=4)
    targets = tmp_path / "targets.csv"
    pl.read_csv(pa).select("id", pl.col("label").alias("truth")).write_csv(targets)
    for p in (pa, pb):
        pl.read_csv(p).drop("label").write_csv(p)
    out = tmp_path / "cmp"
    args = ["compare", str(pa), str(pb), "--target", str(targets), "--label", "truth", "--score", "prob"]
    r = CliRunner().invoke(cli, [*args, "--name", "CNN", "--name", "ViT", "--ci", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["pairs"] == ["ViT - CNN"] and m["inputs"]["target"] == str(targets)
    assert m["models"]["ViT"]["auc"]["value"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert "targets `" in (out / "report.md").read_text()
