"""Survival metrics on right-censored data: concordance, time-dependent AUC, integrated Brier score, Kaplan–Meier, log-rank.

Every metric reads a ``time`` key (time of event or of censoring) and an ``event`` key
(1 = event observed, 0 = censored), and most a ``pred`` key: a *risk score* (higher =
earlier event) for the concordance indices and the time-dependent AUC, survival
probabilities at the record's ``times`` for the Brier score. State = the columns
(:class:`~fusefn.metrics._base.ColumnStore`), so shards merge by concatenation.

The inverse-probability-of-censoring weights of Uno's C, the time-dependent AUC and the
Brier score come from the Kaplan–Meier estimate of the censoring distribution of the
evaluated data itself (scikit-survival's ``survival_train = survival_test``), evaluated as
scikit-survival does: ``G(t)`` includes the censorings at ``t``, and tied event and
censoring times count the events first. Values equal scikit-survival's
``concordance_index_censored`` / ``concordance_index_ipcw`` / ``cumulative_dynamic_auc`` /
``integrated_brier_score`` and lifelines' ``KaplanMeierFitter`` / ``multivariate_logrank_test``;
risk ties are exact ties here (scikit-survival treats risks within ``1e-8`` as tied).

>>> import numpy as np
>>> batch = {"risk": np.array([3.0, 2.0, 2.0, 1.0]), "t": np.array([1.0, 2.0, 3.0, 4.0]),
...          "e": np.array([1, 1, 0, 1])}
>>> c = HarrellC(pred="risk", time="t", event="e")
>>> c.compute(c.update(c.init(), batch))
0.9
>>> kaplan_meier(batch["t"], batch["e"])[1].tolist()
[0.75, 0.5, 0.5, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np
from scipy import stats

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

__all__ = [
    "CumulativeDynamicAUC",
    "HarrellC",
    "IntegratedBrierScore",
    "KaplanMeier",
    "LogRank",
    "UnoC",
    "censoring_survival",
    "kaplan_meier",
    "logrank",
    "step_at",
]

# pairs of samples compared at once by the concordance indices: bounds memory to ~100 MB
_PAIR_CELLS = 4_000_000


# ------------------------------------------------------------------ estimators


def _counts(time: np.ndarray, event: np.ndarray, weights: np.ndarray | None = None):
    """Unique times, and per time the weight at risk, of events and of censorings."""
    w = np.ones(time.shape[0]) if weights is None else np.asarray(weights, np.float64)
    uniq, inv = np.unique(time, return_inverse=True)
    total = np.bincount(inv, weights=w, minlength=uniq.size)
    died = np.bincount(inv, weights=w * event, minlength=uniq.size)
    at_risk = total[::-1].cumsum()[::-1]
    return uniq, at_risk, died, total - died


def kaplan_meier(time, event, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier survival estimate: the unique observed times and ``S(t)`` just after each.

    ``weights`` are per-sample multiplicities (e.g. bootstrap counts). Equal to lifelines'
    ``KaplanMeierFitter().survival_function_`` at those times.

    >>> kaplan_meier(np.array([2.0, 1.0, 2.0, 5.0]), np.array([1, 1, 0, 1]))
    (array([1., 2., 5.]), array([0.75, 0.5 , 0.  ]))
    """
    time, event = np.asarray(time, np.float64), np.asarray(event, bool)
    uniq, at_risk, died, _ = _counts(time, event, weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(died > 0, 1.0 - died / np.where(at_risk > 0, at_risk, 1), 1.0)
    return uniq, np.cumprod(factor)


def censoring_survival(time, event, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate of the censoring distribution ``G`` (events at a tied time leave the risk set first).

    >>> censoring_survival(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1, 1, 0, 1]))[1].tolist()
    [1.0, 0.5, 0.5]
    """
    time, event = np.asarray(time, np.float64), np.asarray(event, bool)
    uniq, at_risk, died, censored = _counts(time, event, weights)
    left = at_risk - died
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(censored > 0, 1.0 - censored / np.where(left > 0, left, 1), 1.0)
    return uniq, np.cumprod(factor)


def step_at(times: np.ndarray, values: np.ndarray, t) -> np.ndarray:
    """A right-continuous step function (1 before its first time) evaluated at ``t``.

    >>> step_at(np.array([1.0, 3.0]), np.array([0.8, 0.4]), np.array([0.5, 1.0, 2.0, 9.0])).tolist()
    [1.0, 0.8, 0.8, 0.4]
    """
    idx = np.searchsorted(times, np.asarray(t, np.float64), side="right") - 1
    return np.where(idx >= 0, values[np.maximum(idx, 0)], 1.0)


def logrank(time, event, group) -> dict:
    """Log-rank test of equal survival across the groups (chi-square, ``groups - 1`` degrees of freedom).

    Equal to lifelines' ``multivariate_logrank_test`` (and ``logrank_test`` for two groups).

    >>> r = logrank(np.array([1.0, 2, 3, 4, 5, 6]), np.array([1, 1, 1, 1, 0, 1]), np.array([0, 0, 0, 1, 1, 1]))
    >>> round(r["statistic"], 6), r["dof"]
    (5.051661, 1)
    """
    time, event = np.asarray(time, np.float64), np.asarray(event, bool)
    names, g = np.unique(np.asarray(group), return_inverse=True)
    k = names.size
    if k < 2:
        return {"statistic": undefined("log-rank test needs at least two groups"), "p_value": float("nan"), "dof": 0}
    uniq, inv = np.unique(time, return_inverse=True)
    onehot = np.zeros((time.size, k))
    onehot[np.arange(time.size), g] = 1.0
    total = np.zeros((uniq.size, k))
    np.add.at(total, inv, onehot)
    died = np.zeros((uniq.size, k))
    np.add.at(died, inv, onehot * event[:, None])
    n_g = total[::-1].cumsum(axis=0)[::-1]  # at risk per time and group
    n, d = n_g.sum(axis=1), died.sum(axis=1)
    z = (died - n_g * (d / n)[:, None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(n > 1, (n - d) / np.where(n > 1, n - 1, 1), 1.0) * d / n**2
    cov = -(n_g * factor[:, None]).T @ n_g
    cov[np.diag_indices(k)] += (n_g * (factor * n)[:, None]).sum(axis=0)
    stat = float(z[:-1] @ np.linalg.pinv(cov[:-1, :-1]) @ z[:-1])
    return {"statistic": stat, "p_value": float(stats.chi2.sf(stat, k - 1)), "dof": int(k - 1)}


# ------------------------------------------------------------------ metric plumbing


def _times(value) -> tuple:
    return tuple(sorted({float(t) for t in np.atleast_1d(np.asarray(value, dtype=np.float64))}))


def _time_name(t: float) -> str:
    return f"{t:g}"


@record
class _Survival(ColumnStore):
    """Reads ``time`` and ``event`` (and ``pred`` where the metric has one) per sample."""

    time: str | tuple = attrs.field(kw_only=True, converter=key_field, validator=validate_key)
    event: str | tuple = attrs.field(kw_only=True, converter=key_field, validator=validate_key)
    _pred_ndim = (1,)

    def _read_pred(self, batch: Mapping, ids) -> np.ndarray | None:
        pk = key_name(self.pred)
        pred = scores(read(batch, self.pred), pk, ids)
        if pred.ndim not in self._pred_ndim:
            raise SampleError(f"{type(self).__name__} got predictions of shape {pred.shape}", key=pk)
        return pred

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        tk, ek = key_name(self.time), key_name(self.event)
        time = read(batch, self.time)
        ids = sample_ids(batch, time.shape[0])
        time = scores(time, tk, ids)
        if time.ndim != 1:
            raise SampleError(f"expected one time per sample, got shape {time.shape}", key=tk)
        event = labels(read(batch, self.event), ek, ids, 2).astype(bool)
        same_length(tk, time, ek, event)
        cols = {"time": time, "event": event}
        if hasattr(self, "pred"):
            pred = self._read_pred(batch, ids)
            same_length(key_name(self.pred), pred, tk, time)
            cols["pred"] = pred
        return cols

    def _data(self, state: Mapping) -> tuple | None:
        if not state:
            undefined(f"{type(self).__name__}: no samples seen", stacklevel=4)
            return None
        return state["time"], state["event"], state.get("pred")

    def _check_times(self, time: np.ndarray) -> np.ndarray:
        """The record's times, NaN-masked where outside the follow-up ``[min time, max time)``."""
        t = np.asarray(self.times)
        bad = (t < time.min()) | (t >= time.max())
        if bad.any():
            undefined(
                f"{type(self).__name__}: times {t[bad].tolist()} are outside the follow-up [{time.min()}, {time.max()})",
                stacklevel=5,
            )
        return bad


def _concordance(time, event, risk, row_weight, counts) -> np.ndarray:
    """Weighted concordance ``sum w_i K_ij / sum w_i A_ij`` per resample row, from all pairs at once.

    Pair (i, j) is comparable (``A_ij = 1``) when i has an event and ``t_i < t_j``, or ``t_i == t_j``
    and j is censored; ``K_ij`` is 1 when then ``risk_i > risk_j``, one half on a tie.
    """
    n = time.size
    w = counts.astype(np.float64)
    num, den = np.zeros(w.shape[0]), np.zeros(w.shape[0])
    rows_at_once = max(1, _PAIR_CELLS // max(n, 1))
    for lo in range(0, n, rows_at_once):
        i = slice(lo, min(n, lo + rows_at_once))
        ti, ei, ri = time[i, None], event[i, None], risk[i, None]
        comparable = ei & ((ti < time[None, :]) | ((ti == time[None, :]) & ~event[None, :]))
        a = comparable * row_weight[i, None]
        k = a * ((ri > risk[None, :]) + 0.5 * (ri == risk[None, :]))
        num += ((w[:, i] @ k) * w).sum(axis=1)
        den += ((w[:, i] @ a) * w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _count_in(sorted_keys: np.ndarray, lo: np.ndarray, hi: np.ndarray, side: str = "left") -> np.ndarray:
    """How many of ``sorted_keys`` lie in ``[lo, hi)`` (``side="right"``: in ``[lo, hi]``)."""
    return np.searchsorted(sorted_keys, hi, side) - np.searchsorted(sorted_keys, lo, "left")


def _later_and_lower(group: np.ndarray, rank: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per position p (rows sorted by time): how many q have a later time and a rank ``<`` / ``<=`` rank_p.

    Divide and conquer over the positions, one vectorized level at a time (O(n log² n)): at level k
    each left half counts the lower ranks of its right half; those sharing its time are taken off.
    """
    n = group.size
    pos = np.arange(n)
    less, leq = np.zeros(n, np.int64), np.zeros(n, np.int64)
    k = 0
    while (1 << k) < n:
        block, right = pos >> (k + 1), ((pos >> k) & 1).astype(bool)
        left = ~right
        change = np.concatenate([[True], (block[1:] != block[:-1]) | (group[1:] != group[:-1])])
        same = np.cumsum(change) - 1  # one id per (block, time)
        for ids, sign in ((block, 1), (same, -1)):
            key = ids * m + rank
            keys_right = np.sort(key[right])
            base = ids[left] * m
            less[left] += sign * _count_in(keys_right, base, key[left])
            leq[left] += sign * _count_in(keys_right, base, key[left], "right")
        k += 1
    return less, leq


def _pair_counts(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: its concordant pairs (ties one half) and its comparable pairs as the earlier event (0 if censored)."""
    order = np.argsort(time, kind="stable")
    t, e = time[order], event[order]
    uniq_r, rank = np.unique(risk[order], return_inverse=True)
    m = max(uniq_r.size, 1)
    group = np.searchsorted(np.unique(t), t)
    less, leq = _later_and_lower(group, rank, m)
    later = t.size - np.searchsorted(t, t, "right")
    # censored samples at the same time as an event are comparable to it
    cens = np.sort(group[~e] * m + rank[~e])
    base, key = group * m, group * m + rank
    c_less, c_leq = _count_in(cens, base, key), _count_in(cens, base, key, "right")
    c_all = _count_in(cens, base, base + m)
    conc = np.where(e, less + c_less + 0.5 * ((leq - less) + (c_leq - c_less)), 0.0)
    comp = np.where(e, later + c_all, 0).astype(np.float64)
    out_conc, out_comp = np.empty_like(conc), np.empty_like(comp)
    out_conc[order], out_comp[order] = conc, comp
    return out_conc, out_comp


def _c_index(time, event, risk, row_weight) -> float:
    conc, comp = _pair_counts(time, event, risk)
    den = row_weight @ comp
    return float(row_weight @ conc / den) if den > 0 else float("nan")


# ------------------------------------------------------------------ concordance


@record
class HarrellC(_Survival):
    """Harrell's concordance index of a risk score (higher = earlier event), as scikit-survival's ``concordance_index_censored``.

    Tied risks count one half; two events at the same time are not comparable, an event and a
    censoring at the same time are (the censored sample outlived the event). Equals lifelines'
    ``concordance_index(time, -risk, event)``.
    """

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)

    def compute(self, state: Mapping) -> float:
        data = self._data(state)
        if data is None:
            return float("nan")
        time, event, risk = data
        value = _c_index(time, event, risk, np.ones(time.size))
        return undefined("HarrellC is undefined: no comparable pairs") if np.isnan(value) else value

    def resampled(self, cols: Mapping, counts: np.ndarray) -> np.ndarray:
        time = cols["time"]
        if time.size * time.size > _PAIR_CELLS:
            return super().resampled(cols, counts)
        # duplicates of one sample share time and status, so they are never comparable: weights suffice
        return _concordance(time, cols["event"], cols["pred"], np.ones(time.size), counts)


@record
class UnoC(_Survival):
    """Uno's concordance index: Harrell's pairs weighted by ``1 / G(t_i)²`` (censoring survival), up to ``tau``.

    As scikit-survival's ``concordance_index_ipcw(y, y, risk, tau)``: ``G`` is estimated on the
    evaluated data, and only events before ``tau`` count as the earlier member of a pair.
    """

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    tau: float | None = attrs.field(default=None, validator=v.optional(v.number))

    def compute(self, state: Mapping) -> float:
        data = self._data(state)
        if data is None:
            return float("nan")
        time, event, risk = data
        g = step_at(*censoring_survival(time, event), time)
        use = event if self.tau is None else event & (time < self.tau)
        if (g[use] == 0).any():
            return undefined("UnoC is undefined: the censoring survival is zero at an event time")
        with np.errstate(divide="ignore"):
            w = np.where(use, 1.0 / np.square(np.where(use, g, 1.0)), 0.0)
        value = _c_index(time, event, risk, w)
        return undefined("UnoC is undefined: no comparable pairs") if np.isnan(value) else value


# ------------------------------------------------------------------ time-dependent


@record
class CumulativeDynamicAUC(_Survival):
    """Cumulative/dynamic ROC AUC at each of ``times`` and its survival-weighted mean, as scikit-survival.

    At time ``t`` the cases are the events up to ``t`` (weighted ``1 / G(t_i)``), the controls the
    samples still event-free after ``t``. ``pred`` is a risk score: one per sample, or one per
    sample and time ``(N, T)``. Returns ``{"<t>": auc, ..., "mean": m}``; the mean integrates the
    AUC over the Kaplan–Meier estimate of the evaluated data (Lambert & Chevret 2014).
    """

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    times: tuple = attrs.field(kw_only=True, converter=_times, validator=v.min_len(1))
    _pred_ndim = (1, 2)

    def compute(self, state: Mapping) -> dict:
        names = [_time_name(t) for t in self.times]
        data = self._data(state)
        if data is None:
            return {**dict.fromkeys(names, float("nan")), "mean": float("nan")}
        time, event, risk = data
        if risk.ndim == 2 and risk.shape[1] != len(self.times):
            raise SampleError(f"{risk.shape[1]} risk columns for {len(self.times)} times", key=key_name(self.pred))
        bad = self._check_times(time)
        g = step_at(*censoring_survival(time, event), time)
        aucs = np.full(len(self.times), np.nan)
        for j, t in enumerate(self.times):
            case, control = event & (time <= t), time > t
            if bad[j] or not case.any() or not control.any() or (g[case] == 0).any():
                continue
            s = risk if risk.ndim == 1 else risk[:, j]
            weight = np.where(case, 1.0 / np.where(case, g, 1.0), control.astype(np.float64))
            order, starts, _ = _curves.tie_blocks(s)
            aucs[j] = _curves.auc(*_curves.block_counts(case, order, starts, weight[None, :]))[0]
        if len(self.times) == 1:
            mean = aucs[0]
        else:
            surv = step_at(*kaplan_meier(time, event), np.asarray(self.times))
            drop = -np.diff(np.concatenate([[1.0], surv]))
            mean = (aucs * drop).sum() / (1.0 - surv[-1]) if surv[-1] < 1 else np.nan
        out = {n: float(a) for n, a in zip(names, aucs, strict=True)}
        out["mean"] = float(mean)
        if np.isnan(aucs).any():
            undefined(f"CumulativeDynamicAUC: undefined at times {[n for n in names if np.isnan(out[n])]}")
        return out


@record
class IntegratedBrierScore(_Survival):
    """Integrated Brier score of predicted survival probabilities ``(N, T)`` at ``times``, as scikit-survival.

    Brier score at ``t``: ``mean(S_i(t)² [t_i <= t, event] / G(t_i) + (1 - S_i(t))² [t_i > t] / G(t))``
    (Graf et al. 1999); integrated with the trapezoidal rule and divided by the time span.
    """

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    times: tuple = attrs.field(kw_only=True, converter=_times, validator=v.min_len(2))
    _pred_ndim = (2,)

    def compute(self, state: Mapping) -> float:
        data = self._data(state)
        if data is None:
            return float("nan")
        time, event, surv = data
        t = np.asarray(self.times)
        if surv.shape[1] != t.size:
            raise SampleError(f"{surv.shape[1]} survival columns for {t.size} times", key=key_name(self.pred))
        if self._check_times(time).any():
            return float("nan")
        cens = censoring_survival(time, event)
        g_t, g_y = step_at(*cens, t), step_at(*cens, time)
        with np.errstate(divide="ignore"):
            inv_t, inv_y = np.where(g_t > 0, 1.0 / g_t, 0.0), np.where(g_y > 0, 1.0 / g_y, 0.0)
        case = event[:, None] & (time[:, None] <= t[None, :])
        control = time[:, None] > t[None, :]
        brier = (surv**2 * case * inv_y[:, None] + (1.0 - surv) ** 2 * control * inv_t[None, :]).mean(axis=0)
        return float(np.trapezoid(brier, t) / (t[-1] - t[0]))


# ------------------------------------------------------------------ curves and tests


@record
class KaplanMeier(_Survival):
    """Kaplan–Meier survival at ``times`` (``{"<t>": S(t)}``): a curve with bootstrap bands at fixed times."""

    times: tuple = attrs.field(kw_only=True, converter=_times, validator=v.min_len(1))

    def compute(self, state: Mapping) -> dict:
        data = self._data(state)
        if data is None:
            return {_time_name(t): float("nan") for t in self.times}
        surv = step_at(*kaplan_meier(data[0], data[1]), np.asarray(self.times))
        return {_time_name(t): float(s) for t, s in zip(self.times, surv, strict=True)}


@record
class LogRank(_Survival):
    """Log-rank test across the groups in ``group`` (e.g. predicted risk groups): ``{"statistic", "p_value", "dof"}``."""

    group: str | tuple = attrs.field(converter=key_field, validator=validate_key)

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        cols = super().extract(batch)
        group = read(batch, self.group)
        if group.ndim != 1 or group.dtype.kind not in "biuUS":
            raise SampleError(
                f"expected one integer or string group per sample, got {group.dtype} {group.shape}",
                key=key_name(self.group),
            )
        same_length(key_name(self.group), group, key_name(self.time), cols["time"])
        return {**cols, "group": group}

    def compute(self, state: Mapping) -> dict:
        if not state:
            return {"statistic": undefined("LogRank: no samples seen"), "p_value": float("nan"), "dof": 0}
        return logrank(state["time"], state["event"], state["group"])
