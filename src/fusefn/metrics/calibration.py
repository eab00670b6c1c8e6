"""Calibration: expected / maximum calibration error and reliability-diagram data.

The state is fixed-size: per confidence bin, the count, the summed confidence
and the number of correct decisions.

>>> import numpy as np
>>> m = ECE(pred="p", target="y", n_bins=5)
>>> r = m.compute(m.update(m.init(), {"p": np.array([0.9, 0.8, 0.2, 0.6]), "y": np.array([1, 0, 0, 1])}))
>>> round(r["ece"], 3), round(r["mce"], 3)
(0.225, 0.4)
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import SampleError
from fusefn.metrics._base import (
    MetricBase,
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

__all__ = ["ECE"]


@record
class ECE(MetricBase):
    """Expected calibration error of the top-label confidence over ``n_bins`` equal-width bins.

    Binary scores (1-D positive-class probability) use ``max(p, 1 - p)`` as the
    confidence. ``compute`` returns ``{"ece", "mce", "bins": {"lower", "upper",
    "count", "confidence", "accuracy"}}`` (the reliability diagram).
    """

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    n_bins: int = attrs.field(default=15, validator=v.positive_int)

    def init(self) -> np.ndarray:
        return np.zeros((self.n_bins, 3), dtype=np.float64)

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        pk, tk = key_name(self.pred), key_name(self.target)
        raw = read(batch, self.pred)
        ids = sample_ids(batch, raw.shape[0])
        p = scores(raw, pk, ids)
        if ((p < 0) | (p > 1)).any():
            raise SampleError("ECE needs probabilities in [0, 1] (apply softmax / sigmoid first)", key=pk)
        if p.ndim == 1:
            decision = (p >= 0.5).astype(np.int64)
            conf = np.maximum(p, 1 - p)
            c = 2
        else:
            decision, conf, c = p.argmax(axis=1), p.max(axis=1), p.shape[1]
        y = labels(read(batch, self.target), tk, ids, c)
        same_length(pk, p, tk, y)
        b = np.minimum((conf * self.n_bins).astype(np.int64), self.n_bins - 1)
        return {"bin": b, "conf": conf, "correct": (decision == y).astype(np.float64)}

    def _table(self, cols: Mapping) -> np.ndarray:
        """(N, n_bins * 3) per-sample contributions: one-hot bin × (1, confidence, correct)."""
        n = cols["bin"].size
        out = np.zeros((n, self.n_bins, 3))
        rows = np.arange(n)
        out[rows, cols["bin"], 0] = 1.0
        out[rows, cols["bin"], 1] = cols["conf"]
        out[rows, cols["bin"], 2] = cols["correct"]
        return out.reshape(n, self.n_bins * 3)

    def accumulate(self, state: np.ndarray, cols: Mapping) -> np.ndarray:
        return state + self._table(cols).sum(axis=0).reshape(self.n_bins, 3)

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    @staticmethod
    def _errors(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count, conf, correct = table[..., 0], table[..., 1], table[..., 2]
        total = count.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.where(count > 0, np.abs(conf - correct) / np.where(count > 0, count, 1), 0.0)
            ece = np.where(total > 0, (count * gap).sum(axis=-1) / total, np.nan)
        mce = np.where(total > 0, gap.max(axis=-1), np.nan)
        return ece, mce

    def compute(self, state: np.ndarray) -> dict:
        if state[:, 0].sum() == 0:
            nan = undefined("ECE: no samples seen")
            return {"ece": nan, "mce": nan, "bins": {}}
        ece, mce = self._errors(state)
        count = state[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            edges = np.linspace(0, 1, self.n_bins + 1)
            bins = {
                "lower": edges[:-1].tolist(),
                "upper": edges[1:].tolist(),
                "count": count.astype(np.int64).tolist(),
                "confidence": (state[:, 1] / count).tolist(),
                "accuracy": (state[:, 2] / count).tolist(),
            }
        return {"ece": float(ece), "mce": float(mce), "bins": bins}

    def resampled(self, cols: Mapping, counts: np.ndarray) -> dict:
        tables = (counts.astype(np.float64) @ self._table(cols)).reshape(-1, self.n_bins, 3)
        ece, mce = self._errors(tables)
        return {"ece": ece, "mce": mce}
