"""Operating points of a binary analysis: Youden's J, sensitivity at a fixed specificity, specificity at a fixed
sensitivity — found on the analyzed predictions with intervals, or found on validation predictions and applied.

An operating point is written ``youden``, ``sens@spec=0.9`` (the highest sensitivity with a
specificity of at least 0.9) or ``spec@sens=0.9``. :func:`operating_points` reports each one found
on the analyzed cases, with a bootstrap interval for every entry (the point is found again in each
resample, so the interval includes the search). Found on the test cases themselves it is optimistic;
:func:`threshold_from` finds the point on *validation* predictions instead and returns its threshold,
which the analysis then applies to the test cases (the report says where it came from).

>>> import numpy as np
>>> from fusefn import Rng
>>> from fusefn.analyze import select_inputs
>>> import polars as pl
>>> df = pl.DataFrame({"id": list("abcdefg"), "s": [0.1, 0.3, 0.35, 0.4, 0.6, 0.8, 0.9], "y": [0, 0, 1, 0, 1, 1, 1]})
>>> inputs = select_inputs(df, id="id", score="s", label="y")
>>> operating_points(inputs, ["youden", "sens@spec=0.6"], ci=0, rng=Rng(0))["youden"]["threshold"]
{'value': 0.6}
>>> parse_operating_point("spec@sens=0.95")
SpecificityAtSensitivity(pred='pred', target='target', sensitivity=0.95, interpolate=False)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from fusefn.analyze.inputs import PRED, TARGET, AnalysisInputs, as_list
from fusefn.analyze.resampling import Progress, resample_suite
from fusefn.analyze.suite import interval_methods
from fusefn.analyze.task_common import leaves
from fusefn.core import Rng
from fusefn.errors import ConfigError
from fusefn.metrics import SensitivityAtSpecificity, SpecificityAtSensitivity, YoudenJ
from fusefn.metrics.bootstrap import summarize

__all__ = ["OPERATING_POINT_SYNTAX", "describe", "operating_points", "parse_operating_point", "threshold_from"]

OPERATING_POINT_SYNTAX = "youden, sens@spec=X or spec@sens=X (X in (0, 1), e.g. sens@spec=0.9)"

_PATTERN = re.compile(r"^\s*(sens|spec)\s*@\s*(spec|sens)\s*=\s*([0-9.eE+-]+)\s*$")


def parse_operating_point(text: str):
    """The metric record of an operating point written ``youden``, ``sens@spec=X`` or ``spec@sens=X``."""
    t = str(text).strip().lower()
    if t in ("youden", "youden_j", "j"):
        return YoudenJ(pred=PRED, target=TARGET)
    m = _PATTERN.match(t)
    if m is None or m.group(1) == m.group(2):
        raise ConfigError(f"operating point {text!r}: write {OPERATING_POINT_SYNTAX}")
    try:
        x = float(m.group(3))
    except ValueError:
        raise ConfigError(f"operating point {text!r}: {m.group(3)!r} is not a number") from None
    if not 0 < x < 1:
        raise ConfigError(f"operating point {text!r}: the fixed rate must be in (0, 1), got {x:g}")
    if m.group(1) == "sens":
        return SensitivityAtSpecificity(pred=PRED, target=TARGET, specificity=x)
    return SpecificityAtSensitivity(pred=PRED, target=TARGET, sensitivity=x)


def _key(text: str) -> str:
    metric = parse_operating_point(text)
    if isinstance(metric, YoudenJ):
        return "youden"
    if isinstance(metric, SensitivityAtSpecificity):
        return f"sens@spec={metric.specificity:g}"
    return f"spec@sens={metric.sensitivity:g}"


def describe(text: str) -> str:
    """The operating point in words.

    >>> describe("sens@spec=0.9")
    'the highest sensitivity with a specificity of at least 0.9'
    """
    metric = parse_operating_point(text)
    if isinstance(metric, YoudenJ):
        return "the maximum of Youden's J (sensitivity + specificity − 1)"
    if isinstance(metric, SensitivityAtSpecificity):
        return f"the highest sensitivity with a specificity of at least {metric.specificity:g}"
    return f"the highest specificity with a sensitivity of at least {metric.sensitivity:g}"


def _value(metric, batch: Mapping) -> dict:
    # not fusefn.metrics.evaluate: it nests result names at their dots, and "sens@spec=0.9" has one
    return metric.compute(metric.update(metric.init(), batch))


def _binary(inputs: AnalysisInputs, what: str) -> None:
    if inputs.num_classes != 2:
        raise ConfigError(f"{what}: operating points are for binary scores; these give {inputs.num_classes} classes")


def operating_points(
    inputs: AnalysisInputs,
    points: str | Sequence[str],
    *,
    ci: int,
    rng: Rng,
    level: float = 0.95,
    method: str = "auto",
    progress: Progress | None = None,
) -> dict:
    """Each operating point of ``points`` found on ``inputs``: ``{key: {"sensitivity", "specificity", "threshold",
    ("j")}}``, each entry a ``{"value", "mean", "std", "lower", "upper"}`` leaf (``{"value"}`` when ``ci=0``).

    The resamples are those of the suite (stratified by the target, from ``rng``), so the intervals are
    paired with the other metrics'.
    """
    _binary(inputs, "operating_point")
    metrics = {_key(p): parse_operating_point(p) for p in as_list(points)}
    values = {k: _value(m, inputs.batch) for k, m in metrics.items()}
    if not ci:
        return {k: leaves(v) for k, v in values.items()}
    methods = interval_methods(list(metrics), method)
    boots, jack = resample_suite(
        metrics,
        inputs.batch,
        n=ci,
        rng=rng,
        jackknife=[n for n in metrics if methods[n] == "bca"],
        values=values,
        progress=progress,
    )
    return {k: summarize(values[k], boots[k], level, methods[k], k, jack.get(k)) for k in metrics}


def threshold_from(validation: AnalysisInputs, point: str = "youden", *, source: str = "validation") -> dict:
    """The threshold of operating point ``point`` found on the ``validation`` predictions, and what it was there.

    Returns ``{"threshold", "rule", "operating_point", "validation": {"sensitivity", "specificity", ...},
    "num_samples", "source"}``; ``rule`` is the sentence the report's header shows.

    >>> import polars as pl
    >>> from fusefn.analyze import select_inputs
    >>> df = pl.DataFrame({"id": list("abcd"), "s": [0.2, 0.4, 0.7, 0.9], "y": [0, 1, 0, 1]})
    >>> threshold_from(select_inputs(df, id="id", score="s", label="y"))["threshold"]  # J ties: the higher one
    0.9
    """
    _binary(validation, "threshold_from")
    key = _key(point)
    found = _value(parse_operating_point(point), validation.batch)
    thr = found["threshold"]
    if thr is None or not np.isfinite(thr):
        raise ConfigError(
            f"threshold_from {source}: the operating point {key} is undefined there (one class only, or no "
            "threshold reaches it)"
        )
    rates = f"sensitivity {found['sensitivity']:.3f}, specificity {found['specificity']:.3f}"
    rule = (
        f"chosen on the validation predictions {source} ({validation.num_samples} cases) at {describe(point)} "
        f"({rates} there), applied to these predictions"
    )
    return {
        "threshold": float(thr),
        "rule": rule,
        "operating_point": key,
        "validation": {k: float(v) for k, v in found.items()},
        "num_samples": validation.num_samples,
        "source": source,
    }
