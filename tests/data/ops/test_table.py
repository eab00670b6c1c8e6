import math
import os

import polars as pl
import pytest

from fusefn.core import fingerprint
from fusefn.data import ops
from fusefn.errors import ConfigError, SampleError

FRAME = pl.DataFrame({"sample_id": ["a", "b"], "age": [61.0, math.nan], "sex": ["F", "M"], "label": [1, 0]})


def s(sid):
    return {"data": {"sample_id": sid}}


def test_row_with_ground_truth_columns():
    out = ops.TableRow(table=FRAME.drop("age"), gt_columns=("label",))(s("b"))
    assert out["data"] == {"sample_id": "b", "input": {"sex": "M"}, "gt": {"label": 0}}


def test_explicit_columns_and_csv_path(tmp_path):
    FRAME.write_csv(tmp_path / "t.csv")
    op = ops.TableRow(table=tmp_path / "t.csv", columns={"sex": "data.meta.sex"})
    assert op(s("a"))["data"]["meta"]["sex"] == "F"
    with pytest.raises(SampleError, match="sample 'zz', op TableRow.*no row with sample_id='zz'"):
        op(s("zz"))


def test_missing_value_and_missing_file(tmp_path):
    with pytest.raises(SampleError, match="sample 'b', op TableRow, key 'data.input.age'.*null/NaN"):
        ops.TableRow(table=FRAME)(s("b"))
    assert math.isnan(ops.TableRow(table=FRAME, allow_missing_values=True)(s("b"))["data"]["input"]["age"])
    with pytest.raises(SampleError, match="cannot read table"):
        ops.TableRow(table=tmp_path / "nope.csv")(s("a"))
    with pytest.raises(ConfigError, match=r"columns \['lbl'\] not in the table"):
        ops.TableRow(table=FRAME, gt_columns=("lbl",))


def test_fingerprint_follows_table_values():
    other = FRAME.with_columns(pl.Series("label", [0, 0]))
    assert fingerprint(ops.TableRow(table=FRAME)) == fingerprint(ops.TableRow(table=FRAME.clone()))
    assert fingerprint(ops.TableRow(table=FRAME)) != fingerprint(ops.TableRow(table=other))


def test_fingerprint_follows_table_file(tmp_path):
    FRAME.write_csv(tmp_path / "t.csv")
    before = fingerprint(ops.TableRow(table=tmp_path / "t.csv"))
    FRAME.with_columns(pl.Series("label", [0, 0])).write_csv(tmp_path / "t.csv")
    os.utime(tmp_path / "t.csv", ns=(1, 1))
    assert fingerprint(ops.TableRow(table=tmp_path / "t.csv")) != before
