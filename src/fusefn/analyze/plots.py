"""The analyzer's figures, drawn from values the suite computed: ROC curve, confusion matrix, reliability.

matplotlib is imported when a figure is drawn, not with the module; each PNG is written whole or not at all.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from fusefn._atomic import write_bytes
from fusefn.analyze.report import format_value

__all__ = ["plot_roc", "plot_confusion", "plot_reliability"]


def _save(fig, path: str | os.PathLike) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(pathlib.Path(path), buf.getvalue())


def plot_roc(curves: Mapping, band: Mapping | None, path: str | os.PathLike, *, level: float = 0.95) -> None:
    """The ROC curve of each class (``curves`` / ``band`` from :func:`fusefn.analyze.roc_curves`) to a PNG.

    With a ``band``, the central ``level`` of the resampled TPRs is shaded around each curve.
    """
    from matplotlib.figure import Figure

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


def plot_confusion(matrix: Sequence, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """A confusion matrix (rows: target, columns: decision) with its counts, to a PNG."""
    from matplotlib.figure import Figure

    cm = np.asarray(matrix)
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


def plot_reliability(ece: Mapping, path: str | os.PathLike) -> None:
    """The reliability diagram (``ece`` from :func:`fusefn.analyze.reliability`) to a PNG."""
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
        title=f"reliability (ECE {format_value(ece.get('ece'))})",
    )
    ax.legend(loc="upper left", fontsize="small")
    _save(fig, path)
