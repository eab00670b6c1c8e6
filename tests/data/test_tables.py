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
    with pytest.raises(FusefnError, match="cannot read .*bad.parquet: not a Parquet file"):
        read_table(tmp_path / "bad.parquet")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(FusefnError, match="empty.csv: the file is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "bin.csv").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    with pytest.raises(FusefnError, match="bin.csv: binary"):
        read_table(tmp_path / "bin.csv")
    df.write_parquet(tmp_path / "pq.csv")
    with pytest.raises(FusefnError, match="pq.csv: a Parquet file"):
        read_table(tmp_path / "pq.csv")


def test_semicolon_tables_with_decimal_commas_are_read_as_numbers(tmp_path):
    """What a spreadsheet in a comma-decimal locale saves as "CSV"."""
    (tmp_path / "excel.csv").write_text("id;score;label\na;0,25;0\nb;0,75;1\nc;1;1\n")
    df = read_table(tmp_path / "excel.csv")
    assert df["score"].to_list() == [0.25, 0.75, 1.0] and df["label"].to_list() == [0, 1, 1]
    (tmp_path / "semi.csv").write_text("id;score\na;0.5\n")  # semicolons, decimal points
    assert read_table(tmp_path / "semi.csv")["score"].to_list() == [0.5]
    (tmp_path / "comma.csv").write_text('id,note\na,"x;y;z"\n')  # a semicolon inside a value does not count
    assert read_table(tmp_path / "comma.csv")["note"].to_list() == ["x;y;z"]


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
