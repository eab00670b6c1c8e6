"""``analyze``: read the inputs, run the metric suite, write the report and the figures."""

from __future__ import annotations

import datetime
import os
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np
import polars as pl

from fusefn._atomic import atomic_dir
from fusefn.analyze.inputs import TARGET, as_list, fusefn_version, read_predictions, select_inputs, source_name
from fusefn.analyze.plots import draw_figures
from fusefn.analyze.report import write_markdown, write_results
from fusefn.analyze.resampling import Progress
from fusefn.analyze.suite import run_suite
from fusefn.analyze.task_operating import operating_points
from fusefn.analyze.task_operating import threshold_from as threshold_from_validation
from fusefn.core import Rng
from fusefn.errors import ConfigError

__all__ = ["TASKS", "analyze"]

TASKS = ("auto", "binary", "multiclass", "multilabel", "regression", "survival")
"""What ``analyze(task=...)`` analyzes; ``auto`` picks survival when ``time`` / ``event`` are given, multi-label
when ``label`` names several columns (or a list column), binary or multi-class from the scores otherwise."""

_RNG = Rng(1234)  # the default resampling stream (an Rng is immutable: one instance serves every call)
# What an ``out`` folder written before output sets carried their own listing may hold: it is replaced as a set.
# Figures a recipe adds next to the analyzer's (curves.png, ...) are PNGs too; ``.*.tmp``: a killed write's leftover.
OUTPUTS = ("metrics.json", "report.txt", "report.md", "*.png", ".*.tmp")


def _threshold_rule(binary: bool, threshold: float | None, chosen: dict | None = None) -> str:
    if not binary:
        return "argmax: the class with the highest score"
    if chosen is not None:
        return chosen["rule"]
    if threshold is None:
        return "the default, on the positive-class probability; not tuned on these data"
    return "given by the user (--threshold / threshold=)"


def analyze(
    pred,
    target=None,
    *,
    out: str | os.PathLike | None = None,
    task: str = "auto",
    id: str | None = None,
    score: str | Sequence[str] | None = None,
    label: str | Sequence[str] | None = None,
    fold: str | None = None,
    group: str | Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    ci: int = 10_000,
    rng: Rng = _RNG,
    level: float = 0.95,
    method: str = "auto",
    threshold: float | None = None,
    operating_point: str | Sequence[str] | None = None,
    threshold_from=None,
    time: str | None = None,
    event: str | None = None,
    times: Sequence[float] | None = None,
    tau: float | None = None,
    survival: str | Sequence[str] | None = None,
    risk_groups: int | Sequence[float] = 2,
    plots: bool = True,
    strict: bool = True,
    skip_invalid: bool = False,
    scores: str = "probabilities",
    progress: Progress | None = None,
) -> dict:
    """Analyze predictions: metrics with bootstrap CIs, per-fold / per-group values, report and plots.

    Args:
        pred: CSV/Parquet path or Polars frame, or several (one per fold, concatenated with a ``fold`` column).
        target: file/frame of targets joined on ``id``; None when ``label`` is a column of ``pred``.
        out: output folder (None: compute only, write nothing). Its files are replaced as a set: written
            into a temporary folder beside it that then takes its place, so a failure (a full disk, an error
            while plotting) leaves the previous complete set. It must not hold other files (an error says so).
        task: one of :data:`TASKS`: ``"binary"`` / ``"multiclass"`` (class scores and an integer label),
            ``"multilabel"`` (one score and one 0/1 target per label), ``"regression"`` (``score``: the
            prediction, ``label``: the true value), ``"survival"`` (``score``: a risk score, higher = earlier
            event, with ``time`` and ``event``), or ``"auto"``.
        id: id column (default ``id`` or ``sample_id``).
        score: one score column (binary positive-class score or a list column of class scores)
            or several columns (one per class or label). Default: a ``*.probs`` list column.
        label: target column (default ``label`` or ``target``); multi-label: a list column or one column per label.
        fold: column for per-fold values (default ``fold`` when it has several values).
        group: extra column(s) for per-group values (sex, site, …).
        class_names: names of the classes (multi-label: of the labels; default the score column names, or 0..C-1).
        ci: bootstrap resamples (0: no intervals), stratified by the target (whole cases for regression,
            survival and multi-label).
        rng: the resampling stream (the intervals and the ROC band); its seed is recorded in the report.
        method: interval method: ``"auto"`` (BCa for ECE and average precision, whose resamples are
            biased; percentile for the others), or ``"percentile"``, ``"basic"``, ``"normal"``, ``"bca"``
            for all. A value outside its own interval gets a note in ``results["notes"]`` and the report.
        threshold: operating point for binary decisions (default 0.5, or argmax); multi-label: the decision
            threshold of every label's sensitivity and specificity (default 0.5).
        operating_point: binary: ``"youden"``, ``"sens@spec=0.9"``, ``"spec@sens=0.9"`` (or several), each found
            on these predictions and reported with intervals under ``results["metrics"]["operating_points"]``.
        threshold_from: binary: validation predictions (path or frame, the same columns) on which the first
            ``operating_point`` (default Youden's J) is found; its threshold is the decision threshold here,
            and the report says where it came from.
        time, event: survival: the time and event (1 = event, 0 = censored) columns (default ``time``, ``event``).
        times: survival: the times of the time-dependent AUC (default the quartiles of the event times).
        tau: survival: Uno's C counts only the events before ``tau`` (default all).
        survival: survival: predicted ``S(t)`` at ``times`` (a list column or one column per time), for the
            integrated Brier score.
        risk_groups: survival: the number of quantile groups of the predicted risk (2: split at the median) or
            the cut points, for the Kaplan–Meier curves and the log-rank test.
        strict: when False, target ids without a prediction are left out (with a warning): the
            command line's ``--allow-partial``.
        skip_invalid: leave out samples with a NaN / infinite score or a missing label, listing
            them under ``"skipped"``, instead of stopping with an error naming them.
        scores: ``"probabilities"`` (checked: in [0, 1], class scores summing to 1), ``"logits"``
            (sigmoid / softmax applied first) or ``"raw"`` (ranking scores: no calibration; a binary
            ``threshold`` must be given).
        progress: ``progress(done, total)`` after each chunk of bootstrap resamples.

    Returns:
        The results dict written to ``metrics.json``: ``results["metrics"][name]`` is
        ``{"value", "mean", "std", "lower", "upper"}`` (only ``{"value"}`` when ``ci=0``), per
        class for multi-class metrics; ``results["groups"][column]`` the per-group values;
        ``results["task"]`` the task analyzed.

    >>> import polars as pl
    >>> df = pl.DataFrame({"id": list("abcdef"), "s": [.1, .2, .7, .4, .8, .9], "y": [0, 0, 0, 1, 1, 1]})
    >>> r = analyze(df, score="s", label="y", ci=200, rng=Rng(0))
    >>> round(r["metrics"]["auc"]["value"], 4)
    0.8889
    >>> reg = pl.DataFrame({"id": list("abcd"), "p": [1.0, 2.0, 2.5, 4.5], "y": [1.0, 2.0, 3.0, 4.0]})
    >>> analyze(reg, task="regression", score="p", label="y", ci=0)["metrics"]["mae"]
    {'value': 0.25}
    """
    if task not in TASKS:
        raise ConfigError(f"analyze.task must be one of {', '.join(TASKS)}, got {task!r}")
    df, id = read_predictions(pred, target, id=id, strict=strict)
    task = _resolve_task(task, df, label=label, time=time, event=event)
    if task in ("regression", "survival", "multilabel"):
        # multi-label decides every label at `threshold`; regression and survival take none
        no_threshold = threshold if task != "multilabel" else None
        _not_for(
            task,
            group=group,
            fold=fold,
            operating_point=operating_point,
            threshold_from=threshold_from,
            threshold=no_threshold,
        )
        return _analyze_task(
            task,
            df,
            pred=pred,
            target=target,
            out=out,
            id=id,
            score=score,
            label=label,
            class_names=class_names,
            ci=ci,
            rng=rng,
            level=level,
            method=method,
            threshold=threshold,
            time=time,
            event=event,
            times=times,
            tau=tau,
            survival=survival,
            risk_groups=risk_groups,
            plots=plots,
            skip_invalid=skip_invalid,
            scores=scores,
            progress=progress,
        )
    select = dict(
        id=id,
        score=score,
        label=label,
        fold=fold,
        group=group,
        class_names=class_names,
        skip_invalid=skip_invalid,
        scores=scores,
    )
    inputs = select_inputs(df, **select)
    binary = inputs.num_classes == 2
    if task == "binary" and not binary:
        raise ConfigError(f"task='binary' but the scores give {inputs.num_classes} classes; use task='multiclass'")
    if task == "multiclass" and binary:
        raise ConfigError("task='multiclass' but the scores give 2 classes; use task='binary'")
    chosen = None
    if threshold_from is not None:
        if threshold is not None:
            raise ConfigError("give either threshold= (--threshold) or threshold_from= (--threshold-from), not both")
        vdf, _ = read_predictions(threshold_from, None, id=id, strict=strict)
        validation = select_inputs(vdf, **{**select, "fold": None, "group": None})
        first = as_list(operating_point)[0] if operating_point else "youden"
        chosen = threshold_from_validation(validation, first, source=source_name(threshold_from))
        threshold = chosen["threshold"]
    if scores == "raw" and binary and threshold is None:
        raise ConfigError("raw scores are not probabilities: give the binary decision threshold (--threshold)")
    if inputs.skipped:
        warnings.warn(f"analyze: {len(inputs.skipped)} sample(s) skipped (see metrics.json 'skipped')", stacklevel=2)
    target_values = inputs.batch[TARGET]
    results: dict = {
        "task": "binary" if binary else "multiclass",
        "inputs": {
            "pred": [source_name(f) for f in as_list(pred)],
            "target": None if target is None else source_name(target),
            "id": id,
            "score": list(inputs.score),
            "scores": scores,
            "label": inputs.label,
            "groups": list(inputs.groups),
        },
        "settings": {
            "ci": ci,
            "seed": rng.seed,
            "level": level,
            "method": method,
            "stratified": "by target",
            "threshold": (0.5 if threshold is None else threshold) if binary else None,
            "threshold_rule": _threshold_rule(binary, threshold, chosen),
        },
        "num_samples": inputs.num_samples,
        "class_counts": {name: int(np.count_nonzero(target_values == i)) for i, name in enumerate(inputs.class_names)},
        "fusefn_version": fusefn_version(),
        "date": datetime.date.today().isoformat(),
        "skipped": list(inputs.skipped),
        "class_names": list(inputs.class_names),
    }
    if chosen is not None:
        results["settings"]["threshold_from"] = {k: v for k, v in chosen.items() if k != "rule"}
    results.update(
        run_suite(inputs, ci=ci, rng=rng, level=level, method=method, threshold=threshold, progress=progress)
    )
    if operating_point:
        results["metrics"]["operating_points"] = operating_points(
            inputs, operating_point, ci=ci, rng=rng, level=level, method=method
        )
    if out is None:
        return results
    with atomic_dir(out, owned=OUTPUTS) as tmp:
        _write(tmp, results, inputs, ci=ci, rng=rng, level=level, plots=plots)
    return results


def _resolve_task(task: str, df: pl.DataFrame, *, label, time, event) -> str:
    if task != "auto":
        return task
    if time is not None or event is not None:
        return "survival"
    if label is not None and not isinstance(label, str) and len(list(label)) > 1:
        return "multilabel"
    if isinstance(label, str) and label in df.columns and isinstance(df[label].dtype, (pl.List, pl.Array)):
        return "multilabel"
    if label is None and not {"label", "target"} & set(df.columns) and {"time", "event"} <= set(df.columns):
        return "survival"
    return "classification"


def _not_for(task: str, **given) -> None:
    extra = [k for k, v in given.items() if v]
    if extra:
        raise ConfigError(
            f"task={task!r} does not take {', '.join(f'{k}=' for k in extra)} (classification analyses only; operating_point / threshold_from: binary only)"
        )


def _analyze_task(task: str, df: pl.DataFrame, *, out, ci: int, rng: Rng, level: float, plots: bool, **kw) -> dict:
    """The regression, survival or multi-label analysis of ``df``, and its report written into ``out``."""
    from fusefn.analyze import task_multilabel, task_regression, task_survival

    common = dict(
        id=kw["id"],
        ci=ci,
        rng=rng,
        level=level,
        method=kw["method"],
        skip_invalid=kw["skip_invalid"],
        progress=kw["progress"],
        pred=kw["pred"],
        target=kw["target"],
    )
    label = kw["label"]
    if task == "regression":
        _single(label, "label", task)
        results, data = task_regression.analyze_regression(df, score=kw["score"], label=label, **common)
    elif task == "survival":
        _single(kw["score"], "score", task)
        results, data = task_survival.analyze_survival(
            df,
            score=kw["score"],
            time=kw["time"],
            event=kw["event"],
            times=kw["times"],
            tau=kw["tau"],
            survival=kw["survival"],
            groups=kw["risk_groups"],
            **common,
        )
    else:
        results, data = task_multilabel.analyze_multilabel(
            df,
            score=kw["score"],
            label=label,
            label_names=kw["class_names"],
            threshold=kw["threshold"],
            scores=kw["scores"],
            **common,
        )
    if results["skipped"]:
        warnings.warn(f"analyze: {len(results['skipped'])} case(s) skipped (see metrics.json 'skipped')", stacklevel=3)
    if out is None:
        return results
    with atomic_dir(out, owned=OUTPUTS) as tmp:
        if task == "regression":
            task_regression.write_regression(tmp, results, data, level=level, plots=plots)
        elif task == "survival":
            task_survival.write_survival(tmp, results, data, ci=ci, rng=rng, level=level, plots=plots)
        else:
            task_multilabel.write_multilabel(tmp, results, data, ci=ci, rng=rng, level=level, plots=plots)
    return results


def _single(value, what: str, task: str) -> None:
    if value is not None and not isinstance(value, str) and len(list(value)) != 1:
        raise ConfigError(f"task={task!r} takes one {what} column, got {len(list(value))}: {', '.join(value)}")


def _write(out: pathlib.Path, results: dict, inputs, *, ci: int, rng: Rng, level: float, plots: bool) -> None:
    write_results(out, results, level=level)
    figures = draw_figures(out, results, inputs, ci=ci, rng=rng, level=level) if plots else []
    write_markdown(out, results, level=level, figures=figures)
