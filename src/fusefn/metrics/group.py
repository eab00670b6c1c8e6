"""Any metric per group (fold, sex, site, …) with the mean and spread across groups.

>>> import numpy as np
>>> from fusefn.metrics import Accuracy
>>> batch = {"p": np.array([1, 0, 1, 1]), "y": np.array([1, 0, 0, 1]), "fold": np.array([0, 0, 1, 1])}
>>> g = GroupBy(Accuracy(pred="p", target="y"), by="fold")
>>> g.compute(g.update(g.init(), batch))
{'groups': {0: 1.0, 1: 0.5}, 'mean': 0.75, 'std': 0.25}
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError
from fusefn.metrics._base import Metric, MetricBase, num_samples, read, take, to_numpy

__all__ = ["GroupBy"]

_GROUP = "__group__"


def _spread(values: list):
    """Mean and (population) std across groups, leaf by leaf for dict values; NaN groups left out."""
    if not values:
        return float("nan"), float("nan")
    if isinstance(values[0], Mapping):
        means, stds = {}, {}
        for k in values[0]:
            if all(isinstance(v, Mapping) and k in v for v in values):
                m, s = _spread([v[k] for v in values])
                means[k], stds[k] = m, s
        return means, stds
    if not all(isinstance(v, (int, float, np.floating, np.integer)) for v in values):
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


@record(kw_only=False)
class GroupBy(MetricBase):
    """``metric`` computed separately for each value of the per-sample key ``by``.

    ``compute`` returns ``{"groups": {group: value}, "mean": …, "std": …}``; mean and
    std (population, ddof = 0) are taken across groups, per leaf when values are dicts.
    """

    metric: Metric = attrs.field(validator=v.instance_of(Metric))
    by: str = attrs.field(kw_only=True, validator=v.key)

    def init(self) -> dict:
        return {}

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        cols = dict(self.metric.extract(batch))
        groups = to_numpy(read(batch, self.by), self.by)
        n = num_samples(cols)
        if groups.shape[0] != n:
            raise ConfigError(f"GroupBy.by {self.by!r} has {groups.shape[0]} values for {n} samples")
        cols[_GROUP] = groups.reshape(n)
        return cols

    def accumulate(self, state: Mapping, cols: Mapping) -> dict:
        groups = cols[_GROUP]
        rest = {k: v for k, v in cols.items() if k != _GROUP}
        out = dict(state)
        for g in np.unique(groups):
            key = g.item() if isinstance(g, np.generic) else g
            sub = take(rest, np.flatnonzero(groups == g))
            out[key] = self.metric.accumulate(out.get(key, self.metric.init()), sub)
        return out

    def merge(self, a: Mapping, b: Mapping) -> dict:
        out = dict(a)
        for k, state in b.items():
            out[k] = self.metric.merge(out[k], state) if k in out else state
        return out

    def compute(self, state: Mapping) -> dict:
        values = {g: self.metric.compute(s) for g, s in sorted(state.items(), key=lambda kv: str(kv[0]))}
        mean, std = _spread(list(values.values()))
        return {"groups": values, "mean": mean, "std": std}
