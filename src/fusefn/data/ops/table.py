"""A row of a CSV/Parquet table (or in-memory frame) into ``data.*`` fields, looked up by sample id.

The FuseMedML guide's ProcessorCSV / ProcessorDataFrame / "with ground truth" processors:
plain columns go to ``data.input.<col>`` and ground-truth columns to
``data.gt.<col>``, or each column to the key named in ``columns``.

>>> import polars as pl
>>> frame = pl.DataFrame({"sample_id": ["a", "b"], "age": [61, 47], "label": [1, 0]})
>>> row = TableRow(table=frame, gt_columns=("label",))
>>> row({"data": {"sample_id": "b"}})["data"]
{'sample_id': 'b', 'input': {'age': 47}, 'gt': {'label': 0}}
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
from collections.abc import Mapping

import attrs
import numpy as np
import polars as pl

from fusefn import nd
from fusefn.core import record
from fusefn.data.ops._base import fail, sample_id
from fusefn.errors import ConfigError

__all__ = ["Table", "TableRow"]


@record
class Table:
    """An immutable column store keyed by an id column; its fingerprint covers the values.

    ``nulls`` maps a column to its boolean null mask, for the columns whose nulls are kept apart
    from the values (every non-float column that has any): :meth:`row` gives ``None`` there.
    Float columns hold their nulls as NaN.
    """

    columns: dict = attrs.field(eq=False, repr=False)
    id_column: str = "sample_id"
    nulls: dict = attrs.field(factory=dict, eq=False, repr=False)
    _index: dict = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        ids = self.columns[self.id_column].tolist()
        index = {i: n for n, i in enumerate(ids)}
        if len(index) != len(ids):
            raise ConfigError(f"Table: duplicate ids in column {self.id_column!r}")
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, id_column: str = "sample_id") -> Table:
        if id_column not in frame.columns:
            raise ConfigError(f"Table: id column {id_column!r} not in columns {frame.columns}")
        n_null_ids = frame.get_column(id_column).null_count()
        if n_null_ids:
            raise ConfigError(f"Table: {n_null_ids} rows have no {id_column!r}")
        cols, nulls = {}, {}
        for name in frame.columns:
            s = frame.get_column(name)
            if s.null_count() and not s.dtype.is_float():
                nulls[name] = s.is_null().to_numpy()
                # a placeholder of the column's own type keeps ints ints and bools bools
                # (to_numpy would make them float/object); the mask marks the cell missing
                with contextlib.suppress(pl.exceptions.PolarsError):
                    s = s.fill_null(strategy="zero")
            arr = s.to_numpy()
            if arr.dtype == object:
                # fixed-width unicode hashes by value (object arrays would hash pointers)
                arr = np.array([str(v) if v is not None else "" for v in s.to_list()])
            cols[name] = arr
        return cls(columns=cols, id_column=id_column, nulls=nulls)

    def row(self, sid) -> dict | None:
        n = self._index.get(sid)
        if n is None:
            return None
        return {
            k: None if k in self.nulls and self.nulls[k][n] else _py(v[n])
            for k, v in self.columns.items()
            if k != self.id_column
        }


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def _as_table(value):
    if isinstance(value, Table):
        return value
    if isinstance(value, pl.DataFrame):
        return value  # converted in __attrs_post_init__, which knows id_column
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    try:
        return pl.from_pandas(value)
    except Exception as exc:
        raise ConfigError(f"TableRow.table must be a path, a polars/pandas frame or a Table, got {value!r}") from exc


@record
class TableRow:
    """Write the columns of the table row whose ``id_column`` equals the sample id.

    Args:
        table: CSV/Parquet path, a frame, or a :class:`Table`. A path is read on the first call, once per
            op and process (the loaded table is not part of the configuration and is not pickled).
        columns: ``{column: key}``; ``None`` means every other column to ``data.input.<col>``.
        gt_columns: columns that go to ``data.gt.<col>`` instead (ground truth).
        allow_missing_values: when False a null/NaN cell raises, naming the sample and column;
            when True it comes through as ``None`` (NaN in a float column).
    """

    table: object = attrs.field(converter=_as_table, repr=False)
    id_column: str = "sample_id"
    columns: Mapping | None = None
    gt_columns: tuple = attrs.field(default=(), converter=tuple)
    allow_missing_values: bool = False
    # the file's (mtime, size) when the op was made: part of the fingerprint, so an edited table
    # gets a new cache store instead of serving stale values
    _stamp: tuple | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self):
        if isinstance(self.table, str):
            with contextlib.suppress(OSError):
                st = os.stat(self.table)
                object.__setattr__(self, "_stamp", (st.st_mtime_ns, st.st_size))
        if isinstance(self.table, pl.DataFrame):
            object.__setattr__(self, "table", Table.from_frame(self.table, self.id_column))
        if isinstance(self.table, Table):
            names = set(self.table.columns)
            wanted = set(self.columns or ()) | set(self.gt_columns)
            missing = sorted(wanted - names)
            if missing:
                raise ConfigError(f"TableRow: columns {missing} not in the table ({sorted(names)})")

    @functools.cached_property
    def _loaded(self) -> Table:
        return _load(self.table, self.id_column)

    def _table(self) -> Table:
        if isinstance(self.table, Table):
            return self.table
        return self._loaded

    def _targets(self, row: dict) -> dict:
        if self.columns is not None:
            out = {c: k for c, k in self.columns.items()}
        else:
            out = {c: f"data.input.{c}" for c in row if c not in self.gt_columns}
        out.update({c: f"data.gt.{c}" for c in self.gt_columns})
        return out

    def __call__(self, sample: Mapping) -> dict:
        sid = sample_id(sample)
        try:
            table = self._table()
        except Exception as exc:
            raise fail(sample, self, None, f"cannot read table {self.table}: {exc}") from exc
        row = table.row(sid)
        if row is None:
            raise fail(sample, self, None, f"no row with {self.id_column}={sid!r} in the table")
        updates = {}
        for col, key in self._targets(row).items():
            if col not in row:
                raise fail(sample, self, key, f"column {col!r} not in the table")
            v = row[col]
            if not self.allow_missing_values and (v is None or (isinstance(v, float) and np.isnan(v))):
                raise fail(sample, self, key, f"column {col!r} is missing (null/NaN)")
            updates[key] = v
        return nd.assoc_many(sample, updates)


def _load(path: str, id_column: str) -> Table:
    p = pathlib.Path(path)
    if p.suffix in (".parquet", ".pq"):
        frame = pl.read_parquet(p)
    else:
        # ids as text, as DataSource.from_csv reads them: ``001`` must stay ``001``
        frame = pl.read_csv(p, schema_overrides={id_column: pl.String})
    return Table.from_frame(frame, id_column)
