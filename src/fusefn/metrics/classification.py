"""Classification metrics: decisions (confusion matrix family) and rankings (ROC / PR family).

Binary scores are a 1-D column (the positive-class score) or an (N, 2) matrix;
multi-class scores an (N, C) matrix. Decision metrics keep a fixed-size
confusion-matrix state; ranking metrics keep the scores themselves (a rank
statistic needs them), as concatenated arrays.

>>> import numpy as np
>>> batch = {"pred": np.array([0.1, 0.4, 0.35, 0.8]), "y": np.array([0, 0, 1, 1])}
>>> m = AUCROC(pred="pred", target="y")
>>> m.compute(m.update(m.init(), batch))
0.75
>>> a = Accuracy(pred="pred", target="y")
>>> a.compute(a.update(a.init(), batch))
0.75
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError, SampleError
from fusefn.metrics import _curves
from fusefn.metrics._base import (
    ColumnStore,
    MetricBase,
    class_names_for,
    key_field,
    key_name,
    labels,
    optional_tuple,
    read,
    same_length,
    sample_ids,
    scores,
    undefined,
    validate_key,
)

__all__ = [
    "Accuracy",
    "BalancedAccuracy",
    "ConfusionMatrix",
    "MCC",
    "AUCROC",
    "PartialAUC",
    "AveragePrecision",
    "ROCCurve",
    "decide",
]


def _threshold(value):
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    return tuple((int(c), float(t)) for c, t in value)


def decide(pred: np.ndarray, threshold=None) -> np.ndarray:
    """Class decisions from labels or scores at an operating point.

    * integer / bool 1-D ``pred``: already labels;
    * float 1-D (a positive-class score) or (N, 2): positive when score >= ``threshold`` (default 0.5);
    * (N, C): argmax; or, with ``threshold=((class, t), ...)``, the first listed class whose score
      reaches its threshold (argmax when none does).

    >>> decide(np.array([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]]), threshold=((2, 0.3),)).tolist()
    [1, 2]
    """
    pred = np.asarray(pred)
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.ndim == 1:
        if pred.dtype.kind in "iub":
            return pred.astype(np.int64)
        return (pred >= (0.5 if threshold is None else threshold)).astype(np.int64)
    if isinstance(threshold, float) and pred.shape[1] == 2:
        return (pred[:, 1] >= threshold).astype(np.int64)
    out = pred.argmax(axis=1)
    if isinstance(threshold, tuple):
        chosen = np.zeros(out.shape, dtype=bool)
        for c, t in threshold:
            if not 0 <= c < pred.shape[1]:
                raise ConfigError(f"threshold names class {c} but the scores have {pred.shape[1]} classes")
            hit = ~chosen & (pred[:, c] >= t)
            out = np.where(hit, c, out)
            chosen |= hit
    elif threshold is not None:
        raise ConfigError(f"a single threshold needs binary scores, got {pred.shape[1]} classes")
    return out.astype(np.int64)


# ------------------------------------------------------------------ confusion family


def _pad(cm: np.ndarray, c: int) -> np.ndarray:
    if cm.shape[-1] >= c:
        return cm
    out = np.zeros((*cm.shape[:-2], c, c), dtype=cm.dtype)
    out[..., : cm.shape[-2], : cm.shape[-1]] = cm
    return out


def _div(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1), np.nan)


def _accuracy(cm):
    return _div(np.trace(cm, axis1=-2, axis2=-1).astype(np.float64), cm.sum(axis=(-2, -1)).astype(np.float64))


def _balanced_accuracy(cm):
    support = cm.sum(axis=-1).astype(np.float64)
    recall = np.diagonal(cm, axis1=-2, axis2=-1) / np.where(support > 0, support, 1)
    present = support > 0
    k = present.sum(axis=-1)
    return _div(np.where(present, recall, 0.0).sum(axis=-1), k.astype(np.float64))


def _mcc(cm):
    cm = cm.astype(np.float64)
    t, p = cm.sum(axis=-1), cm.sum(axis=-2)
    n = cm.sum(axis=(-2, -1))
    correct = np.trace(cm, axis1=-2, axis2=-1)
    cov_tp = correct * n - (t * p).sum(axis=-1)
    cov_pp = n * n - (p * p).sum(axis=-1)
    cov_tt = n * n - (t * t).sum(axis=-1)
    return _div(cov_tp, np.sqrt(cov_tt * cov_pp))


def _per_class(cm) -> dict[str, np.ndarray]:
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fn = cm.sum(axis=-1) - tp
    fp = cm.sum(axis=-2) - tp
    tn = cm.sum(axis=(-2, -1))[..., None] - tp - fn - fp
    return {
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "precision": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "mcc": _div(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))),
        "support": tp + fn,
    }


@record
class _Decisions(MetricBase):
    """Reducer over a confusion matrix (rows: target, columns: decision); state = (C, C) int64 array."""

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    threshold: float | tuple | None = attrs.field(default=None, converter=_threshold)
    num_classes: int | None = None
    class_names: tuple | None = attrs.field(default=None, converter=optional_tuple)

    def init(self) -> np.ndarray:
        c = self.num_classes or (len(self.class_names) if self.class_names else 0)
        return np.zeros((c, c), dtype=np.int64)

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        pk, tk = key_name(self.pred), key_name(self.target)
        raw = read(batch, self.pred)
        ids = sample_ids(batch, raw.shape[0])
        if raw.dtype.kind == "f":
            raw = scores(raw, pk, ids)
        width = raw.shape[1] if raw.ndim == 2 and raw.shape[1] > 1 else None
        c = self.num_classes or (len(self.class_names) if self.class_names else None) or width
        if raw.ndim == 1 and raw.dtype.kind == "f":
            c = c or 2
        pred = labels(decide(raw, self.threshold), pk, ids, c)
        target = labels(read(batch, self.target), tk, ids, c)
        same_length(pk, pred, tk, target)
        return {"pred": pred, "target": target}

    def accumulate(self, state: np.ndarray, cols: Mapping) -> np.ndarray:
        pred, target = cols["pred"], cols["target"]
        c = max(state.shape[0], int(pred.max(initial=-1)) + 1, int(target.max(initial=-1)) + 1)
        cm = np.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        return _pad(state, c) + cm

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        c = max(a.shape[0], b.shape[0])
        return _pad(a, c) + _pad(b, c)

    def _matrices(self, cols: Mapping, counts: np.ndarray) -> np.ndarray:
        c = max(self.init().shape[0], int(cols["pred"].max(initial=-1)) + 1, int(cols["target"].max(initial=-1)) + 1)
        code = cols["target"] * c + cols["pred"]
        onehot = np.zeros((code.size, c * c))
        onehot[np.arange(code.size), code] = 1.0
        return (counts.astype(np.float64) @ onehot).reshape(-1, c, c)

    def _check(self, cm: np.ndarray) -> bool:
        if cm.sum() == 0:
            undefined(f"{type(self).__name__}: no samples seen", stacklevel=4)
            return False
        return True


@record
class Accuracy(_Decisions):
    """Fraction of samples whose decision (argmax, or score >= threshold) equals the target."""

    def compute(self, state: np.ndarray) -> float:
        return float(_accuracy(state)) if self._check(state) else float("nan")

    def resampled(self, cols, counts):
        return _accuracy(self._matrices(cols, counts))


@record
class BalancedAccuracy(_Decisions):
    """Mean recall over the classes present in the target (as scikit-learn's ``balanced_accuracy_score``)."""

    def compute(self, state: np.ndarray) -> float:
        return float(_balanced_accuracy(state)) if self._check(state) else float("nan")

    def resampled(self, cols, counts):
        return _balanced_accuracy(self._matrices(cols, counts))


@record
class MCC(_Decisions):
    """Matthews correlation coefficient (multi-class R_K); NaN with a warning when undefined."""

    def compute(self, state: np.ndarray) -> float:
        if not self._check(state):
            return float("nan")
        v = float(_mcc(state))
        if np.isnan(v):
            return undefined("MCC is undefined: the targets or the decisions hold a single class", stacklevel=3)
        return v

    def resampled(self, cols, counts):
        return _mcc(self._matrices(cols, counts))


@record
class ConfusionMatrix(_Decisions):
    """Confusion matrix at an operating point with per-class sensitivity, specificity, precision, NPV, F1, MCC.

    ``compute`` returns ``{"matrix": [[...]], "accuracy": a, "classes": {name: {stat: value}}}``;
    matrix rows are targets, columns decisions.
    """

    def _names(self, c: int) -> tuple:
        return class_names_for(c, self.class_names) if self.class_names else tuple(str(i) for i in range(c))

    def compute(self, state: np.ndarray) -> dict:
        if not self._check(state):
            return {"matrix": state.tolist(), "accuracy": float("nan"), "classes": {}}
        stats = _per_class(state)
        names = self._names(state.shape[0])
        classes = {n: {k: float(v[i]) for k, v in stats.items()} for i, n in enumerate(names)}
        return {"matrix": state.tolist(), "accuracy": float(_accuracy(state)), "classes": classes}

    def resampled(self, cols, counts):
        cms = self._matrices(cols, counts)
        stats = _per_class(cms)
        names = self._names(cms.shape[-1])
        return {
            "accuracy": _accuracy(cms),
            "classes": {n: {k: v[:, i] for k, v in stats.items()} for i, n in enumerate(names)},
        }


# ------------------------------------------------------------------ ranking family


@record
class _Ranking(ColumnStore):
    """Rank statistics per class (one-vs-rest) from the stored scores; binary gives one float."""

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    class_names: tuple | None = attrs.field(default=None, converter=optional_tuple)
    _what = "metric"

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        pk, tk = key_name(self.pred), key_name(self.target)
        raw = read(batch, self.pred)
        ids = sample_ids(batch, raw.shape[0])
        pred = scores(raw, pk, ids)
        c = 2 if pred.ndim == 1 else pred.shape[1]
        if c < 2:
            raise SampleError("scores need at least two classes", key=pk)
        if self.class_names is not None:
            class_names_for(c, self.class_names)
        target = labels(read(batch, self.target), tk, ids, c)
        same_length(pk, pred, tk, target)
        return {"pred": pred, "target": target}

    def _columns(self, pred: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(class index, score column) pairs: the positive class only when binary."""
        if pred.ndim == 1:
            return [(1, pred)]
        if pred.shape[1] == 2:
            return [(1, pred[:, 1])]
        return [(c, pred[:, c]) for c in range(pred.shape[1])]

    def _stat(self, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _per_class(self, cols: Mapping, counts: np.ndarray | None) -> list[tuple[int, np.ndarray]]:
        out = []
        for c, s in self._columns(cols["pred"]):
            pos = cols["target"] == c
            if counts is None:
                out.append((c, self._column(s, pos)))
                continue
            out.append((c, self._resampled_column(s, pos, counts)))
        return out

    def _column(self, s: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The statistic of one score column over the data as it is (a 1-element array)."""
        order, starts, _ = _curves.tie_blocks(s)
        return self._stat(*_curves.block_counts(pos, order, starts))

    def _resampled_column(self, s, pos, counts) -> np.ndarray:
        order, starts, _ = _curves.tie_blocks(s)
        parts = [
            self._stat(*_curves.block_counts(pos, order, starts, counts[rows]))
            for rows in _curves.row_chunks(counts.shape[0], s.size)
        ]
        return np.concatenate(parts)

    def _name(self, c: int, num: int) -> str:
        return class_names_for(num, self.class_names)[c]

    def compute(self, state: Mapping):
        if not state:
            return undefined(f"{type(self).__name__}: no samples seen")
        pred, target = state["pred"], state["target"]
        num = 2 if pred.ndim == 1 else pred.shape[1]
        values = {}
        for c, stat in self._per_class(state, None):
            value = float(stat[0])
            if np.isnan(value):
                has = int((target == c).sum())
                why = "no positive samples" if has == 0 else "no negative samples"
                value = undefined(f"{self._what} of class {self._name(c, num)!r} is undefined: {why} in the target")
            values[self._name(c, num)] = value
        if num == 2:
            return next(iter(values.values()))
        defined = [v for v in values.values() if not np.isnan(v)]
        values["macro"] = float(np.mean(defined)) if defined else undefined(f"macro {self._what}: no class defined")
        return values

    def resampled(self, cols: Mapping, counts: np.ndarray):
        pred = cols["pred"]
        num = 2 if pred.ndim == 1 else pred.shape[1]
        per = self._per_class(cols, counts)
        if num == 2:
            return per[0][1]
        out = {self._name(c, num): v for c, v in per}
        with np.errstate(invalid="ignore"):
            stacked = np.stack([v for _, v in per])
            ok = ~np.isnan(stacked)
            out["macro"] = np.where(ok.any(0), np.where(ok, stacked, 0).sum(0) / np.maximum(ok.sum(0), 1), np.nan)
        return out


@record
class AUCROC(_Ranking):
    """Area under the ROC curve (binary; multi-class one-vs-rest per class plus ``macro``).

    Ties count one half (Mann-Whitney). A class with no positive or no negative
    sample gives NaN and a warning saying which.
    """

    _what = "ROC AUC"

    def _stat(self, p, n):
        return _curves.auc(p, n)

    def _column(self, s: np.ndarray, pos: np.ndarray) -> np.ndarray:
        # two value sorts and two merges: no argsort, no gathers (faster than torchmetrics on 10^6 scores)
        return np.array([_curves.auc_sorted(s, pos)])

    def _resampled_column(self, s, pos, counts) -> np.ndarray:
        n1, n0 = int(pos.sum()), int((~pos).sum())
        if n1 * n0 > _curves.PAIRWISE_MAX:
            return super()._resampled_column(s, pos, counts)
        return _curves.auc_pairwise(s[pos], s[~pos], counts[:, pos], counts[:, ~pos])


@record
class PartialAUC(_Ranking):
    """Partial ROC AUC: ``max_fpr`` (McClish-standardized, as scikit-learn) or ``min_tpr`` (area above a TPR floor).

    The ``min_tpr`` variant is the area between the curve and the floor over the
    whole FPR range, unnormalized (0 .. 1 - min_tpr): FuseMedML's high-sensitivity
    operating region.
    """

    max_fpr: float | None = attrs.field(default=None, validator=v.optional(v.and_(v.gt(0), v.le(1))))
    min_tpr: float | None = attrs.field(default=None, validator=v.optional(v.and_(v.gt(0), v.le(1))))
    _what = "partial AUC"

    def __attrs_post_init__(self):
        if (self.max_fpr is None) == (self.min_tpr is None):
            raise ConfigError("PartialAUC needs exactly one of max_fpr and min_tpr")

    def _stat(self, p, n):
        if self.max_fpr is not None:
            if self.max_fpr == 1:
                return _curves.auc(p, n)
            return _curves.partial_auc_fpr(p, n, self.max_fpr)
        return _curves.partial_auc_tpr(p, n, self.min_tpr)


@record
class AveragePrecision(_Ranking):
    """Average precision (area under the precision-recall curve, step-wise as scikit-learn)."""

    _what = "average precision"

    def _stat(self, p, n):
        return _curves.average_precision(p, n)


@record
class ROCCurve(_Ranking):
    """ROC curve points: ``{"fpr", "tpr", "thresholds"}`` (per class when multi-class), from (0, 0).

    The first threshold is ``inf`` (nothing called positive); then one point per distinct score.
    """

    _what = "ROC curve"

    def _curve(self, s: np.ndarray, pos: np.ndarray, counts=None) -> dict:
        order, starts, thr = _curves.tie_blocks(s)
        fpr, tpr = _curves.roc_points(*_curves.block_counts(pos, order, starts, counts))
        return {"fpr": fpr, "tpr": tpr, "thresholds": np.concatenate([[np.inf], thr])}

    def compute(self, state: Mapping):
        if not state:
            return undefined("ROCCurve: no samples seen")
        pred, target = state["pred"], state["target"]
        num = 2 if pred.ndim == 1 else pred.shape[1]
        out = {}
        for c, s in self._columns(pred):
            pos = target == c
            if pos.all() or not pos.any():
                undefined(f"ROC curve of class {self._name(c, num)!r} is undefined: one class only in the target")
            curve = self._curve(s, pos)
            out[self._name(c, num)] = {k: v[0] if v.ndim == 2 else v for k, v in curve.items()}
        return next(iter(out.values())) if num == 2 else out

    def resampled(self, cols: Mapping, counts: np.ndarray):
        """TPR of each resample on a fixed FPR grid of 101 points (for confidence bands)."""
        grid = np.linspace(0, 1, 101)
        pred, target = cols["pred"], cols["target"]
        num = 2 if pred.ndim == 1 else pred.shape[1]
        out = {}
        for c, s in self._columns(pred):
            curve = self._curve(s, target == c, counts)
            rows = [np.interp(grid, f, t) for f, t in zip(curve["fpr"], curve["tpr"])]
            out[self._name(c, num)] = {"fpr": grid, "tpr": np.stack(rows)}
        return next(iter(out.values())) if num == 2 else out
