"""What an analysis phase writes: ``metrics.json``, ``report.md`` with its figures, written atomically.

Each file is written whole or not at all; :func:`staged_report` makes the report folder
one set: the phase writes into a temporary folder that then replaces the previous report,
so a failure half-way (a full disk, an error while plotting) leaves the previous complete
report, never new metrics next to old figures.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> path = write_report(d / "report.md", "Toy", [("ROC AUC", {"value": 0.9, "lower": 0.8, "upper": 0.95})])
>>> "| ROC AUC | 0.900 | [0.800, 0.950] |" in path.read_text()
True
>>> load_json(save_json(d / "m.json", {"auc": float("nan")}))
{'auc': None}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import attrs
import numpy as np

from fusefn._atomic import atomic_dir, write_bytes
from fusefn.core import Rng
from fusefn.recipe.run import RecipeInputError, Run

__all__ = [
    "REPORT_OUTPUTS",
    "staged_report",
    "write_text",
    "plain",
    "append_figures",
    "format_ci",
    "write_report",
    "save_json",
    "load_json",
    "read_inference",
    "roc_figure",
    "curves_figure",
    "readable_key",
    "run_best",
    "best_epoch",
    "classification_report",
]


REPORT_OUTPUTS = ("*.md", "*.json", "*.png", "*.txt", "*.csv", "analysis", ".*.tmp")
"""What a report folder written before reports were written as a set may hold: it is replaced whole."""


@contextlib.contextmanager
def staged_report(run: Run) -> Iterator[Run]:
    """``run`` with its ``report_dir`` a fresh temporary folder that replaces the report as a set on success.

    Wrap a whole analysis phase: everything it writes under ``run.report_dir`` appears
    together, or, when it fails, the previous report stays as it was (see
    :func:`fusefn._atomic.atomic_dir`; a report folder holding other files is an error).

    >>> import tempfile
    >>> run = Run(name="toy", out=tempfile.mkdtemp())
    >>> with staged_report(run) as staged:
    ...     _ = write_text(staged.report_dir / "report.md", "# new")
    >>> (run.report_dir / "report.md").read_text()
    '# new'
    """
    with atomic_dir(run.report_dir, owned=REPORT_OUTPUTS) as tmp:
        yield attrs.evolve(run, report_name=os.path.relpath(tmp, os.path.abspath(run.out)))


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file); creates the folder."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, text.encode())
    return path


def format_ci(r: Mapping | float, digits: int = 3) -> tuple[str, str]:
    """(value, "[lower, upper]") strings for a bootstrap result or a plain float."""
    if not isinstance(r, Mapping):
        return f"{float(r):.{digits}f}", ""
    value = f"{r['value']:.{digits}f}"
    if any(r.get(k) is None or math.isnan(r.get(k)) for k in ("lower", "upper")):
        return value, ""
    return value, f"[{r['lower']:.{digits}f}, {r['upper']:.{digits}f}]"


def write_report(
    path: str | os.PathLike,
    title: str,
    rows: Sequence[tuple[str, Mapping | float]],
    *,
    intro: str = "",
    figures: Sequence[tuple] = (),
    sections: Sequence[tuple[str, str]] = (),
) -> pathlib.Path:
    """Write ``report.md``: a metric table (value, 95 % CI), then sections and embedded PNGs.

    Each figure, ``(title, path)`` or ``(title, path, caption)``, gets a heading, the PNG (its path
    relative to the report, so the folder can be moved) and its caption sentence (given, or the one
    stored in the PNG); a ``None`` figure (nothing to draw) is left out.
    """
    path = pathlib.Path(path)
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro.strip(), ""]
    lines += ["| metric | value | 95 % CI |", "| --- | ---: | --- |"]
    for name, r in rows:
        v, ci = format_ci(r)
        lines.append(f"| {name} | {v} | {ci} |")
    lines.append("")
    for head, body in sections:
        lines += [f"## {head}", "", body.strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    lines.append(_figures_md(path, figures).lstrip("\n"))
    return write_text(path, "\n".join(lines))


def _figures_md(report: pathlib.Path, figures: Sequence[tuple]) -> str:
    """``### title``, the embedded PNG (relative to the report) and its caption sentence, per figure.

    A figure is ``(title, path)`` or ``(title, path, caption)``; without a caption the one stored in
    the PNG (:func:`fusefn.data.visualize.figure_caption`) is used; a ``None`` path is left out.
    """
    from fusefn.data.visualize import figure_caption

    md = ""
    for title, fig, *caption in figures:
        if fig is None:
            continue
        # relative to the report (so the folder can move), also for a figure outside its folder
        rel = pathlib.Path(os.path.relpath(pathlib.Path(fig).resolve(), report.parent.resolve()))
        text = caption[0] if caption and caption[0] else figure_caption(fig)
        md += f"\n### {title}\n\n![{title}]({rel.as_posix()})\n" + (f"\n{text}\n" if text else "")
    return md


def plain(obj):
    """``obj`` as JSON-safe Python: NumPy values as Python ones, tuples as lists, NaN and inf (undefined) as None.

    >>> plain({"auc": np.float64(0.5), "ci": (np.nan, 1.0)})
    {'auc': 0.5, 'ci': [None, 1.0]}
    """
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)):
        return plain(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_json(path: str | os.PathLike, obj) -> pathlib.Path:
    """Write ``obj`` as indented JSON atomically (:func:`plain` values)."""
    return write_text(path, json.dumps(plain(obj), indent=2))


def append_figures(report: str | os.PathLike, figures: Sequence[tuple]) -> pathlib.Path:
    """Append each figure to the Markdown ``report``: ``### title``, the embedded PNG, its caption sentence.

    A figure is ``(title, path)`` (the caption is the one stored in the PNG, when there is one) or
    ``(title, path, caption)``; a ``None`` path is left out.
    """
    report = pathlib.Path(report)
    return write_text(report, report.read_text(encoding="utf-8") + _figures_md(report, figures))


def load_json(path: str | os.PathLike):
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def read_inference(path: str | os.PathLike, need: Sequence[str]):
    """The inference Parquet file as a Polars frame; a :class:`RecipeInputError` when missing, unreadable or short."""
    import polars as pl

    path = pathlib.Path(path)
    if not path.is_file():
        raise RecipeInputError(f"inference file {path} not found: run `infer` first (or `all`) with the same --out")
    try:
        frame = pl.read_parquet(path)
    except Exception as e:
        raise RecipeInputError(
            f"inference file {path} is not a readable Parquet file ({e}); run `infer` again"
        ) from None
    missing = sorted(set(need) - set(frame.columns))
    if missing:
        raise RecipeInputError(f"inference file {path} lacks columns {missing}; run `infer` again")
    if frame.height == 0:
        raise RecipeInputError(f"inference file {path} has no rows; run `infer` again")
    return frame


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int, caption: str | None = None) -> pathlib.Path:
    from fusefn.data.visualize import save_figure

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=dpi, caption=caption)
    _plt().close(fig)
    return path


def roc_figure(
    path: str | os.PathLike,
    target: np.ndarray,
    score: np.ndarray,
    title: str = "ROC",
    *,
    auc: Mapping | None = None,
    threshold: float | None = None,
) -> pathlib.Path:
    """A PNG of the ROC curve of binary ``score`` against ``target``, the AUC (and its CI) in the legend.

    ``auc``: a bootstrap result (``value``, ``lower``, ``upper``) whose CI the legend gives; ``threshold``:
    the operating point to mark (its sensitivity and specificity in the legend).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    from fusefn.analyze.plots import _OP_STYLE, _auc_text

    target, score = np.asarray(target), np.asarray(score, dtype=np.float64)
    fpr, tpr, _ = roc_curve(target, score)
    fig, ax = _plt().subplots(figsize=(4.6, 4.6))
    auc = auc if auc is not None else float(roc_auc_score(target, score))
    ax.plot(fpr, tpr, label=_auc_text(auc, 0.95))
    caption = f"ROC curve ({title}): true against false positive rate over every threshold; {_auc_text(auc, 0.95)}."
    if threshold is not None:
        decided, positive = score >= threshold, target == 1
        sens, spec = decided[positive].mean(), (~decided[~positive]).mean()
        label = f"threshold {threshold:.3g}: sensitivity {sens:.3f}, specificity {spec:.3f}"
        ax.plot(1 - spec, sens, color="tab:blue", label=label, **_OP_STYLE)
        caption += f" The circle is the operating point at the threshold {threshold:.3g}."
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)", title=title)
    ax.set(xlim=(-0.01, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, 100, caption)


_METRIC_NAMES = {
    "total_loss": "total loss",
    "auc": "ROC AUC",
    "average_precision": "average precision",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "mcc": "MCC",
    "dice": "Dice",
    "iou": "IoU",
    "ece": "ECE",
    "learning_rate": "learning rate",
    "mae": "MAE",
    "mse": "MSE",
    "rmse": "RMSE",
    "r2": "R²",
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "harrell_c": "Harrell's C",
    "uno_c": "Uno's C",
    "ibs": "integrated Brier score",
}
# metrics where lower is better, besides losses: errors and distances
_LOWER_IS_BETTER = ("mae", "mse", "rmse", "ibs", "ece", "hd95", "assd", "brier")


def readable_key(key: str) -> str:
    """A flat results key as a figure title: ``losses.total_loss`` -> ``total loss``.

    >>> [readable_key(k) for k in ("losses.total_loss", "metrics.auc.macro", "metrics.dice.1", "losses.cls")]
    ['total loss', 'ROC AUC (macro)', 'Dice (class 1)', 'loss: cls']
    """
    parts = key.split(".")
    kind, rest = (parts[0], parts[1:]) if parts[0] in ("losses", "metrics") and len(parts) > 1 else ("", parts)
    head = _METRIC_NAMES.get(rest[0], rest[0].replace("_", " "))
    if kind == "losses" and rest[0] != "total_loss":
        head = f"loss: {head}"
    if len(rest) > 1:
        sub = ".".join(rest[1:])
        head += f" ({'class ' + sub if sub.isdigit() else sub})"
    return head


def _is_loss(key: str) -> bool:
    """Whether ``key`` is minimized: a loss, an error or a distance."""
    parts = key.split(".")
    if parts[-1].endswith(("loss", "error")) or ".losses." in f".{key}":
        return True
    name = parts[1] if parts[0] == "metrics" and len(parts) > 1 else parts[-1]
    return name in _LOWER_IS_BETTER


def run_best(model_dir: str | os.PathLike) -> tuple[str, str] | None:
    """``(source, "min" | "max")`` of the run's first best-epoch rule (its ``run.json``), or None.

    The direction is not recorded: a loss (or error) is minimized, anything else maximized.
    """
    try:
        sources = load_json(pathlib.Path(model_dir) / "run.json")["config"]["best"]
        source = sources[0] if isinstance(sources, list) and sources else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(source, str):
        return None
    return source, "min" if _is_loss(source) else "max"


def best_epoch(frame, source: str, optimization: str = "max") -> tuple[int, float] | None:
    """``(epoch, value)`` where ``source`` (``validation.metrics.auc``: mode, then a metrics.csv column) is best."""
    import polars as pl

    mode, _, key = source.partition(".")
    if key not in frame.columns or "mode" not in frame.columns:
        return None
    part = frame.filter(pl.col("mode") == mode).drop_nulls(key)
    values = part[key].cast(pl.Float64).to_numpy()
    ok = np.isfinite(values)
    if not ok.any():
        return None
    pick = np.flatnonzero(ok)[np.argmax(values[ok]) if optimization == "max" else np.argmin(values[ok])]
    return int(part["epoch"][int(pick)]), float(values[pick])


def curves_figure(
    csv_path: str | os.PathLike,
    path: str | os.PathLike,
    keys: Sequence[str],
    *,
    best: tuple[str, str] | str | None = "auto",
) -> pathlib.Path | None:
    """Training curves (train and validation per epoch) of ``keys`` from fit's ``metrics.csv``; None if absent.

    Each panel is titled by :func:`readable_key` with the quantity on its y axis and the epoch on x.
    ``best`` ``(source, "min" | "max")`` marks the best epoch on every panel; ``"auto"`` takes the
    run's rule from ``run.json`` beside ``metrics.csv`` (:func:`run_best`), None marks nothing.
    The PNG carries its caption (:func:`fusefn.data.visualize.figure_caption`).
    """
    import polars as pl

    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
        return None
    frame = pl.read_csv(csv_path)
    keys = [k for k in keys if k in frame.columns]
    if not keys:
        return None
    if best == "auto":
        best = run_best(csv_path.parent)
    found = best_epoch(frame, *best) if best else None
    fig, axes = _plt().subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for mode, color in (("train", "tab:blue"), ("validation", "tab:orange")):
            part = frame.filter(pl.col("mode") == mode)
            if part.height:
                ax.plot(part["epoch"].to_numpy(), part[key].to_numpy(), marker=".", color=color, label=mode)
        name = readable_key(key)
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if found is not None:
            ax.axvline(found[0], color="0.3", ls="--", lw=1, label=f"best epoch {found[0]}")
        ax.legend(fontsize=8)
    if found is not None:
        rule = "highest" if best[1] == "max" else "lowest"
        fig.suptitle(
            f"best epoch {found[0]}: {rule} {best[0].split('.')[0]} {readable_key(best[0].partition('.')[2])} "
            f"({found[1]:.4f})",
            fontsize=10,
        )
    fig.tight_layout()
    what = ", ".join(readable_key(k) for k in keys)
    caption = f"Training (blue) and validation (orange) {what} per epoch."
    if found is not None:
        caption += (
            f" The dashed line marks the best epoch, {found[0]}, the one with the {rule} {best[0].split('.')[0]} "
            f"{readable_key(best[0].partition('.')[2])} ({found[1]:.4f}); its checkpoint is the one evaluated."
        )
    return _save(fig, path, 90, caption)


_NAMES = {
    "auc": "ROC AUC",
    "average_precision": "average precision",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "mcc": "MCC",
    "ece": "calibration",
    "operating_point": "at the decision threshold:",
    # found on the test predictions themselves: optimistic, beside the threshold chosen on validation
    "operating_points": "optimistic, found on the test set:",
}
_CAPTIONS = {
    "roc.png": "ROC curve",
    "confusion_matrix.png": "confusion matrix",
    "reliability.png": "reliability diagram",
}


def _flatten_results(name: str, value, out: dict) -> None:
    if isinstance(value, Mapping) and "value" not in value:
        for k, v in value.items():
            _flatten_results(f"{name} {k}", v, out)
    elif isinstance(value, (Mapping, int, float)):
        out[name] = value


def classification_report(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    n_boot: int,
    rng: Rng,
    out_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    prefix: str = "",
    ids: Sequence | None = None,
    analyze_options: Mapping | None = None,
) -> tuple[list, dict, list]:
    """Classification metrics with bootstrap CIs and figures, by :func:`fusefn.analyze.analyze`.

    Writes the analyzer's files (metrics.json, report.md, roc.png with a CI band,
    confusion_matrix.png, reliability.png) to ``out_dir``. Returns ``(rows, results,
    figures)`` for :func:`write_report`; ``results`` is keyed like the rows without
    ``prefix`` ("ROC AUC", "accuracy", "ROC AUC macro" when multi-class, …). ``analyze_options`` go to
    :func:`~fusefn.analyze.analyze` as they are (``threshold``, ``threshold_from``, ``operating_point``).
    """
    import polars as pl

    from fusefn.analyze import analyze

    labels = np.asarray(labels, dtype=np.int64)
    frame = pl.DataFrame(
        {
            "sample_id": list(ids) if ids is not None else [f"s{i}" for i in range(len(labels))],
            "probs": np.asarray(probs, dtype=np.float64).tolist(),
            "label": labels,
        }
    )
    names = list(class_names) if class_names is not None else None
    res = analyze(
        frame,
        id="sample_id",
        score="probs",
        label="label",
        out=out_dir,
        ci=n_boot,
        rng=rng,
        class_names=names,
        **(analyze_options or {}),
    )
    results: dict = {}
    for key, value in res["metrics"].items():
        _flatten_results(_NAMES.get(key, key), value, results)
    rows = [(prefix + k, v) for k, v in results.items()]
    out_dir = pathlib.Path(out_dir)
    figs = [(c, out_dir / f) for f, c in _CAPTIONS.items() if (out_dir / f).is_file()]
    return rows, results, figs
