"""Metrics: ROC AUC with a 10,000-resample stratified bootstrap CI on KNIGHT, and ROC AUC on 10⁶ scores (issue 6).

1. The 60 KNIGHT cases of ``src/fusefn_recipes/reference/fuse_eval`` (``CanAT-score`` vs ``Task1-target``), AUC plus a
   95 % percentile bootstrap CI stratified by the target, seed 1234, 10,000 resamples (500 with ``--quick``; both
   systems use the same count). Each timing includes reading the two CSV files.
   - FuseMedML 0.4.1: its own example 4 (``EvaluatorDefault().eval`` with
     ``CI(MetricAUCROC(...), stratum="target.Task1-target", rnd_seed=1234)``, other arguments at their defaults).
   - fusefn: ``Bootstrap(AUCROC(...), n=..., rng=Rng(1234), stratify=...)`` over the joined Polars frame.
2. ROC AUC of 10⁶ float32 scores with labels drawn as Bernoulli(score) (so AUC ≈ 0.83, with ties), the same
   arrays for all: scikit-learn ``roc_auc_score`` (defaults), torchmetrics ``binary_auroc`` (defaults, exact:
   ``thresholds=None``) and fusefn ``AUCROC`` (init → update → compute on a batch dict holding the arrays).
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

PRED = C.FUSE_EVAL / "example1_predictions.csv"
TARGET = C.FUSE_EVAL / "example1_targets.csv"


def fusemedml_ci(n_boot: int):
    from fuse.eval.evaluator import EvaluatorDefault
    from fuse.eval.metrics.classification.metrics_classification_common import MetricAUCROC
    from fuse.eval.metrics.metrics_common import CI

    out = {}

    def run():
        metrics = {
            "auc": CI(
                MetricAUCROC(pred="pred.CanAT-score", target="target.Task1-target"),
                stratum="target.Task1-target",
                num_of_bootstraps=n_boot,
                rnd_seed=1234,
            )
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = EvaluatorDefault().eval(ids=None, data={"pred": str(PRED), "target": str(TARGET)}, metrics=metrics)
        out["value"] = {k: float(res[f"metrics.auc.{k}"]) for k in ("org", "mean", "std", "conf_lower", "conf_upper")}

    return run, out


def fusefn_ci(n_boot: int):
    metrics, why = C.optional_import("fusefn.metrics", "Bootstrap", "AUCROC")
    if metrics is None:
        return None, why
    import polars as pl

    from fusefn import Rng

    boot = metrics.Bootstrap(
        metrics.AUCROC(pred="pred.CanAT-score", target="target.Task1-target"),
        n=n_boot,
        rng=Rng(1234),
        stratify="target.Task1-target",
    )
    out = {}

    def run():
        frame = pl.read_csv(PRED).join(pl.read_csv(TARGET), on="id", how="inner")
        batch = {
            "pred": {"CanAT-score": frame["CanAT-score"].to_numpy()},
            "target": {"Task1-target": frame["Task1-target"].to_numpy()},
        }
        res = boot.compute(boot.update(boot.init(), batch))
        out["value"] = {k: float(res[k]) for k in ("value", "mean", "std", "lower", "upper")}

    return (run, out), None


FUSEFN_BLOCKS = "fusefn tie-block path (before)"


def auc_data(n: int):
    rng = np.random.default_rng(0)
    score = rng.random(n, dtype=np.float32)
    label = (rng.random(n) < score).astype(np.int64)
    return score, label


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("metrics", args)
    rec = C.Recorder("metrics", args)
    if args.device.startswith("cuda"):
        print("  metrics reduce on the host (fusefn moves tensors to CPU itself): no CUDA rows")
        return

    # 1. KNIGHT AUC + stratified bootstrap CI
    n_boot = 500 if args.quick else 10_000
    name = "metrics.auc_ci.knight"
    m, why = C.peer("fuse.eval.metrics.metrics_common", "CI")
    if m is None:
        rec.skip(name, C.FUSEMEDML, why)
    else:
        with C.guard(rec, name, C.FUSEMEDML):
            run, out = fusemedml_ci(n_boot)
            # FuseMedML's loop is slow (≈ 50 s for 10,000 resamples): one warm-up is enough
            t = C.measure(run, repeats=args.repeats, warmup=min(args.warmup, 1))
            rec.add(
                name,
                C.FUSEMEDML,
                t,
                figure="time",
                unit="s",
                n=n_boot,
                n_unit="resamples",
                extra={"value": out["value"]},
                settings=f"its example 4: CI(MetricAUCROC), stratum=target, rnd_seed=1234, {n_boot} bootstraps",
            )
    sides, why = C.attempt(fusefn_ci, n_boot)
    if sides is None:
        rec.skip(name, C.FUSEFN, why)
    else:
        with C.guard(rec, name, C.FUSEFN):
            run, out = sides
            t = C.measure(run, repeats=args.repeats, warmup=args.warmup)
            rec.add(
                name,
                C.FUSEFN,
                t,
                figure="time",
                unit="s",
                n=n_boot,
                n_unit="resamples",
                extra={"value": out["value"]},
                settings=f"Bootstrap(AUCROC, n={n_boot}, rng=Rng(1234), stratify=target), percentile",
            )

    # 2. AUC on 10^6 scores
    n = 1_000_000
    score, label = auc_data(n)
    name = "metrics.auc.1e6"
    from sklearn.metrics import roc_auc_score

    val = {}

    def sk():
        val["sk"] = roc_auc_score(label, score)

    rec.add(
        name,
        C.SKLEARN,
        C.measure(sk, repeats=args.repeats, warmup=args.warmup),
        figure="time",
        unit="ms",
        n=n,
        n_unit="scores",
        settings="roc_auc_score defaults",
    )
    # torchmetrics and fusefn (now and its previous tie-block path) alternate every repetition: the ratio is close
    fns, settings = {}, {}
    tm, why = C.peer("torchmetrics.functional.classification", "binary_auroc")
    if tm is None:
        rec.skip(name, C.TORCHMETRICS, why)
    else:
        import torch

        ts, tl = torch.from_numpy(score), torch.from_numpy(label)

        def tmf():
            val["tm"] = float(tm.binary_auroc(ts, tl))

        fns[C.TORCHMETRICS] = tmf
        settings[C.TORCHMETRICS] = "binary_auroc defaults (thresholds=None: exact)"
    metrics, why = C.optional_import("fusefn.metrics", "AUCROC")
    if metrics is None:
        rec.skip(name, C.FUSEFN, why)
    else:
        from fusefn.metrics import _curves

        auc = metrics.AUCROC(pred="pred", target="target")
        batch = {"pred": score, "target": label}

        def ff():
            val["ff"] = float(auc.compute(auc.update(auc.init(), batch)))

        def blocks():
            # the path AUCROC took before issue 16: a stable float64 argsort, gathers and tie-block sums
            state = auc.update(auc.init(), batch)
            s, pos = state["pred"], state["target"] == 1
            order, starts, _ = _curves.tie_blocks(s)
            val["ff_blocks"] = float(_curves.auc(*_curves.block_counts(pos, order, starts))[0])

        fns[C.FUSEFN] = ff
        settings[C.FUSEFN] = "AUCROC init/update/compute (value sort + binary search)"
        fns[FUSEFN_BLOCKS] = blocks
        settings[FUSEFN_BLOCKS] = "AUCROC's previous path: stable argsort of float64, tie-block sums"
    for system, times in C.measure_interleaved(fns, repeats=args.repeats, warmup=args.warmup).items():
        if isinstance(times, Exception):
            rec.skip(name, system, f"{type(times).__name__}: {times}")
            continue
        rec.add(name, system, times, figure="time", unit="ms", n=n, n_unit="scores", settings=settings[system])
    print("  values:", {k: round(v, 6) for k, v in val.items()})


if __name__ == "__main__":
    main()
