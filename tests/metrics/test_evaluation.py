"""evaluate() over frames, CSV/Parquet files, fold files and batch streams; id checks."""

import numpy as np
import polars as pl
import pytest
import torch

from fusefn import Rng
from fusefn.errors import ConfigError, FusefnError, SampleError
from fusefn.metrics import AUCROC, Accuracy, Bootstrap, GroupBy, evaluate


@pytest.fixture
def tables(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"c{i:02d}" for i in range(20)]
    y = np.tile([0, 1], 10)
    pred = pl.DataFrame({"id": ids, "score": rng.random(20) + 0.3 * y})
    target = pl.DataFrame({"id": ids[::-1], "y": y[::-1]})  # other order: the join must align
    pred.write_csv(tmp_path / "pred.csv")
    pred.write_parquet(tmp_path / "pred.parquet")
    target.write_csv(tmp_path / "target.csv")
    return tmp_path, pred, target, y


def test_frames_files_and_streams_agree(tables):
    d, pred, target, y = tables
    metrics = {"auc": AUCROC(pred="score", target="y"), "acc": Accuracy(pred="score", target="y")}
    ref = evaluate(metrics, {"score": pred["score"].to_numpy(), "y": y})
    assert evaluate(metrics, pred.join(target, on="id")) == ref
    assert evaluate(metrics, d / "pred.csv", target=d / "target.csv", id="id") == ref
    assert evaluate(metrics, d / "pred.parquet", target=target, id="id") == ref
    stream = (
        {"score": torch.tensor(pred["score"].to_numpy()[i : i + 7]), "y": torch.tensor(y[i : i + 7])}
        for i in range(0, 20, 7)
    )
    assert evaluate(metrics, stream) == ref
    nested = evaluate({"cls": metrics}, pred.join(target, on="id"))
    assert nested == {"cls": ref}


def test_fold_files_are_concatenated_with_a_fold_column(tables):
    d, pred, _, _ = tables
    pred[:10].write_csv(d / "f0.csv")
    pred[10:].write_csv(d / "f1.csv")
    r = evaluate(
        {"auc": AUCROC(pred="score", target="y"), "by": GroupBy(Accuracy(pred="score", target="y"), by="fold")},
        [d / "f0.csv", d / "f1.csv"],
        target=d / "target.csv",
        id="id",
    )
    assert r["auc"] == evaluate(AUCROC(pred="score", target="y"), d / "pred.csv", target=d / "target.csv", id="id")
    assert set(r["by"]["groups"]) == {0, 1}


def test_id_problems_are_errors_naming_ids(tables):
    d, pred, target, _ = tables
    m = AUCROC(pred="score", target="y")
    with pytest.raises(SampleError, match="target ids have no prediction: 'c00'"):
        evaluate(m, pred[1:], target=target, id="id")
    with pytest.warns(UserWarning, match="left out"):
        evaluate(m, pred[1:], target=target, id="id", strict=False)
    with pytest.raises(SampleError, match="prediction ids have no target: 'c00'"):
        evaluate(m, pred, target=target[:-1], id="id")
    with pytest.raises(SampleError, match="duplicate ids: 'c00'"):
        evaluate(m, pl.concat([pred, pred[:1]]), target=target, id="id")
    with pytest.raises(SampleError, match="targets has duplicate ids"):
        evaluate(m, pred, target=pl.concat([target, target[:1]]), id="id")
    with pytest.raises(FusefnError, match="no id column 'key'"):
        evaluate(m, pred, target=target, id="key")
    with pytest.raises(FusefnError, match="file not found"):
        evaluate(m, d / "nope.csv", target=target, id="id")
    with pytest.raises(ConfigError, match="empty"):
        evaluate(m, iter([]))


def test_nan_score_error_names_the_sample(tables):
    _, pred, target, _ = tables
    bad = pred.with_columns(pl.when(pl.col("id") == "c05").then(None).otherwise(pl.col("score")).alias("score"))
    with pytest.raises(SampleError, match="'c05'"):
        evaluate(AUCROC(pred="score", target="y"), bad, target=target, id="id")


def test_list_column_of_probabilities(tmp_path):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), 30)
    y = np.tile([0, 1, 2], 10)
    df = pl.DataFrame({"sample_id": list(range(30)), "label": y, "model.head_0.probs": probs.tolist()})
    df.write_parquet(tmp_path / "infer.parquet")
    m = Bootstrap(AUCROC(pred="model.head_0.probs", target="label"), n=200, rng=Rng(0), stratify="label")
    r = evaluate(m, tmp_path / "infer.parquet", id="sample_id")
    direct = evaluate(AUCROC(pred="p", target="y"), {"p": probs, "y": y})
    assert r["macro"]["value"] == direct["macro"]
