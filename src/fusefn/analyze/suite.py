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
from fusefn.core import Rng
from fusefn.metrics import (
    AUCROC,
    ECE,
    MCC,
    Accuracy,
    AveragePrecision,
    BalancedAccuracy,
    Bootstrap,
    ConfusionMatrix,
    GroupBy,
    ROCCurve,
    evaluate,
)
from fusefn.metrics.bootstrap import iter_resample_counts

__all__ = ["classification_metrics", "run_suite", "roc_curves", "reliability", "OPERATING_POINT_STATS"]

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


def run_suite(
    inputs: AnalysisInputs,
    *,
    ci: int,
    rng: Rng,
    level: float = 0.95,
    method: str = "percentile",
    threshold: float | None = None,
) -> dict:
    """``{"metrics", "groups", "confusion_matrix", "warnings"}`` of the analysis (see :func:`fusefn.analyze.analyze`).

    Args:
        ci: bootstrap resamples (0: no intervals), stratified by the target.
        rng: the resampling stream of every interval.
        threshold: binary operating point (default 0.5); ignored for multi-class scores.
    """
    batch, names = inputs.batch, inputs.class_names
    binary = inputs.num_classes == 2
    thr = _threshold(inputs, threshold)
    scores = batch[PRED]
    point = classification_metrics(names, threshold=thr, probs_like=bool(np.all((scores >= 0) & (scores <= 1))))
    confusion = ConfusionMatrix(pred=PRED, target=TARGET, threshold=thr, num_classes=len(names), class_names=names)

    def boot(metric):
        return Bootstrap(metric, n=ci, rng=rng, level=level, stratify=TARGET, method=method)

    results: dict = {"metrics": {}, "groups": {}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        suite = {name: boot(m) if ci else m for name, m in point.items()}
        suite["confusion_matrix"] = confusion
        if ci:
            suite["operating_point"] = boot(confusion)
        values = evaluate(suite, batch)
        for name in point:
            value = values[name]
            if name == "ece" and not ci:
                value = {"ece": value["ece"], "mce": value["mce"]}
            results["metrics"][name] = value if ci else _leaves(value)
        cm_value = values["confusion_matrix"]
        shown = [names[1]] if binary else list(names)
        if ci:
            cm_ci = values["operating_point"]["classes"]
            per = {c: {s: cm_ci[c][s] for s in OPERATING_POINT_STATS} for c in shown}
        else:
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
            chunks = iter_resample_counts(min(ci, _ROC_BAND_RESAMPLES), state[TARGET], rng=rng)
            band = _stack_bands([roc.resampled(state, counts) for counts in chunks])
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
