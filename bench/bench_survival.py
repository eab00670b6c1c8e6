"""Survival and regression metrics (issue 18): Harrell's C, its bootstrap CI, and the five regression metrics.

Rows, each system on identical inputs in this process:

- ``metrics.cindex.2e4``: Harrell's C on 20,000 cases (times on a grid of 1,000 values: many ties, ~50 % censored).
  fusefn ``HarrellC`` (divide and conquer over the time-sorted cases, O(n log² n)); lifelines
  ``utils.concordance_index(time, -risk, event)`` (FuseMedML's ``MetricCIndex`` calls exactly this);
  scikit-survival ``concordance_index_censored``.
- ``metrics.cindex_ci.500``: Harrell's C with a 1,000-resample percentile bootstrap on 500 cases. fusefn
  ``Bootstrap(HarrellC)`` (all resamples as one weighted pair count); lifelines called once per resample on the
  same resamples, as FuseMedML's ``MetricConfidenceInterval(MetricCIndex)`` does.
- ``metrics.regression.1e6``: MAE, RMSE, R², Pearson and Spearman of 10⁶ (prediction, target) pairs. fusefn's five
  reducers, one ``update`` each; scikit-learn ``mean_absolute_error`` / ``root_mean_squared_error`` / ``r2_score``
  and SciPy ``pearsonr`` / ``spearmanr``.
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

LIFELINES = "lifelines"
SKSURV = "scikit-survival"
SCIPY = "scikit-learn + SciPy"


def _survival(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    t = np.round(rng.exponential(np.exp(-risk)) * 100) / 100
    c = np.round(rng.exponential(1.0, n) * 100) / 100
    return {"risk": risk, "time": np.minimum(t, c), "event": (t <= c).astype(int)}


def cindex_rows(rec, args) -> None:
    n = 4000 if args.quick else 20_000
    d = _survival(n)
    name = "metrics.cindex.2e4"
    from fusefn.metrics.survival import HarrellC

    m = HarrellC(pred="risk", time="time", event="event")

    def ours():
        return m.compute(m.update(m.init(), d))

    peers = {C.FUSEFN: (ours, "HarrellC, one update")}
    lifelines, why_l = C.optional_import("lifelines.utils", "concordance_index")
    sks, why_s = C.optional_import("sksurv.metrics", "concordance_index_censored")
    if lifelines is not None:
        peers[LIFELINES] = (lambda: lifelines.concordance_index(d["time"], -d["risk"], d["event"]), "defaults")
    else:
        rec.skip(name, LIFELINES, why_l)
    if sks is not None:
        e = d["event"].astype(bool)
        peers[SKSURV] = (lambda: sks.concordance_index_censored(e, d["time"], d["risk"])[0], "tied_tol=1e-8")
    else:
        rec.skip(name, SKSURV, why_s)
    for system, (fn, settings) in peers.items():
        with C.guard(rec, name, system):
            value = float(fn())
            t = C.measure(fn, repeats=args.repeats, warmup=args.warmup)
            rec.add(name, system, t, figure="time", unit="s", n=n, extra={"value": value}, settings=settings)
            print(f"  {system}: C = {value:.12f}")


def cindex_ci_rows(rec, args) -> None:
    from fusefn import Rng
    from fusefn.metrics import Bootstrap
    from fusefn.metrics.bootstrap import resample_counts
    from fusefn.metrics.survival import HarrellC

    n, b = 500, 200 if args.quick else 1000
    d = _survival(n, seed=1)
    name = "metrics.cindex_ci.500"
    ci = Bootstrap(HarrellC(pred="risk", time="time", event="event"), n=b, rng=Rng(0))

    def ours():
        return ci.compute(ci.update(ci.init(), d))

    with C.guard(rec, name, C.FUSEFN):
        r = ours()
        t = C.measure(ours, repeats=args.repeats, warmup=args.warmup)
        rec.add(
            name,
            C.FUSEFN,
            t,
            figure="time",
            unit="s",
            n=n,
            extra={"value": r["value"], "lower": r["lower"], "upper": r["upper"]},
            settings=f"Bootstrap(HarrellC, n={b}), percentile",
        )
        print(f"  fusefn: {r['value']:.6f} [{r['lower']:.6f}, {r['upper']:.6f}]")
    lifelines, why = C.optional_import("lifelines.utils", "concordance_index")
    if lifelines is None:
        rec.skip(name, LIFELINES, why)
        return
    counts = resample_counts(b, np.zeros(n, int), rng=Rng(0))

    def theirs():
        vals = []
        for row in counts:
            idx = np.repeat(np.arange(n), row)
            vals.append(lifelines.concordance_index(d["time"][idx], -d["risk"][idx], d["event"][idx]))
        return np.percentile(vals, [2.5, 97.5])

    with C.guard(rec, name, LIFELINES):
        lo, hi = theirs()
        t = C.measure(theirs, repeats=args.repeats, warmup=min(args.warmup, 1))
        rec.add(
            name,
            LIFELINES,
            t,
            figure="time",
            unit="s",
            n=n,
            extra={"lower": lo, "upper": hi},
            settings=f"concordance_index once per resample ({b}), same resamples",
        )
        print(f"  lifelines loop: [{lo:.6f}, {hi:.6f}]")


def regression_rows(rec, args) -> None:
    from fusefn.metrics.regression import MAE, R2, RMSE, Pearson, Spearman

    n = 100_000 if args.quick else 1_000_000
    rng = np.random.default_rng(2)
    y = np.round(rng.normal(size=n), 2)
    p = y + rng.normal(scale=0.5, size=n)
    batch = {"p": p, "y": y}
    name = "metrics.regression.1e6"
    ms = [cls(pred="p", target="y") for cls in (MAE, RMSE, R2, Pearson, Spearman)]

    def ours():
        return [m.compute(m.update(m.init(), batch)) for m in ms]

    def theirs():
        from scipy import stats
        from sklearn import metrics as skm

        return [
            skm.mean_absolute_error(y, p),
            skm.root_mean_squared_error(y, p),
            skm.r2_score(y, p),
            stats.pearsonr(p, y)[0],
            stats.spearmanr(p, y)[0],
        ]

    for system, fn, settings in ((C.FUSEFN, ours, "5 reducers, one update each"), (SCIPY, theirs, "defaults")):
        with C.guard(rec, name, system):
            values = [float(v) for v in fn()]
            t = C.measure(fn, repeats=args.repeats, warmup=args.warmup)
            rec.add(name, system, t, figure="time", unit="s", n=n, extra={"values": values}, settings=settings)
            print(f"  {system}: {values}")


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("survival", args)
    rec = C.Recorder("survival", args)
    if args.device.startswith("cuda"):
        print("  these metrics are NumPy on the host: no CUDA rows")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cindex_rows(rec, args)
        cindex_ci_rows(rec, args)
        regression_rows(rec, args)


if __name__ == "__main__":
    main()
