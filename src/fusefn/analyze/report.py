"""The analyzer's report: ``metrics.json``, ``report.txt`` and ``report.md``, each written whole or not at all."""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fusefn._atomic import write_bytes

__all__ = [
    "format_report",
    "format_value",
    "markdown_header",
    "standard_figures",
    "to_json",
    "write_markdown",
    "write_results",
]


def to_json(obj: Any) -> Any:
    """``obj`` as JSON-able data: arrays become lists, NumPy scalars Python numbers, NaN / inf ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def format_value(v) -> str:
    """A value as the report shows it: ints as they are, floats with 4 decimals, None / NaN as ``nan``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.4f}"


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


def _method_text(results: Mapping) -> str:
    s = results.get("settings", {})
    methods = results.get("methods") or {}
    if s.get("method") == "auto" and methods:
        bca = [k for k, m in methods.items() if m == "bca"]
        return f"BCa for {', '.join(bca)}, percentile for the others" if bca else "percentile"
    return {"bca": "BCa"}.get(s.get("method"), str(s.get("method")))


def _counts_text(results: Mapping) -> str:
    counts = results.get("class_counts") or {}
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def _strata_text(settings: Mapping) -> str:
    """How the resamples were drawn: ``settings["stratified"]`` is ``"by target"`` or a sentence of its own."""
    how = settings.get("stratified", "by target")
    return f"stratified {how}" if how.startswith("by ") else how


def _notes(results: Mapping) -> list[str]:
    return list(results.get("notes") or [])


def format_report(results: Mapping, level: float = 0.95, markdown: bool = False) -> str:
    """An aligned text table (or a Markdown table) of metric, value and CI from ``results["metrics"]``.

    A value outside its own interval is marked ``*`` and explained in a note under the table.
    """
    rows = _rows(results.get("metrics", {}))
    for group_name, g in results.get("groups", {}).items():
        rows.extend(_rows(g, f"{group_name}."))
    ci_head = f"{round(level * 100, 1):g}% CI"
    table = [("metric", "value", ci_head)]
    for name, v, lo, hi in rows:
        ci = "" if lo is None else f"[{format_value(lo)}, {format_value(hi)}]"
        if lo is not None and _outside(v, lo, hi):
            ci += " *"
        table.append((name, format_value(v), ci))
    notes = _notes(results)
    if markdown:
        lines = ["| metric | value | " + ci_head + " |", "| --- | ---: | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in table[1:]]
        if notes:
            lines += [""] + [f"\\* {n}" + "  " for n in notes]
        return "\n".join(lines) + "\n"
    w = [max(len(r[i]) for r in table) for i in range(3)]
    lines = [f"{a:<{w[0]}}  {b:>{w[1]}}  {c}".rstrip() for a, b, c in table]
    lines.insert(1, "-" * (w[0] + w[1] + w[2] + 4))
    counts = _counts_text(results)
    header = [
        f"samples: {results.get('num_samples')}"
        + (f" ({counts})" if counts else f", classes: {', '.join(results.get('class_names', []))}")
    ]
    s = results.get("settings", {})
    if s.get("ci"):
        header.append(f"bootstrap: {s['ci']} resamples, {_method_text(results)}, {_strata_text(s)}, seed {s['seed']}")
    if s.get("threshold") is not None:
        header.append(f"threshold: {s['threshold']:g} ({s.get('threshold_rule', 'given')})")
    lines += [f"* {n}" for n in notes]
    return "\n".join([*header, "", *lines]) + "\n"


def _outside(v, lo, hi) -> bool:
    try:
        return bool(np.isfinite([v, lo, hi]).all() and not lo <= v <= hi)
    except TypeError:
        return False


def markdown_header(results: Mapping, level: float = 0.95) -> str:
    """The opening of ``report.md``: a title, the inputs, N with class counts, the bootstrap, the threshold,
    fusefn's version and the date."""
    inp = results.get("inputs", {})
    s = results.get("settings", {})
    preds = inp.get("pred") or []
    title = ", ".join(pathlib.Path(p).name for p in preds) if preds else "predictions"
    lines = [f"# Analysis of {title}", ""]
    lines.append(f"- **inputs**: predictions {', '.join(f'`{p}`' for p in preds) or '(a frame)'}")
    if inp.get("target"):
        lines[-1] += f", targets `{inp['target']}` joined on `{inp.get('id')}`"
    cols = (
        f"scores `{', '.join(inp.get('score', []))}` ({inp.get('scores', 'probabilities')}), label `{inp.get('label')}`"
    )
    if inp.get("groups"):
        cols += f", groups {', '.join(f'`{g}`' for g in inp['groups'])}"
    lines.append(f"- **columns**: {cols}")
    lines.append(f"- **samples**: {results.get('num_samples')} ({_counts_text(results)})")
    if results.get("skipped"):
        lines[-1] += f"; {len(results['skipped'])} skipped (listed in metrics.json)"
    if s.get("ci"):
        lines.append(
            f"- **bootstrap**: {s['ci']} resamples, {_strata_text(s)}, {round(level * 100, 1):g}% intervals by "
            f"{_method_text(results)}, seed {s['seed']}"
        )
    else:
        lines.append("- **bootstrap**: none (no intervals)")
    if s.get("threshold") is not None:
        lines.append(f"- **decision threshold**: {s['threshold']:g} — {s.get('threshold_rule', '')}")
    else:
        lines.append(f"- **decision**: {s.get('threshold_rule', 'argmax')}")
    lines.append(f"- **fusefn** {results.get('fusefn_version', '?')}, {results.get('date', '')}")
    return "\n".join(lines) + "\n\n"


def write_results(out: str | os.PathLike, results: Mapping, *, level: float = 0.95) -> None:
    """``out/metrics.json`` (every value) and ``out/report.txt`` (the table); ``out`` is created."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "metrics.json", (json.dumps(to_json(results), indent=2) + "\n").encode())
    write_bytes(out / "report.txt", format_report(results, level).encode())


def _value(entry):
    return entry.get("value") if isinstance(entry, Mapping) else entry


def _roc_caption(results: Mapping) -> str:
    s, names = results.get("settings", {}), [str(n) for n in results.get("class_names", [])]
    ci, level = s.get("ci") or 0, s.get("level", 0.95)
    pct = f"{round(level * 100, 1):g}%"
    thr = s.get("threshold")
    from fusefn.analyze.plots import MAX_OVERLAID, MAX_PANELS

    if len(names) == 2:
        head = f"ROC curve of {names[1]} against {names[0]}: true against false positive rate over every threshold."
    elif len(names) > MAX_OVERLAID:
        which = "each class" if len(names) < MAX_PANELS else f"the {MAX_PANELS - 1} classes with the lowest AUC"
        head = f"One panel per curve: the macro average, then {which} against the rest (one-vs-rest ROC)."
    else:
        head = "One-vs-rest ROC curve of each class: true against false positive rate over every threshold."
    where = "Each panel" if len(names) > MAX_OVERLAID else "The legend"
    auc = f" {where} gives the AUC with its {pct} CI from {ci} bootstrap resamples." if ci else ""
    band = f" The band holds the central {pct} of {min(ci, 1000)} resampled curves." if ci else ""
    op = (results.get("metrics") or {}).get("operating_point") or {}
    if len(names) == 2 and thr is not None and "sensitivity" in op:
        sens, spec = _value(op["sensitivity"]), _value(op["specificity"])
        mark = (
            f" The circle is the operating point at the threshold {thr:g} ({s.get('threshold_rule', 'given')}): "
            f"sensitivity {format_value(sens)}, specificity {format_value(spec)}."
        )
    else:
        mark = " Circles mark the argmax decision: each class's one-vs-rest sensitivity and 1 − specificity."
    return head + auc + band + mark


def standard_figures(results: Mapping) -> list[tuple[str, str, str]]:
    """``(title, file name, caption)`` of the analyzer's figures for ``results``: ROC, confusion matrix and, when
    the scores are probabilities, the reliability diagram. Each caption is one or more full sentences.

    >>> [t for t, _, _ in standard_figures({"metrics": {"auc": {}}, "settings": {"ci": 0, "threshold": 0.5}})]
    ['ROC curve', 'confusion matrix']
    """
    s, names = results.get("settings", {}), [str(n) for n in results.get("class_names", [])]
    thr = s.get("threshold")
    decision = f"at the threshold {thr:g}" if thr is not None else "taking the class with the highest score (argmax)"
    figures = [
        ("ROC curve", "roc.png", _roc_caption(results)),
        (
            "confusion matrix",
            "confusion_matrix.png",
            f"Counts of the true class (rows) against the predicted class (columns) {decision}; under each count, "
            "its percentage of the true class (each row sums to 100%), which the shading follows.",
        ),
    ]
    if "ece" in results.get("metrics", {}):
        if len(names) == 2:
            caption = (
                f"Observed fraction of {names[1]} against the predicted probability of {names[1]}, in "
                "10 equal-width bins (points at each bin's mean prediction, bars 95% Wilson intervals); the "
                "diagonal is perfect calibration and the bars underneath count the samples in each bin. "
                "The ECE in the table is that of the top-label confidence, in 15 equal-width bins."
            )
        else:
            caption = (
                "Top-label reliability (multi-class): accuracy of the predicted class against its probability "
                "(the highest class probability) in 15 equal-width bins (bars: 95% Wilson intervals); the "
                "diagonal is perfect calibration and the bars underneath count the samples in each bin."
            )
        figures.append(("reliability diagram", "reliability.png", caption))
    return figures


def write_markdown(
    out: str | os.PathLike,
    results: Mapping,
    *,
    level: float = 0.95,
    figures: Sequence[tuple[str, str] | tuple[str, str, str]] = (),
) -> None:
    """``out/report.md``: the header (:func:`markdown_header`), the table, then each figure embedded.

    ``figures`` are ``(title, file name)`` or ``(title, file name, caption)``; they are embedded so
    that one file shows the whole analysis, each with its caption (given, or the one stored in the PNG).
    """
    from fusefn.data.visualize import figure_caption

    md = markdown_header(results, level) + format_report(results, level, markdown=True)
    for title, name, *caption in figures:
        md += f"\n### {title}\n\n![{title}]({name})\n"
        text = caption[0] if caption and caption[0] else figure_caption(pathlib.Path(out) / name)
        if text:
            md += f"\n{text}\n"
    write_bytes(pathlib.Path(out) / "report.md", md.encode())
