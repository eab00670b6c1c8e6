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
    figures: Sequence[tuple[str, pathlib.Path | None]] = (),
    sections: Sequence[tuple[str, str]] = (),
) -> pathlib.Path:
    """Write ``report.md``: a metric table (value, 95 % CI), then sections and embedded PNGs.

    Figure paths are written relative to the report so the folder can be moved; a ``None``
    figure (nothing to draw) is left out.
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
    for caption, fig in figures:
        if fig is not None:
            rel = pathlib.Path(fig).resolve().relative_to(path.parent.resolve())
            lines += [f"![{caption}]({rel.as_posix()})", ""]
    return write_text(path, "\n".join(lines))


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


def append_figures(report: str | os.PathLike, figures: Sequence[tuple[str, pathlib.Path | None]]) -> pathlib.Path:
    """Append ``### caption`` and the embedded PNG of each figure (``None``: left out) to the Markdown ``report``."""
    report = pathlib.Path(report)
    rel = [(c, pathlib.Path(p).resolve().relative_to(report.parent.resolve())) for c, p in figures if p is not None]
    md = "".join(f"\n### {c}\n\n![{c}]({p.as_posix()})\n" for c, p in rel)
    return write_text(report, report.read_text(encoding="utf-8") + md)


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


def _save(fig, path: str | os.PathLike, dpi: int) -> pathlib.Path:
    from fusefn.data.visualize import save_figure

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=dpi)
    _plt().close(fig)
    return path


def roc_figure(path: str | os.PathLike, target: np.ndarray, score: np.ndarray, title: str = "ROC") -> pathlib.Path:
    """A PNG of the ROC curve of binary ``score`` against ``target``, AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(target, score)
    fig, ax = _plt().subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(target, score):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path, 100)


def curves_figure(csv_path: str | os.PathLike, path: str | os.PathLike, keys: Sequence[str]) -> pathlib.Path | None:
    """Training curves (train and validation per epoch) of ``keys`` from fit's ``metrics.csv``; None if absent."""
    import polars as pl

    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
        return None
    frame = pl.read_csv(csv_path)
    keys = [k for k in keys if k in frame.columns]
    if not keys:
        return None
    fig, axes = _plt().subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for mode in ("train", "validation"):
            part = frame.filter(pl.col("mode") == mode)
            if part.height:
                ax.plot(part["epoch"].to_numpy(), part[key].to_numpy(), marker=".", label=mode)
        ax.set(xlabel="epoch", title=key)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path, 90)


_NAMES = {
    "auc": "ROC AUC",
    "average_precision": "average precision",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "mcc": "MCC",
    "ece": "calibration",
    "operating_point": "at the operating point:",
}
_CAPTIONS = {
    "roc.png": "ROC curve with its 95 % bootstrap band",
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
) -> tuple[list, dict, list]:
    """Classification metrics with bootstrap CIs and figures, by :func:`fusefn.analyze.analyze`.

    Writes the analyzer's files (metrics.json, report.md, roc.png with a CI band,
    confusion_matrix.png, reliability.png) to ``out_dir``. Returns ``(rows, results,
    figures)`` for :func:`write_report`; ``results`` is keyed like the rows without
    ``prefix`` ("ROC AUC", "accuracy", "ROC AUC macro" when multi-class, …).
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
        frame, id="sample_id", score="probs", label="label", out=out_dir, ci=n_boot, rng=rng, class_names=names
    )
    results: dict = {}
    for key, value in res["metrics"].items():
        _flatten_results(_NAMES.get(key, key), value, results)
    rows = [(prefix + k, v) for k, v in results.items()]
    out_dir = pathlib.Path(out_dir)
    figs = [(c, out_dir / f) for f, c in _CAPTIONS.items() if (out_dir / f).is_file()]
    return rows, results, figs
