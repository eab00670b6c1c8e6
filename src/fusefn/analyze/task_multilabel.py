"""The multi-label analysis: per-label ROC AUC, average precision, sensitivity and specificity with their macro
and micro averages, each with a bootstrap interval over cases; a per-label table and ROC small multiples.

Each case has one independent score and one 0/1 target per label (several findings on one image).
Scores are a list column (``model.head_0.probs``) or one column per label; targets likewise. The
metrics are :mod:`fusefn.metrics.multilabel`'s (scikit-learn's ``average="macro"`` / ``"micro"``);
sensitivity and specificity decide ``score >= threshold`` (default 0.5) for every label.

>>> import polars as pl
>>> from fusefn import Rng
>>> df = pl.DataFrame({"id": list("abcd"), "mass": [0.9, 0.4, 0.6, 0.1], "calc": [0.2, 0.7, 0.1, 0.8],
...                    "y_mass": [1, 0, 1, 0], "y_calc": [0, 1, 0, 0]})
>>> res, data = analyze_multilabel(df, id="id", score=["mass", "calc"], label=["y_mass", "y_calc"], ci=0, rng=Rng(0))
>>> res["metrics"]["auc"]["mass"], res["class_counts"]
({'value': 1.0}, {'mass': 2, 'calc': 1})
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from fusefn import keys, nd
from fusefn.analyze.inputs import PRED, SCORE_KINDS, TARGET, as_list
from fusefn.analyze.resampling import Progress
from fusefn.analyze.task_common import (
    base_results,
    bootstrap_metrics,
    case_id,
    ci_cell,
    md_table,
    numbers,
    pick_column,
    write_task,
)
from fusefn.core import Rng
from fusefn.errors import ConfigError
from fusefn.metrics import (
    MultiLabelAUC,
    MultiLabelAveragePrecision,
    MultiLabelSensitivity,
    MultiLabelSpecificity,
    UndefinedMetricWarning,
)
from fusefn.metrics.operating import roc_table

__all__ = ["analyze_multilabel", "multilabel_metrics", "write_multilabel"]

_TITLES = {
    "auc": "ROC AUC",
    "average_precision": "average precision",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}


def multilabel_metrics(label_names: Sequence[str], *, threshold: float = 0.5) -> dict:
    """The suite's metrics on :data:`~fusefn.analyze.PRED` ``(N, L)`` / :data:`~fusefn.analyze.TARGET` ``(N, L)``.

    >>> list(multilabel_metrics(["a", "b"]))
    ['auc', 'average_precision', 'sensitivity', 'specificity']
    """
    names = tuple(label_names)
    p, t = PRED, TARGET
    return {
        "auc": MultiLabelAUC(pred=p, target=t, label_names=names),
        "average_precision": MultiLabelAveragePrecision(pred=p, target=t, label_names=names),
        "sensitivity": MultiLabelSensitivity(pred=p, target=t, label_names=names, threshold=threshold),
        "specificity": MultiLabelSpecificity(pred=p, target=t, label_names=names, threshold=threshold),
    }


def _columns(df: pl.DataFrame, cols, what: str, defaults: Sequence[str]) -> list[str]:
    if cols is None:
        if what == "score":
            lists = [c for c in df.columns if isinstance(df[c].dtype, (pl.List, pl.Array))]
            probs = [c for c in lists if c.endswith("probs")]
            if probs or lists:
                return [(probs or lists)[0]]
        return [pick_column(df, None, what, defaults)]
    return [pick_column(df, c, what) for c in as_list(cols)]


def _names(score_cols: list[str], label_cols: list[str], width: int, given) -> tuple[str, ...]:
    if given is not None:
        names = tuple(str(n) for n in given)
        if len(names) != width:
            raise ConfigError(f"{len(names)} label names for {width} labels (scores per case)")
        return names
    if len(score_cols) > 1:
        return tuple(c.removesuffix("-score") for c in score_cols)
    if len(label_cols) > 1:
        return tuple(c.removesuffix("-target") for c in label_cols)
    return tuple(f"label {i}" for i in range(width))


def _probabilities(s: np.ndarray, kind: str, cols: list[str], df: pl.DataFrame, id: str) -> np.ndarray:
    if kind not in SCORE_KINDS:
        raise ConfigError(f"scores must be one of {', '.join(SCORE_KINDS)}, got {kind!r}")
    if kind == "logits":
        return 1.0 / (1.0 + np.exp(-s))
    if kind == "probabilities":
        out = np.isfinite(s) & ((s < 0) | (s > 1))
        if out.any():
            i = int(np.flatnonzero(out.any(axis=1))[0])
            raise ConfigError(
                f"score column(s) {', '.join(cols)}: case {case_id(df, id, i)!r} has {np.round(s[i], 4).tolist()}, "
                "outside [0, 1], so not probabilities; pass scores='logits' or 'raw' (--scores)"
            )
    return s


def analyze_multilabel(
    df: pl.DataFrame,
    *,
    id: str,
    score: str | Sequence[str] | None = None,
    label: str | Sequence[str] | None = None,
    label_names: Sequence[str] | None = None,
    threshold: float | None = None,
    scores: str = "probabilities",
    ci: int,
    rng: Rng,
    level: float = 0.95,
    method: str = "auto",
    skip_invalid: bool = False,
    progress: Progress | None = None,
    pred=None,
    target=None,
) -> tuple[dict, dict]:
    """``(results, data)`` of the joined frame ``df``: per-label, macro and micro metrics with intervals.

    Args:
        score: a list column of per-label scores or one column per label (default a ``*.probs`` list column).
        label: a list column of 0/1 targets or one column per label (default ``label`` / ``target`` / ``labels``).
        label_names: the labels' names (default the score columns' names without ``-score``, the target
            columns' without ``-target``, or ``label 0``, ``label 1``, …).
        threshold: the decision threshold of sensitivity and specificity (default 0.5; needed with raw scores).
        scores: ``"probabilities"`` (checked in [0, 1]), ``"logits"`` (sigmoid applied) or ``"raw"``.
        ci: resamples of whole cases (0: no intervals).
        skip_invalid: leave out (and list) cases with a NaN / missing score or target.
    """
    score_cols = _columns(df, score, "score", ())
    label_cols = _columns(df, label, "target", ("label", "target", "labels", keys.LABEL))
    s = numbers(df, score_cols, "score", id, allow_missing=skip_invalid)
    y = numbers(df, label_cols, "target", id, allow_missing=skip_invalid)
    s = s.reshape(s.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    if s.shape[1] != y.shape[1]:
        raise ConfigError(
            f"{s.shape[1]} scores per case ({', '.join(score_cols)}) but {y.shape[1]} targets per case "
            f"({', '.join(label_cols)}); multi-label needs one target per label score"
        )
    if s.shape[1] < 2 and label_names is None and len(score_cols) == 1:
        raise ConfigError(f"score column {score_cols[0]!r} gives one score per case: that is a binary analysis")
    names = _names(score_cols, label_cols, s.shape[1], label_names)
    bad = np.isfinite(y) & ~np.isin(y, (0.0, 1.0))
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise ConfigError(
            f"target column(s) {', '.join(label_cols)}: case {case_id(df, id, i)!r} has {y[i, j]:g} for label "
            f"{names[j]!r}, not 0 or 1"
        )
    if scores == "raw" and threshold is None:
        raise ConfigError("raw scores are not probabilities: give the decision threshold (threshold= / --threshold)")
    finite = np.isfinite(s).all(axis=1) & np.isfinite(y).all(axis=1)
    skipped = []
    if not finite.all():
        for i in np.flatnonzero(~finite):
            why = "NaN or missing score" if not np.isfinite(s[i]).all() else "NaN or missing target"
            skipped.append({"id": case_id(df, id, int(i)), "reason": why})
        df, s, y = df.filter(pl.Series(finite)), s[finite], y[finite]
    s = _probabilities(s, scores, score_cols, df, id)
    y = y.astype(np.int64)
    thr = 0.5 if threshold is None else float(threshold)
    batch = nd.assoc({PRED: s, TARGET: y}, keys.SAMPLE_ID, df[id].to_list())
    results = base_results(
        "multilabel",
        pred=pred,
        target=target,
        id=id,
        score=score_cols,
        label=label_cols,
        counts={n: int(y[:, j].sum()) for j, n in enumerate(names)},
        num_samples=int(y.shape[0]),
        skipped=skipped,
        ci=ci,
        rng=rng,
        level=level,
        method=method,
        rule=f"score >= {thr:g} for each label (sensitivity, specificity)",
    )
    results["inputs"]["scores"] = scores
    results["settings"]["threshold"] = thr
    results["settings"]["threshold_rule"] = (
        "the default, for every label; not tuned on these data" if threshold is None else "given by the user"
    )
    results["class_names"] = list(names)
    results.update(
        bootstrap_metrics(
            multilabel_metrics(names, threshold=thr),
            batch,
            ci=ci,
            rng=rng,
            level=level,
            method=method,
            progress=progress,
        )
    )
    return results, {"pred": s, "target": y, "names": names}


def _section(results: Mapping, level: float) -> str:
    m = results["metrics"]
    names = results["class_names"]
    counts = results["class_counts"]
    n = results["num_samples"]
    ci_txt = f"{round(level * 100, 1):g}% CI"
    rows = []
    for name in [*names, "macro", "micro"]:
        pos = f"{counts[name]} / {n}" if name in counts else ""
        label = f"**{name}**" if name in ("macro", "micro") else name
        rows.append([label, pos, *[ci_cell(m[k].get(name)) for k in _TITLES]])
    thr = results["settings"]["threshold"]
    return (
        "## Multi-label\n\n"
        f"Each metric per label, their macro mean (over the labels where it is defined) and the micro value (all "
        f"case × label pairs pooled); value [{ci_txt}]. Sensitivity and specificity decide score ≥ {thr:g}.\n\n"
        + md_table(["label", "positives", *_TITLES.values()], rows)
    )


def _curves(data: Mapping) -> dict:
    out = {}
    for j, name in enumerate(data["names"]):
        pos = data["target"][:, j].astype(bool)
        if pos.all() or not pos.any():
            continue
        t = roc_table(data["pred"][:, j], pos)
        out[name] = {"fpr": 1.0 - t["specificity"][0], "tpr": t["sensitivity"][0]}
    return out


def write_multilabel(
    out: pathlib.Path, results: dict, data: Mapping, *, ci: int, rng: Rng, level: float, plots: bool
) -> None:
    """The multi-label report into ``out``: metrics.json, report.txt, report.md and, with ``plots``, the figure."""
    from fusefn.analyze.task_plots import plot_multilabel_roc

    figures = []
    if plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            curves = _curves(data)
        if curves:
            plot_multilabel_roc(curves, results["metrics"]["auc"], out / "roc_per_label.png")
            figures = [
                (
                    "ROC curve per label",
                    "roc_per_label.png",
                    "True against false positive rate of each label over every threshold; the panel's legend "
                    "gives its AUC with the bootstrap interval.",
                )
            ]
    write_task(out, results, level=level, section=_section(results, level), figures=figures)
