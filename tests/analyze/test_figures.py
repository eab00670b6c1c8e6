"""The figures a reader checks first: their matplotlib objects inspected, not only "a PNG was written".

Each test draws a figure with ``save`` intercepted, so the Figure itself is at hand: titles, axis
labels, legend texts, markers, cell texts.
"""

import pathlib

import matplotlib

matplotlib.use("Agg")

import numpy as np
import polars as pl
import pytest

from fusefn import Rng
from fusefn.analyze import analyze, plots
from fusefn.analyze.inputs import read_predictions, select_inputs
from fusefn.data import visualize
from fusefn.data.visualize import figure_caption
from fusefn.recipe import report as recipe_report


@pytest.fixture
def captured(monkeypatch):
    """The figures the analyzer's plots save, by file name (the PNGs are still written)."""
    figs = {}
    real = plots._save

    def save(fig, path, caption=None):
        figs[pathlib.Path(path).name] = (fig, caption)
        real(fig, path, caption)

    monkeypatch.setattr(plots, "_save", save)
    return figs


def _binary(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    p = np.clip(0.3 * y + 0.35 + rng.normal(0, 0.2, n), 0, 1)
    return pl.DataFrame({"id": [f"s{i}" for i in range(n)], "p": p, "y": y})


def _multiclass(n=150, k=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    logits = rng.normal(0, 1, (n, k)) + 3.0 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return pl.DataFrame({"id": [f"m{i}" for i in range(n)], "probs": probs.tolist(), "y": y})


def _draw(frame, out, score, **kw):
    results = analyze(frame, score=score, label="y", ci=100, rng=Rng(0), **kw)
    df, id = read_predictions(frame, None, id=None, strict=True)
    inputs = select_inputs(
        df,
        id=id,
        score=score,
        label="y",
        fold=None,
        group=None,
        class_names=kw.get("class_names"),
        skip_invalid=False,
        scores="probabilities",
    )
    out.mkdir(exist_ok=True)
    return results, plots.draw_figures(out, results, inputs, ci=100, rng=Rng(0))


def _legend_texts(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def _has_op_marker(ax):
    return any(line.get_marker() == "o" and len(line.get_xdata()) == 1 for line in ax.get_lines())


def test_binary_figures_say_auc_ci_operating_point_and_counts(tmp_path, captured):
    results, figures = _draw(_binary(), tmp_path, "p", class_names=["benign", "malignant"])
    fig, caption = captured["roc.png"]
    ax = fig.axes[0]
    texts = _legend_texts(ax)
    assert any("AUC" in t and "95% CI" in t for t in texts), texts
    assert any("operating point (P(malignant) ≥ 0.5)" in t and "sensitivity" in t for t in texts), texts
    assert _has_op_marker(ax)
    # the marker sits where the reported sensitivity / specificity put it
    op = results["metrics"]["operating_point"]
    marker = next(line for line in ax.get_lines() if line.get_marker() == "o" and len(line.get_xdata()) == 1)
    assert marker.get_xdata()[0] == pytest.approx(1 - op["specificity"]["value"])
    assert marker.get_ydata()[0] == pytest.approx(op["sensitivity"]["value"])
    assert "sensitivity" in ax.get_ylabel() and "false positive rate" in ax.get_xlabel()
    assert caption and "threshold 0.5" in caption and caption.endswith(".")

    fig, _ = captured["confusion_matrix.png"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["benign", "malignant"]
    cm = np.asarray(results["confusion_matrix"]["matrix"])
    cells = [t.get_text() for t in ax.texts]
    row0 = cm[0, 0] / cm[0].sum()
    assert f"{cm[0, 0]}\n{100 * row0:.0f}%" in cells

    fig, caption = captured["reliability.png"]
    top, counts = fig.axes[0], fig.axes[1]
    assert "predicted probability of malignant" in counts.get_xlabel()
    assert "observed fraction malignant" in top.get_ylabel()
    assert "10 equal-width bins" in top.get_title()
    # the positive-class probability, not top-label confidence: points below 0.5 exist
    pos_prob = _binary()["p"].to_numpy()
    bins = plots.calibration_bins(pos_prob, _binary()["y"].to_numpy())
    assert min(m for m in bins["mean_prob"] if np.isfinite(m)) < 0.5
    shown = sorted(int(t.get_text()) for t in counts.texts)
    assert shown == sorted(c for c in bins["count"] if c) and sum(shown) == 200
    assert counts.get_ylabel() == "samples per bin"
    # every figure has a caption sentence, stored in its PNG too
    for _, name, cap in figures:
        assert cap.endswith(".") and figure_caption(tmp_path / name) == cap


def test_many_classes_get_small_multiples_with_a_macro_panel(tmp_path, captured):
    _results, _ = _draw(_multiclass(k=6), tmp_path, "probs")
    fig, caption = captured["roc.png"]
    panels = [ax for ax in fig.axes if ax.get_title() and ax.get_title() != "zoom"]
    titles = [ax.get_title() for ax in panels]
    assert titles[0] == "macro average" and titles[1:] == [f"class {c}" for c in range(6)]
    for ax in panels:
        (box,) = [t for t in ax.texts if "AUC" in t.get_text()]
        assert "95% CI" in box.get_text()
    assert all(_has_op_marker(ax) for ax in panels[1:])  # the argmax decision, one-vs-rest
    assert "argmax" in fig._suptitle.get_text()
    assert caption.startswith("One panel per curve")

    fig, caption = captured["reliability.png"]
    assert "top-label" in fig.axes[0].get_title() and "multi-class" in fig.axes[0].get_title()
    assert "top-label" in caption.lower()


def test_more_classes_than_panels_shows_the_hardest(tmp_path, captured, monkeypatch):
    monkeypatch.setattr(plots, "MAX_PANELS", 4)
    results, _ = _draw(_multiclass(k=6, seed=3), tmp_path, "probs")
    fig, _ = captured["roc.png"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("class")]
    aucs = {c: v["value"] for c, v in results["metrics"]["auc"].items() if c != "macro"}
    hardest = sorted(aucs, key=aucs.get)[:3]
    assert titles == [f"class {c}" for c in hardest]
    assert "lowest-AUC" in fig._suptitle.get_text()


def test_few_classes_share_one_axes(tmp_path, captured):
    _draw(_multiclass(k=3), tmp_path, "probs")
    fig, _ = captured["roc.png"]
    texts = _legend_texts(fig.axes[0])
    assert sum("AUC" in t for t in texts) == 3 and any("operating point" in t for t in texts)


def test_analyze_report_md_captions_every_figure(tmp_path):
    analyze(_binary(), score="p", label="y", ci=50, rng=Rng(0), out=tmp_path / "a")
    md = (tmp_path / "a" / "report.md").read_text()
    blocks = md.split("\n### ")[1:]
    assert len(blocks) == 3
    for block in blocks:
        lines = [x for x in block.splitlines() if x.strip()]
        assert lines[1].startswith("![") and lines[2].endswith("."), block


def _metrics_csv(folder: pathlib.Path):
    rows = []
    for e in range(1, 6):
        auc = [0.7, 0.8, 0.9, 0.85, 0.88][e - 1]
        rows.append({"mode": "train", "epoch": e, "losses.total_loss": 1 / e, "metrics.auc.macro": auc + 0.05})
        rows.append({"mode": "validation", "epoch": e, "losses.total_loss": 1.2 / e, "metrics.auc.macro": auc})
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_csv(folder / "metrics.csv")
    (folder / "run.json").write_text('{"config": {"best": ["validation.metrics.auc.macro"]}}')
    return folder / "metrics.csv"


def test_training_curves_are_titled_labelled_and_mark_the_best_epoch(tmp_path, monkeypatch):
    csv = _metrics_csv(tmp_path / "model")
    figs = []
    real = recipe_report._save
    monkeypatch.setattr(recipe_report, "_save", lambda fig, *a, **k: figs.append(fig) or real(fig, *a, **k))
    path = recipe_report.curves_figure(csv, tmp_path / "curves.png", ("losses.total_loss", "metrics.auc.macro"))
    (fig,) = figs
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["total loss", "ROC AUC (macro)"]
    assert [ax.get_ylabel() for ax in axes] == ["total loss", "ROC AUC (macro)"]
    assert all(ax.get_xlabel() == "epoch" for ax in axes)
    for ax in axes:
        (vline,) = [ln for ln in ax.get_lines() if ln.get_label() == "best epoch 3"]
        assert list(vline.get_xdata()) == [3, 3]
        assert "best epoch 3" in _legend_texts(ax)
    assert "highest validation ROC AUC (macro)" in fig._suptitle.get_text()
    caption = figure_caption(path)
    assert "best epoch, 3" in caption and caption.endswith(".")
    # a loss is minimized
    assert recipe_report.best_epoch(pl.read_csv(csv), "validation.losses.total_loss", "min")[0] == 5


def test_recipe_report_embeds_each_figure_with_its_caption(tmp_path):
    csv = _metrics_csv(tmp_path / "model")
    curves = recipe_report.curves_figure(csv, tmp_path / "r" / "curves.png", ("losses.total_loss",))
    report = recipe_report.write_report(tmp_path / "r" / "report.md", "T", [("AUC", 0.9)], figures=[("curves", curves)])
    text = report.read_text()
    assert "### curves\n\n![curves](curves.png)\n\nTraining (blue) and validation (orange) total loss" in text


def test_prediction_grid_shows_the_errors_first_with_probabilities(tmp_path, monkeypatch):
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.45, 0.4, 0.15], [0.3, 0.3, 0.4]])
    labels = np.array([0, 0, 2, 1, 2])  # errors: 1 (pred 1 at 0.7) and 3 (pred 0 at 0.45)
    img = np.zeros((1, 8, 8), np.float32)
    samples = [{"data": {"sample_id": f"c{i}", "input": {"img": img}}} for i in range(5)]
    saved = []
    monkeypatch.setattr(visualize, "save_figure", lambda fig, path, **kw: saved.append((fig, kw)) or path)
    visualize.show_predictions(samples, tmp_path / "g.png", probs=probs, labels=labels, class_names=["a", "b", "c"])
    fig, kw = saved[0]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("ERROR  c1") and "true a · pred b · P(b) 0.70, P(a) 0.20" in titles[0]
    assert titles[1].startswith("ERROR  c3")
    assert not any(t.startswith("ERROR") for t in titles[2:])
    # then the correct cases, least confident first
    assert [t.split("\n")[0] for t in titles[2:]] == ["c4", "c2", "c0"]
    assert fig.axes[0].title.get_color() == "tab:red"
    assert "2 of 5 cases misclassified" in fig._suptitle.get_text() and "errors first" in kw["caption"]


def test_binary_prediction_grid_uses_the_threshold():
    order = visualize.prediction_order(np.array([0.2, 0.9, 0.6, 0.4]), np.array([1, 1, 0, 0]), threshold=0.5)
    assert order.tolist() == [0, 2, 3, 1]  # errors: P(1)=0.2 (conf 0.8) then 0.6 (conf 0.6)
