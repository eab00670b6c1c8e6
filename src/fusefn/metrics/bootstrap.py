"""Bootstrap confidence intervals for any metric, vectorized over resamples.

Resamples are drawn as a ``(n, N)`` matrix of sample multiplicities (within
each stratum when ``stratify`` is set) from an explicit seeded generator, and
the wrapped metric evaluates all of them in one pass (``metric.resampled``):
for ROC AUC a rank statistic over tie blocks, for decision metrics a batch of
confusion matrices. No Python loop over resamples for the built-in metrics.

>>> import numpy as np
>>> from fusefn.metrics import AUCROC
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1], 50)
>>> batch = {"s": rng.normal(size=100) + y, "y": y}
>>> ci = Bootstrap(AUCROC(pred="s", target="y"), n=1000, seed=1, stratify="y")
>>> r = ci.compute(ci.update(ci.init(), batch))
>>> sorted(r)
['lower', 'mean', 'std', 'upper', 'value']
>>> bool(r["lower"] < r["value"] < r["upper"])
True
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import attrs
import numpy as np
from scipy import stats

from fusefn.core import record
from fusefn.errors import ConfigError
from fusefn.metrics._base import ColumnStore, UndefinedMetricWarning, num_samples, read, sample_ids, to_numpy
from fusefn.metrics._curves import row_chunks

__all__ = ["Bootstrap", "resample_counts", "summarize"]

_STRATA = "__strata__"
_METHODS = ("percentile", "basic", "normal")


def resample_counts(rng: np.random.Generator, n: int, strata: np.ndarray) -> np.ndarray:
    """``(n, N)`` multiplicities: each row a bootstrap resample drawn within each stratum."""
    size = strata.shape[0]
    counts = np.zeros((n, size), dtype=np.int32)
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        k = members.size
        draws = rng.integers(0, k, size=(n, k))
        flat = (np.arange(n)[:, None] * k + draws).ravel()
        counts[:, members] = np.bincount(flat, minlength=n * k).reshape(n, k)
    return counts


def _summary(value: float, boots: np.ndarray, level: float, method: str, name: str) -> dict:
    boots = np.asarray(boots, dtype=np.float64)
    ok = ~np.isnan(boots)
    if not ok.all():
        warnings.warn(
            f"bootstrap{' of ' + name if name else ''}: {int((~ok).sum())} of {boots.size} resamples gave an "
            "undefined value (a class missing from the resample or never decided) and were left out",
            UndefinedMetricWarning,
            stacklevel=4,
        )
    b = boots[ok]
    if b.size < 2:
        nan = float("nan")
        return {"value": float(value), "mean": nan, "std": nan, "lower": nan, "upper": nan}
    alpha = 1 - level
    mean, std = float(b.mean()), float(b.std(ddof=1))
    if method == "normal":
        z = stats.norm.ppf(1 - alpha / 2)
        lower, upper = value - z * std, value + z * std
    else:
        q_lo, q_hi = np.quantile(b, [alpha / 2, 1 - alpha / 2])
        lower, upper = (q_lo, q_hi) if method == "percentile" else (2 * value - q_hi, 2 * value - q_lo)
    return {"value": float(value), "mean": mean, "std": std, "lower": float(lower), "upper": float(upper)}


def summarize(value, boots, level: float = 0.95, method: str = "percentile", name: str = ""):
    """Per leaf of ``boots`` (arrays over resamples): value, mean, std, lower, upper."""
    if isinstance(boots, Mapping):
        return {
            k: summarize(
                value.get(k, float("nan")) if isinstance(value, Mapping) else value,
                v,
                level,
                method,
                f"{name}.{k}" if name else str(k),
            )
            for k, v in boots.items()
        }
    return _summary(float(value), boots, level, method, name)


def _concat(parts: list):
    if isinstance(parts[0], Mapping):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate([np.asarray(p) for p in parts])


def _positive(instance, attribute, value):
    if value < 2:
        raise ConfigError(f"Bootstrap.{attribute.name} must be >= 2, got {value}")


def _level(instance, attribute, value):
    if not 0 < value < 1:
        raise ConfigError(f"Bootstrap.level must be in (0, 1), got {value}")


def _method(instance, attribute, value):
    if value not in _METHODS:
        raise ConfigError(f"Bootstrap.method must be one of {_METHODS}, got {value!r}")


def _wrappable(instance, attribute, value):
    for name in ("extract", "accumulate", "resampled", "compute"):
        if not hasattr(value, name):
            raise ConfigError(f"Bootstrap.metric must be a fusefn metric (no {name}()), got {value!r}")
    if type(value).__name__ == "ROCCurve":
        raise ConfigError("Bootstrap.metric: a ROC curve is not a number; use ROCCurve.resampled for a band")


@record(kw_only=False)  # Bootstrap(metric, n=..., ...): the metric reads best positionally
class Bootstrap(ColumnStore):
    """Confidence interval of ``metric`` from ``n`` bootstrap resamples.

    Args:
        metric: any fusefn metric record.
        n: number of resamples.
        seed: seed of the resampling generator (results are reproducible from it).
        level: coverage of the interval.
        stratify: key of a per-sample stratum (usually the target): resample within each
            stratum, so every resample keeps the class counts (FuseMedML's ``stratum``).
        method: ``"percentile"``, ``"basic"`` (reflected percentiles) or ``"normal"`` (value ± z·std).

    Returns (``compute``): ``{"value", "mean", "std", "lower", "upper"}`` for a scalar metric;
    the same per leaf for a metric that returns a dict (e.g. per class).
    """

    metric: object = attrs.field(validator=_wrappable)
    n: int = attrs.field(default=10_000, validator=_positive, kw_only=True)
    seed: int = attrs.field(default=0, kw_only=True)
    level: float = attrs.field(default=0.95, validator=_level, kw_only=True)
    stratify: str | None = attrs.field(default=None, kw_only=True)
    method: str = attrs.field(default="percentile", validator=_method, kw_only=True)

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        cols = dict(self.metric.extract(batch))
        n = num_samples(cols)
        if self.stratify is not None:
            strata = to_numpy(read(batch, self.stratify), self.stratify)
            if strata.shape[0] != n:
                raise ConfigError(f"Bootstrap.stratify {self.stratify!r} has {strata.shape[0]} values for {n} samples")
            if strata.dtype.kind == "f" and np.isnan(strata).any():
                ids = sample_ids(batch, n)
                bad = int(np.flatnonzero(np.isnan(strata))[0])
                raise ConfigError(
                    f"Bootstrap.stratify {self.stratify!r} is NaN for sample {ids[bad] if ids else bad!r}"
                )
            # raw values are stored: codes numbered per batch would mix strata up when batches merge
            cols[_STRATA] = strata.reshape(n)
        else:
            cols[_STRATA] = np.zeros(n, dtype=np.int64)
        return cols

    def compute(self, state: Mapping):
        if not state:
            return summarize(float("nan"), np.array([np.nan] * 2), self.level, self.method)
        cols = {k: v for k, v in state.items() if k != _STRATA}
        value = self.metric.compute(self.metric.accumulate(self.metric.init(), cols))
        rng = np.random.default_rng(self.seed)
        size = num_samples(cols)
        _, strata = np.unique(state[_STRATA], return_inverse=True)
        parts = []
        # chunks keep the (n, N) count matrix small for large N; the draws are deterministic for a
        # given seed and data, but the chunking (hence the stream) depends on N
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            for rows in row_chunks(self.n, size * 4):
                counts = resample_counts(rng, rows.stop - rows.start, strata.reshape(-1))
                parts.append(self.metric.resampled(cols, counts))
        return summarize(value, _concat(parts), self.level, self.method)
