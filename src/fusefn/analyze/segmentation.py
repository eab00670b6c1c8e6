"""Segmentation evaluation: predicted label maps against reference ones, matched by case id, with a report.

For every case in both folders (see :mod:`fusefn.analyze.seg_inputs` for how case ids are read) and every
class: Dice, IoU, HD95, ASSD, NSD at a tolerance in mm, and the volume difference — distances and volumes in
millimetres from each file's affine (spacing = the column norms of its linear part, voxel volume = ``|det|``),
computed by :func:`fusefn.metrics.segmentation.case_scores` (MONAI's definitions). Then per class the mean over
cases with a bootstrap CI (cases resampled), written as one output set: ``metrics.json``, ``report.md`` with a
per-case table, ``boxplots.png`` and slice montages of the three worst cases (lowest mean Dice) with both contours.

**Empty masks** (a class absent from a case's prediction and/or reference):

* both empty — the class is correctly absent: Dice = IoU = NSD = 1, HD95 = ASSD = 0 mm, volume differences 0;
  these values count in the means;
* one empty — Dice = IoU = NSD = 0 (counted in the means); HD95 and ASSD are infinite: the table shows them
  as NaN (``null`` in metrics.json) and the distance means leave them out. The relative volume difference is NaN
  (left out) when the reference is empty. Each class's summary gives ``n`` per metric and the counts
  ``both_empty``, ``pred_empty``, ``ref_empty``.

**Bad cases** — a prediction whose shape or affine differs from its reference, a label outside the declared
set, an unreadable file — are recorded under ``failed`` (case and reason) and the rest is evaluated.
A case in one folder only is an error listing them unless ``allow_missing``, which evaluates the intersection
and records the others under ``missing``.

>>> import numpy as np, pathlib, tempfile, nibabel as nib
>>> from fusefn import Rng
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for side in ("pred", "ref"):
...     (root / side).mkdir()
...     for i in range(3):
...         lab = np.zeros((8, 10, 10), np.uint8); lab[2:6, 3:7, 3:7 + (side == "pred")] = 1
...         nib.save(nib.Nifti1Image(lab, np.diag([2.0, 1.0, 1.0, 1.0])), root / side / f"c{i}.nii.gz")
>>> r = evaluate_segmentations(root / "pred", root / "ref", classes=(1,), n_boot=200, rng=Rng(0), out=root / "out")
>>> round(r["classes"]["1"]["dice"]["value"], 4), r["classes"]["1"]["hd95"]["value"]
(0.8889, 1.0)
>>> sorted(p.name for p in (root / "out").iterdir() if not p.name.startswith("."))[:3]
['boxplots.png', 'metrics.json', 'report.md']
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from fusefn._atomic import atomic_dir, write_bytes
from fusefn.affine import spacing as spacing_of
from fusefn.analyze.report import format_value, to_json
from fusefn.analyze.seg_inputs import check_labels, check_pair, find_cases, match_cases, read_label_map
from fusefn.core import Rng
from fusefn.errors import ConfigError, FusefnError, SampleError
from fusefn.metrics.bootstrap import iter_resample_counts, summarize
from fusefn.metrics.segmentation import case_scores

__all__ = ["OUTPUTS", "SUMMARY_METRICS", "evaluate_segmentations", "parse_classes", "segmentation_command"]

SUMMARY_METRICS = ("dice", "iou", "hd95", "assd", "nsd", "volume_diff", "volume_diff_rel")
"""The per-class means (with CIs) of the report; metrics.json also keeps each case's volumes."""

OUTPUTS = ("metrics.json", "report.md", "*.png", ".*.tmp")
_RNG = Rng(1234)
_WORST = 3


def parse_classes(spec: str | Sequence | Mapping) -> dict[str, tuple[int, ...]]:
    """``{name: labels}`` from ``"1,2"``, ``"1+2+3,2"``, ``"kidney=1+2+3,tumour=2"``, a sequence or a mapping.

    >>> parse_classes("kidney=1+2+3,tumour=2")
    {'kidney': (1, 2, 3), 'tumour': (2,)}
    >>> parse_classes([1, (2, 3)])
    {'1': (1,), '2+3': (2, 3)}
    """
    if isinstance(spec, Mapping):
        items = [(str(k), (v,) if isinstance(v, int) else tuple(v)) for k, v in spec.items()]
    elif isinstance(spec, str):
        items = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name, _, labels = part.rpartition("=")
            try:
                group = tuple(int(x) for x in labels.split("+"))
            except ValueError:
                raise ConfigError(f"classes: {part!r} is not a label, labels joined by '+', or name=labels") from None
            items.append((name.strip() or "+".join(map(str, group)), group))
    else:
        items = [
            ((str(c) if isinstance(c, int) else "+".join(map(str, c))), (c,) if isinstance(c, int) else tuple(c))
            for c in spec
        ]
    out = {}
    for name, group in items:
        if not group or any(int(x) < 0 for x in group):
            raise ConfigError(f"classes: {name!r} needs labels >= 0, got {group}")
        if name in out:
            raise ConfigError(f"classes: {name!r} is given twice")
        out[name] = tuple(int(x) for x in group)
    if not out:
        raise ConfigError("classes: give at least one label to score")
    return out


def _apply_empty_rules(raw: dict) -> tuple[dict, str]:
    """The report's values of one case and class (module doc), and its status."""
    vp, vr = raw["volume_pred"], raw["volume_ref"]
    row = dict(raw)
    if vp == 0 and vr == 0:
        row.update(dice=1.0, iou=1.0, nsd=1.0, hd95=0.0, assd=0.0, volume_diff=0.0, volume_diff_rel=0.0)
        return row, "both_empty"
    if vp == 0 or vr == 0:
        row.update(hd95=float("nan"), assd=float("nan"))
        return row, "pred_empty" if vp == 0 else "ref_empty"
    return row, "ok"


def _evaluate_case(case, pred_path, ref_path, groups, allowed, tolerance, percentile):
    pred, pa = read_label_map(pred_path, case, "prediction")
    ref, ra = read_label_map(ref_path, case, "reference")
    check_pair(case, pred, pa, ref, ra)
    check_labels(case, pred, allowed, "prediction")
    check_labels(case, ref, allowed, "reference")
    n = ra.shape[0] - 1
    try:
        raw = case_scores(
            pred,
            ref,
            tuple(groups.values()),
            spacing=spacing_of(ra)[: pred.ndim],
            voxel_volume=float(abs(np.linalg.det(ra[:n, :n]))),
            tolerance=tolerance,
            percentile=percentile,
        )
    except ValueError as e:
        raise SampleError(str(e), sample_id=case) from None
    return {name: raw["+".join(map(str, g))] for name, g in groups.items()}


def _summaries(per_case: dict, names: Sequence[str], *, n_boot: int, rng: Rng, level: float) -> dict:
    cases = list(per_case)
    out = {}
    counts_iter = list(iter_resample_counts(n_boot, np.zeros(len(cases), np.int64), rng=rng)) if n_boot else []
    for name in names:
        entry: dict = {}
        for metric in SUMMARY_METRICS:
            col = np.array([per_case[c][name][metric] for c in cases], dtype=np.float64)
            ok = np.isfinite(col)
            value = float(col[ok].mean()) if ok.any() else float("nan")
            if n_boot and ok.any():
                parts = []
                for counts in counts_iter:
                    w = counts.astype(np.float64)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        parts.append((w @ np.where(ok, col, 0.0)) / (w @ ok))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    s = summarize(value, np.concatenate(parts), level, "percentile")
            else:
                s = {"value": value}
            s["n"] = int(ok.sum())
            entry[metric] = s
        status = [per_case[c][name]["status"] for c in cases]
        entry["counts"] = {k: status.count(k) for k in ("ok", "both_empty", "pred_empty", "ref_empty")}
        out[name] = entry
    return out


def evaluate_segmentations(
    pred: str | os.PathLike,
    ref: str | os.PathLike,
    *,
    classes: str | Sequence | Mapping,
    labels: Sequence[int] | None = None,
    tolerance_mm: float = 1.0,
    percentile: float = 95.0,
    n_boot: int = 10_000,
    rng: Rng = _RNG,
    level: float = 0.95,
    allow_missing: bool = False,
    out: str | os.PathLike | None = None,
    plots: bool = True,
) -> dict:
    """Evaluate a folder of predicted label maps against a folder of reference ones (see the module doc).

    Args:
        pred, ref: folders of NIfTI label maps, paired by case id.
        classes: what to score, as for :func:`parse_classes` (a class may merge labels: ``"kidney=1+2+3"``).
        labels: the declared label set (default 0 and every label of ``classes``); any other label in a
            file fails that case.
        tolerance_mm: NSD tolerance τ. percentile: of the Hausdorff distance (95: HD95).
        n_boot: bootstrap resamples of the cases (0: no intervals). rng: their stream (seed recorded).
        level: coverage of the intervals. allow_missing: evaluate the cases in both folders only.
        out: output folder, replaced as a whole set (None: compute only).

    Returns:
        The dict written to ``metrics.json``: ``classes[name][metric]`` = ``{value, lower, upper, …, n}``
        and ``counts``; ``per_case[case][name][metric]``; ``failed``, ``missing``, ``worst_cases``.
    """
    groups = parse_classes(classes)
    if not (tolerance_mm >= 0 and np.isfinite(tolerance_mm)):
        raise ConfigError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    if n_boot < 0 or n_boot == 1:
        raise ConfigError(f"n_boot must be 0 (no intervals) or >= 2, got {n_boot}")
    allowed = (
        frozenset(int(x) for x in labels)
        if labels is not None
        else frozenset({0, *(x for g in groups.values() for x in g)})
    )
    pred_cases, ref_cases = find_cases(pred), find_cases(ref)
    cases, missing = match_cases(pred_cases, ref_cases, allow_missing=allow_missing)
    per_case, failed = {}, []
    for case in cases:
        try:
            raw = _evaluate_case(case, pred_cases[case], ref_cases[case], groups, allowed, tolerance_mm, percentile)
        except SampleError as e:
            failed.append({"case": case, "error": e.reason if e.sample_id == case else str(e)})
            continue
        per_case[case] = {}
        for name, values in raw.items():
            row, status = _apply_empty_rules(values)
            per_case[case][name] = {**row, "raw_hd95": values["hd95"], "raw_assd": values["assd"], "status": status}
    if failed:
        warnings.warn(
            f"evaluate_segmentations: {len(failed)} case(s) failed and were left out: "
            + "; ".join(f"{f['case']!r}: {f['error']}" for f in failed[:3]),
            stacklevel=2,
        )
    if not per_case:
        raise FusefnError(
            f"no case could be evaluated ({len(failed)} failed); first: {failed[0]['case']!r}: {failed[0]['error']}"
        )
    names = list(groups)
    mean_dice = {c: float(np.mean([per_case[c][n]["dice"] for n in names])) for c in per_case}
    worst = sorted(per_case, key=lambda c: (mean_dice[c], c))[:_WORST]
    results = {
        "inputs": {"pred": str(pred), "ref": str(ref)},
        "settings": {
            "classes": {k: list(v) for k, v in groups.items()},
            "labels": sorted(allowed),
            "tolerance_mm": tolerance_mm,
            "percentile": percentile,
            "n_boot": n_boot,
            "seed": rng.seed,
            "level": level,
            "method": "percentile",
            "allow_missing": allow_missing,
        },
        "num_cases": len(per_case),
        "missing": missing,
        "failed": failed,
        "classes": _summaries(per_case, names, n_boot=n_boot, rng=rng, level=level),
        "per_case": per_case,
        "worst_cases": [{"case": c, "mean_dice": mean_dice[c]} for c in worst],
    }
    if out is not None:
        with atomic_dir(out, owned=OUTPUTS) as tmp:
            _write(tmp, results, groups, pred_cases, ref_cases, plots=plots)
    return results


# ---------------------------------------------------------------------------- report


def _ci(s: Mapping) -> str:
    if "lower" not in s:
        return format_value(s["value"])
    return f"{format_value(s['value'])} [{format_value(s['lower'])}, {format_value(s['upper'])}]"


def format_markdown(results: Mapping, figures: Sequence[tuple[str, str]] = ()) -> str:
    """``report.md``: inputs, settings, the per-class summary, the per-case table, failures and figures."""
    s, names = results["settings"], list(results["settings"]["classes"])
    level = f"{round(s['level'] * 100, 1):g}%"
    lines = [
        "# Segmentation evaluation",
        "",
        f"- predictions: `{results['inputs']['pred']}`",
        f"- references: `{results['inputs']['ref']}`",
        f"- cases evaluated: {results['num_cases']}; failed: {len(results['failed'])}; "
        f"prediction only: {len(results['missing']['pred_only'])}; reference only: {len(results['missing']['ref_only'])}",
        "- classes: " + ", ".join(f"{n} = labels {'+'.join(map(str, v))}" for n, v in s["classes"].items()),
        f"- NSD tolerance {s['tolerance_mm']:g} mm; HD at the {s['percentile']:g}th percentile; distances in mm "
        "from each file's affine",
        f"- {level} bootstrap CIs over cases: {s['n_boot']} resamples, percentile method, seed {s['seed']}"
        if s["n_boot"]
        else "- no bootstrap intervals (n_boot = 0)",
        "- empty masks: both empty → Dice = IoU = NSD = 1, HD95 = ASSD = 0; one empty → Dice = IoU = NSD = 0, "
        "HD95 / ASSD undefined (nan, left out of their means: see n)",
        "",
        f"## Per class (mean [{level} CI], n)",
        "",
        "| class | " + " | ".join(SUMMARY_METRICS) + " | both empty | one empty |",
        "| --- | " + " | ".join("---" for _ in SUMMARY_METRICS) + " | ---: | ---: |",
    ]
    for n in names:
        c = results["classes"][n]
        cells = [f"{_ci(c[m])} ({c[m]['n']})" for m in SUMMARY_METRICS]
        one = c["counts"]["pred_empty"] + c["counts"]["ref_empty"]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {c['counts']['both_empty']} | {one} |")
    cols = ("dice", "iou", "hd95", "assd", "nsd", "volume_diff")
    lines += ["", "## Per case", "", "| case | class | " + " | ".join(cols) + " | status |"]
    lines.append("| --- | --- | " + " | ".join("---:" for _ in cols) + " | --- |")
    for case, row in results["per_case"].items():
        for n in names:
            v = row[n]
            lines.append(f"| {case} | {n} | " + " | ".join(format_value(v[k]) for k in cols) + f" | {v['status']} |")
    if results["failed"]:
        lines += ["", "## Failed cases", ""] + [f"- `{f['case']}`: {f['error']}" for f in results["failed"]]
    for side, title in (("ref_only", "Reference without prediction"), ("pred_only", "Prediction without reference")):
        if results["missing"][side]:
            lines += ["", f"## {title}", "", ", ".join(f"`{c}`" for c in results["missing"][side])]
    lines += [f"\n### {t}\n\n![{t}]({f})" for t, f in figures]
    return "\n".join(lines) + "\n"


def _write(out: pathlib.Path, results: dict, groups, pred_cases, ref_cases, *, plots: bool) -> None:
    write_bytes(out / "metrics.json", (json.dumps(to_json(results), indent=2) + "\n").encode())
    figures = []
    if plots:
        from fusefn.analyze.seg_plots import plot_boxes, plot_montage

        plot_boxes(results["per_case"], list(groups), out / "boxplots.png")
        figures.append(("per-class box plots", "boxplots.png"))
        for rank, w in enumerate(results["worst_cases"], 1):
            case = w["case"]
            pred, _ = read_label_map(pred_cases[case], case, "prediction")
            ref, affine = read_label_map(ref_cases[case], case, "reference")
            name = f"worst_{rank}.png"
            title = f"case {case}: mean Dice {w['mean_dice']:.3f} (reference solid, prediction dashed)"
            plot_montage(case, pred, ref, groups, spacing_of(affine)[: pred.ndim], out / name, title=title)
            figures.append((f"worst case {rank}: {case}", name))
    write_bytes(out / "report.md", format_markdown(results, figures).encode())


# ---------------------------------------------------------------------------- command line


def _command():
    import click

    @click.command("analyze-seg")
    @click.argument("pred", type=click.Path(exists=True, file_okay=False, path_type=pathlib.Path))
    @click.argument("ref", type=click.Path(exists=True, file_okay=False, path_type=pathlib.Path))
    @click.option("--out", type=click.Path(path_type=pathlib.Path), required=True, help="Output folder (a set).")
    @click.option("--classes", required=True, help="Labels to score: '1,2', '1+2+3,2' or 'kidney=1+2+3,tumour=2'.")
    @click.option("--labels", default=None, help="Declared label set, e.g. '0,1,2,3' (default: 0 + the classes').")
    @click.option("--tolerance", type=float, default=1.0, show_default=True, help="NSD tolerance in mm.")
    @click.option("--percentile", type=float, default=95.0, show_default=True, help="Hausdorff percentile.")
    @click.option("--n-boot", type=int, default=10_000, show_default=True, help="Bootstrap resamples (0: none).")
    @click.option("--seed", type=int, default=1234, show_default=True, help="Seed of the resampling.")
    @click.option("--allow-missing", is_flag=True, help="Evaluate the cases in both folders; list the others.")
    @click.option("--no-plots", is_flag=True, help="Skip the box plots and montages.")
    def segmentation_command(
        pred, ref, out, classes, labels, tolerance, percentile, n_boot, seed, allow_missing, no_plots
    ):
        """Segmentation metrics (Dice, IoU, HD95, ASSD, NSD, volume) of PRED label maps against REF, by case id."""
        declared = None
        if labels:
            try:
                declared = [int(x) for x in labels.split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"--labels: {labels!r} is not a comma-separated list of integers") from None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = evaluate_segmentations(
                pred,
                ref,
                classes=classes,
                labels=declared,
                tolerance_mm=tolerance,
                percentile=percentile,
                n_boot=n_boot,
                rng=Rng(seed),
                allow_missing=allow_missing,
                out=out,
                plots=not no_plots,
            )
        for w in sorted({str(w.message) for w in caught if "case(s) failed" not in str(w.message)}):
            click.echo(f"warning: {w}", err=True)
        for name, c in r["classes"].items():
            click.echo(f"{name}: " + ", ".join(f"{m} {_ci(c[m])}" for m in ("dice", "hd95", "assd", "nsd")))
        click.echo(f"{r['num_cases']} case(s) evaluated; written: {out / 'report.md'}")
        for f in r["failed"]:
            click.echo(f"failed: case {f['case']!r}: {f['error']}", err=True)
        if r["failed"]:
            raise SystemExit(1)

    return segmentation_command


segmentation_command = _command()
"""``fusefn analyze-seg PRED REF --out DIR --classes ...``: :func:`evaluate_segmentations` from the shell."""
