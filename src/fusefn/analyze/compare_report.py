"""The comparison's report: ``metrics.json``, ``report.md`` and ``roc_compare.png``, written from :func:`compare`'s
results (see :mod:`fusefn.analyze.compare`)."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping

from fusefn._atomic import write_bytes
from fusefn.analyze.compare_plots import plot_roc_compare
from fusefn.analyze.report import format_value, markdown_header, to_json
from fusefn.analyze.suite import roc_curves
from fusefn.core import Rng

__all__ = ["format_comparison", "roc_caption", "roc_inputs", "summary_lines", "write_comparison"]

_LEAF = {"value", "mean", "std", "lower", "upper", "sign_flip"}


def _flat(tree: Mapping, prefix: str = "") -> list[tuple[str, Mapping]]:
    """``(dotted name, leaf)`` of a results tree whose leaves are ``{"value", ...}`` dicts."""
    rows = []
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and "value" in v and set(v) <= _LEAF:
            rows.append((name, v))
        elif isinstance(v, Mapping):
            rows.extend(_flat(v, name + "."))
    return rows


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _ci(leaf: Mapping) -> str:
    lo, hi = leaf.get("lower"), leaf.get("upper")
    return f"[{format_value(lo)}, {format_value(hi)}]" if _finite(lo) and _finite(hi) else ""


def _with_ci(leaf: Mapping) -> str:
    return f"{format_value(leaf['value'])} {_ci(leaf)}".rstrip()


def _p(p) -> str:
    if not _finite(p):
        return "nan"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _test_p(results: Mapping, pair: str, metric: str) -> tuple[str, str]:
    """The test and its p-value for a difference row: DeLong for AUCs, McNemar for the accuracy."""
    t = results["tests"][pair]
    if metric == "accuracy":
        return "McNemar", _p(t["mcnemar"]["p_value"])
    dl = t["delong"]
    if metric == "auc" and "p_value" in dl:
        return "DeLong", _p(dl["p_value"])
    if metric.startswith("auc.") and metric[4:] in dl:
        return "DeLong", _p(dl[metric[4:]]["p_value"])
    return "", ""


def _pair_text(pair: str) -> str:
    return pair.replace(" - ", " − ")


def format_comparison(results: Mapping, *, level: float = 0.95, figure: str | None = "roc_compare.png") -> str:
    """``report.md``: the analyzer's header, the models' metrics, the paired differences, the tests, the figure."""
    pct = f"{round(level * 100, 1):g}%"
    models = list(results["models"])
    lines = markdown_header(results, level).rstrip("\n").splitlines()
    lines[0] = "# Comparison of " + ", ".join(models)  # the analyzer's opening, retitled
    src = results["inputs"].get("models", {})
    lines.insert(2, "- **models**: " + ", ".join(f"**{m}** `{src.get(m, '?')}`" for m in models))
    lines += [
        "- **paired**: every model is evaluated on the same cases and, for the intervals, the same resamples; "
        "a difference reads later minus earlier in the order the files were given",
        f"- **tests**: DeLong (AUC; normal approximation, {pct} CI of the difference from its variance), "
        f"McNemar ({results['settings'].get('mcnemar_rule', '')})",
        "",
        "## Metrics of each model",
        "",
        f"Value [{pct} CI]." if results["settings"].get("ci") else "Values (no resampling).",
        "",
        "| metric | " + " | ".join(models) + " |",
        "| --- |" + " ---: |" * len(models),
    ]
    flat = {m: dict(_flat(results["models"][m])) for m in models}
    for name in flat[models[0]]:
        cells = [_with_ci(flat[m][name]) for m in models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Differences",
        "",
        "Paired differences (later − earlier). *other sign*: share of resamples whose difference has the other "
        "sign than the observed one (about half a two-sided bootstrap p-value).",
        "",
        f"| comparison | metric | difference | {pct} CI | other sign | test | p |",
        "| --- | --- | ---: | --- | ---: | --- | ---: |",
    ]
    for pair in results["pairs"]:
        for name, leaf in _flat(results["differences"][pair]):
            test, p = _test_p(results, pair, name)
            flip = leaf.get("sign_flip")
            flip_text = f"{flip:.4f}" if _finite(flip) else ""
            lines.append(
                f"| {_pair_text(pair)} | {name} | {format_value(leaf['value'])} | {_ci(leaf)} | {flip_text} "
                f"| {test} | {p} |"
            )
    lines += ["", "## Tests", "", "### DeLong: ROC AUC", ""]
    lines += [
        f"| comparison | class | AUC (later) | AUC (earlier) | difference | SE | z | p | {pct} CI |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    positive = results["class_names"][-1]
    for pair in results["pairs"]:
        dl = results["tests"][pair]["delong"]
        per = {positive: dl} if "p_value" in dl else dl
        for cls, d in per.items():
            ci = f"[{format_value(d['lower'])}, {format_value(d['upper'])}]" if _finite(d["lower"]) else ""
            lines.append(
                f"| {_pair_text(pair)} | {cls} | {format_value(d['auc_a'])} | {format_value(d['auc_b'])} "
                f"| {format_value(d['difference'])} | {format_value(d['se'])} | {format_value(d['z'])} "
                f"| {_p(d['p_value'])} | {ci} |"
            )
    lines += [
        "",
        "### McNemar: accuracy at the decision",
        "",
        "| comparison | only later right | only earlier right | both right | both wrong | method | statistic | p |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for pair in results["pairs"]:
        mc = results["tests"][pair]["mcnemar"]
        lines.append(
            f"| {_pair_text(pair)} | {mc['a_only']} | {mc['b_only']} | {mc['both_right']} | {mc['both_wrong']} "
            f"| {mc['method']} | {format_value(mc['statistic'])} | {_p(mc['p_value'])} |"
        )
    if len(results["pairs"]) > 1:
        lines += [
            "",
            f"The p-values are not adjusted for the {len(results['pairs'])} comparisons (Bonferroni: multiply by "
            f"{len(results['pairs'])}).",
        ]
    if results.get("warnings"):
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in results["warnings"]]
    if figure:
        lines += ["", "## ROC curves", "", f"![ROC curves of the models]({figure})", "", roc_caption(results, level)]
    return "\n".join(lines) + "\n"


def roc_caption(results: Mapping, level: float = 0.95) -> str:
    """The sentences under ``roc_compare.png`` (also stored in the PNG)."""
    thr = results["settings"].get("threshold")
    where = f"the threshold {thr:g}" if thr is not None else "the argmax decision (one-vs-rest per class)"
    ci = results["settings"].get("ci")
    auc = f"its AUC and {round(level * 100, 1):g}% bootstrap interval" if ci else "its AUC"
    return (
        f"The ROC curve of each model on the same {results['num_samples']} cases (true against false positive "
        f"rate over every threshold); the legend gives {auc}; the markers are the operating points at {where}."
    )


def roc_inputs(results: Mapping, models: Mapping, *, rng: Rng) -> tuple[dict, dict, dict]:
    """``(curves, aucs, points)`` of :func:`~fusefn.analyze.compare_plots.plot_roc_compare` for :func:`compare`'s
    results and its paired ``models`` (:func:`~fusefn.analyze.compare.load_models`)."""
    names = results["class_names"]
    binary = len(names) == 2
    curves, aucs, points = {}, {}, {}
    for m, inputs in models.items():
        curves[m] = roc_curves(inputs, ci=0, rng=rng)[0]
        auc, op = results["models"][m]["auc"], results["models"][m]["operating_point"]
        aucs[m] = {names[1]: auc} if binary else {c: auc[c] for c in names}
        ops = {names[1]: op} if binary else op
        points[m] = {c: (1 - o["specificity"]["value"], o["sensitivity"]["value"]) for c, o in ops.items()}
    return curves, aucs, points


def write_comparison(out, results: Mapping, models: Mapping, *, level: float, plots: bool, rng: Rng) -> None:
    """``metrics.json``, ``report.md`` and (with ``plots``) ``roc_compare.png`` into ``out``."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "metrics.json", (json.dumps(to_json(results), indent=2) + "\n").encode())
    if plots:
        curves, aucs, points = roc_inputs(results, models, rng=rng)
        title = f"ROC curves, {results['num_samples']} cases"
        if len(results["class_names"]) == 2 and len(results["pairs"]) == 1:
            pair = results["pairs"][0]
            p = _p(results["tests"][pair]["delong"]["p_value"])
            title += f" (DeLong {_pair_text(pair)}: p {p if p.startswith('<') else '= ' + p})"
        thr = results["settings"].get("threshold")
        label = f"threshold {thr:g}" if thr is not None else "argmax decision"
        plot_roc_compare(
            curves,
            aucs,
            points,
            out / "roc_compare.png",
            level=level,
            title=title,
            point_label=label,
            caption=roc_caption(results, level),
        )
    write_bytes(
        out / "report.md", format_comparison(results, level=level, figure="roc_compare.png" if plots else None).encode()
    )


def summary_lines(results: Mapping) -> list[str]:
    """One line per pair for the command line: the AUC and accuracy differences with their tests."""
    out = [f"{results['num_samples']} cases, models: {', '.join(results['models'])}"]
    for pair in results["pairs"]:
        d = results["differences"][pair]
        auc = d["auc"] if "value" in d["auc"] else d["auc"]["macro"]
        acc = d["accuracy"]
        tests = results["tests"][pair]
        dl = tests["delong"].get("p_value")
        dl_text = f", DeLong p {_p(dl)}" if dl is not None else ""
        out.append(
            f"{_pair_text(pair)}: AUC {_with_ci(auc)}{dl_text}; "
            f"accuracy {_with_ci(acc)}, McNemar p {_p(tests['mcnemar']['p_value'])}"
        )
    return out
