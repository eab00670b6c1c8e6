"""The analyzer's metric suite: the standard classification metrics, run by :func:`fusefn.metrics.evaluate`.

Pure compute on an :class:`~fusefn.analyze.AnalysisInputs`: nothing is read or written here.
Every interval of one run is drawn from the same ``rng`` (each metric's resamples are the
same rows of the same stream, so intervals of different metrics are paired).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from fusefn.analyze.inputs import PRED, TARGET, AnalysisInputs, group_key
from fusefn.analyze.resampling import CELLS_FROM, Progress, make_cells, resample_suite
from fusefn.core import Rng
from fusefn.errors import ConfigError
from fusefn.metrics import (
    AUCROC,
    ECE,
    MCC,
    Accuracy,
    AveragePrecision,
    BalancedAccuracy,
    ConfusionMatrix,
    GroupBy,
    ROCCurve,
    evaluate,
)
from fusefn.metrics.bootstrap import METHODS, iter_resample_counts, summarize

__all__ = [
    "BIASED",
    "INTERVAL_METHODS",
    "OPERATING_POINT_STATS",
    "classification_metrics",
    "interval_methods",
    "outside_notes",
    "reliability",
    "roc_curves",
    "run_suite",
]

BIASED = ("average_precision", "ece")
"""Metrics whose resamples are biased (a resample repeats samples): ``method="auto"`` gives them BCa intervals."""

INTERVAL_METHODS = ("auto", *METHODS)
"""``auto`` (BCa for :data:`BIASED`, percentile otherwise) or one method for every metric."""

OPERATING_POINT_STATS = ("sensitivity", "specificity", "precision", "npv", "f1")
"""The per-class statistics of the confusion matrix reported under ``operating_point``."""

_ROC_BAND_RESAMPLES = 1000


def _leaves(value):
    """Numbers as ``{"value": x}`` leaves: results without a CI have the same shape as with one."""
    if isinstance(value, Mapping):
        return {k: _leaves(v) for k, v in value.items()}
    return {"value": value}


def _threshold(inputs: AnalysisInputs, threshold: float | None) -> float | None:
    return threshold if inputs.num_classes == 2 else None


def classification_metrics(
    class_names: Sequence[str], *, threshold: float | None = None, probs_like: bool = True
) -> dict:
    """The suite's point metrics on :data:`PRED` / :data:`TARGET`: AUC, AP, accuracy, balanced accuracy, MCC, ECE.

    ``threshold`` is the binary operating point (None: 0.5, or argmax when multi-class);
    ECE is left out when the scores are not probabilities (``probs_like=False``).

    >>> sorted(classification_metrics(("0", "1")))
    ['accuracy', 'auc', 'average_precision', 'balanced_accuracy', 'ece', 'mcc']
    """
    p, t, names, c = PRED, TARGET, tuple(class_names), len(class_names)
    point = {
        "auc": AUCROC(pred=p, target=t, class_names=names),
        "average_precision": AveragePrecision(pred=p, target=t, class_names=names),
        "accuracy": Accuracy(pred=p, target=t, threshold=threshold, num_classes=c),
        "balanced_accuracy": BalancedAccuracy(pred=p, target=t, threshold=threshold, num_classes=c),
        "mcc": MCC(pred=p, target=t, threshold=threshold, num_classes=c),
    }
    if probs_like:
        point["ece"] = ECE(pred=p, target=t)
    return point


def interval_methods(names: Sequence[str], method: str = "auto") -> dict[str, str]:
    """The interval method of each metric: ``method`` for all, or with ``"auto"`` BCa for :data:`BIASED` ones.

    >>> interval_methods(["auc", "ece"])
    {'auc': 'percentile', 'ece': 'bca'}
    """
    if method not in INTERVAL_METHODS:
        raise ConfigError(f"run_suite.method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}")
    if method != "auto":
        return {n: method for n in names}
    return {n: "bca" if n in BIASED else "percentile" for n in names}


def outside_notes(metrics: Mapping, methods: Mapping[str, str], level: float = 0.95) -> list[str]:
    """One sentence per value that lies outside its own interval, saying so and why that happens.

    >>> outside_notes({"ece": {"value": 0.01, "lower": 0.011, "upper": 0.026, "mean": 0.018}}, {"ece": "bca"})[0][:60]
    'ece 0.0100 lies below its 95% bca interval [0.0110, 0.0260]:'
    """
    notes = []

    def walk(name, node, method):
        if isinstance(node, Mapping) and "lower" in node and "value" in node:
            v, lo, hi = node["value"], node["lower"], node["upper"]
            if any(x is None or not np.isfinite(x) for x in (v, lo, hi)) or lo <= v <= hi:
                return
            side = "below" if v < lo else "above"
            mean = node.get("mean")
            drift = "" if mean is None else f" (resampled mean {mean:.4f})"
            notes.append(
                f"{name} {v:.4f} lies {side} its {round(level * 100):g}% {method} interval [{lo:.4f}, {hi:.4f}]: "
                f"resampling biases this statistic{drift}, so nearly all resamples fall on one side of the "
                "estimate; the interval gives the spread, read the estimate as it is"
                + ("" if method == "bca" else " (--method bca corrects the interval for the bias)")
            )
        elif isinstance(node, Mapping):
            for k, sub in node.items():
                walk(f"{name}.{k}", sub, method)

    for name, node in metrics.items():
        walk(name, node, methods.get(name, "percentile"))
    return notes


def run_suite(
    inputs: AnalysisInputs,
    *,
    ci: int,
    rng: Rng,
    level: float = 0.95,
    method: str = "auto",
    threshold: float | None = None,
    progress: Progress | None = None,
) -> dict:
    """``{"metrics", "groups", "confusion_matrix", "methods", "notes", "warnings"}`` of the analysis.

    Args:
        ci: bootstrap resamples (0: no intervals), stratified by the target; every metric is
            evaluated on the same resamples (:func:`fusefn.analyze.resampling.resample_suite`).
        rng: the resampling stream of every interval.
        method: the interval method of every metric, or ``"auto"``: BCa for the statistics a
            resample biases (:data:`BIASED`: ECE, average precision), percentile for the others.
        threshold: binary operating point (default 0.5); ignored for multi-class scores.
        progress: ``progress(done, total)`` after each chunk of resamples.

    ``notes`` holds a sentence for each value outside its own interval (see :func:`outside_notes`).
    """
    batch, names = inputs.batch, inputs.class_names
    binary = inputs.num_classes == 2
    thr = _threshold(inputs, threshold)
    scores = batch[PRED]
    point = classification_metrics(names, threshold=thr, probs_like=bool(np.all((scores >= 0) & (scores <= 1))))
    confusion = ConfusionMatrix(pred=PRED, target=TARGET, threshold=thr, num_classes=len(names), class_names=names)
    methods = interval_methods([*point, "operating_point"], method)

    results: dict = {"metrics": {}, "groups": {}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = evaluate({**point, "confusion_matrix": confusion}, batch)
        cm_value = values["confusion_matrix"]
        shown = [names[1]] if binary else list(names)
        if ci:
            resampled = {**point, "operating_point": confusion}
            exact = {**values, "operating_point": cm_value}
            boots, jack = resample_suite(
                resampled,
                batch,
                n=ci,
                rng=rng,
                jackknife=[n for n in resampled if methods[n] == "bca"],
                values=exact,
                progress=progress,
            )
            for name in point:
                results["metrics"][name] = summarize(
                    values[name], boots[name], level, methods[name], name, jack.get(name)
                )
            op = summarize(
                cm_value,
                boots["operating_point"],
                level,
                methods["operating_point"],
                "operating_point",
                jack.get("operating_point"),
            )
            per = {c: {s: op["classes"][c][s] for s in OPERATING_POINT_STATS} for c in shown}
        else:
            for name in point:
                value = values[name]
                if name == "ece":
                    value = {"ece": value["ece"], "mce": value["mce"]}
                results["metrics"][name] = _leaves(value)
            per = _leaves({c: {s: cm_value["classes"][c][s] for s in OPERATING_POINT_STATS} for c in shown})
        results["metrics"]["operating_point"] = per[shown[0]] if binary else per
        for i, g in enumerate(inputs.groups):
            by = group_key(i)
            per_group = {
                "auc": GroupBy(point["auc"], by=by),
                "accuracy": GroupBy(point["accuracy"], by=by),
            }
            results["groups"][g] = evaluate(per_group, batch)
        results["confusion_matrix"] = cm_value
    results["methods"] = methods if ci else {}
    results["notes"] = outside_notes(results["metrics"], methods, level) if ci else []
    results["warnings"] = sorted({str(w.message) for w in caught})
    return results


def roc_curves(inputs: AnalysisInputs, *, ci: int, rng: Rng) -> tuple[dict, dict | None]:
    """The ROC curve per class and, when ``ci``, the TPR of up to 1,000 resamples on a fixed FPR grid.

    The resamples are evaluated a chunk at a time: memory stays bounded (one (resamples, samples)
    weight matrix of 10⁶ samples was 19 GB), and only the 101 grid points of each are kept.

    Returns ``(curves, band)``: ``curves[class]`` holds ``fpr``, ``tpr``, ``thresholds``
    (binary: the positive class only); ``band[class]`` holds ``fpr`` (101 points) and ``tpr``
    (resamples × 101), or ``band`` is None without ``ci``.
    """
    names = inputs.class_names
    roc = ROCCurve(pred=PRED, target=TARGET, class_names=names)
    state = roc.update(roc.init(), inputs.batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curves = roc.compute(state)
        band = None
        if ci:
            n = min(ci, _ROC_BAND_RESAMPLES)
            pred = state[PRED]
            if pred.ndim == 1 and pred.size > CELLS_FROM and np.unique(state[TARGET]).size == 2:
                # a figure: the band of the curve through the cells' (1024 quantile bins) points
                cells = make_cells(pred, state[TARGET])
                cols, chunks = roc.extract(cells.batch), cells.iter_draws(n, rng=rng)
            else:
                cols, chunks = state, iter_resample_counts(n, state[TARGET], rng=rng)
            band = _stack_bands([roc.resampled(cols, counts) for counts in chunks])
    if len(names) == 2:
        curves, band = {names[1]: curves}, ({names[1]: band} if band is not None else None)
    return curves, band


def _stack_bands(parts: list):
    """One band from the bands of consecutive chunks of resamples: their ``tpr`` rows stacked."""
    if "tpr" in parts[0]:
        return {"fpr": parts[0]["fpr"], "tpr": np.concatenate([p["tpr"] for p in parts])}
    return {k: _stack_bands([p[k] for p in parts]) for k in parts[0]}


def reliability(inputs: AnalysisInputs) -> dict:
    """The reliability diagram of the scores (they must be probabilities): ECE's ``{"ece", "mce", "bins"}``."""
    return evaluate(ECE(pred=PRED, target=TARGET), inputs.batch)
