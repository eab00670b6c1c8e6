"""Regression metrics: MAE, MSE, RMSE, R², Pearson and Spearman correlation as mergeable reducers.

MAE, MSE, RMSE, R² and Pearson keep a fixed-size state of centred moments (count, means,
sums of squared deviations, co-deviation) merged with Chan's pairwise update, so shards
and DDP ranks merge exactly and a state never grows with the data; their bootstrap
evaluates every resample at once from weighted moments. Spearman is a rank statistic
and keeps the values themselves. Values equal scikit-learn's ``mean_absolute_error``, ``mean_squared_error``,
``root_mean_squared_error``, ``r2_score`` and SciPy's ``pearsonr`` / ``spearmanr``.

>>> import numpy as np
>>> batch = {"p": np.array([2.5, 0.0, 2.0, 8.0]), "y": np.array([3.0, -0.5, 2.0, 7.0])}
>>> m = MAE(pred="p", target="y")
>>> m.compute(m.update(m.init(), batch))
0.5
>>> r2 = R2(pred="p", target="y")
>>> round(r2.compute(r2.update(r2.init(), batch)), 6)
0.948608
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn.core import record
from fusefn.errors import SampleError
from fusefn.metrics._base import (
    ColumnStore,
    MetricBase,
    key_field,
    key_name,
    read,
    same_length,
    sample_ids,
    scores,
    undefined,
    validate_key,
)

__all__ = ["MAE", "MSE", "RMSE", "R2", "Pearson", "Spearman", "average_ranks", "moments"]

# state layout: count, mean pred, mean target, M2 pred, M2 target, co-deviation, sum |e|, sum e^2
_N, _MP, _MT, _SPP, _STT, _SPT, _SAE, _SSE = range(8)


def moments(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 8-number moment state of one batch (two-pass: centred sums, no cancellation).

    >>> moments(np.array([1.0, 3.0]), np.array([1.0, 1.0])).tolist()
    [2.0, 2.0, 1.0, 2.0, 0.0, 0.0, 2.0, 4.0]
    """
    out = np.zeros(8)
    n = pred.shape[0]
    if n == 0:
        return out
    mp, mt = pred.mean(), target.mean()
    dp, dt, e = pred - mp, target - mt, pred - target
    sse = e @ e
    np.abs(e, out=e)
    out[:] = (n, mp, mt, dp @ dp, dt @ dt, dp @ dt, e.sum(), sse)
    return out


def _merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = a[_N], b[_N]
    if na == 0:
        return b.copy()
    if nb == 0:
        return a.copy()
    n = na + nb
    dp, dt = b[_MP] - a[_MP], b[_MT] - a[_MT]
    f = na * nb / n
    out = a + b
    out[_N] = n
    out[_MP] = a[_MP] + dp * nb / n
    out[_MT] = a[_MT] + dt * nb / n
    out[_SPP] += dp * dp * f
    out[_STT] += dt * dt * f
    out[_SPT] += dp * dt * f
    return out


def _weighted(cols: Mapping, counts: np.ndarray) -> np.ndarray:
    """Moment states ``(B, 8)`` of the resamples (centred on the full-data means first, for accuracy)."""
    p, t = cols["pred"], cols["target"]
    e = p - t  # before centring: the two columns are centred on different means
    p, t = p - p.mean(), t - t.mean()
    w = counts.astype(np.float64)
    n = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp, mt = (w @ p) / n, (w @ t) / n
    out = np.empty((w.shape[0], 8))
    out[:, _N], out[:, _MP], out[:, _MT] = n, mp, mt
    out[:, _SPP] = w @ (p * p) - n * mp * mp
    out[:, _STT] = w @ (t * t) - n * mt * mt
    out[:, _SPT] = w @ (p * t) - n * mp * mt
    out[:, _SAE] = w @ np.abs(e)
    out[:, _SSE] = w @ (e * e)
    return out


@record
class _Regression(MetricBase):
    """Reducer over one predicted and one true value per sample; state = the 8 moments."""

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        pk, tk = key_name(self.pred), key_name(self.target)
        raw = read(batch, self.pred)
        ids = sample_ids(batch, raw.shape[0])
        pred = scores(raw, pk, ids)
        target = scores(read(batch, self.target), tk, ids)
        for key, arr in ((pk, pred), (tk, target)):
            if arr.ndim != 1:
                raise SampleError(f"{type(self).__name__} needs one value per sample, got shape {arr.shape}", key=key)
        same_length(pk, pred, tk, target)
        return {"pred": pred, "target": target}

    def init(self) -> np.ndarray:
        return np.zeros(8)

    def accumulate(self, state: np.ndarray, cols: Mapping) -> np.ndarray:
        return _merge(state, moments(cols["pred"], cols["target"]))

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _merge(a, b)

    def _value(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def compute(self, state: np.ndarray) -> float:
        if state[_N] == 0:
            return undefined(f"{type(self).__name__}: no samples seen")
        value = float(self._value(state[None, :])[0])
        if np.isnan(value):
            return undefined(f"{type(self).__name__} is undefined: {self._why}")
        return value

    _why = "no samples"

    def resampled(self, cols: Mapping, counts: np.ndarray) -> np.ndarray:
        return self._value(_weighted(cols, counts))


def _div(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _pearson(s: np.ndarray) -> np.ndarray:
    den = np.sqrt(np.clip(s[:, _SPP], 0, None) * np.clip(s[:, _STT], 0, None))
    return np.clip(_div(s[:, _SPT], den), -1.0, 1.0)


@record
class MAE(_Regression):
    """Mean absolute error ``mean(|pred - target|)``."""

    def _value(self, s):
        return _div(s[:, _SAE], s[:, _N])


@record
class MSE(_Regression):
    """Mean squared error ``mean((pred - target)²)``."""

    def _value(self, s):
        return _div(s[:, _SSE], s[:, _N])


@record
class RMSE(_Regression):
    """Root mean squared error ``sqrt(mean((pred - target)²))``."""

    def _value(self, s):
        return np.sqrt(_div(s[:, _SSE], s[:, _N]))


@record
class R2(_Regression):
    """Coefficient of determination ``1 - SSE / SST`` (SST about the target mean); NaN when the target is constant.

    scikit-learn's ``r2_score`` returns 1.0 or 0.0 for a constant target by convention; this metric
    says the value is undefined instead.
    """

    _why = "the target is constant"

    def _value(self, s):
        return 1.0 - _div(s[:, _SSE], s[:, _STT])


@record
class Pearson(_Regression):
    """Pearson correlation of prediction and target; NaN when either is constant."""

    _why = "the prediction or the target is constant"

    def _value(self, s):
        return _pearson(s)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing their mean rank (SciPy's ``rankdata(method="average")``).

    >>> average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    order = np.argsort(x)  # any sort: tied values get the same mean rank whatever their order
    xs = x[order]
    start = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
    end = np.append(start[1:], x.size)
    out = np.empty(x.size)
    out[order] = np.repeat((start + end + 1) / 2, end - start)
    return out


@record
class Spearman(ColumnStore):
    """Spearman rank correlation (Pearson of the average ranks, ties share their mean rank) as SciPy's ``spearmanr``."""

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)

    extract = _Regression.extract

    def compute(self, state: Mapping) -> float:
        if not state or state["pred"].shape[0] < 2:
            return undefined("Spearman: fewer than two samples seen")
        rp, rt = average_ranks(state["pred"]), average_ranks(state["target"])
        m = moments(rp, rt)
        value = float(_pearson(m[None, :])[0])
        if np.isnan(value):
            return undefined("Spearman is undefined: the prediction or the target is constant")
        return value
