"""The pieces the table recipes (``diabetes``, ``gbsg2``) share: a table written to disk and read back, one vector.

A recipe on a table a package ships writes it once to ``OUT/data/<name>.parquet``; from there on
it is an ordinary user table: :class:`fusefn.data.DataSource` reads its ids, :class:`fusefn.data.ops.TableRow`
reads each sample's row, and :class:`StackColumns` gathers the feature columns into one vector that
:class:`~fusefn_recipes.breast_cancer.Standardize` scales with statistics of the training folds only.

>>> import polars as pl
>>> frame = pl.DataFrame({"sample_id": ["a", "b"], "x": [1.0, 2.0], "z": [0.5, 0.0], "y": [3.0, 4.0]})
>>> static = feature_pipeline(frame, ("x", "z"), {"y": "data.gt.y"})
>>> s = static({"data": {"sample_id": "b"}})
>>> s["data"]["input"]["features"].tolist(), s["data"]["gt"]["y"]
([2.0, 0.0], 4.0)
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import attrs
import numpy as np
import polars as pl
import torch

from fusefn import chain, keys, nd, record
from fusefn import validators as v
from fusefn._atomic import atomic_path
from fusefn.data import DataSource
from fusefn.data.ops import TableRow
from fusefn.errors import FusefnError, SampleError
from fusefn.recipe import RecipeInputError

__all__ = ["FEATURES", "StackColumns", "ZScore", "feature_pipeline", "write_table", "read_source"]

FEATURES = "data.input.features"  # the table recipes' own key: the feature vector


def write_table(frame: pl.DataFrame, path: str | pathlib.Path) -> pathlib.Path:
    """``frame`` written to ``path`` (Parquet, or CSV for ``.csv``) atomically: a killed run leaves no half file."""
    path = pathlib.Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            frame.write_csv(tmp)
        else:
            frame.write_parquet(tmp)
    return path


def read_source(path: str | pathlib.Path, need: tuple[str, ...]) -> DataSource:
    """The :class:`DataSource` of the table at ``path`` (CSV or Parquet); a one-line error when columns are missing."""
    path = pathlib.Path(path)
    try:
        src = DataSource.from_csv(path) if path.suffix == ".csv" else DataSource.from_parquet(path)
    except FusefnError as e:
        raise RecipeInputError(f"{path}: {e}") from None
    missing = [c for c in need if c not in src.frame.columns]
    if missing:
        raise RecipeInputError(f"{path}: missing columns {missing} (has {', '.join(src.frame.columns)})")
    return src


@record
class StackColumns:
    """Per-sample op: the numbers at the keys ``columns`` as one float32 vector at ``out`` (those keys are dropped)."""

    columns: tuple = attrs.field(converter=tuple, validator=v.keys)
    out: str = attrs.field(default=FEATURES, validator=v.key)

    def __call__(self, sample: Mapping) -> dict:
        values = [nd.get(sample, k) for k in self.columns]
        x = np.asarray(values, dtype=np.float32)
        if not np.isfinite(x).all():
            bad = self.columns[int(np.flatnonzero(~np.isfinite(x))[0])]
            raise SampleError(
                "NaN or infinite value", sample_id=nd.get(sample, keys.SAMPLE_ID), op="StackColumns", key=bad
            )
        for k in self.columns:
            sample = nd.dissoc(sample, k)
        return nd.assoc(sample, self.out, torch.from_numpy(x))


@record
class ZScore:
    """Per-sample op: the number at ``key`` as ``(x - mean) / std`` at ``out`` (a regression target the loss sees)."""

    key: str = attrs.field(validator=v.key)
    out: str = attrs.field(validator=v.key)
    mean: float = 0.0
    std: float = attrs.field(default=1.0, validator=v.gt(0))

    def __call__(self, sample: Mapping) -> dict:
        return nd.assoc(sample, self.out, (float(nd.get(sample, self.key)) - self.mean) / self.std)


def feature_pipeline(table, features: tuple, targets: Mapping[str, str], *, standardize_on=None):
    """Read a row of ``table`` (path or frame), stack ``features`` at :data:`FEATURES`, write ``targets`` (column → key).

    With ``standardize_on`` (the frame of the training rows), the features are standardized with its statistics.
    """
    from fusefn_recipes.breast_cancer import Standardize

    inputs = {c: f"data.input.columns.{c}" for c in features}
    ops = [TableRow(table=table, columns={**inputs, **targets}), StackColumns(columns=tuple(inputs.values()))]
    if standardize_on is not None:
        ops.append(Standardize.fit(standardize_on.select(features).to_numpy().astype(np.float64)))
    return chain(*ops)
