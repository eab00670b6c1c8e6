"""Analysis of an inference file: metrics with bootstrap CIs -> metrics.json, report.txt/.md and plots.

Reads predictions (CSV/Parquet; several files = one per fold) and targets (a
column of the predictions or another file joined by id), computes the standard
classification metrics with confidence intervals, per-fold / per-group values,
and writes, each file complete or not at all:

* ``metrics.json`` — every value, its CI, the inputs and the settings;
* ``report.txt`` — an aligned table (metric, value, 95 % CI); ``report.md`` the same in Markdown;
* ``roc.png`` (with a bootstrap band), ``confusion_matrix.png``, ``reliability.png``.

Scores are one column (the positive-class score), several columns (one per class)
or a list column such as ``model.head_0.probs`` written by ``fusefn.train.infer``;
with no ``score`` given, a ``*.probs`` list column is used.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import click
import numpy as np
import polars as pl

from fusefn._atomic import write_bytes
from fusefn.errors import ConfigError
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
)
from fusefn.metrics._base import read
from fusefn.metrics.bootstrap import resample_counts
from fusefn.metrics.evaluation import frame_to_batch, load, read_table

__all__ = ["analyze", "analyze_command", "format_report"]

_PRED, _TARGET, _GROUP = "pred", "target", "group"


# ----------------------------------------------------------------------------- inputs


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike, pl.DataFrame)):
        return [value]
    return list(value)


def _pick_id(df: pl.DataFrame, id: str | None) -> str:
    if id is not None:
        return id
    for cand in ("id", "sample_id", "data.sample_id"):
        if cand in df.columns:
            return cand
    raise ConfigError(f"no id column found (tried id, sample_id); columns: {', '.join(df.columns)}; pass id=")


def _pick_scores(df: pl.DataFrame, score) -> tuple[str, ...]:
    if score:
        cols = (score,) if isinstance(score, str) else tuple(score)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ConfigError(f"score column(s) {missing} not found; columns: {', '.join(df.columns)}")
        return cols
    lists = [c for c in df.columns if isinstance(df[c].dtype, (pl.List, pl.Array))]
    probs = [c for c in lists if c.endswith("probs")]
    if probs or lists:
        return ((probs or lists)[0],)
    raise ConfigError(f"no score column given and no probability list column found; columns: {', '.join(df.columns)}")


def _pick_label(df: pl.DataFrame, label: str | None) -> str:
    if label is not None:
        if label not in df.columns:
            raise ConfigError(f"label column {label!r} not found; columns: {', '.join(df.columns)}")
        return label
    for cand in ("label", "target", "data.gt.label"):
        if cand in df.columns:
            return cand
    raise ConfigError(f"no label column given and none of label/target found; columns: {', '.join(df.columns)}")


def _score_matrix(df: pl.DataFrame, cols: tuple[str, ...]) -> np.ndarray:
    batch = frame_to_batch(df.select(cols))
    arr = read(batch, cols[0] if len(cols) == 1 else cols)
    return np.asarray(arr, dtype=np.float64)


# ---------------------------------------------------------------------------- helpers


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.4f}"


def _leaves(value):
    """Numbers as ``{"value": x}`` leaves: results without a CI have the same shape as with one."""
    if isinstance(value, Mapping):
        return {k: _leaves(v) for k, v in value.items()}
    return {"value": value}


def _rows(results: Mapping, prefix: str = "") -> list[tuple[str, Any, Any, Any]]:
    """(name, value, lower, upper) rows from a nested results dict (CI leaves have value/lower/upper)."""
    rows = []
    for k, v in results.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and "value" in v and set(v) <= {"value", "mean", "std", "lower", "upper"}:
            rows.append((name, v["value"], v.get("lower"), v.get("upper")))
        elif isinstance(v, Mapping):
            rows.extend(_rows(v, name + "."))
        elif isinstance(v, (int, float, np.floating, np.integer)) or v is None:
            rows.append((name, v, None, None))
    return rows


def format_report(results: Mapping, level: float = 0.95, markdown: bool = False) -> str:
    """An aligned text table (or a Markdown table) of metric, value and CI from ``results["metrics"]``."""
    rows = _rows(results.get("metrics", {}))
    for group_name, g in results.get("groups", {}).items():
        rows.extend(_rows(g, f"{group_name}."))
    ci_head = f"{round(level * 100, 1):g}% CI"
    table = [("metric", "value", ci_head)]
    for name, v, lo, hi in rows:
        ci = "" if lo is None else f"[{_fmt(lo)}, {_fmt(hi)}]"
        table.append((name, _fmt(v), ci))
    if markdown:
        lines = ["| metric | value | " + ci_head + " |", "| --- | ---: | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in table[1:]]
        return "\n".join(lines) + "\n"
    w = [max(len(r[i]) for r in table) for i in range(3)]
    lines = [f"{a:<{w[0]}}  {b:>{w[1]}}  {c}".rstrip() for a, b, c in table]
    lines.insert(1, "-" * (w[0] + w[1] + w[2] + 4))
    header = [f"samples: {results.get('num_samples')}, classes: {', '.join(results.get('class_names', []))}"]
    if results.get("settings", {}).get("ci"):
        s = results["settings"]
        header.append(f"bootstrap: {s['ci']} resamples, {s['method']}, stratified by target, seed {s['seed']}")
    return "\n".join([*header, "", *lines]) + "\n"


# ------------------------------------------------------------------------------ plots


def _save(fig, path: pathlib.Path) -> None:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buf.getvalue())


def _plot_roc(batch, class_names, ci: int, seed: int, level: float, path: pathlib.Path) -> None:
    from matplotlib.figure import Figure

    roc = ROCCurve(pred=_PRED, target=_TARGET, class_names=class_names)
    state = roc.update(roc.init(), batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curves = roc.compute(state)
        band = None
        if ci:
            counts = resample_counts(np.random.default_rng(seed), min(ci, 1000), state[_TARGET])
            band = roc.resampled(state, counts)
    binary = len(class_names) == 2
    if binary:
        curves, band = {class_names[1]: curves}, ({class_names[1]: band} if band is not None else None)
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, c in curves.items():
        area = float(np.sum(np.diff(c["fpr"]) * (c["tpr"][1:] + c["tpr"][:-1]) / 2))
        (line,) = ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {area:.3f})", lw=1.5)
        if band is not None:
            tpr = band[name]["tpr"]
            lo, hi = np.nanquantile(tpr, [(1 - level) / 2, (1 + level) / 2], axis=0)
            ax.fill_between(band[name]["fpr"], lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC curve" + (f" ({round(level * 100):g}% bootstrap band)" if band is not None else ""),
    )
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)


def _plot_confusion(cm: list, class_names, path: pathlib.Path) -> None:
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    fig = Figure(figsize=(1.2 + 0.6 * len(cm), 1 + 0.6 * len(cm)))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    names = list(class_names)[: len(cm)]
    ax.set_xticks(range(len(cm)), names)
    ax.set_yticks(range(len(cm)), names)
    ax.set(xlabel="decision", ylabel="target", title="confusion matrix")
    _save(fig, path)


def _plot_reliability(ece: Mapping, path: pathlib.Path) -> None:
    from matplotlib.figure import Figure

    bins = ece.get("bins") or {}
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if bins:
        lo, hi = np.asarray(bins["lower"]), np.asarray(bins["upper"])
        acc = np.asarray(bins["accuracy"], dtype=np.float64)
        ax.bar(lo, np.nan_to_num(acc), width=hi - lo, align="edge", edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"reliability (ECE {_fmt(ece.get('ece'))})",
    )
    ax.legend(loc="upper left", fontsize="small")
    _save(fig, path)


# ---------------------------------------------------------------------------- analyze


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
    seed: int = 1234,
    level: float = 0.95,
    method: str = "percentile",
    threshold: float | None = None,
    plots: bool = True,
    strict: bool = True,
    skip_invalid: bool = False,
) -> dict:
    """Analyze predictions: metrics with bootstrap CIs, per-fold / per-group values, report and plots.

    Args:
        pred: CSV/Parquet path or Polars frame, or several (one per fold, concatenated with a ``fold`` column).
        target: file/frame of targets joined on ``id``; None when ``label`` is a column of ``pred``.
        out: output folder (None: compute only, write nothing).
        id: id column (default ``id`` or ``sample_id``).
        score: one score column (binary positive-class score or a list column of class scores)
            or several columns (one per class). Default: a ``*.probs`` list column.
        label: target column (default ``label`` or ``target``).
        fold: column for per-fold values (default ``fold`` when it has several values).
        group: extra column(s) for per-group values (sex, site, …).
        class_names: names of the classes (default the score column names, or 0..C-1).
        ci: bootstrap resamples (0: no intervals), stratified by the target.
        threshold: operating point for binary decisions (default 0.5, or argmax).
        strict: when False, target ids without a prediction are left out (with a warning).
        skip_invalid: leave out samples with a NaN / infinite score or a missing label, listing
            them under ``"skipped"``, instead of stopping with an error naming them.

    Returns:
        The results dict written to ``metrics.json``: ``results["metrics"][name]`` is
        ``{"value", "mean", "std", "lower", "upper"}`` (only ``{"value"}`` when ``ci=0``), per
        class for multi-class metrics; ``results["groups"][column]`` the per-group values.

    >>> import polars as pl
    >>> df = pl.DataFrame({"id": list("abcdef"), "s": [.1, .2, .7, .4, .8, .9], "y": [0, 0, 0, 1, 1, 1]})
    >>> r = analyze(df, score="s", label="y", ci=200, seed=0)
    >>> round(r["metrics"]["auc"]["value"], 4)
    0.8889
    """
    frames = _as_list(pred)
    if not frames:
        raise ConfigError("analyze: no prediction file given")
    first = frames[0] if isinstance(frames[0], pl.DataFrame) else read_table(frames[0])
    id = _pick_id(first, id)
    df = load(frames if len(frames) > 1 else frames[0], target, id=id, strict=strict)
    score_cols = _pick_scores(df, score)
    label = _pick_label(df, label)
    scores = _score_matrix(df, score_cols)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    num_classes = 2 if scores.ndim == 1 else scores.shape[1]
    if class_names is None:
        if len(score_cols) > 1:
            class_names = tuple(c.removesuffix("-score") for c in score_cols)
        else:
            class_names = tuple(str(i) for i in range(num_classes))
    class_names = tuple(str(c) for c in class_names)
    if len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} classes")
    if fold is None and "fold" in df.columns and df["fold"].n_unique() > 1:
        fold = "fold"
    groups = ([fold] if fold else []) + [g for g in _as_list(group) if g != fold]
    for g in groups:
        if g not in df.columns:
            raise ConfigError(f"group column {g!r} not found; columns: {', '.join(df.columns)}")

    skipped = []
    bad = ~np.isfinite(scores.reshape(scores.shape[0], -1)).all(axis=1) | df[label].is_null().to_numpy()
    if bad.any() and skip_invalid:
        for i in np.flatnonzero(bad):
            why = "missing label" if df[label][int(i)] is None else "NaN or infinite score"
            skipped.append({"id": df[id][int(i)], "reason": why})
        warnings.warn(f"analyze: {len(skipped)} sample(s) skipped (see metrics.json 'skipped')", stacklevel=2)
        df, scores = df.filter(pl.Series(~bad)), scores[~bad]
    ids = df[id].to_list()
    batch: dict = {"data": {"sample_id": ids}, _PRED: scores, _TARGET: df[label].to_numpy()}
    for g in groups:
        batch[f"group_{g}"] = df[g].to_numpy()
    binary = num_classes == 2
    thr = threshold if binary else None
    names = class_names
    p, t = _PRED, _TARGET
    probs_like = bool(np.all((scores >= 0) & (scores <= 1)))

    point = {
        "auc": AUCROC(pred=p, target=t, class_names=names),
        "average_precision": AveragePrecision(pred=p, target=t, class_names=names),
        "accuracy": Accuracy(pred=p, target=t, threshold=thr, num_classes=num_classes),
        "balanced_accuracy": BalancedAccuracy(pred=p, target=t, threshold=thr, num_classes=num_classes),
        "mcc": MCC(pred=p, target=t, threshold=thr, num_classes=num_classes),
    }
    if probs_like:
        point["ece"] = ECE(pred=p, target=t)
    confusion = ConfusionMatrix(pred=p, target=t, threshold=thr, num_classes=num_classes, class_names=names)

    results: dict = {
        "inputs": {
            "pred": [str(f) if not isinstance(f, pl.DataFrame) else "<frame>" for f in frames],
            "target": None if target is None else (str(target) if not isinstance(target, pl.DataFrame) else "<frame>"),
            "id": id,
            "score": list(score_cols),
            "label": label,
            "groups": groups,
        },
        "settings": {
            "ci": ci,
            "seed": seed,
            "level": level,
            "method": method,
            "threshold": 0.5 if binary and threshold is None else threshold,
        },
        "num_samples": len(ids),
        "skipped": skipped,
        "class_names": list(class_names),
        "metrics": {},
        "groups": {},
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, m in point.items():
            wrapped = Bootstrap(m, n=ci, seed=seed, level=level, stratify=t, method=method) if ci else m
            value = wrapped.compute(wrapped.update(wrapped.init(), batch))
            if name == "ece" and not ci:
                value = {"ece": value["ece"], "mce": value["mce"]}
            results["metrics"][name] = value if ci else _leaves(value)
        cm_value = confusion.compute(confusion.update(confusion.init(), batch))
        results["confusion_matrix"] = cm_value
        stats = ("sensitivity", "specificity", "precision", "npv", "f1")
        shown = [class_names[1]] if binary else list(class_names)
        if ci:
            bc = Bootstrap(confusion, n=ci, seed=seed, level=level, stratify=t, method=method)
            cm_ci = bc.compute(bc.update(bc.init(), batch))["classes"]
            per = {c: {s: cm_ci[c][s] for s in stats} for c in shown}
        else:
            per = _leaves({c: {s: cm_value["classes"][c][s] for s in stats} for c in shown})
        results["metrics"]["operating_point"] = per[shown[0]] if binary else per
        for g in groups:
            key = f"group_{g}"
            per_group = {
                "auc": GroupBy(AUCROC(pred=p, target=t, class_names=names), by=key),
                "accuracy": GroupBy(Accuracy(pred=p, target=t, threshold=thr, num_classes=num_classes), by=key),
            }
            results["groups"][g] = {n: m.compute(m.update(m.init(), batch)) for n, m in per_group.items()}
    results["warnings"] = sorted({str(w.message) for w in caught})
    if out is not None:
        out = pathlib.Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_bytes(out / "metrics.json", (json.dumps(_jsonable(results), indent=2) + "\n").encode())
        write_bytes(out / "report.txt", format_report(results, level).encode())
        figures = []
        if plots:
            _plot_roc(batch, class_names, ci, seed, level, out / "roc.png")
            _plot_confusion(cm_value["matrix"], class_names, out / "confusion_matrix.png")
            figures = [("ROC curve", "roc.png"), ("confusion matrix", "confusion_matrix.png")]
            if "ece" in point:
                ece_state = point["ece"].update(point["ece"].init(), batch)
                _plot_reliability(point["ece"].compute(ece_state), out / "reliability.png")
                figures.append(("reliability diagram", "reliability.png"))
        # the Markdown report embeds the figures, so one file shows the whole analysis
        md = format_report(results, level, markdown=True)
        md += "".join(f"\n### {title}\n\n![{title}]({name})\n" for title, name in figures)
        write_bytes(out / "report.md", md.encode())
    return results


# -------------------------------------------------------------------------------- CLI


@click.command("analyze")
@click.option(
    "--pred",
    "pred",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="Inference file (CSV/Parquet); repeat for one file per fold.",
)
@click.option(
    "--target",
    type=click.Path(dir_okay=False),
    default=None,
    help="Targets file joined on --id (default: --label is a column of --pred).",
)
@click.option("--id", "id_col", default=None, help="Id column [default: id or sample_id].")
@click.option("--score", multiple=True, help="Score column; repeat for one column per class [default: *.probs].")
@click.option("--label", default=None, help="Target column [default: label or target].")
@click.option("--fold", default=None, help="Fold column for per-fold values [default: fold].")
@click.option("--group", multiple=True, help="Extra column(s) for per-group values.")
@click.option("--class-names", default=None, help="Comma-separated class names.")
@click.option(
    "--ci",
    type=click.IntRange(min=0),
    default=10_000,
    show_default=True,
    help="Bootstrap resamples (0 = no intervals).",
)
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95, show_default=True)
@click.option("--method", type=click.Choice(["percentile", "basic", "normal"]), default="percentile", show_default=True)
@click.option("--threshold", type=float, default=None, help="Binary operating point [default: 0.5].")
@click.option("--out", type=click.Path(file_okay=False, path_type=pathlib.Path), required=True, help="Output folder.")
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("--skip-invalid", is_flag=True, help="Leave out (and list) samples with NaN scores or no label.")
def analyze_command(
    pred,
    target,
    id_col,
    score,
    label,
    fold,
    group,
    class_names,
    ci,
    seed,
    level,
    method,
    threshold,
    out,
    plots,
    skip_invalid,
) -> None:
    """Metrics with bootstrap CIs of an inference file: metrics.json, report.txt/.md and plots."""
    names = tuple(n.strip() for n in class_names.split(",")) if class_names else None
    analyze(
        list(pred),
        target,
        out=out,
        id=id_col,
        score=tuple(score) or None,
        label=label,
        fold=fold,
        group=tuple(group) or None,
        class_names=names,
        ci=ci,
        seed=seed,
        level=level,
        method=method,
        threshold=threshold,
        plots=plots,
        skip_invalid=skip_invalid,
    )
    click.echo((out / "report.txt").read_text(), nl=False)
    click.echo(f"written: {out / 'metrics.json'}")
