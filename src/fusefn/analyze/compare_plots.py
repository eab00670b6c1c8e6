"""The comparison's figure: the models' ROC curves overlaid, AUC and interval in the legend, operating points marked.

matplotlib is imported when the figure is drawn; the PNG is written whole or not at all, its caption stored in it
(:func:`fusefn.data.visualize.save_figure`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["plot_roc_compare"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _auc_text(leaf: Mapping) -> str:
    text = f"AUC {leaf['value']:.3f}"
    lo, hi = leaf.get("lower"), leaf.get("upper")
    if lo is not None and hi is not None and lo == lo and hi == hi:
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def plot_roc_compare(
    curves: Mapping[str, Mapping[str, Mapping]],
    aucs: Mapping[str, Mapping[str, Mapping]],
    points: Mapping[str, Mapping[str, tuple[float, float]]],
    path: str | os.PathLike,
    *,
    level: float = 0.95,
    title: str = "ROC curves",
    point_label: str = "operating point",
    caption: str | None = None,
):
    """Overlaid ROC curves of the models, one panel per class (one panel when binary), to a PNG.

    Args:
        curves: ``curves[model][class]`` = ``{"fpr", "tpr"}`` (from :func:`fusefn.analyze.roc_curves`).
        aucs: ``aucs[model][class]`` = ``{"value", "lower", "upper"}``: shown in the legend.
        points: ``points[model][class]`` = ``(false positive rate, true positive rate)`` of the decision,
            marked on the curve; NaN coordinates are left out.
        title: the figure's title (binary) or its suptitle (several panels).
        caption: the sentence stored in the PNG (what the report shows under it).

    Returns the matplotlib figure (for inspection; it is already written).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fusefn.data.visualize import save_figure

    models = list(curves)
    classes = list(next(iter(curves.values())))
    ncol = min(len(classes), 3)
    nrow = -(-len(classes) // ncol)
    fig = Figure(figsize=(5.2 * ncol, 5.2 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    pct = f"{round(level * 100, 1):g}%"
    for ax, cls in zip(axes, classes, strict=False):
        for i, m in enumerate(models):
            c = curves[m][cls]
            (line,) = ax.plot(c["fpr"], c["tpr"], lw=1.6, label=f"{m}: {_auc_text(aucs[m][cls])}")
            x, y = points.get(m, {}).get(cls, (float("nan"), float("nan")))
            if x == x and y == y:
                ax.plot(
                    [x],
                    [y],
                    marker=_MARKERS[i % len(_MARKERS)],
                    ms=7,
                    mec="black",
                    mew=0.8,
                    color=line.get_color(),
                    ls="none",
                    label=f"{m}: {point_label}",
                )
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set(
            xlabel="false positive rate (1 - specificity)",
            ylabel="true positive rate (sensitivity)",
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            aspect="equal",
        )
        ax.set_title(title if len(classes) == 1 else f"class {cls} vs rest", fontsize="medium")
        ax.legend(
            loc="lower right",
            fontsize="small",
            title=f"AUC [{pct} CI]" if any(aucs[m][cls].get("lower") is not None for m in models) else None,
            title_fontsize="small",
        )
    for ax in axes[len(classes) :]:
        ax.set_visible(False)
    if len(classes) > 1:
        fig.suptitle(title)
    FigureCanvasAgg(fig)
    save_figure(fig, path, caption=caption, dpi=110)
    return fig
