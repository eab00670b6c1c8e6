"""Figures of a segmentation evaluation: per-class box plots, and slice montages with both contours.

matplotlib is imported when a figure is drawn; each PNG is written whole or not at all.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from fusefn._atomic import write_bytes

__all__ = ["plot_boxes", "plot_montage", "pick_slices"]

BOX_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("hd95", "HD95 (mm)"), ("assd", "ASSD (mm)"), ("nsd", "NSD"))


def _save(fig, path: str | os.PathLike) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    write_bytes(pathlib.Path(path), buf.getvalue())


def plot_boxes(per_case: Mapping[str, Mapping[str, Mapping[str, float]]], classes: Sequence[str], path) -> None:
    """One panel per metric, one box per class over the cases (non-finite values left out, as in the means)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(BOX_METRICS), 3.6))
    for i, (key, title) in enumerate(BOX_METRICS):
        ax = fig.add_subplot(1, len(BOX_METRICS), i + 1)
        data = []
        for c in classes:
            vals = np.array([per_case[case][c][key] for case in per_case], dtype=np.float64)
            data.append(vals[np.isfinite(vals)])
        ax.boxplot([d if d.size else [np.nan] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(classes) + 1), list(classes), rotation=30 if len(classes) > 3 else 0)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def pick_slices(pred: np.ndarray, ref: np.ndarray, axis: int, num: int = 6) -> list[int]:
    """Up to ``num`` slices along ``axis`` where prediction and reference disagree most, spread apart, in order."""
    other = tuple(a for a in range(pred.ndim) if a != axis)
    wrong = (pred != ref).sum(axis=other)
    fg = ((pred != 0) | (ref != 0)).sum(axis=other)
    score = wrong * (fg.max() + 1) + fg  # disagreement first; among equals the slice with more foreground
    used = np.flatnonzero(fg)
    gap = max(1, (int(used[-1] - used[0]) + 1) // (2 * num)) if used.size else 1
    chosen: list[int] = []
    for i in np.argsort(score, kind="stable")[::-1]:
        if score[i] == 0 or len(chosen) == num:
            break
        if all(abs(int(i) - c) >= gap for c in chosen):  # neighbouring slices would show the same error
            chosen.append(int(i))
    return sorted(chosen) or [int(pred.shape[axis] // 2)]


def plot_montage(
    case: str,
    pred: np.ndarray,
    ref: np.ndarray,
    groups: Mapping[str, tuple[int, ...]],
    spacing: Sequence[float],
    path,
    *,
    title: str = "",
    num: int = 6,
) -> None:
    """Slices of one case with each class's reference (solid) and predicted (dashed) contours.

    The slice axis is the one with the coarsest spacing (the acquisition's); the slices shown are
    those where the two label maps disagree most. The reference label map is shaded in grey.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if pred.ndim == 2:
        pred, ref, spacing = pred[None], ref[None], (1.0, *spacing)
    axis = int(np.argmax(spacing))
    slices = pick_slices(pred, ref, axis, num)
    rest = [a for a in range(3) if a != axis]
    aspect = spacing[rest[0]] / spacing[rest[1]]
    # show the foreground's box (+10 %) of the in-plane axes, so small structures are visible
    fg = (pred != 0) | (ref != 0)
    crop = [slice(None)] * 3
    for a in rest:
        idx = np.flatnonzero(fg.any(axis=tuple(b for b in range(3) if b != a)))
        if idx.size:
            pad = max(2, (int(idx[-1]) - int(idx[0])) // 10)
            crop[a] = slice(max(int(idx[0]) - pad, 0), int(idx[-1]) + pad + 1)
    pred, ref = pred[tuple(crop)], ref[tuple(crop)]
    colors = [f"C{i}" for i in range(len(groups))]
    fig = Figure(figsize=(2.6 * len(slices), 3.0))
    for j, s in enumerate(slices):
        ax = fig.add_subplot(1, len(slices), j + 1)
        r2, p2 = np.take(ref, s, axis=axis), np.take(pred, s, axis=axis)
        ax.imshow(r2 != 0, cmap="Greys", vmin=0, vmax=3, aspect=aspect, interpolation="nearest")
        for k, ((_name, g), col) in enumerate(zip(groups.items(), colors)):
            width = max(2.4 - 0.6 * k, 0.8)  # classes that coincide stay visible: the first drawn is the widest
            for m, style in ((np.isin(r2, g), "solid"), (np.isin(p2, g), "dashed")):
                if m.any() and not m.all():
                    ax.contour(m.astype(float), levels=[0.5], colors=[col], linestyles=style, linewidths=width)
        ax.set_title(f"slice {s} (axis {axis})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=c, label=n) for n, c in zip(groups, colors)]
    handles += [
        Line2D([], [], color="k", ls="solid", label="reference"),
        Line2D([], [], color="k", ls="dashed", label="prediction"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.suptitle(title or f"case {case}", fontsize=9)
    _save(fig, path)
