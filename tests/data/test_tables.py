"""fusefn.data.tables: prediction tables read, concatenated per fold, joined on an id, turned into batch_dicts."""

import numpy as np
import polars as pl
import pytest

from fusefn.data import frame_to_batch, load_predictions, read_table
from fusefn.errors import FusefnError, SampleError


def test_read_table_by_suffix_and_errors_name_the_file(tmp_path):
    df = pl.DataFrame({"id": ["a", "b"], "score": [0.25, 0.75]})
    df.write_csv(tmp_path / "p.csv")
    df.write_csv(tmp_path / "p.tsv", separator="\t")
    df.write_parquet(tmp_path / "p.parquet")
    for name in ("p.csv", "p.tsv", "p.parquet"):
        assert read_table(tmp_path / name).equals(df), name
    with pytest.raises(FusefnError, match="file not found"):
        read_table(tmp_path / "none.csv")
    (tmp_path / "p.xlsx").write_bytes(b"x")
    with pytest.raises(FusefnError, match=r"unknown table format '\.xlsx'"):
        read_table(tmp_path / "p.xlsx")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(FusefnError, match="cannot read .*bad.parquet"):
        read_table(tmp_path / "bad.parquet")


def test_fold_files_get_a_fold_column_and_targets_are_joined_in_prediction_order(tmp_path):
    pl.DataFrame({"id": ["a", "b"], "s": [0.1, 0.2]}).write_csv(tmp_path / "f0.csv")
    pl.DataFrame({"id": ["c"], "s": [0.3]}).write_csv(tmp_path / "f1.csv")
    target = pl.DataFrame({"id": ["c", "b", "a"], "y": [1, 0, 1]})
    df = load_predictions([tmp_path / "f0.csv", tmp_path / "f1.csv"], target, id="id")
    assert df["id"].to_list() == ["a", "b", "c"]
    assert df["fold"].to_list() == [0, 0, 1] and df["y"].to_list() == [1, 0, 1]
    with pytest.raises(SampleError, match="duplicate ids: 'a'"):
        load_predictions([tmp_path / "f0.csv", tmp_path / "f0.csv"], target, id="id")


def test_frame_to_batch_nests_dotted_columns_and_stacks_list_columns():
    df = pl.DataFrame({"sample_id": ["a", "b"], "model.head_0.probs": [[0.9, 0.1], [0.3, 0.7]], "label": [0, 1]})
    batch = frame_to_batch(df, id="sample_id")
    np.testing.assert_array_equal(batch["model"]["head_0"]["probs"], [[0.9, 0.1], [0.3, 0.7]])
    assert batch["data"]["sample_id"] == ["a", "b"] and batch["label"].tolist() == [0, 1]
    with pytest.raises(SampleError, match="different lengths"):
        frame_to_batch(pl.DataFrame({"p": [[0.1, 0.9], [1.0]]}))
