"""Callbacks: the I/O shell around fit (TensorBoard, CSV, time statistics, early stopping).

A callback is a record with three hooks, each given the :class:`RunContext`::

    on_fit_start(run)
    on_epoch_end(run, epoch, epoch_results) -> True to stop training, else None
    on_fit_end(run)

What they write is a function of ``run.state.history`` where possible (the CSV
file, the early-stopping decision), so a resumed run continues them exactly.
Only rank 0 calls them.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import pathlib
from typing import Any

import attrs

from fusefn import keys, nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.train.checkpoint import _atomic_write

__all__ = [
    "Callback",
    "RunContext",
    "TensorBoard",
    "CsvMetrics",
    "TimeStats",
    "EarlyStopping",
    "flat_results",
]

_log = logging.getLogger("fusefn.train")


@attrs.define
class RunContext:
    """What callbacks see of a running fit (mutable: this is the I/O shell, not a component)."""

    model_dir: pathlib.Path
    epochs: int
    state: Any = None
    timings: dict = attrs.field(factory=dict)
    resources: dict = attrs.field(factory=dict)
    logger: logging.Logger = _log


class Callback:
    """Base with no-op hooks.

    ``reads()`` lists the epoch-result keys a callback needs (``"validation.metrics.auc"``):
    ``fit`` checks them before the first epoch, so a misspelt key fails at once.
    """

    def reads(self) -> tuple[str, ...]:
        return ()

    def on_fit_start(self, run: RunContext) -> None:
        return None

    def on_epoch_end(self, run: RunContext, epoch: int, results: dict) -> bool | None:
        return None

    def on_fit_end(self, run: RunContext) -> None:
        return None


def flat_results(results: dict, mode: str) -> dict[str, float]:
    """``{"losses.total_loss": …, "metrics.auc.macro": …}`` for one mode of epoch results (numbers only)."""
    sub = results.get(mode) or {}
    out = {}
    for k, value in nd.flatten(sub).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[k] = float(value)
    return out


@record
class TensorBoard(Callback):
    """Scalars of every epoch into ``<model_dir>/<log_dir>/{train,validation}`` (tensorboardX)."""

    log_dir: str = "tensorboard"

    def on_fit_start(self, run: RunContext) -> None:
        from tensorboardX import SummaryWriter

        root = run.model_dir / self.log_dir
        run.resources[id(self)] = {m: SummaryWriter(str(root / m)) for m in ("train", "validation")}

    def on_epoch_end(self, run: RunContext, epoch: int, results: dict) -> None:
        writers = run.resources.get(id(self), {})
        for mode, w in writers.items():
            for k, value in flat_results(results, mode).items():
                if math.isfinite(value):  # an undefined metric (NaN) has no point on a curve
                    w.add_scalar(k, value, epoch)
            if mode == "train" and results.get("learning_rate") is not None:
                w.add_scalar("learning_rate", float(results["learning_rate"]), epoch)
            w.flush()

    def on_fit_end(self, run: RunContext) -> None:
        for w in run.resources.pop(id(self), {}).values():
            w.close()


@record
class CsvMetrics(Callback):
    """``<model_dir>/<filename>``: rows ``mode, epoch, <flat keys>`` rebuilt from the history each epoch."""

    filename: str = "metrics.csv"

    def on_epoch_end(self, run: RunContext, epoch: int, results: dict) -> None:
        rows = []
        for i, res in enumerate(run.state.history):
            ep = res.get("epoch", i)
            for mode in ("train", "validation"):
                flat = flat_results(res, mode)
                if flat:
                    row = {"mode": mode, "epoch": ep, **flat}
                    if res.get("learning_rate") is not None:
                        row["learning_rate"] = res["learning_rate"]
                    rows.append(row)
        cols = ["mode", "epoch"]
        for r in rows:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        _atomic_write(run.model_dir / self.filename, lambda f: f.write(buf.getvalue().encode()))


@record
class TimeStats(Callback):
    """Log time per epoch and the estimated time left; warn when waiting for data exceeds ``warn_fraction``.

    Waits shorter than ``min_wait_s`` in all are not worth a warning.
    """

    warn_fraction: float = 0.1
    min_wait_s: float = 1.0

    def on_epoch_end(self, run: RunContext, epoch: int, results: dict) -> None:
        t = run.timings
        epoch_s = t.get("epoch_s")
        if not epoch_s:
            return
        done = [d for d in t.get("history_s", []) if d]
        mean = sum(done) / len(done) if done else epoch_s
        left = max(run.epochs - epoch, 0) * mean
        run.logger.info("epoch %d took %.1f s; about %.0f s left", epoch, epoch_s, left)
        wait = t.get("data_wait_s", 0.0)
        if epoch_s > 0 and wait / epoch_s > self.warn_fraction and wait > self.min_wait_s:
            run.logger.warning(
                "epoch %d: %.0f%% of the time was spent waiting for data (%.1f s of %.1f s); "
                "use more workers or a cache",
                epoch,
                100 * wait / epoch_s,
                wait,
                epoch_s,
            )


@record
class EarlyStopping(Callback):
    """Stop when ``source`` has not improved by ``min_delta`` for ``patience`` epochs (decided from the history)."""

    source: str = attrs.field(default=f"validation.{keys.TOTAL_LOSS}", validator=v.key)
    optimization: str = attrs.field(default="min", validator=v.in_(("min", "max")))
    patience: int = attrs.field(default=5, validator=v.positive_int)
    min_delta: float = 0.0

    def reads(self) -> tuple[str, ...]:
        return (self.source,)

    def should_stop(self, history) -> bool:
        """Whether training should stop after the last entry of ``history``."""
        best, since = None, 0
        for res in history:
            v = nd.get(res, self.source, default=None)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                since += 1
                continue
            improved = best is None or (
                v < best - self.min_delta if self.optimization == "min" else v > best + self.min_delta
            )
            if improved:
                best, since = v, 0
            else:
                since += 1
        return since >= self.patience

    def on_epoch_end(self, run: RunContext, epoch: int, results: dict) -> bool:
        stop = self.should_stop(run.state.history)
        if stop:
            run.logger.info(
                "early stopping after epoch %d: %s did not improve for %d epochs", epoch, self.source, self.patience
            )
        return stop
