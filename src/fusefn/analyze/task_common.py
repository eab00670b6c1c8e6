"""What the regression, survival and multi-label analyses share: reading checked columns, the bootstrap of a
metric dict, the results skeleton and the report's Markdown.

Each task module (:mod:`~fusefn.analyze.task_regression`, :mod:`~fusefn.analyze.task_survival`,
:mod:`~fusefn.analyze.task_multilabel`) picks its columns with :func:`numbers`, evaluates its metrics
with :func:`bootstrap_metrics` (every metric on the same resamples of whole cases) and writes its
section with :func:`write_task` under the header every analysis opens with.

>>> import polars as pl
>>> df = pl.DataFrame({"id": ["a", "b"], "y": [1.5, None]})
>>> numbers(df, "y", "target", "id", allow_missing=True).tolist()
[1.5, nan]
>>> numbers(df, "y", "target", "id")
Traceback (most recent call last):
...
fusefn.errors.ConfigError: target column 'y': case 'b' has no finite value (NaN, infinite or missing); pass skip_invalid=True (--skip-invalid) to leave such cases out
"""

from __future__ import annotations

import datetime
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from fusefn import keys, nd
from fusefn._atomic import write_bytes
from fusefn.analyze.inputs import as_list, fusefn_version, source_name
from fusefn.analyze.report import format_value, markdown_header, write_results
from fusefn.analyze.resampling import Progress, resample_suite
from fusefn.analyze.suite import interval_methods, outside_notes
from fusefn.core import Rng
from fusefn.errors import ConfigError
from fusefn.metrics import evaluate
from fusefn.metrics.bootstrap import summarize

__all__ = [
    "base_results",
    "bootstrap_metrics",
    "case_id",
    "ci_cell",
    "leaves",
    "md_table",
    "numbers",
    "one_per_case",
    "pick_column",
    "write_task",
]

_SKIP_HINT = "pass skip_invalid=True (--skip-invalid) to leave such cases out"


def case_id(df: pl.DataFrame, id: str | None, i: int):
    """The id of row ``i`` (or ``row i+1`` when the frame has no id column), for error messages."""
    return df[id][i] if id is not None and id in df.columns else f"row {i + 1}"


def pick_column(df: pl.DataFrame, col: str | None, what: str, defaults: Sequence[str] = ()) -> str:
    """``col`` when the frame has it, else the first of ``defaults`` it has; a one-line error naming the columns."""
    if col is not None:
        if col not in df.columns:
            raise ConfigError(f"{what} column {col!r} not found; columns: {', '.join(df.columns)}")
        return col
    for cand in defaults:
        if cand in df.columns:
            return cand
    tried = f" (tried {', '.join(defaults)})" if defaults else ""
    raise ConfigError(f"no {what} column given{tried}; columns: {', '.join(df.columns)}")


def _as_float(df: pl.DataFrame, col: str, what: str, id: str | None) -> np.ndarray:
    s = df[col]
    dtype = s.dtype
    if isinstance(dtype, (pl.List, pl.Array)):
        if not (dtype.inner.is_numeric() or dtype.inner == pl.Null):
            raise ConfigError(f"{what} column {col!r} holds lists of {dtype.inner}, not numbers")
        lengths = s.list.len().to_numpy() if isinstance(dtype, pl.List) else None
        if lengths is not None and lengths.size and (lengths != lengths[0]).any():
            i = int(np.flatnonzero(lengths != lengths[0])[0])
            raise ConfigError(
                f"{what} column {col!r}: case {case_id(df, id, i)!r} has {lengths[i]} values, "
                f"the first case {lengths[0]}; every case needs the same number"
            )
        return np.asarray(s.to_list(), dtype=np.float64)
    if dtype.is_numeric() or dtype in (pl.Boolean, pl.Null):
        return s.cast(pl.Float64).fill_null(float("nan")).to_numpy()
    if dtype in (pl.Utf8, pl.Categorical):
        text = s.cast(pl.Utf8)
        parsed = text.str.strip_chars().cast(pl.Float64, strict=False)
        bad = (parsed.is_null() & text.is_not_null()).arg_true()
        if bad.len() == 0:
            return parsed.fill_null(float("nan")).to_numpy()
        i = int(bad[0])
        raise ConfigError(f"{what} column {col!r} holds text, not numbers: {case_id(df, id, i)!r} has {text[i]!r}")
    raise ConfigError(f"{what} column {col!r} has type {dtype}, not numbers")


def numbers(
    df: pl.DataFrame,
    cols: str | Sequence[str],
    what: str,
    id: str | None,
    *,
    allow_missing: bool = False,
) -> np.ndarray:
    """Column ``cols`` as float64 ``(N,)``; a list column or several columns as ``(N, K)``.

    A NaN, infinite or missing value is an error naming the column and the case, unless
    ``allow_missing`` (the caller then skips those cases and lists them).
    """
    names = as_list(cols)
    parts = [_as_float(df, c, what, id) for c in names]
    arr = parts[0] if len(parts) == 1 else np.stack(parts, axis=1)
    if not allow_missing:
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            where = ", ".join(names)
            raise ConfigError(
                f"{what} column {where!r}: case {case_id(df, id, i)!r} has no finite value (NaN, infinite or missing)"
                + (f", and {int(bad.sum()) - 1} more case(s)" if bad.sum() > 1 else "")
                + f"; {_SKIP_HINT}"
            )
    return arr


def one_per_case(arr: np.ndarray, col: str, what: str) -> np.ndarray:
    """``(N,)`` from a column of one number per case (a list column of length-1 lists included).

    >>> one_per_case(np.array([[1.0], [2.0]]), "pred", "prediction").tolist()
    [1.0, 2.0]
    """
    if arr.ndim == 2 and arr.shape[1] == 1:
        return arr[:, 0]
    if arr.ndim != 1:
        raise ConfigError(f"{what} column {col!r} holds {arr.shape[1]} values per case; this analysis takes one")
    return arr


def leaves(value):
    """Numbers as ``{"value": x}`` leaves, so results without intervals have the shape of those with them."""
    if isinstance(value, Mapping):
        return {k: leaves(v) for k, v in value.items()}
    return {"value": value}


def bootstrap_metrics(
    metrics: Mapping,
    batch: Mapping,
    *,
    ci: int,
    rng: Rng,
    level: float = 0.95,
    method: str = "auto",
    progress: Progress | None = None,
) -> dict:
    """``{"metrics", "methods", "notes", "warnings"}``: each metric's value with its bootstrap interval.

    Whole cases are resampled (no stratum is kept fixed: a regression target is continuous, a survival
    case's event status and a multi-label case's labels are part of the case), every metric on the
    same ``ci`` resamples drawn from ``rng``; ``batch`` holds the ids at ``data.sample_id``. ``ci=0`` gives the values only, as ``{"value": x}`` leaves.
    """
    methods = interval_methods(list(metrics), method)
    out: dict = {"metrics": {}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = evaluate(dict(metrics), batch)
        if ci:
            size = len(nd.get(batch, keys.SAMPLE_ID))
            boots, jack = resample_suite(
                metrics,
                batch,
                n=ci,
                rng=rng,
                jackknife=[n for n in metrics if methods[n] == "bca"],
                values=values,
                progress=progress,
                strata=np.zeros(size, dtype=np.int64),
            )
            for name in metrics:
                out["metrics"][name] = summarize(values[name], boots[name], level, methods[name], name, jack.get(name))
        else:
            out["metrics"] = {name: leaves(values[name]) for name in metrics}
    out["methods"] = methods if ci else {}
    out["notes"] = outside_notes(out["metrics"], methods, level) if ci else []
    out["warnings"] = sorted({str(w.message) for w in caught})
    return out


def base_results(
    task: str,
    *,
    pred,
    target,
    id: str,
    score: Sequence[str],
    label: Sequence[str] | str,
    counts: Mapping[str, int],
    num_samples: int,
    skipped: Sequence[dict],
    ci: int,
    rng: Rng,
    level: float,
    method: str,
    rule: str,
    extra_inputs: Mapping | None = None,
) -> dict:
    """The parts of ``metrics.json`` every task has: the inputs, the settings, N and its counts, version and date.

    ``counts`` is what the header shows after N (events and censored, positives per label, …);
    ``rule`` is what the header says in place of a decision threshold.
    """
    label = [label] if isinstance(label, str) else list(label)
    return {
        "task": task,
        "inputs": {
            "pred": [source_name(f) for f in as_list(pred)],
            "target": None if target is None else source_name(target),
            "id": id,
            "score": list(score),
            "scores": "raw",
            "label": ", ".join(label),
            "groups": [],
            **(extra_inputs or {}),
        },
        "settings": {
            "ci": ci,
            "seed": rng.seed,
            "level": level,
            "method": method,
            "stratified": "whole cases resampled (not stratified)",
            "threshold": None,
            "threshold_rule": rule,
        },
        "num_samples": num_samples,
        "class_counts": dict(counts),
        "fusefn_version": fusefn_version(),
        "date": datetime.date.today().isoformat(),
        "skipped": list(skipped),
        "class_names": [],
    }


def ci_cell(node: Mapping | None) -> str:
    """``"0.1234 [0.1000, 0.2000]"`` of a ``{"value", "lower", "upper"}`` leaf (the value alone without an interval).

    >>> ci_cell({"value": 0.5, "lower": 0.25, "upper": 0.75})
    '0.5000 [0.2500, 0.7500]'
    """
    if not node:
        return ""
    text = format_value(node.get("value"))
    if "lower" in node:
        text += f" [{format_value(node['lower'])}, {format_value(node['upper'])}]"
    return text


def md_table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A Markdown table; ``align`` one character per column (``l``/``r``), default the first left, the rest right.

    >>> print(md_table(["metric", "value"], [["MAE", "0.5"]]), end="")
    | metric | value |
    | --- | ---: |
    | MAE | 0.5 |
    """
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_task(
    out: pathlib.Path,
    results: Mapping,
    *,
    level: float,
    section: str,
    figures: Sequence[tuple[str, str, str]] = (),
) -> None:
    """``metrics.json`` and ``report.txt`` (every value), and ``report.md``: the header, the task's section,
    its figures (``(title, file name, caption)``) and the notes on values outside their interval."""
    write_results(out, results, level=level)
    md = markdown_header(results, level) + section
    notes = list(results.get("notes") or [])
    if notes:
        md += "\n" + "".join(f"\\* {n}  \n" for n in notes)
    for title, name, caption in figures:
        md += f"\n### {title}\n\n![{title}]({name})\n\n{caption}\n"
    write_bytes(pathlib.Path(out) / "report.md", md.encode())
