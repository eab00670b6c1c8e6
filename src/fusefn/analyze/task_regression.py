"""The regression analysis: MAE, MSE, RMSE, R², Pearson and Spearman correlation and the Bland–Altman
agreement, each with a bootstrap interval over cases; a predicted-vs-true scatter and a Bland–Altman plot.

One predicted and one true value per case (``score`` and ``label`` columns). The metrics are
:mod:`fusefn.metrics.regression`'s; :class:`BlandAltman` adds the mean difference (bias) and the
95 % limits of agreement ``bias ± 1.96 SD`` of ``prediction - target`` (Bland & Altman 1986), whose
intervals come from the same resamples.

>>> import numpy as np, polars as pl
>>> from fusefn import Rng
>>> df = pl.DataFrame({"id": list("abcde"), "p": [1.0, 2.5, 2.0, 4.5, 5.0], "y": [1.0, 2.0, 3.0, 4.0, 5.0]})
>>> r, data = analyze_regression(df, id="id", score="p", label="y", ci=0, rng=Rng(0))
>>> r["metrics"]["mae"], r["metrics"]["bland_altman"]["bias"]
({'value': 0.4}, {'value': 0.0})
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import attrs
import numpy as np
import polars as pl

from fusefn import keys, nd
from fusefn.analyze.inputs import PRED, TARGET
from fusefn.analyze.resampling import Progress
from fusefn.analyze.task_common import (
    base_results,
    bootstrap_metrics,
    case_id,
    ci_cell,
    md_table,
    numbers,
    one_per_case,
    pick_column,
    write_task,
)
from fusefn.core import Rng, record
from fusefn.errors import ConfigError
from fusefn.metrics import MAE, MSE, R2, RMSE, Pearson, Spearman
from fusefn.metrics._base import ColumnStore, key_field, undefined, validate_key

__all__ = ["LOA_Z", "BlandAltman", "analyze_regression", "regression_metrics", "write_regression"]

LOA_Z = 1.959963984540054
"""The normal quantile of the 95 % limits of agreement (``bias ± 1.96 SD``)."""

_NAMES = {
    "mae": "MAE",
    "mse": "MSE",
    "rmse": "RMSE",
    "r2": "R²",
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
}


@record
class BlandAltman(ColumnStore):
    """Bland–Altman agreement of ``pred`` with ``target``: mean difference, SD and 95 % limits of agreement.

    Returns ``{"bias", "sd", "lower_loa", "upper_loa"}`` of ``d = pred - target``: ``bias = mean(d)``,
    ``sd`` its sample standard deviation (``ddof=1``), limits ``bias ∓ 1.96 sd``. Resamples are evaluated
    all at once from weighted moments.

    >>> m = BlandAltman(pred="p", target="y")
    >>> m.compute(m.update(m.init(), {"p": np.array([1.0, 2.0, 4.0]), "y": np.array([1.0, 1.0, 2.0])}))["bias"]
    1.0
    """

    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)

    extract = MAE.extract

    @staticmethod
    def _from(mean, var) -> dict:
        sd = np.sqrt(np.clip(var, 0, None))
        return {"bias": mean, "sd": sd, "lower_loa": mean - LOA_Z * sd, "upper_loa": mean + LOA_Z * sd}

    def compute(self, state: Mapping) -> dict:
        if not state or state["pred"].shape[0] < 2:
            undefined("BlandAltman: fewer than two samples seen")
            return dict.fromkeys(("bias", "sd", "lower_loa", "upper_loa"), float("nan"))
        d = state["pred"] - state["target"]
        return {k: float(v) for k, v in self._from(d.mean(), d.var(ddof=1)).items()}

    def resampled(self, cols: Mapping, counts: np.ndarray) -> dict:
        d = cols["pred"] - cols["target"]
        c = d.mean()  # centred first: the weighted variance then has no cancellation
        d = d - c
        w = counts.astype(np.float64)
        n = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (w @ d) / n
            var = (w @ (d * d) - n * mean * mean) / (n - 1)
        return self._from(mean + c, var)


def regression_metrics() -> dict:
    """The suite's metrics on :data:`~fusefn.analyze.PRED` / :data:`~fusefn.analyze.TARGET`.

    >>> list(regression_metrics())
    ['mae', 'mse', 'rmse', 'r2', 'pearson', 'spearman', 'bland_altman']
    """
    p, t = PRED, TARGET
    return {
        "mae": MAE(pred=p, target=t),
        "mse": MSE(pred=p, target=t),
        "rmse": RMSE(pred=p, target=t),
        "r2": R2(pred=p, target=t),
        "pearson": Pearson(pred=p, target=t),
        "spearman": Spearman(pred=p, target=t),
        "bland_altman": BlandAltman(pred=p, target=t),
    }


def _score_column(df: pl.DataFrame, score, label: str, id: str) -> str:
    if score is not None and not isinstance(score, str):
        cols = list(score)
        if len(cols) != 1:
            raise ConfigError(f"regression takes one prediction column, got {len(cols)}: {', '.join(cols)}")
        score = cols[0]
    if score is not None:
        return pick_column(df, score, "prediction")
    numeric = [c for c in df.columns if c not in (label, id, "fold") and df[c].dtype.is_numeric()]
    for cand in ("pred", "prediction", "preds", "output"):
        if cand in df.columns:
            return cand
    if len(numeric) == 1:
        return numeric[0]
    raise ConfigError(
        f"no prediction column given (score= / --score) and no single numeric column to take; columns: "
        f"{', '.join(df.columns)}"
    )


def analyze_regression(
    df: pl.DataFrame,
    *,
    id: str,
    score: str | None = None,
    label: str | None = None,
    ci: int,
    rng: Rng,
    level: float = 0.95,
    method: str = "auto",
    skip_invalid: bool = False,
    progress: Progress | None = None,
    pred=None,
    target=None,
) -> tuple[dict, dict]:
    """``(results, data)`` of the joined frame ``df``: the metrics with intervals, and the arrays the figures need.

    Args:
        score: the prediction column (default ``pred`` / ``prediction``, or the one numeric column besides
            the target and the id).
        label: the true-value column (default ``target`` / ``label``).
        ci: resamples of whole cases (0: no intervals).
        skip_invalid: leave out (and list under ``"skipped"``) cases with a NaN / missing prediction or target.
        pred, target: where the frame came from, for the report's header.

    ``results`` is the ``metrics.json`` dict; ``results["metrics"][name]`` is ``{"value", "mean", "std",
    "lower", "upper"}``, ``bland_altman`` one such leaf per ``bias``, ``sd``, ``lower_loa``, ``upper_loa``;
    ``data`` holds the predictions and targets (``pred``, ``target``) the figures are drawn from.
    """
    label = pick_column(df, label, "target", ("target", "label", keys.LABEL))
    score = _score_column(df, score, label, id)
    p = one_per_case(numbers(df, score, "prediction", id, allow_missing=skip_invalid), score, "prediction")
    y = one_per_case(numbers(df, label, "target", id, allow_missing=skip_invalid), label, "target")
    skipped = []
    bad = ~(np.isfinite(p) & np.isfinite(y))
    if bad.any():
        for i in np.flatnonzero(bad):
            why = "NaN or missing prediction" if not np.isfinite(p[i]) else "NaN or missing target"
            skipped.append({"id": case_id(df, id, int(i)), "reason": why})
        keep = ~bad
        df, p, y = df.filter(pl.Series(keep)), p[keep], y[keep]
    if p.size < 3:
        raise ConfigError(f"regression analysis needs at least 3 cases with a prediction and a target, got {p.size}")
    batch = nd.assoc({PRED: p, TARGET: y}, keys.SAMPLE_ID, df[id].to_list())
    results = base_results(
        "regression",
        pred=pred,
        target=target,
        id=id,
        score=[score],
        label=label,
        counts={"cases": int(p.size)},
        num_samples=int(p.size),
        skipped=skipped,
        ci=ci,
        rng=rng,
        level=level,
        method=method,
        rule="none: continuous predictions (regression)",
    )
    results.update(
        bootstrap_metrics(regression_metrics(), batch, ci=ci, rng=rng, level=level, method=method, progress=progress)
    )
    results["summary"] = {
        "target": {"mean": float(y.mean()), "sd": float(y.std(ddof=1)), "min": float(y.min()), "max": float(y.max())},
        "prediction": {
            "mean": float(p.mean()),
            "sd": float(p.std(ddof=1)),
            "min": float(p.min()),
            "max": float(p.max()),
        },
    }
    return results, {"pred": p, "target": y}


def _section(results: Mapping, level: float) -> str:
    m = results["metrics"]
    ci_head = f"{round(level * 100, 1):g}% CI"
    rows = [[name, *_split(m[key])] for key, name in _NAMES.items()]
    ba = m["bland_altman"]
    ba_rows = [
        ["mean difference (bias)", *_split(ba["bias"])],
        ["SD of the differences", *_split(ba["sd"])],
        ["lower limit of agreement (bias − 1.96 SD)", *_split(ba["lower_loa"])],
        ["upper limit of agreement (bias + 1.96 SD)", *_split(ba["upper_loa"])],
    ]
    s = results["summary"]
    text = (
        "## Regression\n\n"
        f"Targets: mean {s['target']['mean']:.4g} (SD {s['target']['sd']:.4g}, range {s['target']['min']:.4g} to "
        f"{s['target']['max']:.4g}); predictions: mean {s['prediction']['mean']:.4g} (SD "
        f"{s['prediction']['sd']:.4g}).\n\n"
        + md_table(["metric", "value", ci_head], rows)
        + "\n### Agreement (Bland–Altman)\n\nDifferences are prediction − target.\n\n"
        + md_table(["statistic", "value", ci_head], ba_rows)
    )
    return text


def _split(node: Mapping) -> list[str]:
    whole = ci_cell(node)
    value = ci_cell({"value": node["value"]})
    return [value, whole[len(value) :].strip()]


def write_regression(out: pathlib.Path, results: dict, data: Mapping, *, level: float, plots: bool) -> None:
    """The regression report into ``out``: metrics.json, report.txt, report.md and, with ``plots``, the figures."""
    from fusefn.analyze.task_plots import plot_bland_altman, plot_scatter

    figures = []
    if plots:
        plot_scatter(data["pred"], data["target"], results["metrics"], out / "scatter.png")
        plot_bland_altman(
            data["pred"], data["target"], results["metrics"]["bland_altman"], out / "bland_altman.png", level=level
        )
        figures = [
            (
                "predicted against true",
                "scatter.png",
                "Each case's prediction against its true value; the dashed line is perfect agreement (y = x).",
            ),
            (
                "Bland–Altman plot",
                "bland_altman.png",
                "Difference (prediction − target) against the mean of the two; solid line: the mean difference "
                "(bias), dashed: the 95 % limits of agreement (bias ± 1.96 SD), shaded: their bootstrap intervals.",
            ),
        ]
    write_task(out, results, level=level, section=_section(results, level), figures=figures)
