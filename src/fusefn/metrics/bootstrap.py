"""Bootstrap confidence intervals for any metric, vectorized over resamples.

Resamples are drawn as a ``(n, N)`` matrix of sample multiplicities (within
each stratum when ``stratify`` is set) from the record's :class:`~fusefn.Rng`, and
the wrapped metric evaluates all of them in one pass (``metric.resampled``):
for ROC AUC a rank statistic over tie blocks, for decision metrics a batch of
confusion matrices. No Python loop over resamples for the built-in metrics.

>>> import numpy as np
>>> from fusefn import Rng
>>> from fusefn.metrics import AUCROC
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1], 50)
>>> batch = {"s": rng.normal(size=100) + y, "y": y}
>>> ci = Bootstrap(AUCROC(pred="s", target="y"), n=1000, rng=Rng(1), stratify="y")
>>> r = ci.compute(ci.update(ci.init(), batch))
>>> sorted(r)
['lower', 'mean', 'std', 'upper', 'value']
>>> bool(r["lower"] < r["value"] < r["upper"])
True
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping

import attrs
import numpy as np
from scipy import stats

from fusefn import validators as v
from fusefn.core import Rng, record
from fusefn.errors import ConfigError
from fusefn.metrics._base import ColumnStore, Metric, UndefinedMetricWarning, num_samples, read, sample_ids, to_numpy
from fusefn.metrics._curves import row_chunks
from fusefn.metrics.classification import ROCCurve

__all__ = ["Bootstrap", "iter_resample_counts", "resample_counts", "summarize"]

_STRATA = "__strata__"
_METHODS = ("percentile", "basic", "normal")


def resample_counts(n: int, strata: np.ndarray, *, rng: Rng) -> np.ndarray:
    """``(n, N)`` multiplicities: each row a bootstrap resample drawn within each stratum.

    >>> resample_counts(3, np.array([0, 0, 1]), rng=Rng(0)).sum(axis=1).tolist()
    [3, 3, 3]
    """
    return _draw_counts(rng.numpy(), n, strata)


def iter_resample_counts(n: int, strata: np.ndarray, *, rng: Rng) -> Iterator[np.ndarray]:
    """The rows of :func:`resample_counts` in chunks of a bounded size (about 5 million counts at a time).

    The chunks continue one stream: for data small enough to fit one chunk (``n`` times the
    number of samples up to 5 million cells) they are exactly ``resample_counts``'s matrix; for
    more data the draws are deterministic for a given ``rng`` and data but differ from one matrix.

    >>> strata = np.array([0, 0, 1, 1, 1])
    >>> chunks = list(iter_resample_counts(4, strata, rng=Rng(0)))
    >>> bool((np.concatenate(chunks) == resample_counts(4, strata, rng=Rng(0))).all())
    True
    """
    gen = rng.numpy()
    strata = np.asarray(strata).reshape(-1)
    for rows in row_chunks(n, strata.shape[0] * 4):
        yield _draw_counts(gen, rows.stop - rows.start, strata)


def _draw_counts(gen: np.random.Generator, n: int, strata: np.ndarray) -> np.ndarray:
    # one generator carried across the chunks of a long run: the chunks continue a single stream
    size = strata.shape[0]
    counts = np.zeros((n, size), dtype=np.int32)
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        k = members.size
        draws = gen.integers(0, k, size=(n, k))
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


def _not_a_curve(instance, attribute, value):
    if isinstance(value, ROCCurve):
        raise ConfigError("Bootstrap.metric: a ROC curve is not a number; use ROCCurve.resampled for a band")


@record(kw_only=False)  # Bootstrap(metric, n=..., ...): the metric reads best positionally
class Bootstrap(ColumnStore):
    """Confidence interval of ``metric`` from ``n`` bootstrap resamples.

    Args:
        metric: any fusefn metric record.
        n: number of resamples.
        rng: the resampling stream (results are reproducible from it; its NumPy generator is
            ``numpy.random.default_rng(rng.seed)``).
        level: coverage of the interval.
        stratify: key of a per-sample stratum (usually the target): resample within each
            stratum, so every resample keeps the class counts (FuseMedML's ``stratum``).
        method: ``"percentile"``, ``"basic"`` (reflected percentiles) or ``"normal"`` (value ± z·std).

    Returns (``compute``): ``{"value", "mean", "std", "lower", "upper"}`` for a scalar metric;
    the same per leaf for a metric that returns a dict (e.g. per class).
    """

    metric: Metric = attrs.field(validator=v.and_(v.instance_of(Metric), _not_a_curve))
    n: int = attrs.field(default=10_000, validator=v.ge(2), kw_only=True)
    rng: Rng = attrs.field(factory=lambda: Rng(0), validator=v.instance_of(Rng), kw_only=True)
    level: float = attrs.field(default=0.95, validator=v.and_(v.gt(0), v.lt(1)), kw_only=True)
    stratify: str | None = attrs.field(default=None, validator=v.optional(v.key), kw_only=True)
    method: str = attrs.field(default="percentile", validator=v.in_(_METHODS), kw_only=True)

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
        _, strata = np.unique(state[_STRATA], return_inverse=True)
        parts = []
        # chunks keep the (n, N) count matrix small for large N: memory is bounded whatever n and N
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            for counts in iter_resample_counts(self.n, strata, rng=self.rng):
                parts.append(self.metric.resampled(cols, counts))
        return summarize(value, _concat(parts), self.level, self.method)
