"""Comparing models on the same cases: DeLong's test of two ROC AUCs, McNemar's test of two accuracies, and the
paired bootstrap of the difference of any metric.

Two models scored on the same cases are correlated: a hard case is hard for both. Comparing
their separate confidence intervals ignores that and is far too conservative; these functions
work on the pairs.

* :func:`delong` — DeLong, DeLong & Clarke-Pearson (1988) in the midrank form of Sun & Xu (2014),
  O(N log N): the variance of ``AUC_a - AUC_b`` from the structural components of both scores,
  ties counting one half. Binary targets; for multi-class scores call it per class, one-vs-rest.
* :func:`mcnemar` — McNemar's test on the discordant cases (one model right, the other wrong).
* :func:`paired_bootstrap` — every metric of every model on the *same* resamples (one matrix of
  multiplicities drawn once), so the difference of two models on a resample is the metric of the
  difference on that resample; percentile or BCa intervals of each difference
  (:func:`fusefn.metrics.bootstrap.summarize`) and the share of resamples where it changes sign.

>>> import numpy as np
>>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
>>> a = np.array([.1, .3, .2, .6, .7, .8, .4, .9])
>>> b = np.array([.2, .5, .1, .3, .4, .6, .35, .7])
>>> r = delong(a, b, y)
>>> r["auc_a"], r["auc_b"], round(r["difference"], 4)
(0.9375, 0.875, 0.0625)
>>> mcnemar(a.round() == y, b.round() == y)["method"]
'exact binomial'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from fusefn.core import Rng
from fusefn.errors import ConfigError
from fusefn.metrics._base import Metric, UndefinedMetricWarning, num_samples, read, to_numpy, undefined
from fusefn.metrics.bootstrap import METHODS, iter_jackknife_counts, iter_resample_counts, summarize
from fusefn.metrics.stats import delong as _delong_test

__all__ = [
    "MCNEMAR_EXACT_BELOW",
    "default_pairs",
    "delong",
    "mcnemar",
    "on_leaves",
    "paired_bootstrap",
    "paired_resamples",
]

MCNEMAR_EXACT_BELOW = 25
"""With ``exact=None``, :func:`mcnemar` uses the exact binomial test below this many discordant cases."""


def _vector(x, name: str) -> np.ndarray:
    arr = np.asarray(to_numpy(x, name))
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ConfigError(f"{name}: expected one value per case, got shape {arr.shape}")
    return arr


def _positive(target, n: int) -> np.ndarray:
    y = _vector(target, "target")
    if y.shape[0] != n:
        raise ConfigError(f"delong: {n} scores but {y.shape[0]} targets")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ConfigError(f"delong: the target must be binary (0/1), got values {sorted(values)[:5]}")
    return y.astype(bool)


def delong(scores_a, scores_b, target, *, level: float = 0.95) -> dict:
    """DeLong's test of ``AUC_a == AUC_b`` for two scores of the same cases, with a CI of the difference.

    Args:
        scores_a, scores_b: one score per case (higher = more likely positive).
        target: 0/1 (or bool) per case.
        level: coverage of the interval ``difference ± z · se``.

    Returns:
        ``{"auc_a", "auc_b", "difference"`` (``auc_a - auc_b``), ``"variance", "se", "z", "p_value"``
        (two-sided, normal), ``"lower", "upper", "level", "positives", "negatives"}``. Identical
        rankings give difference 0, variance 0 and p = 1. Fewer than two positive or negative cases
        leave the variance undefined: NaN with an :class:`~fusefn.metrics.UndefinedMetricWarning`.

    >>> r = delong([.2, .4, .6, .8], [.1, .7, .3, .9], [0, 1, 0, 1])
    >>> r["auc_a"], r["auc_b"], r["difference"]
    (0.75, 1.0, -0.25)
    """
    a, b = _vector(scores_a, "scores_a").astype(np.float64), _vector(scores_b, "scores_b").astype(np.float64)
    if a.shape != b.shape:
        raise ConfigError(f"delong: scores_a has {a.shape[0]} cases, scores_b {b.shape[0]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("delong: the scores hold NaN or infinite values")
    pos = _positive(target, a.shape[0])
    m, n = int(pos.sum()), int((~pos).sum())
    out = {"positives": m, "negatives": n, "level": level}
    if m < 2 or n < 2:
        nan = undefined(f"DeLong: {m} positive and {n} negative case(s); the variance needs two of each", 3)
        auc = [_delong_auc(s, pos) if m and n else nan for s in (a, b)]
        keys = ("difference", "variance", "se", "z", "p_value", "lower", "upper")
        return {"auc_a": auc[0], "auc_b": auc[1], **dict.fromkeys(keys, nan), **out}
    r = _delong_test(a, b, pos)  # the midrank structural components (Sun & Xu 2014) of fusefn.metrics.stats
    diff = r["auc1"] - r["auc2"]
    se = r["std"]
    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    return {
        "auc_a": r["auc1"],
        "auc_b": r["auc2"],
        "difference": diff,
        "variance": se * se,
        "se": se,
        "z": r["z"],
        "p_value": r["p_value"],
        "lower": diff - half,
        "upper": diff + half,
        **out,
    }


def _delong_auc(s: np.ndarray, pos: np.ndarray) -> float:
    ranks = stats.rankdata(s)
    m, n = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - m * (m + 1) / 2) / (m * n))


def mcnemar(correct_a, correct_b, *, exact: bool | None = None) -> dict:
    """McNemar's test: are two models right on as many of the cases where they disagree?

    Only the discordant cases count: ``a_only`` (a right, b wrong) and ``b_only``. The rule:

    * ``exact=True``: the exact two-sided binomial test of ``a_only`` among ``a_only + b_only``
      cases at probability 1/2 (``p = min(1, 2 · P[X ≤ min(a_only, b_only)])``); statistic ``min``;
    * ``exact=False``: the chi-square statistic with Edwards' continuity correction,
      ``max(|a_only - b_only| - 1, 0)² / (a_only + b_only)``, one degree of freedom (the correction
      is floored at 0, so equal counts give p = 1);
    * ``exact=None`` (default): exact below :data:`MCNEMAR_EXACT_BELOW` discordant cases, chi-square
      from there on (where the normal approximation of the binomial is good).

    No discordant case: the models agree on every case; statistic 0 and p = 1.

    Returns ``{"a_only", "b_only", "both_right", "both_wrong", "discordant", "accuracy_a",
    "accuracy_b", "difference"`` (``accuracy_a - accuracy_b``), ``"method", "statistic", "p_value"}``.

    >>> r = mcnemar([1, 1, 1, 1, 0, 1], [0, 0, 0, 1, 0, 1])
    >>> r["a_only"], r["b_only"], r["p_value"]
    (3, 0, 0.25)
    """
    ra, rb = _vector(correct_a, "correct_a").astype(bool), _vector(correct_b, "correct_b").astype(bool)
    if ra.shape != rb.shape:
        raise ConfigError(f"mcnemar: correct_a has {ra.shape[0]} cases, correct_b {rb.shape[0]}")
    b, c = int(np.count_nonzero(ra & ~rb)), int(np.count_nonzero(~ra & rb))
    d = b + c
    use_exact = d < MCNEMAR_EXACT_BELOW if exact is None else bool(exact)
    if d == 0:
        stat, p = 0.0, 1.0
    elif use_exact:
        stat = float(min(b, c))
        p = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), d, 0.5)))
    else:
        stat = max(abs(b - c) - 1.0, 0.0) ** 2 / d
        p = float(stats.chi2.sf(stat, 1))
    n = max(ra.size, 1)
    acc_a, acc_b = float(ra.sum() / n), float(rb.sum() / n)
    return {
        "a_only": b,
        "b_only": c,
        "both_right": int(np.count_nonzero(ra & rb)),
        "both_wrong": int(np.count_nonzero(~ra & ~rb)),
        "discordant": d,
        "accuracy_a": acc_a,
        "accuracy_b": acc_b,
        "difference": acc_a - acc_b,
        "method": "exact binomial" if use_exact else "chi-square, continuity-corrected",
        "statistic": float(stat),
        "p_value": float(p),
    }


# ------------------------------------------------------------------ paired bootstrap


def _map(fn: Callable, *trees):
    """``fn`` over the leaves of trees of the same shape as the first (dicts of arrays / numbers)."""
    if isinstance(trees[0], Mapping):
        return {k: _map(fn, *(t.get(k, np.nan) if isinstance(t, Mapping) else t for t in trees)) for k in trees[0]}
    return fn(*trees)


def _concat(parts: list):
    if isinstance(parts[0], Mapping):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts])


def default_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of models as ``(later, earlier)``: the difference read is ``later - earlier``.

    >>> default_pairs(["baseline", "new", "newer"])
    [('new', 'baseline'), ('newer', 'baseline'), ('newer', 'new')]
    """
    models = list(models)
    return [(models[j], models[i]) for i in range(len(models)) for j in range(i + 1, len(models))]


def _columns(metrics: Mapping[str, Metric], batches: Mapping[str, Mapping]) -> tuple[dict, int]:
    if len(batches) < 1:
        raise ConfigError("paired_bootstrap: no model given")
    cols = {model: {name: m.extract(batch) for name, m in metrics.items()} for model, batch in batches.items()}
    sizes = {model: num_samples(next(iter(c.values()))) for model, c in cols.items() if c}
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"paired_bootstrap: the models have different numbers of cases {sizes}; pair them first")
    return cols, next(iter(sizes.values()), 0)


def _strata(stratify, batches: Mapping[str, Mapping], size: int) -> np.ndarray:
    if stratify is None:
        return np.zeros(size, dtype=np.int64)
    if isinstance(stratify, str):
        values = [to_numpy(read(b, stratify), stratify).reshape(-1) for b in batches.values()]
        if any(v.shape != values[0].shape or not np.array_equal(v, values[0]) for v in values[1:]):
            raise ConfigError(f"paired_bootstrap.stratify {stratify!r} differs between the models' batches")
        strata = values[0]
    else:
        strata = np.asarray(stratify).reshape(-1)
    if strata.shape[0] != size:
        raise ConfigError(f"paired_bootstrap.stratify has {strata.shape[0]} values for {size} cases")
    return np.unique(strata, return_inverse=True)[1].reshape(-1)


def paired_resamples(
    metrics: Mapping[str, Metric],
    batches: Mapping[str, Mapping],
    *,
    n: int,
    rng: Rng,
    stratify: str | np.ndarray | None = None,
    jackknife: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict, dict]:
    """``(boots, jack)``: ``boots[model][metric]`` the metric on ``n`` resamples, the *same* resamples for every
    model; ``jack[model][metric]`` on the same jackknife rows, for the metrics named in ``jackknife``.

    The resamples are :func:`~fusefn.metrics.bootstrap.iter_resample_counts`'s rows (within each stratum
    of ``stratify``: a key of the batches, equal in all of them, or an array), drawn once per chunk and
    evaluated by every model's metric (``metric.resampled``); the jackknife rows are those of
    :func:`~fusefn.metrics.bootstrap.iter_jackknife_counts` with ``rng.child("jackknife")``.
    """
    cols, size = _columns(metrics, batches)
    strata = _strata(stratify, batches, size)
    parts = {model: {name: [] for name in metrics} for model in batches}
    jack_parts = {model: {name: [] for name in jackknife} for model in batches}
    done = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for counts in iter_resample_counts(n, strata, rng=rng):
            for model in batches:
                for name, m in metrics.items():
                    parts[model][name].append(m.resampled(cols[model][name], counts))
            done += counts.shape[0]
            if progress is not None:
                progress(done, n)
        if jackknife:
            for rows in iter_jackknife_counts(size, rng=rng.child("jackknife")):
                for model in batches:
                    for name in jackknife:
                        jack_parts[model][name].append(metrics[name].resampled(cols[model][name], rows))
    boots = {model: {name: _concat(p) for name, p in per.items()} for model, per in parts.items()}
    jack = {model: {name: _concat(p) for name, p in per.items()} for model, per in jack_parts.items()}
    return boots, jack


def _sign_flip(value: float, boots: np.ndarray) -> float:
    """Share of resamples whose difference has the other sign than ``value`` (zeros count one half)."""
    b = np.asarray(boots, dtype=np.float64)
    b = b[~np.isnan(b)]
    if not b.size or not np.isfinite(value) or value == 0:
        return float("nan")
    other = np.count_nonzero(np.sign(b) == -np.sign(value)) + 0.5 * np.count_nonzero(b == 0)
    return float(other / b.size)


def _with_flips(summary, value, boots):
    if isinstance(boots, Mapping):
        return {
            k: _with_flips(summary[k], value.get(k, np.nan) if isinstance(value, Mapping) else value, boots[k])
            for k in boots
        }
    return {**summary, "sign_flip": _sign_flip(float(value), boots)}


def _values(metrics: Mapping[str, Metric], batches: Mapping[str, Mapping]) -> dict:
    return {
        model: {name: m.compute(m.update(m.init(), batch)) for name, m in metrics.items()}
        for model, batch in batches.items()
    }


def paired_bootstrap(
    metrics: Mapping[str, Metric],
    batches: Mapping[str, Mapping],
    *,
    n: int,
    rng: Rng,
    stratify: str | np.ndarray | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    level: float = 0.95,
    method: str | Mapping[str, str] = "percentile",
    values: Mapping | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Each model's metrics and each pair's differences, with intervals from the same resamples.

    Args:
        metrics: ``{name: metric}``, each evaluated on every model's batch.
        batches: ``{model: batch}``: the same cases in the same order (the metrics read their keys in each).
        n: resamples (at least 2).
        rng: the resampling stream (one stream for all models: that is what pairs them).
        stratify: resample within strata (a key of the batches, such as the target, or an array).
        pairs: ``(a, b)`` pairs whose difference ``a - b`` is summarized (default :func:`default_pairs`).
        method: interval method (:data:`~fusefn.metrics.bootstrap.METHODS`), or one per metric name;
            BCa's jackknife rows are shared by the models too.
        values: the metrics' values per model (computed when not given).

    Returns:
        ``{"models": {model: {metric: summary}}, "differences": {"a - b": {metric: summary}}}``; a summary
        is :func:`~fusefn.metrics.bootstrap.summarize`'s ``{"value", "mean", "std", "lower", "upper"}``
        per leaf; a difference's leaves also hold ``"sign_flip"``, the share of resamples whose difference
        has the other sign than the observed one (zeros count one half; NaN when the observed difference
        is 0) — about half the two-sided bootstrap p-value.

    >>> from fusefn.metrics import AUCROC, Accuracy
    >>> y = np.repeat([0, 1], 20)
    >>> gen = np.random.default_rng(0)
    >>> batches = {"a": {"p": y * 0.3 + gen.random(40) * 0.7, "y": y}, "b": {"p": gen.random(40), "y": y}}
    >>> r = paired_bootstrap({"auc": AUCROC(pred="p", target="y")}, batches, n=500, rng=Rng(0), stratify="y")
    >>> d = r["differences"]["b - a"]["auc"]
    >>> bool(d["lower"] < d["value"] < d["upper"]), d["sign_flip"] < 0.05
    (True, True)
    """
    methods = {name: method for name in metrics} if isinstance(method, str) else dict(method)
    for name in metrics:
        if methods.get(name, "percentile") not in METHODS:
            raise ConfigError(f"paired_bootstrap.method must be one of {', '.join(METHODS)}, got {methods[name]!r}")
    pairs = default_pairs(list(batches)) if pairs is None else [tuple(p) for p in pairs]
    for a, b in pairs:
        if a not in batches or b not in batches:
            raise ConfigError(f"paired_bootstrap.pairs: ({a!r}, {b!r}) names a model not in {list(batches)}")
    values = _values(metrics, batches) if values is None else values
    bca = [name for name in metrics if methods.get(name, "percentile") == "bca"]
    boots, jack = paired_resamples(metrics, batches, n=n, rng=rng, stratify=stratify, jackknife=bca, progress=progress)
    out: dict = {"models": {}, "differences": {}}
    for model in batches:
        out["models"][model] = {
            name: summarize(
                values[model][name],
                boots[model][name],
                level,
                methods.get(name, "percentile"),
                name,
                jack[model].get(name),
            )
            for name in metrics
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # undefined resamples: warned once, for the models
        for a, b in pairs:
            diff = {}
            for name in metrics:
                d_boot = _map(np.subtract, boots[a][name], boots[b][name])
                template = boots[a][name]
                d_value = _map(np.subtract, on_leaves(template, values[a][name]), on_leaves(template, values[b][name]))
                d_jack = _map(np.subtract, jack[a][name], jack[b][name]) if name in jack[a] else None
                s = summarize(d_value, d_boot, level, methods.get(name, "percentile"), name, d_jack)
                diff[name] = _with_flips(s, d_value, d_boot)
            out["differences"][f"{a} - {b}"] = diff
    return out


def on_leaves(template, value):
    """``value`` (a metric's ``compute``) on the leaves of ``template`` (its ``resampled`` tree): a value may hold
    more than its resamples, such as a confusion matrix or the bins of a reliability diagram.

    >>> on_leaves({"ece": None, "mce": None}, {"ece": 0.1, "mce": 0.3, "bins": {}})
    {'ece': 0.1, 'mce': 0.3}
    """
    if isinstance(template, Mapping):
        return {
            k: on_leaves(v, value.get(k, np.nan) if isinstance(value, Mapping) else np.nan) for k, v in template.items()
        }
    return float(value) if value is not None else float("nan")
