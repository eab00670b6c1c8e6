"""Operating points in the binary analysis: found with intervals, or found on validation and applied to test."""

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from fusefn import Rng
from fusefn.analyze import analyze
from fusefn.analyze.task_operating import parse_operating_point
from fusefn.cli import analyze_command
from fusefn.errors import ConfigError
from fusefn.metrics import Bootstrap, SensitivityAtSpecificity, YoudenJ, evaluate


def _frame(n=100, seed=0, shift=1.2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(1 / (1 + np.exp(-(rng.normal(size=n) + shift * (y - 0.5)))), 2)
    return pl.DataFrame({"id": [f"c{i}" for i in range(n)], "score": s, "label": y})


def _sk_youden(y, s):
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    return thr[int(np.argmax(j))], tpr[int(np.argmax(j))], 1 - fpr[int(np.argmax(j))]


def test_points_found_here_with_intervals():
    df = _frame()
    s, y = df["score"].to_numpy(), df["label"].to_numpy()
    r = analyze(df, score="score", label="label", operating_point=["youden", "sens@spec=0.9"], ci=300, rng=Rng(4))
    points = r["metrics"]["operating_points"]
    thr, sens, spec = _sk_youden(y, s)
    assert points["youden"]["threshold"]["value"] == pytest.approx(thr)
    assert points["youden"]["sensitivity"]["value"] == pytest.approx(sens, abs=1e-9)
    assert points["youden"]["specificity"]["value"] == pytest.approx(spec, abs=1e-9)
    # the intervals are Bootstrap's, stratified by the target, from the same stream
    alone = Bootstrap(SensitivityAtSpecificity(pred="s", target="y", specificity=0.9), n=300, rng=Rng(4), stratify="y")
    want = alone.compute(alone.update(alone.init(), {"s": s, "y": y}))
    got = points["sens@spec=0.9"]
    assert got["sensitivity"]["lower"] == pytest.approx(want["sensitivity"]["lower"], abs=1e-12)
    assert got["specificity"]["value"] >= 0.9
    # the decision threshold is not moved by points found on the data analyzed
    assert r["settings"]["threshold"] == 0.5


def test_threshold_from_validation_is_applied_and_reported(tmp_path):
    val, test = _frame(seed=1), _frame(seed=2)
    vs, vy = val["score"].to_numpy(), val["label"].to_numpy()
    thr, _, _ = _sk_youden(vy, vs)
    out = tmp_path / "a"
    r = analyze(test, score="score", label="label", threshold_from=val, ci=100, out=out)
    assert r["settings"]["threshold"] == pytest.approx(thr)
    assert r["settings"]["threshold_from"]["operating_point"] == "youden"
    ts, ty = test["score"].to_numpy(), test["label"].to_numpy()
    dec = (ts >= thr).astype(int)
    assert r["metrics"]["operating_point"]["sensitivity"]["value"] == pytest.approx(skm.recall_score(ty, dec))
    assert r["metrics"]["accuracy"]["value"] == pytest.approx(skm.accuracy_score(ty, dec))
    md = (out / "report.md").read_text()
    assert f"- **decision threshold**: {thr:g} — chosen on the validation predictions <frame>" in md
    assert "Youden" in md
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["settings"]["threshold_from"]["validation"]["threshold"] == pytest.approx(thr)


def test_threshold_from_a_file_at_a_fixed_specificity(tmp_path):
    val, test = _frame(seed=1), _frame(seed=2)
    path = tmp_path / "val.csv"
    val.write_csv(path)
    r = analyze(test, score="score", label="label", threshold_from=path, operating_point="spec@sens=0.95", ci=0)
    want = evaluate(
        {"p": parse_operating_point("spec@sens=0.95")}, {"pred": val["score"].to_numpy(), "target": val["label"]}
    )
    assert r["settings"]["threshold"] == want["p"]["threshold"]
    assert (
        str(path) in r["settings"]["threshold_rule"]
        and "sensitivity of at least 0.95" in (r["settings"]["threshold_rule"])
    )


def test_youden_metric_equals_its_record():
    df = _frame()
    r = analyze(df, score="score", label="label", operating_point="youden", ci=0)
    m = YoudenJ(pred="score", target="label")
    want = m.compute(m.update(m.init(), {"score": df["score"].to_numpy(), "label": df["label"].to_numpy()}))
    assert {k: v["value"] for k, v in r["metrics"]["operating_points"]["youden"].items()} == want


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"operating_point": "sens@0.9"}, r"operating point 'sens@0.9': write youden, sens@spec=X"),
        ({"operating_point": "sens@spec=1.5"}, r"must be in \(0, 1\)"),
        ({"operating_point": "sens@sens=0.5"}, r"write youden"),
        ({"threshold": 0.3, "threshold_from": "x.csv"}, r"either threshold= .* or threshold_from="),
    ],
)
def test_bad_operating_points(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        analyze(_frame(), score="score", label="label", ci=0, **kwargs)


def test_multiclass_has_no_operating_points():
    df = pl.DataFrame({"id": list("abcdef"), "p": [[0.8, 0.1, 0.1]] * 3 + [[0.1, 0.1, 0.8]] * 3, "y": [0, 1, 2] * 2})
    with pytest.raises(ConfigError, match="operating points are for binary scores"):
        analyze(df, score="p", label="y", operating_point="youden", ci=0)
    with pytest.raises(ConfigError, match="task='binary' but the scores give 3 classes"):
        analyze(df, score="p", label="y", task="binary", ci=0)


def test_cli(tmp_path):
    val, test = tmp_path / "val.csv", tmp_path / "test.csv"
    _frame(seed=1).write_csv(val)
    _frame(seed=2).write_csv(test)
    args = ["--pred", str(test), "--score", "score", "--label", "label", "--ci", "50", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(
        analyze_command, [*args, "--threshold-from", str(val), "--operating-point", "sens@spec=0.9"]
    )
    assert res.exit_code == 0, res.output
    assert "chosen on the validation predictions" in res.output
    assert "operating_points.sens@spec=0.9.sensitivity" in res.output


def _inference(path, frame):
    s = frame["score"].to_numpy()
    pl.DataFrame(
        {"sample_id": frame["id"], "probs": np.stack([1 - s, s], axis=1).tolist(), "label": frame["label"]}
    ).write_parquet(path)


def test_a_recipe_chooses_the_threshold_on_its_validation_predictions(tmp_path):
    import inspect

    from fusefn.recipe import Run, classify
    from fusefn.recipe.analysis import validation_file
    from fusefn.recipe.report import classification_report

    if "analyze_options" not in inspect.signature(classification_report).parameters:
        pytest.skip("fusefn.recipe.report.classification_report does not forward analyze_options yet")
    run = Run(name="toy", out=tmp_path, hp={"n_boot": 50})
    run.infer_file.parent.mkdir(parents=True)
    val, test = _frame(seed=1), _frame(seed=2)
    _inference(run.infer_file, test)
    classify(run, threshold=0.5)  # a fixed threshold: nothing tuned
    settings = json.loads((run.report_dir / "analysis" / "metrics.json").read_text())["settings"]
    assert settings["threshold"] == 0.5 and "not tuned" in settings["threshold_rule"]
    _inference(validation_file(run), val)
    classify(run)
    settings = json.loads((run.report_dir / "analysis" / "metrics.json").read_text())["settings"]
    assert settings["threshold"] == pytest.approx(_sk_youden(val["label"].to_numpy(), val["score"].to_numpy())[0])
    md = (run.report_dir / "analysis" / "report.md").read_text()
    assert f"chosen on the validation predictions {validation_file(run)}" in md
