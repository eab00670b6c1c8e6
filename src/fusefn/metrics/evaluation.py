"""Run metrics over a table, files or a stream of batch_dicts.

Tables (a Polars frame, CSV / Parquet files, one per fold) are read and joined by
:mod:`fusefn.data.tables`; the metrics see one batch_dict with a key per column.

>>> import polars as pl
>>> from fusefn.metrics import AUCROC, Accuracy
>>> df = pl.DataFrame({"id": ["a", "b", "c", "d"], "score": [0.1, 0.4, 0.35, 0.8], "y": [0, 0, 1, 1]})
>>> evaluate({"auc": AUCROC(pred="score", target="y"), "acc": Accuracy(pred="score", target="y")}, df)
{'auc': 0.75, 'acc': 0.75}
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import polars as pl

from fusefn import nd
from fusefn.errors import ConfigError

__all__ = ["evaluate"]

_PathLike = (str, os.PathLike)


def _is_tables(data) -> bool:
    if isinstance(data, (pl.DataFrame, *_PathLike)):
        return True
    return (
        isinstance(data, Sequence)
        and not isinstance(data, Mapping)
        and bool(data)
        and all(isinstance(d, (*_PathLike, pl.DataFrame)) for d in data)
    )


def _batches(data, target, id, fold, strict) -> Iterable[Mapping]:
    if _is_tables(data):
        # files are the data side's: metrics import it only when handed a table, and stay pure compute
        from fusefn.data.tables import frame_to_batch, load_predictions

        df = load_predictions(
            data, target, id=id or "id", fold=fold, strict=strict, check_ids=bool(id or target is not None)
        )
        return [frame_to_batch(df, id or ("id" if "id" in df.columns else None))]
    if target is not None:
        raise ConfigError("evaluate: target= is for file / frame data; batch_dicts carry their targets")
    if isinstance(data, Mapping):
        return [data]
    if isinstance(data, Iterable):
        return data
    raise ConfigError(f"cannot evaluate on a {type(data).__name__}")


def evaluate(metrics, data, *, target=None, id: str | None = None, fold: str = "fold", strict: bool = True):
    """Compute ``metrics`` on ``data``; returns ``{name: value}`` (or the value, for a single metric).

    Args:
        metrics: a metric, or a mapping ``name -> metric`` (nested mappings give nested results).
        data: a Polars frame; a CSV/Parquet path or a sequence of them (one per fold, concatenated
            with a ``fold`` column); a batch_dict; or an iterable of batch_dicts (a DataLoader).
        target: targets joined to file / frame ``data`` on ``id``.
        id: id column (ids must be unique; every prediction needs a target).
    """
    single = not isinstance(metrics, Mapping)
    flat = {"value": metrics} if single else nd.flatten(metrics)
    states = {k: m.init() for k, m in flat.items()}
    seen = False
    for batch in _batches(data, target, id, fold, strict):
        seen = True
        states = {k: flat[k].update(s, batch) for k, s in states.items()}
    if not seen:
        raise ConfigError("evaluate: no data (the iterable of batches was empty)")
    results = {k: flat[k].compute(s) for k, s in states.items()}
    return results["value"] if single else nd.unflatten(results)
