"""``fusefn compare``: :func:`fusefn.analyze.compare.compare` from the shell (click lives here, not in the library).

The ``fusefn`` group adds it with ``main.add_command(compare_command)``; errors a user can cause are
:class:`~fusefn.errors.FusefnError` s that the group turns into one line on stderr and exit code 2.
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import click

from fusefn.analyze.compare import compare
from fusefn.analyze.compare_report import summary_lines
from fusefn.analyze.resampling import ProgressLine
from fusefn.cli_errors import check_out
from fusefn.cli_options import bootstrap_options
from fusefn.core import Rng

__all__ = ["compare_command"]


@click.command("compare")
@click.argument("pred", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--name", "names", multiple=True, help="Model name, once per PRED in order [default: file names].")
@click.option("--target", type=click.Path(dir_okay=False), default=None, help="Targets file joined on --id.")
@click.option("--id", "id_col", default=None, help="Id column [default: id or sample_id].")
@click.option("--score", multiple=True, help="Score column; repeat for one column per class [default: *.probs].")
@click.option("--label", default=None, help="Target column [default: label or target].")
@click.option("--class-names", default=None, help="Comma-separated class names.")
@bootstrap_options
@click.option(
    "--scores",
    "score_kind",
    type=click.Choice(["probabilities", "logits", "raw"]),
    default="probabilities",
    show_default=True,
    help="What the scores are: probabilities (checked), logits (sigmoid/softmax applied), raw (ranks only).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    required=True,
    help="Output folder: metrics.json, report.md, roc_compare.png (replaced as a set).",
)
@click.option("--plots/--no-plots", default=True, show_default=True)
def compare_command(
    pred,
    names,
    target,
    id_col,
    score,
    label,
    class_names,
    ci,
    seed,
    level,
    method,
    threshold,
    score_kind,
    out,
    plots,
):
    """Compare models on the same cases: PRED files (two or more, one per model) -> metrics.json, report.md,
    roc_compare.png with paired bootstrap differences, DeLong (AUC) and McNemar (accuracy) tests."""
    if len(pred) < 2:
        raise click.UsageError(f"compare needs two or more PRED files, got {len(pred)}")
    check_out(out)
    classes = tuple(n.strip() for n in class_names.split(",")) if class_names else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = compare(
            list(pred),
            target,
            out=out,
            names=list(names) or None,
            id=id_col,
            score=tuple(score) or None,
            label=label,
            class_names=classes,
            ci=ci,
            rng=Rng(seed),
            level=level,
            method=method,
            threshold=threshold,
            scores=score_kind,
            plots=plots,
            progress=ProgressLine(sys.stderr),
        )
    for w in sorted({str(w.message) for w in caught} | set(r["warnings"])):
        click.echo(f"warning: {w}", err=True)
    for line in summary_lines(r):
        click.echo(line)
    click.echo(f"written: {out / 'report.md'}")
