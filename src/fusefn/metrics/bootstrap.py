"""Bootstrap confidence intervals for any metric, vectorized over resamples.

Resamples are drawn as a ``(n, N)`` matrix of sample multiplicities (within
each stratum when ``stratify`` is set) from the record's :class:`~fusefn.Rng`, and
the wrapped metric evaluates all of them in one pass (``metric.resampled``):
for ROC AUC a rank statistic over tie blocks, for decision metrics a batch of
confusion matrices. No Python loop over resamples for the built-in metrics.

Four interval methods: ``percentile``, ``basic``, ``normal`` and ``bca`` (bias-corrected
and accelerated, Efron 1987). BCa corrects the percentile interval for the median bias of
the resampled statistic (``z0``, from the share of resamples below the estimate) and for
its skewness (the acceleration ``a``, from a jackknife: leave-one-out up to
:data:`JACKKNIFE_EXACT` samples, above that a delete-a-group jackknife over
:data:`JACKKNIFE_GROUPS` random groups, which estimates the same ``a`` — it is a ratio of
the third to the 1.5th power of the second moment of the influence values, and sums of
influence values over random groups keep it). It is the method for statistics that a
resample biases, such as ECE or average precision, whose percentile interval can miss
the estimate itself.

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

__all__ = [
    "JACKKNIFE_EXACT",
    "JACKKNIFE_GROUPS",
    "METHODS",
    "Bootstrap",
    "bca_interval",
    "iter_jackknife_counts",
    "iter_resample_counts",
    "resample_counts",
    "summarize",
]

_STRATA = "__strata__"
METHODS = ("percentile", "basic", "normal", "bca")
"""The interval methods of :class:`Bootstrap` and :func:`summarize`."""

JACKKNIFE_EXACT = 2000
"""Up to this many samples the BCa acceleration comes from the leave-one-out jackknife."""

JACKKNIFE_GROUPS = 1000
"""Above :data:`JACKKNIFE_EXACT` samples, the delete-a-group jackknife leaves out each of this many random groups."""


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


def iter_jackknife_counts(size: int, *, rng: Rng) -> Iterator[np.ndarray]:
    """The jackknife's rows of 0/1 multiplicities, in chunks: each row leaves one sample (or one group) out.

    Leave-one-out up to :data:`JACKKNIFE_EXACT` samples; above, the samples are dealt at random
    (from ``rng``) into :data:`JACKKNIFE_GROUPS` groups and each row leaves one group out.

    >>> np.concatenate(list(iter_jackknife_counts(3, rng=Rng(0)))).tolist()
    [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    """
    if size <= JACKKNIFE_EXACT:
        group, g = np.arange(size), size
    else:
        g = JACKKNIFE_GROUPS
        group = rng.numpy().permutation(size) % g
    for rows in row_chunks(g, size * 4):
        yield (group[None, :] != np.arange(rows.start, rows.stop)[:, None]).astype(np.int32)


def _acceleration(jack: np.ndarray) -> float:
    jack = np.asarray(jack, dtype=np.float64)
    jack = jack[~np.isnan(jack)]
    if jack.size < 3:
        return 0.0
    d = jack.mean() - jack
    den = 6.0 * float((d**2).sum()) ** 1.5
    return float((d**3).sum()) / den if den > 0 else 0.0


def bca_interval(value: float, boots: np.ndarray, jack: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The BCa interval of ``value`` from its bootstrap values and its jackknife values.

    ``z0`` counts ties with the estimate as half below (a discrete statistic is not pushed to one
    side); when every resample lies on one side of the estimate, the share is taken as half a
    resample, so the interval ends at the most extreme resamples instead of failing.

    >>> x = np.random.default_rng(0).normal(0, 1, 2000)
    >>> boots = np.concatenate([x, -x])  # as many resamples below the estimate 0 as above
    >>> lo, hi = bca_interval(0.0, boots, np.zeros(10))  # no bias, no skew: the percentile interval
    >>> bool(np.allclose((lo, hi), np.quantile(boots, [0.025, 0.975]), atol=1e-9))
    True
    """
    b = np.asarray(boots, dtype=np.float64)
    b = b[~np.isnan(b)]
    n = b.size
    share = (np.count_nonzero(b < value) + 0.5 * np.count_nonzero(b == value)) / n
    z0 = stats.norm.ppf(np.clip(share, 0.5 / n, 1 - 0.5 / n))
    a = _acceleration(jack)
    alpha = 1 - level
    z = stats.norm.ppf([alpha / 2, 1 - alpha / 2]) + z0
    den = 1 - a * z
    # a very large acceleration folds the mapping over: the tail it points to is then the extreme resample
    q = np.where(den > 0, stats.norm.cdf(z0 + z / np.where(den > 0, den, 1)), [0.0, 1.0])
    lo, hi = np.quantile(b, np.clip(q, 0, 1))
    return float(lo), float(hi)


def _summary(value: float, boots: np.ndarray, level: float, method: str, name: str, jack=None) -> dict:
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
    if b.size < 2 or np.isnan(value):
        nan = float("nan")
        mean, std = (float(b.mean()), float(b.std(ddof=1))) if b.size >= 2 else (nan, nan)
        return {"value": float(value), "mean": mean, "std": std, "lower": nan, "upper": nan}
    alpha = 1 - level
    mean, std = float(b.mean()), float(b.std(ddof=1))
    if method == "normal":
        z = stats.norm.ppf(1 - alpha / 2)
        lower, upper = value - z * std, value + z * std
    elif method == "bca":
        if jack is None:
            raise ConfigError("summarize: method 'bca' needs the jackknife values (jack=)")
        lower, upper = bca_interval(value, b, jack, level)
    else:
        q_lo, q_hi = np.quantile(b, [alpha / 2, 1 - alpha / 2])
        lower, upper = (q_lo, q_hi) if method == "percentile" else (2 * value - q_hi, 2 * value - q_lo)
    return {"value": float(value), "mean": mean, "std": std, "lower": float(lower), "upper": float(upper)}


def summarize(value, boots, level: float = 0.95, method: str = "percentile", name: str = "", jack=None):
    """Per leaf of ``boots`` (arrays over resamples): value, mean, std, lower, upper.

    ``jack`` (same tree as ``boots``, arrays over jackknife rows) is needed by ``method="bca"``.
    """
    if method not in METHODS:
        raise ConfigError(f"summarize.method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(boots, Mapping):
        return {
            k: summarize(
                value.get(k, float("nan")) if isinstance(value, Mapping) else value,
                v,
                level,
                method,
                f"{name}.{k}" if name else str(k),
                None if jack is None else jack[k],
            )
            for k, v in boots.items()
        }
    return _summary(float(value), boots, level, method, name, jack)


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
        method: ``"percentile"``, ``"basic"`` (reflected percentiles), ``"normal"`` (value ± z·std) or
            ``"bca"`` (bias-corrected and accelerated; its jackknife costs one more metric evaluation per
            sample up to :data:`JACKKNIFE_EXACT` samples, :data:`JACKKNIFE_GROUPS` above).

    Returns (``compute``): ``{"value", "mean", "std", "lower", "upper"}`` for a scalar metric;
    the same per leaf for a metric that returns a dict (e.g. per class).
    """

    metric: Metric = attrs.field(validator=v.and_(v.instance_of(Metric), _not_a_curve))
    n: int = attrs.field(default=10_000, validator=v.ge(2), kw_only=True)
    rng: Rng = attrs.field(factory=lambda: Rng(0), validator=v.instance_of(Rng), kw_only=True)
    level: float = attrs.field(default=0.95, validator=v.and_(v.gt(0), v.lt(1)), kw_only=True)
    stratify: str | None = attrs.field(default=None, validator=v.optional(v.key), kw_only=True)
    method: str = attrs.field(default="percentile", validator=v.in_(METHODS), kw_only=True)

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
            jack = None
            if self.method == "bca":
                size = strata.shape[0]
                rows = iter_jackknife_counts(size, rng=self.rng.child("jackknife"))
                jack = _concat([self.metric.resampled(cols, c) for c in rows])
        return summarize(value, _concat(parts), self.level, self.method, jack=jack)
