"""Comparing models on the same cases: each model's metrics, the paired differences with their tests, one report.

:func:`compare` reads two or more prediction files (one per model) the way :func:`~fusefn.analyze.analyze`
does (:func:`~fusefn.analyze.read_predictions`, :func:`~fusefn.analyze.select_inputs`), pairs them on the
case id, and computes

* each model's metrics (the analyzer's suite: :func:`~fusefn.analyze.classification_metrics` and the
  operating point) with bootstrap intervals,
* for every pair of models, ``later - earlier`` in the order given, the difference of every metric with its
  *paired* bootstrap interval — all models on the same resamples
  (:func:`fusefn.metrics.comparison.paired_bootstrap`) — and the share of resamples where it changes sign,
* DeLong's test of the AUCs (per class, one-vs-rest, when multi-class) and McNemar's test of the accuracies
  (:mod:`fusefn.metrics.comparison`),

and writes ``metrics.json``, ``report.md`` and ``roc_compare.png`` (overlaid ROC curves) as one set.

The files must hold the same cases with the same targets: otherwise one error lists what differs.
The command line is ``fusefn compare A.csv B.csv --out DIR`` (:mod:`fusefn.analyze.compare_cli`).

>>> import polars as pl
>>> y = [0, 0, 0, 1, 1, 1]
>>> a = pl.DataFrame({"id": list("abcdef"), "s": [.1, .2, .7, .4, .8, .9], "y": y})
>>> b = pl.DataFrame({"id": list("fedcba"), "s": [.9, .6, .7, .3, .2, .1], "y": y[::-1]})
>>> r = compare([a, b], names=["old", "new"], score="s", label="y", ci=200, rng=Rng(0))
>>> r["models"]["old"]["auc"]["value"], r["models"]["new"]["auc"]["value"]
(0.8888888888888888, 1.0)
>>> round(r["differences"]["new - old"]["auc"]["value"], 4), r["tests"]["new - old"]["mcnemar"]["method"]
(0.1111, 'exact binomial')
"""

from __future__ import annotations

import datetime
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import attrs
import numpy as np
import polars as pl

from fusefn import keys, nd
from fusefn._atomic import atomic_dir
from fusefn.analyze.inputs import (
    PRED,
    TARGET,
    AnalysisInputs,
    fusefn_version,
    read_predictions,
    select_inputs,
    source_name,
)
from fusefn.analyze.resampling import Progress
from fusefn.analyze.suite import OPERATING_POINT_STATS, classification_metrics, interval_methods
from fusefn.core import Rng
from fusefn.errors import ConfigError
from fusefn.metrics import ConfusionMatrix
from fusefn.metrics.classification import decide
from fusefn.metrics.comparison import MCNEMAR_EXACT_BELOW, default_pairs, delong, mcnemar, on_leaves, paired_bootstrap

__all__ = ["OUTPUTS", "compare", "load_models"]

OUTPUTS = ("metrics.json", "report.md", "roc_compare.png", ".*.tmp")
"""The files of a comparison's output set."""

_RNG = Rng(1234)
_SHOWN = 5  # ids listed in an error before "and N more"


def _model_names(sources: Sequence, names: Sequence[str] | None) -> list[str]:
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(sources):
            raise ConfigError(f"compare: {len(names)} names for {len(sources)} prediction files")
        if len(set(names)) != len(names):
            raise ConfigError(f"compare: model names must differ, got {names}")
        return names
    stems = [pathlib.Path(s).stem if not isinstance(s, pl.DataFrame) else "" for s in sources]
    if all(stems) and len(set(stems)) == len(stems):
        return stems
    paths = [source_name(s) for s in sources]
    if all(stems) and len(set(paths)) == len(paths):
        return paths
    return [f"model {i + 1}" for i in range(len(sources))]


def _listed(ids: Sequence) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN])
    return shown + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")


def _check_same_cases(models: Mapping[str, AnalysisInputs]) -> None:
    ids = {m: nd.get(x.batch, keys.SAMPLE_ID) for m, x in models.items()}
    every = list(dict.fromkeys(i for v in ids.values() for i in v))
    problems = []
    for m, v in ids.items():
        have = set(v)
        missing = [i for i in every if i not in have]
        if missing:
            problems.append(f"{m} lacks {len(missing)} case(s): {_listed(missing)}")
    if problems:
        raise ConfigError(
            f"compare: the prediction files do not hold the same cases ({len(every)} ids in all): "
            + "; ".join(problems)
        )
    counts = {m: len(x.class_names) for m, x in models.items()}
    if len(set(counts.values())) > 1:
        raise ConfigError(f"compare: the models score different numbers of classes: {counts}")


def _aligned(models: Mapping[str, AnalysisInputs]) -> dict[str, AnalysisInputs]:
    """Every model's batch in the first model's case order; the targets checked equal case by case."""
    first_name, first = next(iter(models.items()))
    order = list(nd.get(first.batch, keys.SAMPLE_ID))
    out = {}
    for m, x in models.items():
        ids = nd.get(x.batch, keys.SAMPLE_ID)
        where = {i: k for k, i in enumerate(ids)}
        idx = np.array([where[i] for i in order], dtype=np.int64)
        batch = nd.assoc({PRED: x.batch[PRED][idx], TARGET: x.batch[TARGET][idx]}, keys.SAMPLE_ID, order)
        bad = np.flatnonzero(batch[TARGET] != first.batch[TARGET])
        if bad.size:
            shown = [f"{order[k]!r} ({first.batch[TARGET][k]} vs {batch[TARGET][k]})" for k in bad[:_SHOWN]]
            more = f" and {bad.size - _SHOWN} more" if bad.size > _SHOWN else ""
            raise ConfigError(
                f"compare: the targets of {m} disagree with those of {first_name} on {bad.size} case(s): "
                + ", ".join(shown)
                + more
            )
        out[m] = attrs.evolve(x, batch=batch)
    return out


def load_models(
    pred: Sequence,
    target=None,
    *,
    names: Sequence[str] | None = None,
    id: str | None = None,
    score: str | Sequence[str] | None = None,
    label: str | None = None,
    class_names: Sequence[str] | None = None,
    scores: str = "probabilities",
) -> dict[str, AnalysisInputs]:
    """``{model: inputs}`` of each prediction file, paired: the same cases in the same order, the same targets.

    Each file is read and its columns picked as :func:`~fusefn.analyze.analyze` does (the same ``id``,
    ``score``, ``label`` and ``target`` file for all). Files that do not hold the same case ids, or whose
    targets disagree, stop with one error listing a few of the ids per file and counting the rest.
    """
    sources = list(pred)
    if len(sources) < 2:
        raise ConfigError(f"compare: needs two or more prediction files, got {len(sources)}")
    model_names = _model_names(sources, names)
    models = {}
    for m, src in zip(model_names, sources, strict=True):
        df, id_col = read_predictions(src, target, id=id)
        id = id_col
        models[m] = select_inputs(
            df, id=id_col, score=score, label=label, class_names=class_names, scores=scores, fold=None
        )
    _check_same_cases(models)
    return _aligned(models)


def _operating_point(tree: Mapping, shown: Sequence[str], binary: bool) -> dict:
    per = {c: {s: tree["classes"][c][s] for s in OPERATING_POINT_STATS} for c in shown}
    return per[shown[0]] if binary else per


def _leaves(value):
    if isinstance(value, Mapping):
        return {k: _leaves(v) for k, v in value.items()}
    return {"value": float(value)}


def _point_results(metrics: Mapping, batches: Mapping, pairs: Sequence, values: Mapping) -> tuple[dict, dict]:
    """Values and differences without resampling, as ``{"value": x}`` leaves on the resampled trees' leaves."""
    ones = np.ones((1, len(next(iter(batches.values()))[TARGET])), dtype=np.int64)
    any_batch = next(iter(batches.values()))
    templates = {n: m.resampled(m.extract(any_batch), ones) for n, m in metrics.items()}
    per = {m: {n: on_leaves(templates[n], values[m][n]) for n in metrics} for m in batches}
    models = {m: {n: _leaves(v) for n, v in p.items()} for m, p in per.items()}
    diffs = {}
    for a, b in pairs:
        diffs[f"{a} - {b}"] = {n: _leaves(_sub(per[a][n], per[b][n])) for n in metrics}
    return models, diffs


def _sub(x, y):
    if isinstance(x, Mapping):
        return {k: _sub(x[k], y[k]) for k in x}
    return x - y


def _tests(models: Mapping[str, AnalysisInputs], pairs, *, threshold, level: float) -> dict:
    first = next(iter(models.values()))
    names, target = first.class_names, first.batch[TARGET]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for a, b in pairs:
            pa, pb = models[a].batch[PRED], models[b].batch[PRED]
            if len(names) == 2:
                sa, sb = (pa if pa.ndim == 1 else pa[:, 1]), (pb if pb.ndim == 1 else pb[:, 1])
                dl = delong(sa, sb, target == 1, level=level)
            else:
                dl = {c: delong(pa[:, i], pb[:, i], target == i, level=level) for i, c in enumerate(names)}
            right_a, right_b = decide(pa, threshold) == target, decide(pb, threshold) == target
            out[f"{a} - {b}"] = {"delong": dl, "mcnemar": mcnemar(right_a, right_b)}
    return out


def compare(
    pred: Sequence,
    target=None,
    *,
    out: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    id: str | None = None,
    score: str | Sequence[str] | None = None,
    label: str | None = None,
    class_names: Sequence[str] | None = None,
    ci: int = 10_000,
    rng: Rng = _RNG,
    level: float = 0.95,
    method: str = "auto",
    threshold: float | None = None,
    scores: str = "probabilities",
    plots: bool = True,
    progress: Progress | None = None,
) -> dict:
    """Compare two or more models' predictions on the same cases: metrics, paired differences, tests, report.

    Args:
        pred: two or more CSV/Parquet paths or Polars frames, one per model (the first is the reference
            order of the cases and of the pairs).
        target: file/frame of targets joined on ``id`` to every model's file; None when ``label`` is a
            column of each.
        out: output folder (None: compute only). ``metrics.json``, ``report.md`` and ``roc_compare.png``
            replace its contents as one set (see :func:`~fusefn.analyze.analyze`).
        names: model names (default the file names without extension).
        id, score, label, class_names, scores: as :func:`~fusefn.analyze.analyze`, the same for every file.
        ci: bootstrap resamples (0: no intervals), stratified by the target, the same for every model.
        rng: the resampling stream; its seed is in the report.
        method: interval method as :func:`~fusefn.analyze.analyze` (``"auto"``: BCa for average precision
            and ECE, percentile for the others), for the models' values and the differences alike.
        threshold: binary operating point (default 0.5) of the decision metrics and McNemar's test;
            multi-class decisions are the argmax.

    Returns:
        The dict written to ``metrics.json``: ``models[model][metric]`` (value and interval),
        ``differences["b - a"][metric]`` (``b - a`` for each pair, later file minus earlier; value,
        paired interval and ``sign_flip``), ``tests["b - a"]`` (``delong``, per class when multi-class, and
        ``mcnemar``), with the inputs and settings.
    """
    models = load_models(
        pred, target, names=names, id=id, score=score, label=label, class_names=class_names, scores=scores
    )
    first = next(iter(models.values()))
    names_c, binary = first.class_names, first.num_classes == 2
    if scores == "raw" and binary and threshold is None:
        raise ConfigError("raw scores are not probabilities: give the binary decision threshold (--threshold)")
    thr = threshold if binary else None
    probs = all(bool(np.all((x.batch[PRED] >= 0) & (x.batch[PRED] <= 1))) for x in models.values())
    metrics = {
        **classification_metrics(names_c, threshold=thr, probs_like=probs),
        "operating_point": ConfusionMatrix(
            pred=PRED, target=TARGET, threshold=thr, num_classes=len(names_c), class_names=names_c
        ),
    }
    methods = interval_methods(list(metrics), method)
    batches = {m: x.batch for m, x in models.items()}
    pairs = default_pairs(list(models))
    shown = [names_c[1]] if binary else list(names_c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = {m: {n: k.compute(k.update(k.init(), b)) for n, k in metrics.items()} for m, b in batches.items()}
        if ci:
            r = paired_bootstrap(
                metrics,
                batches,
                n=ci,
                rng=rng,
                stratify=TARGET,
                pairs=pairs,
                level=level,
                method=methods,
                values=values,
                progress=progress,
            )
            per_model, diffs = r["models"], r["differences"]
        else:
            per_model, diffs = _point_results(metrics, batches, pairs, values)
        for tree in [*per_model.values(), *diffs.values()]:
            tree["operating_point"] = _operating_point(tree["operating_point"], shown, binary)
        tests = _tests(models, pairs, threshold=thr, level=level)
    target_values = first.batch[TARGET]
    sources = list(pred)
    results: dict = {
        "inputs": {
            "pred": [source_name(f) for f in sources],
            "models": {m: source_name(f) for m, f in zip(models, sources, strict=True)},
            "target": None if target is None else source_name(target),
            "id": first.id,
            "score": list(first.score),
            "scores": scores,
            "label": first.label,
            "groups": [],
        },
        "settings": {
            "ci": ci,
            "seed": rng.seed,
            "level": level,
            "method": method,
            "paired": "every model on the same resamples",
            "stratified": "by target",
            "threshold": (0.5 if threshold is None else threshold) if binary else None,
            "threshold_rule": _threshold_rule(binary, threshold),
            "mcnemar_rule": f"exact binomial below {MCNEMAR_EXACT_BELOW} discordant cases, "
            "chi-square with continuity correction above",
        },
        "num_samples": first.num_samples,
        "class_counts": {c: int(np.count_nonzero(target_values == i)) for i, c in enumerate(names_c)},
        "class_names": list(names_c),
        "models": per_model,
        "pairs": [f"{a} - {b}" for a, b in pairs],
        "differences": diffs,
        "tests": tests,
        "methods": methods if ci else {},
        "fusefn_version": fusefn_version(),
        "date": datetime.date.today().isoformat(),
        "warnings": sorted({str(w.message) for w in caught}),
    }
    if out is not None:
        from fusefn.analyze.compare_report import write_comparison

        with atomic_dir(out, owned=OUTPUTS) as tmp:
            write_comparison(tmp, results, models, level=level, plots=plots, rng=rng)
    return results


def _threshold_rule(binary: bool, threshold: float | None) -> str:
    if not binary:
        return "argmax: the class with the highest score"
    if threshold is None:
        return "the default, on the positive-class probability, the same for every model; not tuned on these data"
    return "given by the user (--threshold / threshold=), the same for every model"
