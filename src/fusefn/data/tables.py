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
import re
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


def _sniff(head: bytes) -> dict:
    """``read_csv`` options for a text table from its first bytes: the separator, and decimal commas with ``;``.

    A header line with more ``;`` than ``,`` is a semicolon table (what spreadsheets write in
    locales with a decimal comma); its numbers then use decimal commas when a data line holds a
    digit, a comma and a digit.
    """
    text = head.decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if first.count("\t") > max(first.count(","), first.count(";")):
        return {"separator": "\t"}
    if first.count(";") > first.count(","):
        body = "\n".join(lines[1:])
        return {"separator": ";", "decimal_comma": bool(re.search(r"\d,\d", body))}
    return {"separator": ","}


def read_table(path: str | os.PathLike) -> pl.DataFrame:
    """A CSV (``.csv``, ``.tsv``, ``.txt``) or Parquet (``.parquet``, ``.pq``) file as a Polars frame.

    Text tables may be comma-, tab- or semicolon-separated (the latter with decimal commas, as
    spreadsheets write them in many locales): the separator is read from the header line. An empty
    file, a binary file under a text name, or a file that is not a table is a one-line error naming it.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "excel.csv"
    >>> _ = p.write_text("id;score;label\\na;0,25;0\\nb;0,75;1\\n")
    >>> read_table(p)["score"].to_list()
    [0.25, 0.75]
    """
    p = Path(path)
    if not p.is_file():
        raise FusefnError(f"file not found: {p}" if not p.exists() else f"{p} is a folder, not a table file")
    suffix = p.suffix.lower()
    try:
        with open(p, "rb") as f:
            head = f.read(8192)
    except OSError as e:
        raise FusefnError(f"cannot read {p}: {e.strerror or e}") from None
    if not head:
        raise FusefnError(f"cannot read {p}: the file is empty; expected a table with a header line")
    parquet = head[:4] == b"PAR1"
    if suffix in (".parquet", ".pq") and not parquet:
        raise FusefnError(f"cannot read {p}: not a Parquet file (no PAR1 magic); name it .csv if it is a text table")
    if suffix in (".csv", ".tsv", ".txt") and (parquet or b"\0" in head):
        what = "a Parquet file" if parquet else "binary, not text"
        raise FusefnError(
            f"cannot read {p}: {what}; expected a text table (CSV){', or name it .parquet' if parquet else ''}"
        )
    try:
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(p)
        if suffix in (".csv", ".tsv", ".txt"):
            opts = {"separator": "\t"} if suffix == ".tsv" else _sniff(head)
            return pl.read_csv(p, **opts)
    except Exception as e:  # polars raises many kinds; the user needs the file name and the first line of why
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        if "more fields" in first:
            first += " (a line has more values than the header: a decimal comma such as 0,25 in a comma-separated file?"
            first += " save it with ';' separators, or quote such values)"
        raise FusefnError(f"cannot read {p}: {first}") from None
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
                msg
                + " (--allow-partial on the command line, strict=False in Python, evaluates the predicted ids only)",
                sample_id=extra[0],
                key=id,
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
