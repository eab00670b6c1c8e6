"""The analyze phase of a classification recipe: read the inference file, metrics with CIs, the report.

A recipe's analyze phase is then :func:`classify` (the analyzer's metrics and figures),
a few :meth:`Findings.add` / :meth:`Findings.figure` of its own, and :func:`publish`.

**The binary decision threshold.** A threshold tuned on the test cases is optimistic, so
:func:`classify` tunes it on the *validation* predictions when the run has them
(:func:`validation_file`: ``infer/validation.parquet``, the validation set through the best
checkpoint) — at Youden's J by default, or at the recipe's ``threshold`` (``"sens@spec=0.9"``,
``"spec@sens=0.95"``) — and applies it to the test predictions; the report's header says so.
A recipe that keeps a fixed threshold passes a number (``threshold=0.5``); without validation
predictions the threshold is 0.5, and the report says it was not tuned.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from fusefn import keys
from fusefn.core import record
from fusefn.recipe.report import (
    classification_report,
    curves_figure,
    format_ci,
    read_inference,
    save_json,
    write_report,
)
from fusefn.recipe.run import RecipeInputError, Run

__all__ = ["Findings", "classify", "publish", "headline", "validation_file", "VALIDATION_NAME"]

VALIDATION_NAME = "validation.parquet"
"""The validation predictions' file name, beside the test inference file (``infer/validation.parquet``)."""


def validation_file(run: Run) -> pathlib.Path:
    """Where a recipe writes its validation predictions (the best checkpoint over the validation set): the
    binary threshold is chosen on them (see the module's text).

    >>> validation_file(Run(name="toy", out="/runs/a")).as_posix()
    '/runs/a/infer/validation.parquet'
    """
    return run.infer_file.with_name(VALIDATION_NAME)


@record
class Findings:
    """What an analysis found: the inference frame and its arrays, the report's rows, results and figures.

    ``add`` and ``figure`` return a new record with one more row (result) or figure.
    """

    frame: Any = attrs.field(eq=False, repr=False)
    probs: np.ndarray = attrs.field(eq=False, repr=False)
    labels: np.ndarray = attrs.field(eq=False, repr=False)
    rows: tuple = ()
    results: Mapping = attrs.field(factory=dict)
    figures: tuple = ()
    header: str = ""  # the analyzer's settings (inputs, N per class, bootstrap, threshold, version, date)

    @property
    def ids(self) -> list:
        return self.frame["sample_id"].to_list()

    def add(self, name: str, value, *, key: str | None = None) -> Findings:
        """One more row ``name`` (a bootstrap result or a float), stored in ``results`` under ``key`` (default ``name``)."""
        return attrs.evolve(self, rows=(*self.rows, (name, value)), results={**self.results, (key or name): value})

    def figure(self, caption: str, path: pathlib.Path | None, *, first: bool = False) -> Findings:
        """One more figure (``None``, nothing drawn, is left out); ``first`` puts it before the others."""
        if path is None:
            return self
        figs = ((caption, path), *self.figures) if first else (*self.figures, (caption, path))
        return attrs.evolve(self, figures=figs)


def classify(
    run: Run,
    *,
    need: Sequence[str] = ("sample_id", "probs", "label"),
    class_names: Sequence[str] | None = None,
    prefix: str = "",
    n_boot: int | None = None,
    threshold: str | float = "youden",
    validation: str | pathlib.Path | None = None,
) -> Findings:
    """The run's inference file (``probs``, ``label``) through :func:`classification_report`.

    ``n_boot`` defaults to the recipe's ``--n-boot``; the analyzer's files go to ``report/analysis``.
    ``threshold`` (binary): the operating point found on the validation predictions (``validation``,
    default :func:`validation_file` when it exists) whose threshold the test decisions use —
    ``"youden"``, ``"sens@spec=X"`` or ``"spec@sens=X"`` —, or a fixed number (``0.5``: no tuning).
    """
    frame = read_inference(run.infer_file, need)
    probs = np.asarray(frame["probs"].to_list(), dtype=np.float64)
    labels = frame["label"].to_numpy().astype(np.int64)
    options = _threshold_options(run, threshold, validation, binary=probs.ndim == 2 and probs.shape[1] == 2)
    extra = {"analyze_options": options} if options else {}
    rows, results, figs = classification_report(
        probs,
        labels,
        n_boot=run.hp["n_boot"] if n_boot is None else n_boot,
        rng=run.rng,
        out_dir=run.report_dir / "analysis",
        class_names=class_names,
        prefix=prefix,
        ids=frame["sample_id"].to_list(),
        **extra,
    )
    raw = json.loads((run.report_dir / "analysis" / "metrics.json").read_text())
    header = _settings_lines(raw, run.infer_file)
    found = Findings(
        frame=frame, probs=probs, labels=labels, rows=tuple(rows), results=results, figures=tuple(figs), header=header
    )
    if "threshold_from" in options:
        settings = raw["settings"]
        name = f"{prefix}decision threshold ({settings['threshold_from']['operating_point']} on the validation set)"
        found = found.add(name, settings["threshold"], key="decision threshold")
    return found


def _settings_lines(raw: Mapping, infer_file: pathlib.Path) -> str:
    """The analyzer's header bullets (inputs, N per class, bootstrap, threshold, version, date) for the
    recipe's report, naming the inference file the analyzer was given as a frame."""
    from fusefn.analyze.report import markdown_header

    raw = {**raw, "inputs": {**raw.get("inputs", {}), "pred": [str(infer_file)]}}
    md = markdown_header(raw, raw.get("settings", {}).get("level", 0.95))
    return "\n".join(line for line in md.splitlines() if line.startswith("- ")).strip()


def _threshold_options(run: Run, threshold, validation, *, binary: bool) -> dict:
    """The analyzer's options that set the binary threshold: ``threshold_from`` the validation predictions
    at an operating point, or a fixed ``threshold``; none for multi-class scores or when nothing is tuned."""
    if not binary:
        return {}
    if isinstance(threshold, (int, float)):
        return {} if threshold == 0.5 else {"threshold": float(threshold)}
    path = pathlib.Path(validation) if validation is not None else validation_file(run)
    if not path.is_file():
        if validation is not None:
            raise RecipeInputError(f"validation predictions {path} not found: run `infer` first (or `all`)")
        return {}
    frame = read_inference(path, ("sample_id", "probs", "label"))  # a missing column is the recipe's one-line error
    from fusefn.analyze import select_inputs
    from fusefn.analyze.task_operating import threshold_from
    from fusefn.errors import ConfigError

    try:
        threshold_from(
            select_inputs(frame, id="sample_id", score="probs", label="label"), str(threshold), source=path.name
        )
    except ConfigError as e:
        # a model no better than chance on the validation cases (a short run) has no operating point there
        if "undefined there" not in str(e):
            raise
        run.logger.warning("%s; the test decisions use the threshold 0.5 (not tuned)", e)
        return {}
    return {"threshold_from": path, "operating_point": str(threshold)}


def publish(
    run: Run,
    findings: Findings,
    title: str,
    *,
    intro: str = "",
    curves: Sequence[str] = (keys.TOTAL_LOSS, "metrics.auc"),
    metrics: Mapping | None = None,
    sections: Sequence[tuple[str, str]] = (),
) -> pathlib.Path:
    """Write ``report/metrics.json`` (``metrics``, default the findings' results) and ``report/report.md``.

    The training curves of ``curves`` (from ``model/metrics.csv``, when there) come first among the figures.
    """
    rd = run.report_dir
    findings = findings.figure(
        "training curves", curves_figure(run.model_dir / "metrics.csv", rd / "curves.png", curves), first=True
    )
    save_json(rd / "metrics.json", findings.results if metrics is None else metrics)
    intro = "\n\n".join(part.strip() for part in (intro, findings.header) if part.strip())
    return write_report(
        rd / "report.md", title, findings.rows, intro=intro, figures=findings.figures, sections=sections
    )


def headline(findings: Findings, name: str = "ROC AUC", label: str = "test ROC AUC") -> str:
    """``"<label> value [lower, upper]"`` of ``findings.results[name]`` (4 digits)."""
    value, ci = format_ci(findings.results[name], digits=4)
    return f"{label} {value} {ci}".rstrip()
