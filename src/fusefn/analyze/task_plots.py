"""The figures of the regression, survival and multi-label analyses, drawn from values their suites computed.

Each function draws one matplotlib ``Figure`` (no pyplot: nothing global, no display needed),
writes it as a PNG when given a path (whole or not at all) and returns it, so a test can read
its axes. matplotlib is imported when a figure is drawn, not with the module.

>>> import numpy as np
>>> fig = plot_scatter(np.array([1.0, 2.0, 2.5]), np.array([1.0, 2.0, 3.0]), {}, None)
>>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
('true value', 'prediction')
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from fusefn._atomic import write_bytes
from fusefn.analyze.report import format_value

__all__ = ["plot_bland_altman", "plot_kaplan_meier", "plot_multilabel_roc", "plot_scatter", "plot_td_auc"]


def _figure(size):
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def _save(fig, path: str | os.PathLike | None):
    if path is None:
        return fig
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(pathlib.Path(path), buf.getvalue())
    return fig


def _ci(node: Mapping | None) -> str:
    if not node:
        return ""
    text = format_value(node.get("value"))
    if node.get("lower") is not None and "lower" in node:
        text += f" [{format_value(node['lower'])}, {format_value(node['upper'])}]"
    return text


def plot_scatter(pred: np.ndarray, target: np.ndarray, metrics: Mapping, path: str | os.PathLike | None):
    """Predicted against true value per case, with the identity line ``y = x`` (and R², MAE in the title)."""
    fig = _figure((5, 5))
    ax = fig.add_subplot()
    ax.scatter(target, pred, s=14, alpha=0.6, edgecolors="none", label=f"cases (n = {len(pred)})")
    lo = float(min(np.min(pred), np.min(target)))
    hi = float(max(np.max(pred), np.max(target)))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="grey", lw=1, label="identity (y = x)")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    parts = [
        f"{name} {format_value(metrics[key]['value'])}"
        for key, name in (("r2", "R²"), ("mae", "MAE"))
        if key in metrics
    ]
    ax.set(
        xlabel="true value",
        ylabel="prediction",
        title="predicted vs true" + (f" ({', '.join(parts)})" if parts else ""),
    )
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def plot_bland_altman(
    pred: np.ndarray, target: np.ndarray, agreement: Mapping, path: str | os.PathLike | None, *, level: float = 0.95
):
    """Bland–Altman plot: ``pred - target`` against their mean; bias and limits of agreement, shaded by their CIs.

    ``agreement`` is :class:`~fusefn.analyze.task_regression.BlandAltman`'s result (leaves ``{"value"}``,
    with ``lower`` / ``upper`` when bootstrapped).
    """
    fig = _figure((6.5, 4.5))
    ax = fig.add_subplot()
    mean, diff = (pred + target) / 2, pred - target
    ax.scatter(mean, diff, s=14, alpha=0.6, edgecolors="none", color="C0", label=f"cases (n = {len(pred)})")
    styles = (
        ("bias", "-", "C3", "mean difference"),
        ("upper_loa", "--", "C2", "bias + 1.96 SD"),
        ("lower_loa", "--", "C2", "bias − 1.96 SD"),
    )
    for key, ls, color, name in styles:
        node = agreement[key]
        ax.axhline(node["value"], ls=ls, color=color, lw=1.2, label=f"{name}: {_ci(node)}")
        if node.get("lower") is not None and np.isfinite([node["lower"], node["upper"]]).all():
            ax.axhspan(node["lower"], node["upper"], color=color, alpha=0.15, lw=0)
    ax.axhline(0, color="grey", lw=0.6, ls=":")
    ax.set(
        xlabel="mean of prediction and target",
        ylabel="prediction − target",
        title=f"Bland–Altman plot (shaded: {round(level * 100, 1):g}% bootstrap CIs)"
        if agreement["bias"].get("lower") is not None
        else "Bland–Altman plot",
    )
    ax.legend(loc="upper left", fontsize="x-small", framealpha=0.8)
    return _save(fig, path)


def _at_risk(time: np.ndarray, ticks: np.ndarray) -> list[int]:
    return [int(np.count_nonzero(time >= t)) for t in ticks]


def plot_kaplan_meier(
    groups: Mapping[str, tuple[np.ndarray, np.ndarray]],
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    logrank: Mapping,
    path: str | os.PathLike | None,
    *,
    time_label: str = "time",
):
    """Kaplan–Meier curves of each predicted risk group, censorings marked, the log-rank p-value in the title
    and the numbers at risk under the axis.

    ``groups[name] = (time, event)`` of the group's cases; ``curves[name] = (times, survival)`` from
    :func:`fusefn.metrics.survival.kaplan_meier`; ``logrank`` the :func:`~fusefn.metrics.survival.logrank` result.
    """
    fig = _figure((6.5, 5.2))
    ax = fig.add_axes((0.12, 0.3, 0.83, 0.62))
    t_max = max(float(np.max(t)) for t, _ in groups.values())
    for i, (name, (t, e)) in enumerate(groups.items()):
        ut, s = curves[name]
        xs, ys = np.concatenate([[0.0], ut]), np.concatenate([[1.0], s])
        color = f"C{i}"
        ax.step(
            xs, ys, where="post", color=color, lw=1.6, label=f"{name} (n = {t.size}, {int(np.count_nonzero(e))} events)"
        )
        cens = np.unique(t[~e.astype(bool)])
        if cens.size:
            ax.plot(cens, ys[np.searchsorted(xs, cens, side="right") - 1], "|", color=color, ms=6, mew=1)
    p = logrank.get("p_value")
    ptext = "p < 0.0001" if p is not None and p < 1e-4 else f"p = {format_value(p)}"
    ax.set(
        ylabel="survival probability",
        ylim=(0, 1.02),
        xlim=(0, t_max * 1.02),
        title=f"Kaplan–Meier by predicted risk group (log-rank {ptext})",
    )
    ax.legend(loc="lower left", fontsize="small")
    ticks = np.array([tk for tk in ax.get_xticks() if 0 <= tk <= t_max * 1.02])
    ax.set_xticks(ticks)
    table = fig.add_axes((0.12, 0.06, 0.83, 0.14), sharex=ax)
    table.set_xlabel(time_label)
    for i, (t, _) in enumerate(groups.values()):
        for tk, k in zip(ticks, _at_risk(t, ticks), strict=True):
            table.text(tk, len(groups) - 1 - i, str(k), ha="center", va="center", fontsize=8, color=f"C{i}")
    table.set_ylim(-0.6, len(groups) - 0.4)
    table.set_yticks(range(len(groups)), list(groups)[::-1], fontsize=8)
    table.tick_params(axis="y", left=False, pad=14)
    for side in ("top", "right", "left"):
        table.spines[side].set_visible(False)
    table.set_title("number at risk", fontsize=8, loc="left")
    ax.tick_params(labelbottom=False)
    return _save(fig, path)


def plot_td_auc(
    times: np.ndarray,
    auc: np.ndarray,
    band: tuple[np.ndarray, np.ndarray] | None,
    marked: Mapping[str, Mapping],
    path: str | os.PathLike | None,
    *,
    level: float = 0.95,
    time_label: str = "time",
):
    """The cumulative/dynamic AUC against time, its bootstrap band, and the report's times marked with their CIs.

    ``marked`` maps a time's name (``"365"``) to its ``{"value", "lower", "upper"}`` leaf.
    """
    fig = _figure((6, 4.2))
    ax = fig.add_subplot()
    ax.plot(times, auc, color="C0", lw=1.6, label="AUC(t)")
    if band is not None:
        ax.fill_between(
            times, band[0], band[1], color="C0", alpha=0.2, lw=0, label=f"{round(level * 100):g}% bootstrap band"
        )
    pts = [(float(k), v) for k, v in marked.items() if k != "mean"]
    if pts:
        x = np.array([t for t, _ in pts])
        y = np.array([v["value"] for _, v in pts], dtype=np.float64)
        if all(v.get("lower") is not None for _, v in pts):
            lo = np.array([v["lower"] for _, v in pts], dtype=np.float64)
            hi = np.array([v["upper"] for _, v in pts], dtype=np.float64)
            ax.errorbar(
                x,
                y,
                yerr=[y - lo, hi - y],
                fmt="o",
                color="C3",
                capsize=3,
                label=f"report times ({round(level * 100, 1):g}% CI)",
            )
        else:
            ax.plot(x, y, "o", color="C3", label="report times")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
    ax.set(xlabel=time_label, ylabel="time-dependent AUC", ylim=(0, 1.02), title="cumulative/dynamic AUC over time")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_multilabel_roc(
    curves: Mapping[str, Mapping], aucs: Mapping[str, Mapping], path: str | os.PathLike | None, *, cols: int = 4
):
    """One small ROC panel per label (``curves[label]`` with ``fpr`` / ``tpr``), its AUC and CI in the panel title."""
    names: Sequence[str] = list(curves)
    cols = min(cols, len(names))
    rows = -(-len(names) // cols)
    fig = _figure((2.8 * cols, 2.8 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(names):
            ax.set_visible(False)
            continue
        name = names[k]
        c = curves[name]
        ax.plot(c["fpr"], c["tpr"], color=f"C{k % 10}", lw=1.4, label=f"AUC {_ci(aucs.get(name))}")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.7)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), title=name)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(loc="lower right", fontsize=6.5)
    fig.suptitle("ROC curve per label")
    fig.tight_layout()
    return _save(fig, path)
