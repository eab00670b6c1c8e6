"""``analyze``: read the inputs, run the metric suite, write the report and the figures."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np
import polars as pl

from fusefn._atomic import atomic_dir
from fusefn.analyze.inputs import TARGET, as_list, read_predictions, select_inputs
from fusefn.analyze.plots import plot_confusion, plot_reliability, plot_roc
from fusefn.analyze.report import standard_figures, write_markdown, write_results
from fusefn.analyze.resampling import Progress
from fusefn.analyze.suite import reliability, roc_curves, run_suite
from fusefn.core import Rng
from fusefn.errors import ConfigError

__all__ = ["analyze"]

_RNG = Rng(1234)  # the default resampling stream (an Rng is immutable: one instance serves every call)
# What an ``out`` folder written before output sets carried their own listing may hold: it is replaced as a set.
# Figures a recipe adds next to the analyzer's (curves.png, ...) are PNGs too; ``.*.tmp``: a killed write's leftover.
OUTPUTS = ("metrics.json", "report.txt", "report.md", "*.png", ".*.tmp")


def _name(source) -> str:
    return "<frame>" if isinstance(source, pl.DataFrame) else str(source)


def _threshold_rule(binary: bool, threshold: float | None) -> str:
    if not binary:
        return "argmax: the class with the highest score"
    if threshold is None:
        return "the default, on the positive-class probability; not tuned on these data"
    return "given by the user (--threshold / threshold=)"


def _version() -> str:
    try:
        return importlib.metadata.version("fusefn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def analyze(
    pred,
    target=None,
    *,
    out: str | os.PathLike | None = None,
    id: str | None = None,
    score: str | Sequence[str] | None = None,
    label: str | None = None,
    fold: str | None = None,
    group: str | Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    ci: int = 10_000,
    rng: Rng = _RNG,
    level: float = 0.95,
    method: str = "auto",
    threshold: float | None = None,
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
        id: id column (default ``id`` or ``sample_id``).
        score: one score column (binary positive-class score or a list column of class scores)
            or several columns (one per class). Default: a ``*.probs`` list column.
        label: target column (default ``label`` or ``target``).
        fold: column for per-fold values (default ``fold`` when it has several values).
        group: extra column(s) for per-group values (sex, site, …).
        class_names: names of the classes (default the score column names, or 0..C-1).
        ci: bootstrap resamples (0: no intervals), stratified by the target.
        rng: the resampling stream (the intervals and the ROC band); its seed is recorded in the report.
        method: interval method: ``"auto"`` (BCa for ECE and average precision, whose resamples are
            biased; percentile for the others), or ``"percentile"``, ``"basic"``, ``"normal"``, ``"bca"``
            for all. A value outside its own interval gets a note in ``results["notes"]`` and the report.
        threshold: operating point for binary decisions (default 0.5, or argmax).
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
        class for multi-class metrics; ``results["groups"][column]`` the per-group values.

    >>> import polars as pl
    >>> df = pl.DataFrame({"id": list("abcdef"), "s": [.1, .2, .7, .4, .8, .9], "y": [0, 0, 0, 1, 1, 1]})
    >>> r = analyze(df, score="s", label="y", ci=200, rng=Rng(0))
    >>> round(r["metrics"]["auc"]["value"], 4)
    0.8889
    """
    df, id = read_predictions(pred, target, id=id, strict=strict)
    inputs = select_inputs(
        df,
        id=id,
        score=score,
        label=label,
        fold=fold,
        group=group,
        class_names=class_names,
        skip_invalid=skip_invalid,
        scores=scores,
    )
    binary = inputs.num_classes == 2
    if scores == "raw" and binary and threshold is None:
        raise ConfigError("raw scores are not probabilities: give the binary decision threshold (--threshold)")
    if inputs.skipped:
        warnings.warn(f"analyze: {len(inputs.skipped)} sample(s) skipped (see metrics.json 'skipped')", stacklevel=2)
    target_values = inputs.batch[TARGET]
    results: dict = {
        "inputs": {
            "pred": [_name(f) for f in as_list(pred)],
            "target": None if target is None else _name(target),
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
            "threshold": 0.5 if binary and threshold is None else threshold,
            "threshold_rule": _threshold_rule(binary, threshold),
        },
        "num_samples": inputs.num_samples,
        "class_counts": {name: int(np.count_nonzero(target_values == i)) for i, name in enumerate(inputs.class_names)},
        "fusefn_version": _version(),
        "date": datetime.date.today().isoformat(),
        "skipped": list(inputs.skipped),
        "class_names": list(inputs.class_names),
    }
    results.update(
        run_suite(inputs, ci=ci, rng=rng, level=level, method=method, threshold=threshold, progress=progress)
    )
    if out is None:
        return results
    with atomic_dir(out, owned=OUTPUTS) as tmp:
        _write(tmp, results, inputs, ci=ci, rng=rng, level=level, plots=plots)
    return results


def _write(out: pathlib.Path, results: dict, inputs, *, ci: int, rng: Rng, level: float, plots: bool) -> None:
    write_results(out, results, level=level)
    figures = []
    if plots:
        curves, band = roc_curves(inputs, ci=ci, rng=rng)
        plot_roc(curves, band, out / "roc.png", level=level)
        plot_confusion(results["confusion_matrix"]["matrix"], inputs.class_names, out / "confusion_matrix.png")
        if "ece" in results["metrics"]:
            plot_reliability(reliability(inputs), out / "reliability.png")
        figures = standard_figures(results)
    write_markdown(out, results, level=level, figures=figures)
