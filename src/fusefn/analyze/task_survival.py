"""The survival analysis: Harrell's and Uno's C, the time-dependent AUC and the integrated Brier score with
bootstrap intervals over cases, Kaplan–Meier curves of predicted risk groups with the log-rank test.

Each case has a *risk score* (higher = earlier event, e.g. a Cox model's log hazard ratio), a
time (of the event, or of censoring) and an event flag (1 = event observed, 0 = censored). The
metrics are :mod:`fusefn.metrics.survival`'s (equal to scikit-survival's and lifelines'). The
time-dependent AUC is evaluated at ``times`` (default: the quartiles of the observed event times);
the integrated Brier score needs predicted survival probabilities ``S(t)`` at those times (one
column per time, or a list column), since a risk score alone does not give them.

The risk groups are cut at quantiles of the predicted risk (``risk_groups=2``: at the median) or at
given cut points; each group's Kaplan–Meier curve is drawn and the log-rank test compares them.

>>> import numpy as np, polars as pl
>>> from fusefn import Rng
>>> df = pl.DataFrame({"id": list("abcdef"), "r": [3.0, 2.0, 2.5, 1.0, 0.5, 0.2],
...                    "t": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "e": [1, 1, 0, 1, 0, 1]})
>>> res, data = analyze_survival(df, id="id", score="r", time="t", event="e", ci=0, rng=Rng(0))
>>> res["metrics"]["harrell_c"], res["settings"]["times"]
({'value': 0.9090909090909091}, [1.75, 3.0, 4.5])
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from fusefn import keys, nd
from fusefn.analyze.inputs import PRED, as_list
from fusefn.analyze.resampling import Progress
from fusefn.analyze.task_common import (
    base_results,
    bootstrap_metrics,
    case_id,
    ci_cell,
    md_table,
    numbers,
    one_per_case,
    pick_column,
    write_task,
)
from fusefn.core import Rng, record
from fusefn.errors import ConfigError
from fusefn.metrics import CumulativeDynamicAUC, HarrellC, IntegratedBrierScore, UndefinedMetricWarning, UnoC
from fusefn.metrics.bootstrap import iter_resample_counts
from fusefn.metrics.survival import kaplan_meier, logrank, step_at

__all__ = [
    "EVENT",
    "SURVIVAL",
    "TIME",
    "analyze_survival",
    "breslow_survival",
    "default_times",
    "risk_groups",
    "survival_metrics",
    "write_survival",
]

TIME, EVENT, SURVIVAL = "time", "event", "survival"  # keys of the survival batch, beside PRED (the risk score)

_CURVE_POINTS = 30  # times the AUC(t) curve is drawn at
_BAND_RESAMPLES = 300  # resamples of the AUC(t) band (a figure: the reported times carry the full bootstrap)


def default_times(time: np.ndarray, event: np.ndarray) -> list[float]:
    """The quartiles (25 %, 50 %, 75 %) of the observed event times: times with events before and cases after.

    >>> default_times(np.array([1.0, 2, 3, 4, 5, 6, 7, 8]), np.array([1, 1, 1, 1, 1, 1, 1, 0]))
    [2.5, 4.0, 5.5]
    """
    return [float(t) for t in np.quantile(time[event.astype(bool)], [0.25, 0.5, 0.75])]


def risk_groups(risk: np.ndarray, groups: int | Sequence[float] = 2) -> tuple[np.ndarray, list[str], list[float]]:
    """``(group of each case, group names, cut points)``: cut at quantiles of ``risk`` or at given cut points.

    ``groups`` is a number of equal-sized groups (2: below / above the median) or the cut points on the
    risk score. A case exactly at a cut goes to the lower group. Names run from the lowest risk up.

    >>> g, names, cuts = risk_groups(np.array([0.1, 0.5, 0.9, 0.3]))
    >>> g.tolist(), names, cuts
    ([0, 1, 1, 0], ['low risk', 'high risk'], [0.4])
    """
    if isinstance(groups, (int, np.integer)):
        if groups < 2:
            raise ConfigError(f"risk_groups must be 2 or more groups (or cut points), got {groups}")
        cuts = [float(c) for c in np.quantile(risk, np.arange(1, groups) / groups)]
    else:
        cuts = sorted(float(c) for c in groups)
        if not cuts:
            raise ConfigError("risk_groups: give a number of groups or at least one cut point")
    g = np.searchsorted(np.asarray(cuts), risk, side="left")
    k = len(cuts) + 1
    if k == 2:
        names = ["low risk", "high risk"]
    elif k == 3:
        names = ["low risk", "intermediate risk", "high risk"]
    else:
        names = [f"risk group {i + 1} of {k}" for i in range(k)]
    return g, names, cuts


_PAIRS_AT_ONCE = 4_000_000  # pair cells of the vectorized Uno's C resamples (~100 MB); above it, one by one


@record
class _UnoCResamples(UnoC):
    """Uno's C whose bootstrap evaluates every resample at once (the metric's own is one ``compute`` each).

    A resample is the cases' multiplicities ``w``: its censoring survival ``G`` is the weighted
    Kaplan–Meier estimate (vectorized over resamples), each event before ``tau`` weighs
    ``w_i / G(t_i)²``, and ``C = Σ (w_i/G_i²) K_ij w_j / Σ (w_i/G_i²) A_ij w_j`` over the comparable pairs
    ``A`` (concordant ``K``, ties one half). Copies of one case are never comparable (same time and
    status), so weights give exactly ``compute`` on the resample (a test checks it).
    """

    def resampled(self, cols: Mapping, counts: np.ndarray) -> np.ndarray:
        time, event, risk = cols["time"], cols["event"], cols["pred"]
        n = time.size
        if n * n > _PAIRS_AT_ONCE:
            return super().resampled(cols, counts)
        w = counts.astype(np.float64)
        _, inv, _, cens = _weighted_km(time, event, w)
        g = cens[:, inv]  # G(t_i) of each case, per resample
        use = event & (np.ones(n, bool) if self.tau is None else time < self.tau)
        bad = ((g == 0) & use & (w > 0)).any(axis=1)
        with np.errstate(divide="ignore"):
            left_w = np.where(use, w / np.where(g > 0, g, 1.0) ** 2, 0.0)
        comparable, concordant = _concordant(time, event, risk)
        num = ((left_w @ concordant) * w).sum(axis=1)
        den = ((left_w @ comparable) * w).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(bad | (den <= 0), np.nan, num / np.where(den > 0, den, 1))


def _weighted_km(time: np.ndarray, event: np.ndarray, w: np.ndarray):
    """Per resample row: the unique times' index of each case, and the Kaplan–Meier estimates of the event
    (``S``) and censoring (``G``) distributions at the unique times, as :mod:`fusefn.metrics.survival` has them."""
    uniq, inv = np.unique(time, return_inverse=True)
    inv = inv.reshape(-1)
    onehot = np.zeros((time.size, uniq.size))
    onehot[np.arange(time.size), inv] = 1.0
    total, died = w @ onehot, (w * event) @ onehot
    at_risk = total[:, ::-1].cumsum(axis=1)[:, ::-1]
    left, censored = at_risk - died, total - died
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.cumprod(np.where(died > 0, 1.0 - died / np.where(at_risk > 0, at_risk, 1), 1.0), axis=1)
        g = np.cumprod(np.where(censored > 0, 1.0 - censored / np.where(left > 0, left, 1), 1.0), axis=1)
    return uniq, inv, s, g


def _concordant(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Harrell's comparable pairs ``A`` (i an event before j, or at j's censoring time) and ``A`` times concordance."""
    ti, tj = time[:, None], time[None, :]
    comparable = event[:, None] & ((ti < tj) | ((ti == tj) & ~event[None, :]))
    return comparable.astype(np.float64), comparable * _ranked(risk)


def _ranked(risk: np.ndarray) -> np.ndarray:
    return (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])


@record
class _TDAUCResamples(CumulativeDynamicAUC):
    """The time-dependent AUC whose bootstrap evaluates every resample at once (one score per case).

    Per time ``t`` and resample ``w``: cases (events up to ``t``) weigh ``w_i / G(t_i)``, controls (event-free
    after ``t``) ``w_j``, and ``AUC = Σ case_i K_ij control_j / (Σ case)(Σ control)``; the mean weighs the
    times by the resample's Kaplan–Meier drops, as ``compute`` does (a test checks it resample by resample).
    """

    def resampled(self, cols: Mapping, counts: np.ndarray) -> dict:
        time, event, risk = cols["time"], cols["event"], cols["pred"]
        if risk.ndim != 1 or time.size * time.size > _PAIRS_AT_ONCE:
            return super().resampled(cols, counts)
        w = counts.astype(np.float64)
        uniq, inv, km, cens = _weighted_km(time, event, w)
        g = cens[:, inv]
        seen = w > 0
        lo = np.where(seen, time, np.inf).min(axis=1)
        hi = np.where(seen, time, -np.inf).max(axis=1)
        pairs = _ranked(risk)
        names = [f"{t:g}" for t in self.times]
        aucs = np.full((w.shape[0], len(self.times)), np.nan)
        for j, t in enumerate(self.times):
            case, control = event & (time <= t), time > t
            with np.errstate(divide="ignore", invalid="ignore"):
                cw = np.where(case, w / np.where(g > 0, g, 1.0), 0.0)
                ok = (lo <= t) & (t < hi) & ~((g == 0) & case & seen).any(axis=1)
                num = ((cw @ pairs) * (w * control)).sum(axis=1)
                den = cw.sum(axis=1) * (w * control).sum(axis=1)
                aucs[:, j] = np.where(ok & (den > 0), num / np.where(den > 0, den, 1), np.nan)
        out = {n: aucs[:, j] for j, n in enumerate(names)}
        if len(self.times) == 1:
            out["mean"] = aucs[:, 0]
            return out
        idx = np.searchsorted(uniq, np.asarray(self.times), side="right") - 1
        surv = np.where(idx >= 0, km[:, np.maximum(idx, 0)], 1.0)
        drop = -np.diff(np.concatenate([np.ones((w.shape[0], 1)), surv], axis=1), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["mean"] = np.where(surv[:, -1] < 1, (aucs * drop).sum(axis=1) / (1.0 - surv[:, -1]), np.nan)
        return out


def breslow_survival(
    risk: np.ndarray, time: np.ndarray, event: np.ndarray, new_risk: np.ndarray, times: Sequence[float]
) -> np.ndarray:
    """Survival probabilities ``S(t | x) = S0(t) ** exp(risk)`` ``(N, T)`` at ``times`` of a Cox model's risk scores.

    The baseline ``S0`` is Breslow's estimate from ``risk`` (log hazard ratios), ``time`` and ``event`` of
    *other* cases — the training or validation predictions —, then applied to ``new_risk``: what the
    integrated Brier score needs (``analyze(..., survival=...)``) when the model predicts a risk score only.
    Equal to scikit-survival's ``BreslowEstimator``.

    >>> s = breslow_survival(np.zeros(4), np.array([1.0, 2, 3, 4]), np.array([1, 1, 0, 1]), np.zeros(1), [2.5])
    >>> s.round(4).tolist()  # exp(-(1/4 + 1/3))
    [[0.558]]
    """
    risk, time = np.asarray(risk, np.float64), np.asarray(time, np.float64)
    event = np.asarray(event).astype(bool)
    uniq, inv = np.unique(time, return_inverse=True)
    hazard = np.exp(risk)
    at_risk = np.bincount(inv.reshape(-1), weights=hazard, minlength=uniq.size)[::-1].cumsum()[::-1]
    deaths = np.bincount(inv.reshape(-1), weights=event.astype(np.float64), minlength=uniq.size)
    cumulative = np.cumsum(deaths / at_risk)
    h0 = np.where(
        np.asarray(times) < uniq[0], 0.0, cumulative[np.maximum(np.searchsorted(uniq, times, "right") - 1, 0)]
    )
    return np.exp(-np.outer(np.exp(np.asarray(new_risk, np.float64)), h0))


def survival_metrics(times: Sequence[float], *, tau: float | None = None, with_survival: bool = False) -> dict:
    """The suite's metrics on the survival batch (risk at :data:`~fusefn.analyze.PRED`, :data:`TIME`, :data:`EVENT`).

    >>> list(survival_metrics([1.0, 2.0], with_survival=True))
    ['harrell_c', 'uno_c', 'td_auc', 'ibs']
    """
    out = {
        "harrell_c": HarrellC(pred=PRED, time=TIME, event=EVENT),
        "uno_c": _UnoCResamples(pred=PRED, time=TIME, event=EVENT, tau=tau),
        "td_auc": _TDAUCResamples(pred=PRED, time=TIME, event=EVENT, times=tuple(times)),
    }
    if with_survival:
        out["ibs"] = IntegratedBrierScore(pred=SURVIVAL, time=TIME, event=EVENT, times=tuple(times))
    return out


def _check_time_event(df: pl.DataFrame, time: np.ndarray, event: np.ndarray, tcol: str, ecol: str, id: str) -> None:
    ok = ~np.isfinite(time) | (time >= 0)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise ConfigError(f"time column {tcol!r}: case {case_id(df, id, i)!r} has a negative time {time[i]:g}")
    ok = ~np.isfinite(event) | np.isin(event, (0.0, 1.0))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise ConfigError(
            f"event column {ecol!r}: case {case_id(df, id, i)!r} has {event[i]:g}, not 0 (censored) or 1 (event)"
        )


def _check_times(times: list[float], time: np.ndarray, event: np.ndarray) -> list[float]:
    times = sorted({float(t) for t in times})
    lo, hi = float(time.min()), float(time.max())
    bad = [t for t in times if not lo <= t < hi]
    if bad:
        raise ConfigError(
            f"times {bad} are outside the follow-up [{lo:g}, {hi:g}): the time-dependent AUC needs cases still "
            "event-free after each time"
        )
    early = [t for t in times if not (event.astype(bool) & (time <= t)).any()]
    if early:
        raise ConfigError(f"times {early} come before the first event ({time[event.astype(bool)].min():g})")
    return times


def analyze_survival(
    df: pl.DataFrame,
    *,
    id: str,
    score: str | None = None,
    time: str | None = None,
    event: str | None = None,
    times: Sequence[float] | None = None,
    tau: float | None = None,
    survival: str | Sequence[str] | None = None,
    groups: int | Sequence[float] = 2,
    ci: int,
    rng: Rng,
    level: float = 0.95,
    method: str = "auto",
    skip_invalid: bool = False,
    progress: Progress | None = None,
    pred=None,
    target=None,
) -> tuple[dict, dict]:
    """``(results, data)`` of the joined frame ``df``: the metrics with intervals, the risk groups' curves and test.

    Args:
        score: the risk score column (higher = earlier event; default ``risk``).
        time, event: the time and event columns (default ``time`` and ``event``); events are 0 or 1.
        times: the times of the time-dependent AUC (and of ``survival``); default the quartiles of the
            observed event times (:func:`default_times`).
        tau: Uno's C counts only the events before ``tau`` (default: all).
        survival: predicted survival probabilities ``S(t)`` at ``times`` (a list column or one column per
            time), for the integrated Brier score (left out without them); ``times`` must then be given.
        groups: risk groups for the Kaplan–Meier curves and the log-rank test: a number of quantile
            groups (2: split at the median predicted risk) or the cut points on the risk score.
        ci: resamples of whole cases (0: no intervals).
        skip_invalid: leave out (and list) cases with a NaN / missing risk, time or event.
    """
    score = pick_column(df, score, "risk score", ("risk", "risk_score", "score", "pred"))
    tcol = pick_column(df, time, "time", ("time", "duration", "survival_time"))
    ecol = pick_column(df, event, "event", ("event", "status", "observed"))
    surv_cols = as_list(survival)
    if surv_cols and times is None:
        raise ConfigError("survival= (--survival) gives S(t) at given times: pass those times (times= / --times)")
    risk = one_per_case(numbers(df, score, "risk score", id, allow_missing=skip_invalid), score, "risk score")
    t = one_per_case(numbers(df, tcol, "time", id, allow_missing=skip_invalid), tcol, "time")
    e = one_per_case(numbers(df, ecol, "event", id, allow_missing=skip_invalid), ecol, "event")
    surv = numbers(df, surv_cols, "survival", id, allow_missing=skip_invalid) if surv_cols else None
    _check_time_event(df, t, e, tcol, ecol, id)
    finite = np.isfinite(risk) & np.isfinite(t) & np.isfinite(e)
    if surv is not None:
        finite &= np.isfinite(surv.reshape(surv.shape[0], -1)).all(axis=1)
    skipped = []
    if not finite.all():
        for i in np.flatnonzero(~finite):
            what = [n for n, a in (("risk", risk), ("time", t), ("event", e)) if not np.isfinite(a[i])] or ["survival"]
            skipped.append({"id": case_id(df, id, int(i)), "reason": f"NaN or missing {', '.join(what)}"})
        df, risk, t, e = df.filter(pl.Series(finite)), risk[finite], t[finite], e[finite]
        surv = None if surv is None else surv[finite]
    event_b = e.astype(bool)
    if not event_b.any():
        raise ConfigError(f"event column {ecol!r}: no case has an event (all {e.size} censored); nothing to evaluate")
    if e.size < 4:
        raise ConfigError(f"survival analysis needs at least 4 cases, got {e.size}")
    given = times is not None
    times = _check_times(default_times(t, e) if times is None else list(np.atleast_1d(times)), t, e)
    if surv is not None:
        surv = surv.reshape(surv.shape[0], -1)
        if surv.shape[1] != len(times):
            raise ConfigError(
                f"survival column(s) {', '.join(surv_cols)}: {surv.shape[1]} values per case for "
                f"{len(times)} times ({times})"
            )
        if len(times) < 2:
            raise ConfigError("the integrated Brier score needs survival probabilities at 2 or more times")
        out = (surv < 0) | (surv > 1)
        if out.any():
            i = int(np.flatnonzero(out.any(axis=1))[0])
            raise ConfigError(
                f"survival column(s) {', '.join(surv_cols)}: case {case_id(df, id, i)!r} has "
                f"{np.round(surv[i], 4).tolist()}, not probabilities in [0, 1]"
            )
    batch = nd.assoc({PRED: risk, TIME: t, EVENT: e.astype(np.int64)}, keys.SAMPLE_ID, df[id].to_list())
    if surv is not None:
        batch[SURVIVAL] = surv
    results = base_results(
        "survival",
        pred=pred,
        target=target,
        id=id,
        score=[score],
        label=[f"{tcol} (time)", f"{ecol} (event)"],
        counts={"events": int(event_b.sum()), "censored": int((~event_b).sum())},
        num_samples=int(e.size),
        skipped=skipped,
        ci=ci,
        rng=rng,
        level=level,
        method=method,
        rule="none: risk scores ranked (higher = earlier event)",
        extra_inputs={"time": tcol, "event": ecol, "survival": surv_cols},
    )
    results["settings"].update(
        {"times": times, "times_rule": "given" if given else "quartiles of the event times", "tau": tau}
    )
    metrics = survival_metrics(times, tau=tau, with_survival=surv is not None)
    results.update(bootstrap_metrics(metrics, batch, ci=ci, rng=rng, level=level, method=method, progress=progress))
    g, names, cuts = risk_groups(risk, groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        test = (
            logrank(t, event_b, g)
            if np.unique(g).size > 1
            else {"statistic": float("nan"), "p_value": float("nan"), "dof": 0}
        )
    curves, table = {}, {}
    for k, name in enumerate(names):
        m = g == k
        if not m.any():
            continue
        ut, s = kaplan_meier(t[m], event_b[m])
        below = np.flatnonzero(s <= 0.5)
        table[name] = {
            "cases": int(m.sum()),
            "events": int(event_b[m].sum()),
            "median_survival": float(ut[below[0]]) if below.size else None,
            **{f"survival_at_{x:g}": float(step_at(ut, s, x)) for x in times},
        }
        curves[name] = (ut, s)
    if not isinstance(groups, (int, np.integer)):
        rule = "the given cut points"
    else:
        rule = {2: "the median", 3: "the tertiles", 4: "the quartiles"}.get(int(groups), f"{groups} quantile groups")
    results["risk_groups"] = {"cuts": cuts, "rule": rule, "groups": table, "logrank": test}
    results["metrics"]["logrank"] = {"statistic": {"value": test["statistic"]}, "p_value": {"value": test["p_value"]}}
    data = {"risk": risk, "time": t, "event": event_b, "group": g, "names": names, "curves": curves, "time_name": tcol}
    return results, data


def _td_auc_curve(data: Mapping, times: list[float], *, ci: int, rng: Rng, level: float):
    """AUC(t) on a grid of event times between the 5th and 95th percentiles, and its band from a few resamples."""
    t, e = data["time"], data["event"]
    ev = t[e]
    grid = np.unique(np.quantile(ev, np.linspace(0.05, 0.95, _CURVE_POINTS)))
    grid = grid[(grid >= t.min()) & (grid < t.max())]
    grid = np.unique(np.concatenate([grid, times]))
    metric = _TDAUCResamples(pred=PRED, time=TIME, event=EVENT, times=tuple(grid))
    batch = {PRED: data["risk"], TIME: t, EVENT: e.astype(np.int64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        cols = metric.extract(batch)
        value = metric.compute(metric.update(metric.init(), batch))
        auc = np.array([value[f"{x:g}"] for x in grid])
        band = None
        if ci:
            n = min(ci, _BAND_RESAMPLES)
            boots = [metric.resampled(cols, c) for c in iter_resample_counts(n, np.zeros(t.size), rng=rng)]
            rows = np.stack([np.concatenate([b[f"{x:g}"] for b in boots]) for x in grid], axis=1)
            band = tuple(np.nanquantile(rows, [(1 - level) / 2, (1 + level) / 2], axis=0))
    return grid, auc, band


def _section(results: Mapping, level: float) -> str:
    m, s, rg = results["metrics"], results["settings"], results["risk_groups"]
    ci_head = f"{round(level * 100, 1):g}% CI"

    def row(name, node):
        value = ci_cell({"value": node["value"]})
        return [name, value, ci_cell(node)[len(value) :].strip()]

    tau = f" (events before {s['tau']:g})" if s.get("tau") is not None else ""
    rows = [row("Harrell's C", m["harrell_c"]), row(f"Uno's C{tau}", m["uno_c"])]
    for k, node in m["td_auc"].items():
        rows.append(
            row("time-dependent AUC, mean over the times" if k == "mean" else f"time-dependent AUC at {k}", node)
        )
    if "ibs" in m:
        rows.append(row(f"integrated Brier score ({s['times'][0]:g} to {s['times'][-1]:g})", m["ibs"]))
    times_text = ", ".join(f"{x:g}" for x in s["times"])
    text = (
        "## Survival\n\n"
        f"Risk scores are ranked, higher = earlier event. The time-dependent AUC (cumulative cases, dynamic "
        f"controls) is evaluated at {times_text} ({s['times_rule']}).\n\n"
        + md_table(["metric", "value", ci_head], rows)
    )
    if "ibs" not in m:
        text += (
            "\nThe integrated Brier score needs predicted survival probabilities at the times "
            "(`survival=` / `--survival`); none were given.\n"
        )
    lr = rg["logrank"]
    cut = ", ".join(f"{c:.4g}" for c in rg["cuts"])
    grows = []
    for name, gstat in rg["groups"].items():
        med = gstat["median_survival"]
        grows.append(
            [
                name,
                gstat["cases"],
                gstat["events"],
                "not reached" if med is None else f"{med:g}",
                *[format(gstat[f"survival_at_{x:g}"], ".3f") for x in s["times"]],
            ]
        )
    p = lr["p_value"]
    ptext = "= nan" if p is None or not np.isfinite(p) else ("< 0.0001" if p < 1e-4 else f"= {p:.4f}")
    text += (
        f"\n### Predicted risk groups\n\nCases split at the predicted risk {cut} ({rg['rule']}). Log-rank test: "
        f"χ² = {lr['statistic']:.3f}, {lr['dof']} degree(s) of freedom, p {ptext}.\n\n"
        + md_table(["group", "cases", "events", "median survival", *[f"S({x:g})" for x in s["times"]]], grows)
    )
    return text


def write_survival(
    out: pathlib.Path, results: dict, data: Mapping, *, ci: int, rng: Rng, level: float, plots: bool
) -> None:
    """The survival report into ``out``: metrics.json, report.txt, report.md and, with ``plots``, the figures."""
    from fusefn.analyze.task_plots import plot_kaplan_meier, plot_td_auc

    figures = []
    if plots:
        label = data["time_name"]
        groups = {
            n: (data["time"][data["group"] == k], data["event"][data["group"] == k])
            for k, n in enumerate(data["names"])
            if n in data["curves"]
        }
        plot_kaplan_meier(
            groups, data["curves"], results["risk_groups"]["logrank"], out / "kaplan_meier.png", time_label=label
        )
        grid, auc, band = _td_auc_curve(
            data, results["settings"]["times"], ci=ci, rng=rng.child("td_auc_band"), level=level
        )
        plot_td_auc(grid, auc, band, results["metrics"]["td_auc"], out / "td_auc.png", level=level, time_label=label)
        n_band = min(ci, _BAND_RESAMPLES)
        figures = [
            (
                "Kaplan–Meier curves of the predicted risk groups",
                "kaplan_meier.png",
                "Survival of the cases in each predicted risk group (ticks: censorings), numbers at risk below; "
                "the log-rank test compares the groups.",
            ),
            (
                "time-dependent AUC",
                "td_auc.png",
                "Cumulative/dynamic AUC against time"
                + (f", shaded: the central {round(level * 100, 1):g} % of {n_band} resampled curves" if ci else "")
                + "; the points are the report's times with their intervals.",
            ),
        ]
    write_task(out, results, level=level, section=_section(results, level), figures=figures)
