"""The analyze phase of a classification recipe: read the inference file, metrics with CIs, the report.

A recipe's analyze phase is then :func:`classify` (the analyzer's metrics and figures),
a few :meth:`Findings.add` / :meth:`Findings.figure` of its own, and :func:`publish`.
"""

from __future__ import annotations

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
from fusefn.recipe.run import Run

__all__ = ["Findings", "classify", "publish", "headline"]


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
) -> Findings:
    """The run's inference file (``probs``, ``label``) through :func:`classification_report`.

    ``n_boot`` defaults to the recipe's ``--n-boot``; the analyzer's files go to ``report/analysis``.
    """
    frame = read_inference(run.infer_file, need)
    probs = np.asarray(frame["probs"].to_list(), dtype=np.float64)
    labels = frame["label"].to_numpy().astype(np.int64)
    rows, results, figs = classification_report(
        probs,
        labels,
        n_boot=run.hp["n_boot"] if n_boot is None else n_boot,
        rng=run.rng,
        out_dir=run.report_dir / "analysis",
        class_names=class_names,
        prefix=prefix,
        ids=frame["sample_id"].to_list(),
    )
    return Findings(frame=frame, probs=probs, labels=labels, rows=tuple(rows), results=results, figures=tuple(figs))


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
    return write_report(
        rd / "report.md", title, findings.rows, intro=intro, figures=findings.figures, sections=sections
    )


def headline(findings: Findings, name: str = "ROC AUC", label: str = "test ROC AUC") -> str:
    """``"<label> value [lower, upper]"`` of ``findings.results[name]`` (4 digits)."""
    value, ci = format_ci(findings.results[name], digits=4)
    return f"{label} {value} {ci}".rstrip()
