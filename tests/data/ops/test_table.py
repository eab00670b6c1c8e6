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


NULLS = pl.DataFrame({"sample_id": ["a", "b"], "dx": ["benign", None], "flag": [True, None], "n": [3, None]})


@pytest.mark.parametrize("column", ["dx", "flag", "n"])
def test_null_cell_of_any_column_raises(column):
    op = ops.TableRow(table=NULLS, columns={column: f"data.gt.{column}"})
    with pytest.raises(
        SampleError, match=f"sample 'b', op TableRow, key 'data.gt.{column}': column '{column}' is missing"
    ):
        op(s("b"))


def test_null_cells_come_through_as_none_and_keep_their_type():
    op = ops.TableRow(table=NULLS, gt_columns=("dx", "flag", "n"), allow_missing_values=True)
    assert op(s("a"))["data"]["gt"] == {"dx": "benign", "flag": True, "n": 3}
    assert op(s("b"))["data"]["gt"] == {"dx": None, "flag": None, "n": None}
    # a real value equal to the old placeholder is not a null, and the fingerprint tells them apart
    empty = NULLS.with_columns(pl.Series("dx", ["benign", ""]))
    assert ops.TableRow(table=empty, columns={"dx": "data.gt.dx"})(s("b"))["data"]["gt"]["dx"] == ""
    assert fingerprint(ops.TableRow(table=NULLS)) != fingerprint(ops.TableRow(table=empty))


def test_null_float_cell_stays_nan():
    frame = pl.DataFrame({"sample_id": ["a"], "age": [None]}, schema={"sample_id": pl.String, "age": pl.Float64})
    assert math.isnan(ops.TableRow(table=frame, allow_missing_values=True)(s("a"))["data"]["input"]["age"])
    with pytest.raises(SampleError, match="column 'age' is missing"):
        ops.TableRow(table=frame)(s("a"))


def test_null_id_and_csv_ids_as_text(tmp_path):
    with pytest.raises(ConfigError, match="1 rows have no 'sample_id'"):
        ops.Table.from_frame(pl.DataFrame({"sample_id": ["a", None], "v": [1, 2]}))
    (tmp_path / "t.csv").write_text("sample_id,label\n001,0\n002,\n")
    op = ops.TableRow(table=tmp_path / "t.csv", gt_columns=("label",))
    assert op(s("001"))["data"]["gt"] == {"label": 0}
    with pytest.raises(SampleError, match="sample '002'.*column 'label' is missing"):
        op(s("002"))


def test_a_path_table_is_loaded_once_per_op_outside_its_configuration(tmp_path):
    import pickle

    FRAME.write_csv(tmp_path / "t.csv")
    op = ops.TableRow(table=tmp_path / "t.csv", columns={}, gt_columns=("label",))
    before = fingerprint(op)
    assert op(s("a"))["data"]["gt"]["label"] == 1
    assert op._table() is op._table()  # read once
    assert fingerprint(op) == before and op == ops.TableRow(table=tmp_path / "t.csv", columns={}, gt_columns=("label",))
    again = pickle.loads(pickle.dumps(op))
    assert again == op and again(s("b"))["data"]["gt"]["label"] == 0
