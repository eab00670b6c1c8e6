"""``analyze(task="multilabel")``: per-label / macro / micro values equal scikit-learn, report, figure, errors."""

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from fusefn import Rng
from fusefn.analyze import analyze
from fusefn.analyze.task_plots import plot_multilabel_roc
from fusefn.cli import analyze_command
from fusefn.errors import ConfigError
from fusefn.metrics import Bootstrap, MultiLabelAUC

NAMES = ("mass", "calcification", "distortion")


def _data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.5, 0.2]).astype(int)
    s = np.round(np.clip(0.5 * y + rng.random((n, 3)) * 0.7, 0, 1), 2)  # two decimals: tied scores
    return s, y


def _frame(s, y):
    cols = {"id": [f"c{i}" for i in range(len(s))]}
    cols.update({f"{n}-score": s[:, j] for j, n in enumerate(NAMES)})
    cols.update({f"{n}-target": y[:, j] for j, n in enumerate(NAMES)})
    return pl.DataFrame(cols)


def _columns():
    return [f"{n}-score" for n in NAMES], [f"{n}-target" for n in NAMES]


def test_values_equal_sklearn():
    s, y = _data()
    score, label = _columns()
    r = analyze(_frame(s, y), score=score, label=label, ci=0)  # auto: several label columns
    assert r["task"] == "multilabel" and r["class_names"] == list(NAMES)
    m = r["metrics"]
    for j, name in enumerate(NAMES):
        assert m["auc"][name]["value"] == pytest.approx(skm.roc_auc_score(y[:, j], s[:, j]), abs=1e-9)
        assert m["average_precision"][name]["value"] == pytest.approx(
            skm.average_precision_score(y[:, j], s[:, j]), abs=1e-9
        )
        dec = (s[:, j] >= 0.5).astype(int)
        assert m["sensitivity"][name]["value"] == pytest.approx(skm.recall_score(y[:, j], dec), abs=1e-9)
        assert m["specificity"][name]["value"] == pytest.approx(skm.recall_score(y[:, j], dec, pos_label=0), abs=1e-9)
    for avg in ("macro", "micro"):
        assert m["auc"][avg]["value"] == pytest.approx(skm.roc_auc_score(y, s, average=avg), abs=1e-9)
        assert m["average_precision"][avg]["value"] == pytest.approx(
            skm.average_precision_score(y, s, average=avg), abs=1e-9
        )
    dec = (s >= 0.5).astype(int)
    assert m["sensitivity"]["micro"]["value"] == pytest.approx(skm.recall_score(y, dec, average="micro"), abs=1e-9)
    assert r["class_counts"] == {n: int(y[:, j].sum()) for j, n in enumerate(NAMES)}


def test_list_columns_and_threshold_give_the_same_as_columns():
    s, y = _data()
    score, label = _columns()
    lists = pl.DataFrame({"id": [f"c{i}" for i in range(len(s))], "probs": s.tolist(), "labels": y.tolist()})
    a = analyze(_frame(s, y), score=score, label=label, ci=0, threshold=0.3)
    b = analyze(lists, task="multilabel", score="probs", label="labels", class_names=NAMES, ci=0, threshold=0.3)
    assert a["metrics"] == b["metrics"]
    assert b["metrics"]["sensitivity"]["mass"]["value"] == pytest.approx(
        skm.recall_score(y[:, 0], (s[:, 0] >= 0.3).astype(int)), abs=1e-9
    )


def test_intervals_resample_whole_cases():
    s, y = _data()
    score, label = _columns()
    r = analyze(_frame(s, y), score=score, label=label, ci=200, rng=Rng(2))
    alone = Bootstrap(MultiLabelAUC(pred="s", target="y", label_names=NAMES), n=200, rng=Rng(2))
    want = alone.compute(alone.update(alone.init(), {"s": s, "y": y}))
    for name in (*NAMES, "macro", "micro"):
        assert r["metrics"]["auc"][name]["lower"] == pytest.approx(want[name]["lower"], abs=1e-12)


def test_report_table_and_figure(tmp_path):
    s, y = _data()
    score, label = _columns()
    out = tmp_path / "ml"
    r = analyze(_frame(s, y), score=score, label=label, ci=100, out=out)
    md = (out / "report.md").read_text()
    assert "## Multi-label" in md and "| **macro** |" in md and "| **micro** |" in md
    assert f"| mass | {int(y[:, 0].sum())} / 90 |" in md
    assert "(roc_per_label.png)" in md
    assert json.loads((out / "metrics.json").read_text())["metrics"]["auc"]["macro"]["value"] == pytest.approx(
        r["metrics"]["auc"]["macro"]["value"]
    )
    curves = {n: {"fpr": np.array([0, 0.5, 1.0]), "tpr": np.array([0, 0.8, 1.0])} for n in NAMES}
    fig = plot_multilabel_roc(curves, r["metrics"]["auc"], None)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == list(NAMES)
    assert all(ax.get_xlabel() == "false positive rate" and ax.get_legend() is not None for ax in panels)
    assert panels[0].get_legend().get_texts()[0].get_text().startswith("AUC ")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": ["mass-target", "calcification-target"]}, r"3 scores per case .* but 2 targets per case"),
        ({"class_names": ["a", "b"]}, r"2 label names for 3 labels"),
    ],
)
def test_bad_input_is_one_clear_line(kwargs, message):
    s, y = _data(20)
    score, label = _columns()
    with pytest.raises(ConfigError, match=message):
        analyze(_frame(s, y), task="multilabel", **{"score": score, "label": label, "ci": 0, **kwargs})


def test_targets_must_be_zero_or_one_and_scores_probabilities():
    s, y = _data(20)
    y[4, 1] = 2
    score, label = _columns()
    with pytest.raises(ConfigError, match=r"case 'c4' has 2 for label 'calcification', not 0 or 1"):
        analyze(_frame(s, y), score=score, label=label, ci=0)
    s, y = _data(20)
    s[3, 0] = 1.7
    with pytest.raises(ConfigError, match=r"case 'c3' has .* outside \[0, 1\]"):
        analyze(_frame(s, y), score=score, label=label, ci=0)
    logits = analyze(_frame(s, y), score=score, label=label, ci=0, scores="logits")
    assert logits["metrics"]["auc"]["mass"]["value"] == pytest.approx(skm.roc_auc_score(y[:, 0], s[:, 0]))


def test_cli(tmp_path):
    s, y = _data()
    path = tmp_path / "ml.csv"
    _frame(s, y).write_csv(path)
    score, label = _columns()
    args = ["--pred", str(path), "--ci", "50", "--out", str(tmp_path / "o")]
    for c in score:
        args += ["--score", c]
    for c in label:
        args += ["--label", c]
    res = CliRunner().invoke(analyze_command, args)
    assert res.exit_code == 0, res.output
    assert "auc.macro" in res.output and (tmp_path / "o" / "roc_per_label.png").is_file()
