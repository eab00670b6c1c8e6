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

__all__ = ["format_report", "format_value", "to_json", "write_results", "write_markdown"]


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


def format_report(results: Mapping, level: float = 0.95, markdown: bool = False) -> str:
    """An aligned text table (or a Markdown table) of metric, value and CI from ``results["metrics"]``."""
    rows = _rows(results.get("metrics", {}))
    for group_name, g in results.get("groups", {}).items():
        rows.extend(_rows(g, f"{group_name}."))
    ci_head = f"{round(level * 100, 1):g}% CI"
    table = [("metric", "value", ci_head)]
    for name, v, lo, hi in rows:
        ci = "" if lo is None else f"[{format_value(lo)}, {format_value(hi)}]"
        table.append((name, format_value(v), ci))
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


def write_results(out: str | os.PathLike, results: Mapping, *, level: float = 0.95) -> None:
    """``out/metrics.json`` (every value) and ``out/report.txt`` (the table); ``out`` is created."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "metrics.json", (json.dumps(to_json(results), indent=2) + "\n").encode())
    write_bytes(out / "report.txt", format_report(results, level).encode())


def write_markdown(
    out: str | os.PathLike, results: Mapping, *, level: float = 0.95, figures: Sequence[tuple[str, str]] = ()
) -> None:
    """``out/report.md``: the table in Markdown, then each ``(title, file name)`` figure embedded.

    The figures are embedded so that one file shows the whole analysis.
    """
    md = format_report(results, level, markdown=True)
    md += "".join(f"\n### {title}\n\n![{title}]({name})\n" for title, name in figures)
    write_bytes(pathlib.Path(out) / "report.md", md.encode())
