"""Operating points of a binary score: Youden's J, sensitivity at a fixed specificity, specificity at a fixed sensitivity.

Each reads the ROC curve of the stored scores (one point per distinct score, the decision
being ``score >= threshold``, from the ``inf`` threshold that calls nothing positive) and
returns the point it picks: ``{"sensitivity", "specificity", "threshold"}`` (plus ``"j"``
for Youden). The threshold is a real cut-off on the scores, so one chosen on validation
predictions can be applied to test predictions (``Accuracy(threshold=...)``). With
:class:`~fusefn.metrics.Bootstrap` every entry gets its interval, all resamples at once.

Interpolation rule. By default (``interpolate=False``) the values are those of an
*achievable* cut-off: :class:`SensitivityAtSpecificity` is the highest sensitivity among the
ROC points whose specificity is at least the target (the lowest such threshold), and
:class:`SpecificityAtSensitivity` the highest specificity among those whose sensitivity is
at least the target. With ``interpolate=True`` the value is read off the ROC curve drawn as
straight lines between its points (the trade-off reached by randomizing between the two
neighbouring cut-offs): the sensitivity at exactly ``FPR = 1 - specificity`` (the top of a
vertical run at that FPR), or the specificity at exactly ``TPR = sensitivity`` (the left end
of a horizontal run); ``specificity`` / ``sensitivity`` is then the target itself and
``threshold`` stays the achievable one.

>>> import numpy as np
>>> batch = {"s": np.array([0.1, 0.3, 0.35, 0.4, 0.6, 0.8, 0.9]), "y": np.array([0, 0, 1, 0, 1, 1, 1])}
>>> m = YoudenJ(pred="s", target="y")
>>> m.compute(m.update(m.init(), batch))
{'j': 0.75, 'sensitivity': 0.75, 'specificity': 1.0, 'threshold': 0.6}
>>> m = SensitivityAtSpecificity(pred="s", target="y", specificity=0.6)
>>> m.compute(m.update(m.init(), batch))
{'sensitivity': 1.0, 'specificity': 0.6666666666666666, 'threshold': 0.35}
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
    key_field,
    key_name,
    labels,
    read,
    same_length,
    sample_ids,
    scores,
    undefined,
    validate_key,
)

__all__ = ["SensitivityAtSpecificity", "SpecificityAtSensitivity", "YoudenJ", "roc_table"]

# a rate compared with its target: counts / total may miss an exact target by one rounding
_TOL = 1e-12


def roc_table(score: np.ndarray, positive: np.ndarray, counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Sensitivity, specificity ``(B, G + 1)`` and thresholds ``(G + 1,)`` of each ROC point, per resample row.

    >>> t = roc_table(np.array([0.2, 0.7, 0.7, 0.9]), np.array([False, False, True, True]))
    >>> t["thresholds"].tolist(), t["sensitivity"][0].tolist(), t["specificity"][0].tolist()
    ([inf, 0.9, 0.7, 0.2], [0.0, 0.5, 1.0, 1.0], [1.0, 1.0, 0.5, 0.0])
    """
    order, starts, thr = _curves.tie_blocks(score)
    p, n = _curves.block_counts(positive, order, starts, counts)
    zero = np.zeros((p.shape[0], 1))
    tps, fps = np.concatenate([zero, p.cumsum(axis=1)], axis=1), np.concatenate([zero, n.cumsum(axis=1)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tps / tps[:, -1:]
        spec = (fps[:, -1:] - fps) / fps[:, -1:]
    return {"sensitivity": sens, "specificity": spec, "thresholds": np.concatenate([[np.inf], thr])}


def _pick(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(values, idx[:, None], axis=1)[:, 0]


@record
class _Operating(ColumnStore):
    """Binary scores (N,) or (N, 2) and 0/1 targets; state = the columns."""

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        pk, tk = key_name(self.pred), key_name(self.target)
        raw = read(batch, self.pred)
        ids = sample_ids(batch, raw.shape[0])
        pred = scores(raw, pk, ids)
        if pred.ndim == 2:
            if pred.shape[1] != 2:
                raise SampleError(f"{type(self).__name__} needs binary scores, got {pred.shape[1]} columns", key=pk)
            pred = pred[:, 1]
        target = labels(read(batch, self.target), tk, ids, 2)
        same_length(pk, pred, tk, target)
        return {"pred": pred, "target": target}

    def _choose(self, table: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _points(self, cols: Mapping, counts: np.ndarray | None) -> dict[str, np.ndarray]:
        pos = cols["target"] == 1
        if counts is None:
            return self._choose(roc_table(cols["pred"], pos))
        parts = [
            self._choose(roc_table(cols["pred"], pos, counts[rows]))
            for rows in _curves.row_chunks(counts.shape[0], cols["pred"].size)
        ]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def compute(self, state: Mapping) -> dict:
        if not state:
            undefined(f"{type(self).__name__}: no samples seen")
            return dict.fromkeys(self._keys, float("nan"))
        target = state["target"]
        if target.all() or not target.any():
            undefined(f"{type(self).__name__} is undefined: one class only in the target")
            return dict.fromkeys(self._keys, float("nan"))
        return {k: float(v[0]) for k, v in self._points(state, None).items()}

    def resampled(self, cols: Mapping, counts: np.ndarray) -> dict:
        return self._points(cols, counts)


@record
class YoudenJ(_Operating):
    """The ROC point maximising Youden's ``J = sensitivity + specificity - 1`` (the highest threshold among ties)."""

    _keys = ("j", "sensitivity", "specificity", "threshold")

    def _choose(self, table: dict) -> dict[str, np.ndarray]:
        sens, spec = table["sensitivity"], table["specificity"]
        j = sens + spec - 1.0
        idx = np.nanargmax(np.where(np.isnan(j), -np.inf, j), axis=1)
        out = {"j": _pick(j, idx), "sensitivity": _pick(sens, idx), "specificity": _pick(spec, idx)}
        out["threshold"] = table["thresholds"][idx]
        return _nan_where_undefined(out, sens, spec)


def _nan_where_undefined(out: dict, sens: np.ndarray, spec: np.ndarray) -> dict:
    bad = np.isnan(sens[:, -1]) | np.isnan(spec[:, 0])  # a resample without positives or negatives
    return {k: np.where(bad, np.nan, v) for k, v in out.items()}


@record
class SensitivityAtSpecificity(_Operating):
    """Sensitivity at a specificity of at least ``specificity`` (see the module's interpolation rule)."""

    specificity: float = attrs.field(kw_only=True, converter=float, validator=v.unit_interval)
    interpolate: bool = attrs.field(default=False, kw_only=True, validator=v.instance_of(bool))
    _keys = ("sensitivity", "specificity", "threshold")

    def _choose(self, table: dict) -> dict[str, np.ndarray]:
        sens, spec = table["sensitivity"], table["specificity"]
        ok = spec >= self.specificity - _TOL  # a prefix: specificity falls as the threshold does
        idx = np.maximum(ok.sum(axis=1) - 1, 0)
        out = {"sensitivity": _pick(sens, idx), "specificity": _pick(spec, idx), "threshold": table["thresholds"][idx]}
        if self.interpolate:
            nxt = np.minimum(idx + 1, sens.shape[1] - 1)
            s0, s1, f0, f1 = out["sensitivity"], _pick(sens, nxt), out["specificity"], _pick(spec, nxt)
            with np.errstate(invalid="ignore", divide="ignore"):
                frac = np.where(f0 > f1, (f0 - self.specificity) / (f0 - f1), 0.0)
            exact = np.abs(f0 - self.specificity) <= _TOL
            out["sensitivity"] = np.where(exact, s0, s0 + (s1 - s0) * np.clip(frac, 0, 1))
            out["specificity"] = np.full(s0.shape, self.specificity)
        return _nan_where_undefined(out, sens, spec)


@record
class SpecificityAtSensitivity(_Operating):
    """Specificity at a sensitivity of at least ``sensitivity`` (see the module's interpolation rule)."""

    sensitivity: float = attrs.field(kw_only=True, converter=float, validator=v.unit_interval)
    interpolate: bool = attrs.field(default=False, kw_only=True, validator=v.instance_of(bool))
    _keys = ("specificity", "sensitivity", "threshold")

    def _choose(self, table: dict) -> dict[str, np.ndarray]:
        sens, spec = table["sensitivity"], table["specificity"]
        short = sens < self.sensitivity - _TOL  # a prefix: sensitivity rises as the threshold falls
        idx = np.minimum(short.sum(axis=1), sens.shape[1] - 1)
        out = {"specificity": _pick(spec, idx), "sensitivity": _pick(sens, idx), "threshold": table["thresholds"][idx]}
        if self.interpolate:
            prv = np.maximum(idx - 1, 0)
            s0, s1, f0, f1 = _pick(sens, prv), out["sensitivity"], _pick(spec, prv), out["specificity"]
            with np.errstate(invalid="ignore", divide="ignore"):
                frac = np.where(s1 > s0, (self.sensitivity - s0) / (s1 - s0), 1.0)
            exact = np.abs(s1 - self.sensitivity) <= _TOL
            out["specificity"] = np.where(exact, f1, f0 + (f1 - f0) * np.clip(frac, 0, 1))
            out["sensitivity"] = np.full(s1.shape, self.sensitivity)
        return _nan_where_undefined(out, sens, spec)
