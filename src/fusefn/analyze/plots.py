"""The analyzer's figures, drawn from values the suite computed: ROC curves, confusion matrix, reliability.

Each figure answers what a reader checks first: the ROC legend gives each AUC with its CI and
marks the operating point actually used; the confusion matrix gives counts and the share of
each true class; the reliability diagram shows how many samples each bin holds, so a bin of
three samples does not pass for a calibration failure. matplotlib is imported when a figure
is drawn, not with the module; each PNG is written whole or not at all and carries its
caption (PNG ``Description``, read back by :func:`fusefn.data.visualize.figure_caption`).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "cm.png"
>>> plot_confusion([[8, 2], [1, 9]], ["benign", "malignant"], path, caption="Toy.")
>>> from fusefn.data.visualize import figure_caption
>>> figure_caption(path)
'Toy.'
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from fusefn._atomic import write_bytes
from fusefn.analyze.report import format_value, standard_figures
from fusefn.core import Rng

__all__ = ["calibration_bins", "draw_figures", "plot_roc", "plot_confusion", "plot_reliability"]

MAX_OVERLAID = 4
"""Up to this many classes share one ROC axes; more get one small panel each (and a macro-average panel)."""

MAX_PANELS = 12
"""At most this many ROC panels: beyond, the macro average and the classes with the lowest AUC."""

ZOOM_ABOVE, ZOOM = 0.95, (0.2, 0.8)
"""When every panel's AUC is at least ``ZOOM_ABOVE``, each gets an inset of FPR 0–0.2, TPR 0.8–1."""

RELIABILITY_BINS = 10
"""Equal-width bins of the binary reliability diagram."""

_OP_STYLE = {"marker": "o", "ms": 7, "mfc": "white", "mec": "black", "mew": 1.5, "ls": "none", "zorder": 5}


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike, caption: str | None = None) -> None:
    buf = io.BytesIO()
    meta = {"Description": caption} if caption else None
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata=meta)
    write_bytes(pathlib.Path(path), buf.getvalue())


def _pct(level: float) -> str:
    return f"{round(level * 100, 1):g}%"


def _auc_text(entry, level: float) -> str:
    """``AUC 0.987 (95% CI 0.976–0.995)`` from a result leaf, or a bare number; ``AUC n/a`` when undefined."""
    if isinstance(entry, Mapping):
        value, lo, hi = entry.get("value"), entry.get("lower"), entry.get("upper")
    else:
        value, lo, hi = entry, None, None
    if value is None or not np.isfinite(value):
        return "AUC n/a"
    d = 4 if value >= 0.995 else 3  # 0.9997 is not 1.000: near-perfect AUCs keep a fourth digit
    text = f"AUC {value:.{d}f}"
    if lo is not None and hi is not None and np.isfinite([lo, hi]).all():
        text += f" ({_pct(level)} CI {lo:.{d}f}–{hi:.{d}f})"
    return text


def _area(c: Mapping) -> float:
    return float(np.sum(np.diff(c["fpr"]) * (c["tpr"][1:] + c["tpr"][:-1]) / 2))


def _operating_point(op: Mapping | None) -> tuple[float, float] | None:
    """(false positive rate, sensitivity) of an ``operating_point`` result (one class), if defined."""
    if not isinstance(op, Mapping) or "sensitivity" not in op:
        return None

    def val(x):
        return x.get("value") if isinstance(x, Mapping) else x

    sens, spec = val(op["sensitivity"]), val(op["specificity"])
    if sens is None or spec is None or not np.isfinite([sens, spec]).all():
        return None
    return 1.0 - float(spec), float(sens)


def _band(band_c: Mapping, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = np.nanquantile(band_c["tpr"], [(1 - level) / 2, (1 + level) / 2], axis=0)
    return np.asarray(band_c["fpr"]), lo, hi


def _decision_text(results: Mapping | None) -> str:
    s, names = (results or {}).get("settings", {}), (results or {}).get("class_names") or []
    thr = s.get("threshold")
    if thr is None:
        return "argmax"
    return f"P({names[1]}) ≥ {thr:.3g}" if len(names) == 2 else f"threshold {thr:.3g}"


def _roc_axes(ax, *, small: bool = False) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlim=(-0.01, 1), ylim=(0, 1.02), aspect="equal")
    if small:
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=7)


def plot_roc(
    curves: Mapping,
    band: Mapping | None,
    path: str | os.PathLike,
    *,
    level: float = 0.95,
    results: Mapping | None = None,
    caption: str | None = None,
) -> None:
    """The ROC curve of each class (``curves`` / ``band`` from :func:`fusefn.analyze.roc_curves`) to a PNG.

    With ``results`` (from :func:`fusefn.analyze.analyze`) each legend gives the AUC with its CI and the
    operating point of the decision actually taken (the binary threshold, or argmax: each class's
    one-vs-rest sensitivity and specificity) is marked. Up to :data:`MAX_OVERLAID` curves share one
    axes; more get a panel each after a macro-average panel (the :data:`MAX_PANELS` ``- 1`` lowest
    AUCs when there are more). With a ``band``, the central ``level`` of the resampled TPRs is shaded.
    """
    metrics = (results or {}).get("metrics", {})
    auc, ops = metrics.get("auc"), metrics.get("operating_point")
    names = list(curves)
    binary = len(names) == 1

    def auc_of(name):
        if binary:
            return auc if auc is not None else _area(curves[name])
        return auc.get(name) if isinstance(auc, Mapping) and name in auc else _area(curves[name])

    def op_of(name):
        return _operating_point(ops if binary else (ops or {}).get(name))

    banded = f" (shaded: {_pct(level)} bootstrap band)" if band is not None else ""
    if len(names) <= MAX_OVERLAID:
        fig = _figure(5.2, 5.2)
        ax = fig.add_subplot()
        for name in names:
            c = curves[name]
            label = _auc_text(auc_of(name), level) if binary else f"{name}: {_auc_text(auc_of(name), level)}"
            (line,) = ax.plot(c["fpr"], c["tpr"], label=label, lw=1.6)
            if band is not None:
                x, lo, hi = _band(band[name], level)
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
            point = op_of(name)
            if point is not None:
                ax.plot(*point, color=line.get_color(), clip_on=False, **_OP_STYLE)
        _roc_axes(ax)
        if any(op_of(n) is not None for n in names):
            label = f"operating point ({_decision_text(results)})"
            if binary:
                fpr, sens = op_of(names[0])
                label += f":\nsensitivity {sens:.3f}, specificity {1 - fpr:.3f}"
            ax.plot([], [], color="black", label=label, **_OP_STYLE)
        ax.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)")
        what = f"ROC curve of {names[0]}" if binary else "ROC curves, each class against the rest"
        ax.set_title(what + banded, fontsize=10)
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
        _save(fig, path, caption)
        return
    _small_multiples(curves, band, path, level=level, auc_of=auc_of, op_of=op_of, results=results, caption=caption)


def _macro(curves: Mapping, band: Mapping | None, names: Sequence[str]):
    # a class absent from the targets has no curve (NaN): the average is over the classes that have one
    names = [n for n in names if np.isfinite(curves[n]["tpr"]).all() and np.isfinite(curves[n]["fpr"]).all()] or names
    grid = np.linspace(0, 1, 201)
    tpr = np.mean([np.interp(grid, curves[n]["fpr"], curves[n]["tpr"]) for n in names], axis=0)
    # every class's band comes from the same resamples: their mean is the macro curve's band
    mb = None if band is None else {"fpr": band[names[0]]["fpr"], "tpr": np.nanmean([band[n]["tpr"] for n in names], 0)}
    return {"fpr": grid, "tpr": tpr}, mb


def _zoom(ax, c, b, point, color, level) -> None:
    inset = ax.inset_axes((0.38, 0.3, 0.57, 0.42))
    inset.plot(c["fpr"], c["tpr"], color=color, lw=1.2)
    if b is not None:
        x, lo, hi = _band(b, level)
        inset.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    if point is not None:
        inset.plot(*point, color=color, **{**_OP_STYLE, "ms": 5, "clip_on": False})
    inset.set(xlim=(-0.004, ZOOM[0]), ylim=(ZOOM[1], 1.005))
    inset.set_xticks([0, ZOOM[0]])
    inset.set_yticks([ZOOM[1], 1])
    inset.tick_params(labelsize=6, pad=1)
    inset.set_title("zoom", fontsize=6, pad=3)


def _small_multiples(curves, band, path, *, level, auc_of, op_of, results, caption) -> None:
    names = list(curves)
    aucs = {n: auc_of(n) for n in names}

    def value(n):
        a = aucs[n]
        v = a.get("value") if isinstance(a, Mapping) else a
        return np.inf if v is None or not np.isfinite(v) else v

    shown = names if len(names) < MAX_PANELS else sorted(names, key=value)[: MAX_PANELS - 1]
    macro_auc = (results or {}).get("metrics", {}).get("auc", {})
    macro_auc = macro_auc.get("macro") if isinstance(macro_auc, Mapping) else None
    panels = [("macro average", *_macro(curves, band, names), macro_auc, None)]
    panels += [(f"class {n}", curves[n], None if band is None else band[n], aucs[n], op_of(n)) for n in shown]
    # near-perfect curves hug the corner: every panel then gets an inset of its top-left corner
    zoom = all(value(n) >= ZOOM_ABOVE for n in shown)
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(2.9 * cols, 3.0 * rows + 0.5)
    for i, (title, c, b, a, point) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        color = "black" if i == 0 else "tab:blue"
        ax.plot(c["fpr"], c["tpr"], color=color, lw=1.4)
        if b is not None:
            x, lo, hi = _band(b, level)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
        if point is not None:
            ax.plot(*point, color=color, clip_on=False, **_OP_STYLE)
        _roc_axes(ax, small=True)
        if zoom:
            _zoom(ax, c, b, point, color, level)
        ax.set_title(title, fontsize=9)
        # the AUC sits low right, where a useful curve never is
        ax.text(0.97, 0.05, _auc_text(a, level).replace(" (", "\n("), ha="right", va="bottom", fontsize=7,
                transform=ax.transAxes, bbox={"fc": "white", "ec": "0.8", "alpha": 0.9})  # fmt: skip
        if i % cols == 0:
            ax.set_ylabel("sensitivity", fontsize=8)
        if i >= len(panels) - cols:
            ax.set_xlabel("1 − specificity", fontsize=8)
    what = "each class against the rest" if len(shown) == len(names) else f"the {len(shown)} lowest-AUC classes"
    sub = f"ROC curves: macro average and {what}"
    sub += f"; ○ operating point ({_decision_text(results)})" if any(p[4] is not None for p in panels) else ""
    if band is not None:
        sub += f"; shaded: {_pct(level)} bootstrap band"
    fig.suptitle(sub, fontsize=10)
    fig.tight_layout()
    _save(fig, path, caption)


def plot_confusion(
    matrix: Sequence,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    decision: str | None = None,
    caption: str | None = None,
) -> None:
    """A confusion matrix (rows: true class, columns: predicted class) with counts and row percentages.

    The shade follows the row percentage, so a small class's errors are as visible as a large one's.
    ``decision`` (e.g. ``"threshold 0.5"``) goes under the title.
    """
    cm = np.asarray(matrix, dtype=np.int64)
    k = len(cm)
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(totals > 0, cm / np.where(totals > 0, totals, 1), 0.0)
    side = max(3.4, 0.8 * k + 1.6)
    fig = _figure(side + 0.6, side)
    ax = fig.add_subplot()
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    small = 9 if k <= 6 else 8 if k <= 12 else 6
    for i in range(k):
        for j in range(k):
            # an empty cell says 0 and no more: the eye goes to the cells that hold samples
            text = f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%" if cm[i, j] else "0"
            color = "white" if frac[i, j] > 0.55 else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=small)
    names = [str(n) for n in list(class_names)[:k]]
    ax.set_xticks(range(k), names, rotation=45 if k * max(map(len, names)) > 36 else 0, ha="center")
    ax.set_yticks(range(k), [f"{n} (n={int(t)})" for n, t in zip(names, totals[:, 0])])
    title = "confusion matrix: count and % of the true class"
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(title + (f"\ndecision: {decision}" if decision else ""), fontsize=10)
    _save(fig, path, caption)


def _wilson(rate, count, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """The 95 % Wilson interval of a proportion ``rate`` of ``count`` samples (NaN where ``count`` is 0)."""
    rate, n = np.asarray(rate, dtype=np.float64), np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def calibration_bins(prob, target, *, n_bins: int = RELIABILITY_BINS) -> dict:
    """The binary reliability table: equal-width bins of the positive-class probability, with the observed rate.

    Returns lists ``lower``, ``upper``, ``count``, ``mean_prob``, ``observed`` (fraction of positives)
    and a 95 % Wilson interval ``observed_lower`` / ``observed_upper`` (NaN for an empty bin).

    >>> b = calibration_bins([0.05, 0.1, 0.92, 0.95], [0, 1, 1, 1], n_bins=2)
    >>> b["count"], b["observed"]
    ([2, 2], [0.5, 1.0])
    """
    p, y = np.asarray(prob, dtype=np.float64), np.asarray(target, dtype=np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    pos = np.bincount(idx, weights=y, minlength=n_bins)
    psum = np.bincount(idx, weights=p, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate, mean = pos / count, psum / count
    lo, hi = _wilson(rate, count)
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": count.astype(np.int64).tolist(),
        "mean_prob": mean.tolist(),
        "observed": rate.tolist(),
        "observed_lower": lo.tolist(),
        "observed_upper": hi.tolist(),
    }


def _ece_text(ece: Mapping | None) -> str:
    value = (ece or {}).get("ece")
    if isinstance(value, Mapping):
        value = value.get("value")
    n = len(((ece or {}).get("bins") or {}).get("count", [])) or 15
    return f"top-label ECE {format_value(value)} ({n} bins)"


def plot_reliability(
    ece: Mapping,
    path: str | os.PathLike,
    *,
    prob=None,
    target=None,
    positive: str = "positive class",
    n_bins: int = RELIABILITY_BINS,
    caption: str | None = None,
) -> None:
    """The reliability diagram, with the number of samples in each bin drawn under it, to a PNG.

    Binary (``prob``, the positive-class probability, and ``target`` given): the observed fraction of
    positives against the predicted probability in ``n_bins`` equal-width bins, with 95 % Wilson
    intervals. Otherwise the top-label diagram of ``ece`` (from :func:`fusefn.analyze.reliability`):
    accuracy against the highest class probability, labelled as such.
    """
    fig = _figure(5.2, 6.2)
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax, axn = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    ax.sharex(axn)
    if prob is not None:
        b = calibration_bins(prob, target, n_bins=n_bins)
        x, y = np.asarray(b["mean_prob"]), np.asarray(b["observed"])
        err = np.abs(np.stack([np.asarray(b["observed_lower"]) - y, np.asarray(b["observed_upper"]) - y]))
        ax.errorbar(x, y, yerr=err, fmt="o-", color="tab:blue", ms=5, capsize=3, label="observed (95% Wilson CI)")
        xlabel, ylabel = f"predicted probability of {positive}", f"observed fraction {positive}"
        title = f"reliability of P({positive}): {n_bins} equal-width bins"
        note = _ece_text(ece)
    else:
        b = (ece or {}).get("bins") or {}
        if b:
            x, y = np.asarray(b["confidence"], dtype=np.float64), np.asarray(b["accuracy"], dtype=np.float64)
            err = np.abs(np.stack(_wilson(y, b["count"])) - y)
            ax.errorbar(x, y, yerr=err, fmt="o-", color="tab:blue", ms=5, capsize=3, label="accuracy (95% Wilson CI)")
        xlabel, ylabel = "top-label confidence (highest class probability)", "accuracy of the top label"
        title = f"top-label reliability (multi-class): {len(b.get('count', [])) or 15} equal-width bins"
        note = _ece_text(ece)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    ax.set(ylabel=ylabel, xlim=(-0.02, 1.02), ylim=(-0.02, 1.04))
    ax.tick_params(labelbottom=False)
    # above the axes, where no point can be hidden behind it
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.set_title(f"{title}\n{note}", fontsize=10, pad=24)
    if b:
        lo, hi, count = np.asarray(b["lower"]), np.asarray(b["upper"]), np.asarray(b["count"])
        axn.bar(lo, count, width=hi - lo, align="edge", color="0.75", edgecolor="0.4", lw=0.6)
        for left, width, n in zip(lo, hi - lo, count):
            if n:
                axn.text(left + width / 2, n, str(int(n)), ha="center", va="bottom", fontsize=7)
        axn.set_ylim(0, max(1, count.max()) * 1.3)
    axn.set(xlabel=xlabel, ylabel="samples per bin", xlim=(-0.02, 1.02))
    _save(fig, path, caption)


def draw_figures(out: str | os.PathLike, results: Mapping, inputs, *, ci: int, rng: Rng, level: float = 0.95) -> list:
    """Draw the analyzer's figures into ``out`` and return their ``(title, file name, caption)``.

    ``results`` and ``inputs`` are :func:`fusefn.analyze.analyze`'s; ``ci`` / ``rng`` draw the ROC band.
    The captions (:func:`fusefn.analyze.standard_figures`) are embedded in the PNGs too.
    """
    from fusefn.analyze.inputs import PRED, TARGET
    from fusefn.analyze.suite import reliability, roc_curves

    out = pathlib.Path(out)
    figures = standard_figures(results)
    captions = {name: caption for _, name, caption in figures}
    curves, band = roc_curves(inputs, ci=ci, rng=rng)
    plot_roc(curves, band, out / "roc.png", level=level, results=results, caption=captions["roc.png"])
    plot_confusion(
        results["confusion_matrix"]["matrix"],
        inputs.class_names,
        out / "confusion_matrix.png",
        decision=_decision_text(results),
        caption=captions["confusion_matrix.png"],
    )
    if "reliability.png" in captions:
        kw: dict = {"caption": captions["reliability.png"]}
        if inputs.num_classes == 2:
            pred = np.asarray(inputs.batch[PRED], dtype=np.float64)
            kw.update(prob=pred[:, 1] if pred.ndim == 2 else pred, target=inputs.batch[TARGET])
            kw["positive"] = str(inputs.class_names[1])
        ece = results["metrics"]["ece"] if kw.get("prob") is not None else reliability(inputs)
        plot_reliability(ece, out / "reliability.png", **kw)
    return figures
