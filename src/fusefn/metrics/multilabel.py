"""Multi-label metrics: per-label ROC AUC, average precision, sensitivity and specificity, with macro and micro averages.

Scores are an ``(N, L)`` matrix (one independent score per label), targets an ``(N, L)``
matrix of 0/1. Each metric returns ``{label: value, ..., "macro": m, "micro": u}``:
``macro`` is the mean over the labels whose value is defined, ``micro`` the metric of
all ``N * L`` (score, target) pairs pooled — scikit-learn's ``average="macro"`` and
``average="micro"``. A label with no positive (or no negative) sample gives NaN and a
warning naming it, and is left out of the macro mean (scikit-learn raises instead).

>>> import numpy as np
>>> batch = {"s": np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1], [0.1, 0.8]]),
...          "y": np.array([[1, 0], [0, 1], [1, 0], [0, 0]])}
>>> m = MultiLabelAUC(pred="s", target="y", label_names=("mass", "calc"))
>>> m.compute(m.update(m.init(), batch))
{'mass': 1.0, 'calc': 0.6666666666666666, 'macro': 0.8333333333333333, 'micro': 0.8666666666666667}
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import SampleError
from fusefn.metrics import _curves
from fusefn.metrics._base import (
    ColumnStore,
    MetricBase,
    class_names_for,
    key_field,
    key_name,
    optional_tuple,
    read,
    same_length,
    sample_ids,
    scores,
    undefined,
    validate_key,
)

__all__ = ["MultiLabelAUC", "MultiLabelAveragePrecision", "MultiLabelSensitivity", "MultiLabelSpecificity"]


def _targets(arr: np.ndarray, key: str, ids: list | None, width: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.shape[1:] != (width,) or arr.ndim != 2:
        raise SampleError(f"multi-label targets must be (N, {width}) like the scores, got shape {arr.shape}", key=key)
    if arr.dtype.kind not in "biuf":
        raise SampleError(f"multi-label targets must be 0/1, got dtype {arr.dtype}", key=key)
    bad = np.flatnonzero(~np.isin(arr, (0, 1)).all(axis=1))
    if bad.size:
        where = repr(ids[int(bad[0])]) if ids is not None else f"row {int(bad[0])}"
        raise SampleError(
            f"multi-label targets must be 0 or 1: {bad.size} sample(s) are not, first {where}",
            sample_id=ids[int(bad[0])] if ids is not None else None,
            key=key,
        )
    return arr.astype(bool)


def _macro(values: np.ndarray) -> np.ndarray:
    """Mean over the defined (non-NaN) entries of the last axis; NaN where none is."""
    ok = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok.any(-1), np.where(ok, values, 0).sum(-1) / np.maximum(ok.sum(-1), 1), np.nan)


@record
class _MultiLabel:
    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    label_names: tuple | None = attrs.field(default=None, converter=optional_tuple)
    _what = "metric"

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        pk, tk = key_name(self.pred), key_name(self.target)
        raw = read(batch, self.pred)
        ids = sample_ids(batch, raw.shape[0])
        pred = scores(raw, pk, ids)
        if pred.ndim != 2:
            raise SampleError(f"multi-label scores must be (N, L), got shape {pred.shape}", key=pk)
        class_names_for(pred.shape[1], self.label_names, "label_names")
        target = _targets(read(batch, self.target), tk, ids, pred.shape[1])
        same_length(pk, pred, tk, target)
        return {"pred": pred, "target": target}

    def _names(self, num: int) -> tuple:
        return class_names_for(num, self.label_names, "label_names")

    def _report(self, per: np.ndarray, micro: float, has_positive: np.ndarray) -> dict:
        out = {}
        for name, value, pos in zip(self._names(per.size), per, has_positive, strict=True):
            if np.isnan(value):
                why = "no negative samples" if pos else "no positive samples"
                value = undefined(f"{self._what} of label {name!r} is undefined: {why} in the target", stacklevel=4)
            out[name] = float(value)
        out["macro"] = (
            float(_macro(per)) if not np.isnan(per).all() else undefined(f"macro {self._what}: no label defined")
        )
        out["micro"] = float(micro) if not np.isnan(micro) else undefined(f"micro {self._what} is undefined")
        return out


@record
class _Ranked(_MultiLabel, ColumnStore):
    """Rank statistics per label column and of the pooled pairs (``micro``)."""

    def _stat(self, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _column(self, s: np.ndarray, pos: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
        order, starts, _ = _curves.tie_blocks(s)
        if counts is None:
            return self._stat(*_curves.block_counts(pos, order, starts))
        parts = [
            self._stat(*_curves.block_counts(pos, order, starts, counts[rows]))
            for rows in _curves.row_chunks(counts.shape[0], s.size)
        ]
        return np.concatenate(parts)

    def _all(self, cols: Mapping, counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        pred, target = cols["pred"], cols["target"]
        per = np.stack([self._column(pred[:, j], target[:, j], counts) for j in range(pred.shape[1])], axis=-1)
        pooled_counts = None if counts is None else np.repeat(counts, pred.shape[1], axis=1)
        micro = self._column(pred.ravel(), target.ravel(), pooled_counts)
        return per, micro

    def compute(self, state: Mapping) -> dict | float:
        if not state:
            return undefined(f"{type(self).__name__}: no samples seen")
        per, micro = self._all(state, None)
        return self._report(per[0], micro[0], state["target"].any(axis=0))

    def resampled(self, cols: Mapping, counts: np.ndarray) -> dict:
        per, micro = self._all(cols, counts)
        out = {name: per[:, j] for j, name in enumerate(self._names(per.shape[1]))}
        out["macro"] = _macro(per)
        out["micro"] = micro
        return out


@record
class MultiLabelAUC(_Ranked):
    """ROC AUC of each label (ties count one half), their macro mean and the micro (pooled) AUC."""

    _what = "ROC AUC"

    def _stat(self, p, n):
        return _curves.auc(p, n)


@record
class MultiLabelAveragePrecision(_Ranked):
    """Average precision of each label (step-wise, as scikit-learn), macro mean and micro (pooled) AP."""

    _what = "average precision"

    def _stat(self, p, n):
        return _curves.average_precision(p, n)


# per-label confusion counts, state (L, 4): true positives, false negatives, false positives, true negatives
_TP, _FN, _FP, _TN = range(4)


@record
class _Rates(_MultiLabel, MetricBase):
    """Decisions ``score >= threshold`` per label; state = per-label confusion counts ``(L, 4)``."""

    threshold: float = attrs.field(default=0.5, converter=float, validator=v.number)

    def init(self) -> np.ndarray:
        return np.zeros((0, 4), dtype=np.int64)

    def _indicators(self, cols: Mapping) -> np.ndarray:
        """``(N, L, 4)`` one-hot of each (sample, label) cell's confusion category."""
        pos, dec = cols["target"], cols["pred"] >= self.threshold
        return np.stack([pos & dec, pos & ~dec, ~pos & dec, ~pos & ~dec], axis=-1)

    def accumulate(self, state: np.ndarray, cols: Mapping) -> np.ndarray:
        return self.merge(state, self._indicators(cols).sum(axis=0, dtype=np.int64))

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.shape[0] == 0:
            return b.copy()
        if b.shape[0] == 0:
            return a.copy()
        if a.shape != b.shape:
            raise SampleError(f"cannot merge counts of {a.shape[0]} and {b.shape[0]} labels", key=key_name(self.pred))
        return a + b

    def _rate(self, c: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def compute(self, state: np.ndarray) -> dict | float:
        if state.shape[0] == 0 or state[0].sum() == 0:
            return undefined(f"{type(self).__name__}: no samples seen")
        c = state.astype(np.float64)
        micro = float(self._rate(c.sum(axis=0, keepdims=True))[0])
        return self._report(self._rate(c), micro, c[:, _TP] + c[:, _FN] > 0)

    def resampled(self, cols: Mapping, counts: np.ndarray) -> dict:
        ind = self._indicators(cols).astype(np.float64)
        n, num = ind.shape[:2]
        c = (counts.astype(np.float64) @ ind.reshape(n, num * 4)).reshape(-1, num, 4)
        per = self._rate(c)
        out = {name: per[:, j] for j, name in enumerate(self._names(num))}
        out["macro"] = _macro(per)
        out["micro"] = self._rate(c.sum(axis=1))
        return out


def _div(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


@record
class MultiLabelSensitivity(_Rates):
    """Sensitivity (recall) of each label at ``score >= threshold``, macro mean and micro (pooled) sensitivity."""

    _what = "sensitivity"

    def _rate(self, c):
        return _div(c[..., _TP], c[..., _TP] + c[..., _FN])


@record
class MultiLabelSpecificity(_Rates):
    """Specificity of each label at ``score >= threshold``, macro mean and micro (pooled) specificity."""

    _what = "specificity"

    def _rate(self, c):
        return _div(c[..., _TN], c[..., _TN] + c[..., _FP])
