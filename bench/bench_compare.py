"""Comparing two models on the same cases (issue 18): DeLong's test and the paired bootstrap of an AUC difference.

Rows, each system on identical inputs in this process:

- ``metrics.delong.5e3``: DeLong's test of two scores on 5,000 cases (30 % positive, scores rounded to 2 decimals:
  many ties), from arrays in memory to the p-value. fusefn ``metrics.comparison.delong`` (midranks, Sun & Xu 2014:
  O(N log N)); FuseMedML ``ModelComparison.delong_auc_test``, the function its ``MetricDelongsTest`` calls (the
  positive × negative kernel matrices: O(N²) time and memory, which is why the row stops at 5,000 cases — 10⁵ cases
  need tens of GB there).
- ``metrics.paired_bootstrap.1000``: the AUC difference of two models on 1,000 cases with a 1,000-resample
  bootstrap stratified by the target (200 with ``--quick``). fusefn ``metrics.comparison.paired_bootstrap``
  (one matrix of multiplicities, every resample of both models in one pass); FuseMedML its example 5 with
  ``PairedBootstrap(MetricAUCROC(b), MetricAUCROC(a), stratum="target", num_of_bootstraps=...)`` through
  ``EvaluatorDefault().eval`` on a pandas frame (one AUC per model per resample).
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C


def _scores(n: int, seed: int, digits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    y = (gen.random(n) < 0.3).astype(np.int64)
    a = np.round(1 / (1 + np.exp(-(2.0 * y - 1.0 + 1.3 * gen.normal(size=n)))), digits)
    b = np.round(1 / (1 + np.exp(-(2.4 * y - 1.2 + 1.3 * gen.normal(size=n)))), digits)
    return y, a, b


def delong_rows(rec, args) -> None:
    n = 5_000
    y, a, b = _scores(n, 0, 2)
    name = "metrics.delong.5e3"
    ours, why = C.optional_import("fusefn.metrics.comparison", "delong")
    if ours is None:
        rec.skip(name, C.FUSEFN, why)
    else:
        with C.guard(rec, name, C.FUSEFN):
            r = ours.delong(a, b, y)
            t = C.measure(lambda: ours.delong(a, b, y), repeats=args.repeats, warmup=args.warmup)
            extra = {"z": r["z"], "p_value": r["p_value"], "auc_a": r["auc_a"], "auc_b": r["auc_b"]}
            rec.add(name, C.FUSEFN, t, figure="time", unit="ms", n=n, extra=extra, settings="delong(a, b, y)")
            print(f"  fusefn: z {r['z']:.12f}, p {r['p_value']:.12g}")
    theirs, why = C.peer("fuse.eval.metrics.libs.model_comparison", "ModelComparison")
    if theirs is None:
        rec.skip(name, C.FUSEMEDML, why)
        return
    test = theirs.ModelComparison.delong_auc_test
    with C.guard(rec, name, C.FUSEMEDML):
        f = test(list(a), list(b), list(y))
        t = C.measure(lambda: test(list(a), list(b), list(y)), repeats=args.repeats, warmup=min(args.warmup, 1))
        extra = {
            "z": float(f["z"]),
            "p_value": float(f["p_value"]),
            "auc_a": float(f["auc1"]),
            "auc_b": float(f["auc2"]),
        }
        rec.add(
            name, C.FUSEMEDML, t, figure="time", unit="ms", n=n, extra=extra, settings="ModelComparison.delong_auc_test"
        )
        print(f"  FuseMedML: z {f['z']:.12f}, p {f['p_value']:.12g}")


def paired_rows(rec, args) -> None:
    n, b_count = 1_000, 200 if args.quick else 1_000
    y, a, b = _scores(n, 1, 3)
    name = "metrics.paired_bootstrap.1000"
    mod, why = C.optional_import("fusefn.metrics.comparison", "paired_bootstrap")
    if mod is None:
        rec.skip(name, C.FUSEFN, why)
    else:
        from fusefn import Rng
        from fusefn.metrics import AUCROC

        batches = {"a": {"p": a, "y": y}, "b": {"p": b, "y": y}}
        auc = {"auc": AUCROC(pred="p", target="y")}

        def ours():
            return mod.paired_bootstrap(auc, batches, n=b_count, rng=Rng(0), stratify="y")["differences"]["b - a"]

        with C.guard(rec, name, C.FUSEFN):
            d = ours()["auc"]
            t = C.measure(ours, repeats=args.repeats, warmup=args.warmup)
            rec.add(
                name,
                C.FUSEFN,
                t,
                figure="time",
                unit="s",
                n=b_count,
                n_unit="resamples",
                extra={k: d[k] for k in ("value", "lower", "upper", "sign_flip")},
                settings=f"paired_bootstrap(AUCROC, n={b_count}, stratify=target), percentile",
            )
            print(f"  fusefn: {d['value']:.6f} [{d['lower']:.6f}, {d['upper']:.6f}], other sign {d['sign_flip']}")
    peer, why = C.peer("fuse.eval.metrics.metrics_model_comparison", "PairedBootstrap")
    if peer is None:
        rec.skip(name, C.FUSEMEDML, why)
        return
    from collections import OrderedDict

    import pandas as pd
    from fuse.eval.evaluator import EvaluatorDefault
    from fuse.eval.metrics.classification.metrics_classification_common import MetricAUCROC

    frame = pd.DataFrame({"id": np.arange(n), "a": a, "b": b, "target": y})
    out = {}

    def theirs():
        test, ref = MetricAUCROC(pred="b", target="target"), MetricAUCROC(pred="a", target="target")
        pb = peer.PairedBootstrap(test, ref, stratum="target", num_of_bootstraps=b_count, rnd_seed=0)
        res = EvaluatorDefault().eval(ids=None, data=frame, metrics=OrderedDict([("cmp", pb)]))
        out.update({k: float(res[f"metrics.cmp.{k}"]) for k in ("diff", "p_value")})

    with C.guard(rec, name, C.FUSEMEDML):
        theirs()
        t = C.measure(theirs, repeats=args.repeats, warmup=min(args.warmup, 1))
        rec.add(
            name,
            C.FUSEMEDML,
            t,
            figure="time",
            unit="s",
            n=b_count,
            n_unit="resamples",
            extra=dict(out),
            settings=f"its example 5 with MetricAUCROC: PairedBootstrap(stratum=target, {b_count} bootstraps)",
        )
        print(f"  FuseMedML: mean diff {out['diff']:.6f}, superiority p {out['p_value']}")


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("compare", args)
    rec = C.Recorder("compare", args)
    if args.device.startswith("cuda"):
        print("  these tests are NumPy on the host: no CUDA rows")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        delong_rows(rec, args)
        paired_rows(rec, args)


if __name__ == "__main__":
    main()
