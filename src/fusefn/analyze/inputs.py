"""The analyzer's inputs: which columns of a prediction table are the ids, scores, labels and groups.

Reading the files is :mod:`fusefn.data.tables`'s (:func:`read_predictions` calls it);
:func:`select_inputs` works on the joined frame only and returns the batch_dict the
metric suite runs on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs
import numpy as np
import polars as pl

from fusefn import keys, nd
from fusefn.data.tables import frame_to_batch, load_predictions, read_table
from fusefn.errors import ConfigError
from fusefn.metrics._base import read

__all__ = ["AnalysisInputs", "PRED", "TARGET", "group_key", "read_predictions", "select_inputs"]

PRED = "pred"
"""Key of the scores in :attr:`AnalysisInputs.batch`: (N,) positive-class scores or (N, C)."""

TARGET = "target"
"""Key of the integer class labels in :attr:`AnalysisInputs.batch`."""


def group_key(i: int) -> str:
    """Key of the ``i``-th group column in :attr:`AnalysisInputs.batch` (column names may hold dots)."""
    return f"group_{i}"


def as_list(value) -> list:
    """None -> ``[]``; one path, column name or frame -> ``[it]``; a sequence -> a list."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike, pl.DataFrame)):
        return [value]
    return list(value)


@attrs.frozen(kw_only=True)
class AnalysisInputs:
    """The samples to analyze, as the batch_dict the metrics read, and where each part came from.

    ``batch`` holds :data:`PRED` (scores), :data:`TARGET` (labels), one :func:`group_key` ``(i)``
    per column of ``groups`` and the ids at ``data.sample_id``.
    """

    batch: dict = attrs.field(eq=False)
    id: str
    score: tuple[str, ...]
    label: str
    groups: tuple[str, ...]
    class_names: tuple[str, ...]
    skipped: tuple[dict, ...] = ()

    @property
    def num_samples(self) -> int:
        return len(nd.get(self.batch, keys.SAMPLE_ID))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _pick_id(df: pl.DataFrame, id: str | None) -> str:
    if id is not None:
        return id
    for cand in ("id", "sample_id", keys.SAMPLE_ID):
        if cand in df.columns:
            return cand
    raise ConfigError(f"no id column found (tried id, sample_id); columns: {', '.join(df.columns)}; pass id=")


def _pick_scores(df: pl.DataFrame, score) -> tuple[str, ...]:
    if score:
        cols = (score,) if isinstance(score, str) else tuple(score)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ConfigError(f"score column(s) {missing} not found; columns: {', '.join(df.columns)}")
        return cols
    lists = [c for c in df.columns if isinstance(df[c].dtype, (pl.List, pl.Array))]
    probs = [c for c in lists if c.endswith("probs")]
    if probs or lists:
        return ((probs or lists)[0],)
    raise ConfigError(f"no score column given and no probability list column found; columns: {', '.join(df.columns)}")


def _pick_label(df: pl.DataFrame, label: str | None) -> str:
    if label is not None:
        if label not in df.columns:
            raise ConfigError(f"label column {label!r} not found; columns: {', '.join(df.columns)}")
        return label
    for cand in ("label", "target", keys.LABEL):
        if cand in df.columns:
            return cand
    raise ConfigError(f"no label column given and none of label/target found; columns: {', '.join(df.columns)}")


def _score_matrix(df: pl.DataFrame, cols: tuple[str, ...]) -> np.ndarray:
    batch = frame_to_batch(df.select(cols))
    arr = read(batch, cols[0] if len(cols) == 1 else cols)
    return np.asarray(arr, dtype=np.float64)


def read_predictions(pred, target=None, *, id: str | None = None, strict: bool = True) -> tuple[pl.DataFrame, str]:
    """The predictions joined with their targets, and the id column they are joined on.

    Args:
        pred: CSV/Parquet path or Polars frame, or several (one per fold, concatenated with a ``fold`` column).
        target: file/frame of targets joined on ``id``; None when the labels are a column of ``pred``.
        id: id column (default ``id``, ``sample_id`` or ``data.sample_id``, whichever the first table has).
        strict: when False, target ids without a prediction are left out (with a warning).
    """
    frames = as_list(pred)
    if not frames:
        raise ConfigError("analyze: no prediction file given")
    tables = [f if isinstance(f, pl.DataFrame) else read_table(f) for f in frames]
    id = _pick_id(tables[0], id)
    df = load_predictions(tables if len(tables) > 1 else tables[0], target, id=id, strict=strict)
    return df, id


def select_inputs(
    df: pl.DataFrame,
    *,
    id: str,
    score: str | Sequence[str] | None = None,
    label: str | None = None,
    fold: str | None = None,
    group: str | Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    skip_invalid: bool = False,
) -> AnalysisInputs:
    """Pick the score, label and group columns of ``df`` (see :func:`fusefn.analyze.analyze` for the defaults).

    A sample with a NaN / infinite score or a missing label stops with an error naming it
    (raised by the metrics), or with ``skip_invalid`` is left out and listed in ``skipped``.

    >>> df = pl.DataFrame({"id": ["a", "b", "c"], "s": [0.2, None, 0.9], "y": [0, 1, 1]})
    >>> x = select_inputs(df, id="id", score="s", label="y", skip_invalid=True)
    >>> x.class_names, x.num_samples, x.skipped
    (('0', '1'), 2, ({'id': 'b', 'reason': 'NaN or infinite score'},))
    """
    score_cols = _pick_scores(df, score)
    label = _pick_label(df, label)
    scores = _score_matrix(df, score_cols)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    num_classes = 2 if scores.ndim == 1 else scores.shape[1]
    if class_names is None:
        if len(score_cols) > 1:
            class_names = tuple(c.removesuffix("-score") for c in score_cols)
        else:
            class_names = tuple(str(i) for i in range(num_classes))
    class_names = tuple(str(c) for c in class_names)
    if len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} classes")
    if fold is None and "fold" in df.columns and df["fold"].n_unique() > 1:
        fold = "fold"
    groups = ([fold] if fold else []) + [g for g in as_list(group) if g != fold]
    for g in groups:
        if g not in df.columns:
            raise ConfigError(f"group column {g!r} not found; columns: {', '.join(df.columns)}")

    skipped = []
    bad = ~np.isfinite(scores.reshape(scores.shape[0], -1)).all(axis=1) | df[label].is_null().to_numpy()
    if bad.any() and skip_invalid:
        for i in np.flatnonzero(bad):
            why = "missing label" if df[label][int(i)] is None else "NaN or infinite score"
            skipped.append({"id": df[id][int(i)], "reason": why})
        df, scores = df.filter(pl.Series(~bad)), scores[~bad]
    batch = nd.assoc({PRED: scores, TARGET: df[label].to_numpy()}, keys.SAMPLE_ID, df[id].to_list())
    for i, g in enumerate(groups):
        batch[group_key(i)] = df[g].to_numpy()
    return AnalysisInputs(
        batch=batch,
        id=id,
        score=score_cols,
        label=label,
        groups=tuple(groups),
        class_names=class_names,
        skipped=tuple(skipped),
    )
