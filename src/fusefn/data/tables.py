"""Prediction and target tables: CSV / Parquet files read as Polars frames, joined on an id, as batch_dicts.

What ``fusefn.train.infer`` writes, or another framework's predictions, is read
here; the metrics and the analyzer only ever see the frame or the batch_dict.
Several prediction files (one per fold) are concatenated with a ``fold`` column;
every id problem (duplicates, ids on one side only) is an error naming the ids.

>>> import polars as pl
>>> pred = pl.DataFrame({"id": ["a", "b"], "model.head_0.probs": [[0.9, 0.1], [0.2, 0.8]]})
>>> target = pl.DataFrame({"id": ["b", "a"], "label": [1, 0]})
>>> df = load_predictions(pred, target, id="id")
>>> df["label"].to_list()
[0, 1]
>>> batch = frame_to_batch(df, id="id")
>>> batch["model"]["head_0"]["probs"].shape, batch["data"]["sample_id"]
((2, 2), ['a', 'b'])
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fusefn import keys, nd
from fusefn.errors import ConfigError, FusefnError, SampleError

__all__ = ["read_table", "load_predictions", "frame_to_batch"]

_PathLike = (str, os.PathLike)


def read_table(path: str | os.PathLike) -> pl.DataFrame:
    """A CSV (``.csv``, ``.tsv``, ``.txt``) or Parquet (``.parquet``, ``.pq``) file as a Polars frame."""
    p = Path(path)
    if not p.is_file():
        raise FusefnError(f"file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(p)
        if suffix in (".csv", ".tsv", ".txt"):
            return pl.read_csv(p, separator="\t" if suffix == ".tsv" else ",")
    except Exception as e:  # polars raises many kinds; the user needs the file name
        raise FusefnError(f"cannot read {p}: {e}") from None
    raise FusefnError(f"unknown table format {suffix!r} for {p} (use .csv or .parquet)")


def _frame(obj) -> pl.DataFrame:
    if isinstance(obj, pl.DataFrame):
        return obj
    if isinstance(obj, _PathLike):
        return read_table(obj)
    raise ConfigError(f"expected a Polars DataFrame or a file path, got {type(obj).__name__}")


def _check_ids(df: pl.DataFrame, id: str, what: str) -> None:
    if id not in df.columns:
        raise FusefnError(f"{what} has no id column {id!r}; columns: {', '.join(df.columns)}")
    if df[id].null_count():
        raise SampleError(f"{what} has {df[id].null_count()} rows with an empty id", key=id)
    dup = df.filter(pl.col(id).is_duplicated())[id].unique().sort()
    if dup.len():
        shown = ", ".join(map(repr, dup.head(5).to_list()))
        raise SampleError(f"{what} has duplicate ids: {shown}{' …' if dup.len() > 5 else ''}", sample_id=dup[0], key=id)


def load_predictions(
    pred, target=None, *, id: str = "id", fold: str = "fold", strict: bool = True, check_ids: bool = True
) -> pl.DataFrame:
    """Predictions (one file/frame, or several concatenated with a ``fold`` column) joined with targets.

    Args:
        pred: a frame or path, or a sequence of them (one per fold; file ``i`` gets ``fold = i``
            unless it already has a ``fold`` column).
        target: a frame or path joined on ``id``; None when the targets are columns of ``pred``.
        check_ids: with no ``target``, whether to check the id column (present, unique).
        strict: when False, target ids absent from the predictions are dropped with a warning
            instead of raising (ids in the predictions without a target always raise).
    """
    if isinstance(pred, Sequence) and not isinstance(pred, (*_PathLike, pl.DataFrame)):
        frames = []
        for i, p in enumerate(pred):
            f = _frame(p)
            frames.append(f if fold in f.columns else f.with_columns(pl.lit(i, dtype=pl.Int64).alias(fold)))
        if not frames:
            raise ConfigError("no prediction files given")
        df = pl.concat(frames, how="diagonal_relaxed")
    else:
        df = _frame(pred)
    if target is None:
        if check_ids:
            _check_ids(df, id, "predictions")
        return df
    _check_ids(df, id, "predictions")
    tg = _frame(target)
    _check_ids(tg, id, "targets")
    if df[id].dtype != tg[id].dtype:
        tg = tg.with_columns(pl.col(id).cast(df[id].dtype, strict=False))
    missing = df.join(tg, on=id, how="anti")[id]
    if missing.len():
        shown = ", ".join(map(repr, missing.head(5).to_list()))
        raise SampleError(
            f"{missing.len()} prediction ids have no target: {shown}{' …' if missing.len() > 5 else ''}",
            sample_id=missing[0],
            key=id,
        )
    extra = tg.join(df, on=id, how="anti")[id]
    if extra.len():
        shown = ", ".join(map(repr, extra.head(5).to_list()))
        msg = f"{extra.len()} target ids have no prediction: {shown}{' …' if extra.len() > 5 else ''}"
        if strict:
            raise SampleError(
                msg + " (pass strict=False to evaluate the predicted ids only)", sample_id=extra[0], key=id
            )
        warnings.warn(msg + "; they are left out", stacklevel=2)
    return df.join(tg, on=id, how="inner", suffix="_target", maintain_order="left")


def _column(s: pl.Series) -> Any:
    if isinstance(s.dtype, (pl.List, pl.Array)):
        values = s.to_list()
        try:
            return np.asarray(values, dtype=np.float64)
        except ValueError:
            raise SampleError("list column has rows of different lengths", key=s.name) from None
    if s.dtype in (pl.Utf8, pl.Categorical, pl.Object):
        return s.to_list()
    return s.to_numpy()


def frame_to_batch(df: pl.DataFrame, id: str | None = None) -> dict:
    """A batch_dict with one entry per column (dotted names nest) and ids at ``data.sample_id``."""
    flat = {name: _column(df[name]) for name in df.columns}
    batch = nd.unflatten(flat)
    if id is not None and id in df.columns and not nd.contains(batch, keys.SAMPLE_ID):
        batch = nd.assoc(batch, keys.SAMPLE_ID, df[id].to_list())
    return batch
