"""Analysis of an inference file: metrics with bootstrap CIs -> metrics.json, report.txt/.md and plots.

:func:`analyze` is three steps, each usable alone:

1. **inputs** (:mod:`fusefn.analyze.inputs`): the predictions (CSV/Parquet; several files =
   one per fold) joined with their targets (a column of the predictions or another file
   joined by id), read by :mod:`fusefn.data.tables`; :func:`select_inputs` picks the
   score, label and group columns. Scores are one column (the positive-class score),
   several columns (one per class) or a list column such as ``model.head_0.probs`` written
   by ``fusefn.train.infer``; with no ``score`` given, a ``*.probs`` list column is used.
2. **suite** (:mod:`fusefn.analyze.suite`): the standard classification metrics with
   confidence intervals, per-fold / per-group values, run by :func:`fusefn.metrics.evaluate`
   (pure compute).
3. **report** (:mod:`fusefn.analyze.report`, :mod:`fusefn.analyze.plots`), each file complete
   or not at all:

   * ``metrics.json`` — every value, its CI, the inputs and the settings;
   * ``report.txt`` — an aligned table (metric, value, 95 % CI); ``report.md`` the same in Markdown;
   * ``roc.png`` (with a bootstrap band), ``confusion_matrix.png``, ``reliability.png``.

The command line is ``fusefn analyze`` (:mod:`fusefn.cli`). :func:`compare` (``fusefn compare``) puts two
or more models on the same cases side by side: paired bootstrap differences, DeLong, McNemar (docs/compare.md).

>>> import polars as pl
>>> from fusefn import Rng
>>> df = pl.DataFrame({"id": list("abcdef"), "s": [.1, .2, .7, .4, .8, .9], "y": [0, 0, 0, 1, 1, 1]})
>>> frame, id = read_predictions(df)
>>> inputs = select_inputs(frame, id=id, score="s", label="y")
>>> results = run_suite(inputs, ci=0, rng=Rng(0))
>>> results["metrics"]["auc"]
{'value': 0.8888888888888888}
>>> print(format_report(results, markdown=True).splitlines()[0])
| metric | value | 95% CI |
"""

from fusefn.analyze.analysis import TASKS, analyze
from fusefn.analyze.compare import compare, load_models
from fusefn.analyze.inputs import PRED, TARGET, AnalysisInputs, group_key, read_predictions, select_inputs
from fusefn.analyze.plots import calibration_bins, draw_figures, plot_confusion, plot_reliability, plot_roc
from fusefn.analyze.report import (
    format_report,
    format_value,
    markdown_header,
    standard_figures,
    to_json,
    write_markdown,
    write_results,
)
from fusefn.analyze.resampling import resample_suite
from fusefn.analyze.suite import (
    BIASED,
    OPERATING_POINT_STATS,
    classification_metrics,
    interval_methods,
    outside_notes,
    reliability,
    roc_curves,
    run_suite,
)
from fusefn.analyze.task_multilabel import analyze_multilabel, multilabel_metrics
from fusefn.analyze.task_operating import (
    OPERATING_POINT_SYNTAX,
    operating_points,
    parse_operating_point,
    threshold_from,
)
from fusefn.analyze.task_plots import (
    plot_bland_altman,
    plot_kaplan_meier,
    plot_multilabel_roc,
    plot_scatter,
    plot_td_auc,
)
from fusefn.analyze.task_regression import BlandAltman, analyze_regression, regression_metrics
from fusefn.analyze.task_survival import (
    analyze_survival,
    breslow_survival,
    default_times,
    risk_groups,
    survival_metrics,
)

__all__ = [
    "BIASED",
    "OPERATING_POINT_SYNTAX",
    "TASKS",
    "BlandAltman",
    "analyze_multilabel",
    "analyze_regression",
    "analyze_survival",
    "breslow_survival",
    "default_times",
    "multilabel_metrics",
    "operating_points",
    "parse_operating_point",
    "plot_bland_altman",
    "plot_kaplan_meier",
    "plot_multilabel_roc",
    "plot_scatter",
    "plot_td_auc",
    "regression_metrics",
    "risk_groups",
    "survival_metrics",
    "threshold_from",
    "OPERATING_POINT_STATS",
    "PRED",
    "TARGET",
    "AnalysisInputs",
    "analyze",
    "calibration_bins",
    "classification_metrics",
    "compare",
    "evaluate_segmentations",
    "parse_classes",
    "draw_figures",
    "format_report",
    "format_value",
    "group_key",
    "interval_methods",
    "load_models",
    "markdown_header",
    "outside_notes",
    "plot_confusion",
    "plot_reliability",
    "plot_roc",
    "read_predictions",
    "reliability",
    "resample_suite",
    "roc_curves",
    "run_suite",
    "select_inputs",
    "standard_figures",
    "to_json",
    "write_markdown",
    "write_results",
]


def __getattr__(name: str):
    # the segmentation evaluation carries its click command: loaded when asked for, so the library stays click-free
    if name in ("evaluate_segmentations", "parse_classes"):
        from fusefn.analyze import segmentation

        return getattr(segmentation, name)
    raise AttributeError(f"module 'fusefn.analyze' has no attribute {name!r}")
