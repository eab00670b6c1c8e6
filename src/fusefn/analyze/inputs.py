"""The analyzer's inputs: which columns of a prediction table are the ids, scores, labels and groups.

Reading the files is :mod:`fusefn.data.tables`'s (:func:`read_predictions` calls it);
:func:`select_inputs` works on the joined frame only and returns the batch_dict the
metric suite runs on.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence

import attrs
import numpy as np
import polars as pl

from fusefn import keys, nd
from fusefn.data.tables import frame_to_batch, load_predictions, read_table
from fusefn.errors import ConfigError
from fusefn.metrics._base import read

__all__ = ["AnalysisInputs", "PRED", "SCORE_KINDS", "TARGET", "group_key", "read_predictions", "select_inputs"]

PRED = "pred"
"""Key of the scores in :attr:`AnalysisInputs.batch`: (N,) positive-class scores or (N, C)."""

TARGET = "target"
"""Key of the integer class labels in :attr:`AnalysisInputs.batch`."""


def group_key(i: int) -> str:
    """Key of the ``i``-th group column in :attr:`AnalysisInputs.batch` (column names may hold dots)."""
    return f"group_{i}"


def source_name(source) -> str:
    """How a report names an input: its path, or ``<frame>`` for an in-memory table."""
    return "<frame>" if isinstance(source, pl.DataFrame) else str(source)


def fusefn_version() -> str:
    """The installed fusefn's version, recorded in every analysis's metrics.json."""
    try:
        return importlib.metadata.version("fusefn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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


SCORE_KINDS = ("probabilities", "logits", "raw")
"""What the score columns hold: probabilities (checked), logits (sigmoid / softmax applied) or raw ranking scores."""

_SUM_TOLERANCE = 0.01  # class probabilities written with 3 decimals may sum to 0.995..1.005


def _row_id(df: pl.DataFrame, id: str | None, i: int):
    return df[id][i] if id is not None and id in df.columns else f"row {i + 1}"


def _numeric(df: pl.DataFrame, col: str, what: str, id: str | None) -> None:
    """A one-line error when column ``col`` holds text (or another non-number) instead of numbers."""
    dtype = df[col].dtype
    if isinstance(dtype, (pl.List, pl.Array)):
        if dtype.inner.is_numeric() or dtype.inner == pl.Null:
            return
        raise ConfigError(f"{what} column {col!r} holds lists of {dtype.inner}, not numbers")
    if dtype.is_numeric() or dtype in (pl.Boolean, pl.Null):
        return
    if dtype in (pl.Utf8, pl.Categorical):
        text = df[col].cast(pl.Utf8)
        parsed = text.str.strip_chars().cast(pl.Float64, strict=False)
        bad = (parsed.is_null() & text.is_not_null()).arg_true()
        i = int(bad[0]) if bad.len() else 0
        comma = " (decimal commas? the file is read as comma-separated)" if "," in str(text[i]) else ""
        raise ConfigError(
            f"{what} column {col!r} holds text, not numbers: {_row_id(df, id, i)!r} has {text[i]!r}{comma}"
        )
    raise ConfigError(f"{what} column {col!r} has type {dtype}, not numbers")


def _score_matrix(df: pl.DataFrame, cols: tuple[str, ...], id: str | None = None) -> np.ndarray:
    for c in cols:
        _numeric(df, c, "score", id)
    batch = frame_to_batch(df.select(cols))
    arr = read(batch, cols[0] if len(cols) == 1 else cols)
    return np.asarray(arr, dtype=np.float64)


def _as_probabilities(scores: np.ndarray, kind: str, cols: tuple[str, ...], df: pl.DataFrame, id: str) -> np.ndarray:
    """Logits through sigmoid / softmax; probabilities checked (in [0, 1], class scores summing to 1)."""
    if kind == "logits":
        if scores.ndim == 1:
            return 1.0 / (1.0 + np.exp(-scores))
        z = np.exp(scores - scores.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
    if kind == "raw":
        return scores
    named = ", ".join(cols)
    hint = "pass scores='logits' (--scores logits: sigmoid / softmax is applied) or scores='raw' (--scores raw)"
    finite = np.isfinite(scores)
    out = finite & ((scores < 0) | (scores > 1))
    if out.any():
        i = int(np.flatnonzero(out.reshape(scores.shape[0], -1).any(axis=1))[0])
        lo, hi = float(scores[finite].min()), float(scores[finite].max())
        raise ConfigError(
            f"score column(s) {named}: values outside [0, 1] (from {lo:.4g} to {hi:.4g}; "
            f"{_row_id(df, id, i)!r} has {np.round(scores[i], 4).tolist()}), so they are not probabilities; {hint}"
        )
    if scores.ndim == 2:
        total = scores.sum(axis=1)
        off = np.isfinite(total) & (np.abs(total - 1) > _SUM_TOLERANCE)
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise ConfigError(
                f"score column(s) {named}: class scores of {int(off.sum())} row(s) do not sum to 1 "
                f"({_row_id(df, id, i)!r} sums to {total[i]:.4g}), so they are not probabilities; {hint}"
            )
    return scores


def _check_labels(df: pl.DataFrame, label: str, id: str, num_classes: int, class_names) -> None:
    _numeric(df, label, "label", id)
    y = df[label].cast(pl.Float64, strict=False).to_numpy()
    ok = np.isnan(y) | ((y == np.round(y)) & (y >= 0) & (y < num_classes))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise ConfigError(
            f"label column {label!r}: {_row_id(df, id, i)!r} has {df[label][i]!r}, outside the classes "
            f"0..{num_classes - 1} ({', '.join(class_names)}) that the scores give"
        )


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
    scores: str = "probabilities",
) -> AnalysisInputs:
    """Pick the score, label and group columns of ``df`` (see :func:`fusefn.analyze.analyze` for the defaults).

    A sample with a NaN / infinite score or a missing label stops with an error naming it
    (raised by the metrics), or with ``skip_invalid`` is left out and listed in ``skipped``.
    ``scores`` says what the score columns hold (:data:`SCORE_KINDS`): ``"probabilities"``
    (values outside [0, 1], or class scores not summing to 1, are an error saying so),
    ``"logits"`` (sigmoid, or softmax over the class columns, is applied) or ``"raw"``
    (any numbers that rank the samples: no calibration; binary decisions need a threshold).
    Text where numbers belong, or a label outside the classes, is an error naming the column and a row.

    >>> df = pl.DataFrame({"id": ["a", "b", "c"], "s": [0.2, None, 0.9], "y": [0, 1, 1]})
    >>> x = select_inputs(df, id="id", score="s", label="y", skip_invalid=True)
    >>> x.class_names, x.num_samples, x.skipped
    (('0', '1'), 2, ({'id': 'b', 'reason': 'NaN or infinite score'},))
    """
    if scores not in SCORE_KINDS:
        raise ConfigError(f"select_inputs.scores must be one of {', '.join(SCORE_KINDS)}, got {scores!r}")
    kind = scores
    score_cols = _pick_scores(df, score)
    label = _pick_label(df, label)
    scores = _score_matrix(df, score_cols, id)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    num_classes = 2 if scores.ndim == 1 else scores.shape[1]
    if num_classes < 2:
        raise ConfigError(f"score column(s) {', '.join(score_cols)}: {num_classes} class score per row; need 2 or more")
    scores = _as_probabilities(scores, kind, score_cols, df, id)
    if class_names is None:
        if len(score_cols) > 1:
            class_names = tuple(c.removesuffix("-score") for c in score_cols)
        else:
            class_names = tuple(str(i) for i in range(num_classes))
    class_names = tuple(str(c) for c in class_names)
    if len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} classes")
    _check_labels(df, label, id, num_classes, class_names)
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
