"""Paired statistical tests: DeLong's test for two correlated ROC AUCs, McNemar's test for two classifiers.

>>> import numpy as np
>>> batch = {"y": np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
...          "a": np.array([.1, .2, .05, .3, .1, .6, .6, .7, .8, .99, .8, .67, .5]),
...          "b": np.array([.3, .6, .2, .1, .1, .9, .23, .7, .9, .4, .77, .3, .89])}
>>> t = DeLong(pred1="a", pred2="b", target="y")
>>> r = t.compute(t.update(t.init(), batch))
>>> round(r["z"], 3), round(r["p_value"], 5)
(1.672, 0.09453)
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np
from scipy import stats

from fusefn.core import record
from fusefn.metrics._base import (
    ColumnStore,
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
from fusefn.metrics.classification import _threshold, decide

__all__ = ["DeLong", "McNemar", "delong"]


def _binary_score(arr: np.ndarray, key: str) -> np.ndarray:
    if arr.ndim == 2:
        if arr.shape[1] != 2:
            raise ValueError(f"DeLong needs binary scores at {key!r}, got {arr.shape[1]} columns")
        return arr[:, 1]
    return arr


def delong(score1: np.ndarray, score2: np.ndarray, positive: np.ndarray) -> dict:
    """DeLong's test of AUC1 == AUC2 for two scores on the same cases (midrank structural components)."""
    pos = positive.astype(bool)
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        nan = undefined("DeLong test is undefined: the target holds a single class", stacklevel=4)
        return {"auc1": nan, "auc2": nan, "z": nan, "p_value": nan, "std": nan}
    s = np.stack([score1, score2]).astype(np.float64)
    tz = stats.rankdata(s, axis=1)
    tx = stats.rankdata(s[:, pos], axis=1)
    ty = stats.rankdata(s[:, ~pos], axis=1)
    aucs = (tz[:, pos].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, pos] - tx) / n  # per positive: fraction of negatives it outranks
    v01 = 1 - (tz[:, ~pos] - ty) / m  # per negative: fraction of positives outranking it
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 0:
        z = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    else:
        z = float(diff / np.sqrt(var))
    return {
        "auc1": float(aucs[0]),
        "auc2": float(aucs[1]),
        "z": z,
        "p_value": float(2 * stats.norm.sf(abs(z))),
        "std": float(np.sqrt(max(var, 0.0))),
    }


@record
class DeLong(ColumnStore):
    """DeLong's test comparing the ROC AUCs of two binary scores on the same samples.

    ``compute`` returns ``{"auc1", "auc2", "z", "p_value", "std"}`` (two-sided p-value).
    """

    pred1: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    pred2: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        k1, k2, kt = key_name(self.pred1), key_name(self.pred2), key_name(self.target)
        raw1 = read(batch, self.pred1)
        ids = sample_ids(batch, raw1.shape[0])
        s1 = _binary_score(scores(raw1, k1, ids), k1)
        s2 = _binary_score(scores(read(batch, self.pred2), k2, ids), k2)
        y = labels(read(batch, self.target), kt, ids, 2)
        same_length(k1, s1, kt, y)
        same_length(k2, s2, kt, y)
        return {"pred1": s1, "pred2": s2, "target": y}

    def compute(self, state: Mapping) -> dict:
        if not state:
            nan = undefined("DeLong: no samples seen")
            return {"auc1": nan, "auc2": nan, "z": nan, "p_value": nan, "std": nan}
        return delong(state["pred1"], state["pred2"], state["target"] == 1)


@record
class McNemar(MetricBase):
    """McNemar's test: do two classifiers err on the same samples at the same rate?

    State: the 2×2 table ``[[both right, only 1 right], [only 2 right, both wrong]]``.
    ``exact=True`` (default) uses the binomial test on the discordant pairs;
    ``exact=False`` the chi-square statistic, with continuity correction if ``correction``.
    ``compute`` returns ``{"statistic", "p_value", "table"}``.
    """

    pred1: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    pred2: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    threshold: float | tuple | None = attrs.field(default=None, converter=_threshold)
    exact: bool = True
    correction: bool = True

    def init(self) -> np.ndarray:
        return np.zeros((2, 2), dtype=np.int64)

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        k1, k2, kt = key_name(self.pred1), key_name(self.pred2), key_name(self.target)
        raw1, raw2 = read(batch, self.pred1), read(batch, self.pred2)
        ids = sample_ids(batch, raw1.shape[0])
        d1 = decide(scores(raw1, k1, ids) if raw1.dtype.kind == "f" else raw1, self.threshold)
        d2 = decide(scores(raw2, k2, ids) if raw2.dtype.kind == "f" else raw2, self.threshold)
        y = labels(read(batch, self.target), kt, ids)
        same_length(k1, d1, kt, y)
        same_length(k2, d2, kt, y)
        return {"right1": (d1 == y).astype(np.int64), "right2": (d2 == y).astype(np.int64)}

    def accumulate(self, state: np.ndarray, cols: Mapping) -> np.ndarray:
        code = (1 - cols["right1"]) * 2 + (1 - cols["right2"])
        return state + np.bincount(code, minlength=4).reshape(2, 2)

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def compute(self, state: np.ndarray) -> dict:
        b, c = int(state[0, 1]), int(state[1, 0])
        if b + c == 0:
            nan = undefined("McNemar test is undefined: the two classifiers never disagree")
            return {"statistic": nan, "p_value": nan, "table": state.tolist()}
        if self.exact:
            stat = float(min(b, c))
            p = float(stats.binomtest(min(b, c), b + c, 0.5).pvalue)
        else:
            stat = (abs(b - c) - (1.0 if self.correction else 0.0)) ** 2 / (b + c)
            p = float(stats.chi2.sf(stat, 1))
        return {"statistic": float(stat), "p_value": p, "table": state.tolist()}
