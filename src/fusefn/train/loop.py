"""One epoch at a time: :func:`train_epoch` and :func:`eval_epoch`, the pieces ``fit`` is glued from.

Each takes the state and the epoch's batches and gives back the new state (training) and
the epoch's results ``{"losses": {name: mean over batches}, "metrics": {name: value}}``.
With :func:`~fusefn.train.epoch_batches`, :class:`~fusefn.train.BestEpochs` and
:func:`~fusefn.train.save_checkpoint` they make a training loop of your own (docs/train.md).
Under torchrun both merge their loss and metric states across ranks before computing them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from fusefn import keys, nd
from fusefn._types import is_tensor
from fusefn.core import record
from fusefn.errors import FusefnError
from fusefn.losses import InvalidTargetError, check_targets
from fusefn.train import distributed as dist_
from fusefn.train.prefetch import device_batches
from fusefn.train.state import TrainState
from fusefn.train.step import NonFiniteLossError

__all__ = ["train_epoch", "eval_epoch", "EpochMeans", "summary_table", "ValidationError"]


class ValidationError(FusefnError):
    """An epoch's validation failed; names the epoch and the cause, and where the epoch's training was saved."""


def _py(value: Any) -> Any:
    """Metric/loss values as plain Python (floats, dicts of floats)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _py(v) for k, v in value.items()}
    return value


def loss_values(out: Mapping) -> dict:
    """``{flat loss key: float}`` of one step's output (one host read per loss)."""
    return {k: float(v) for k, v in nd.flatten(out.get("losses", {})).items()}


@record
class EpochMeans:
    """A reducer over the step outputs of an epoch: the mean of every loss and the state of every metric.

    ``compute`` gives ``{"losses": {name: mean over batches}, "metrics": {name: value}}``.
    """

    metrics: Mapping = attrs.field(factory=dict, converter=dict)

    def init(self) -> dict:
        return {"loss_sums": {}, "batches": 0, "metrics": {k: m.init() for k, m in self.metrics.items()}}

    def update(self, acc: Mapping, out: Mapping) -> dict:
        return self.add(acc, out, loss_values(out))

    def add(self, acc: Mapping, out: Mapping, values: Mapping) -> dict:
        """:meth:`update` with the step's loss ``values`` already read (:func:`loss_values`)."""
        sums = dict(acc["loss_sums"])
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        states = {k: m.update(acc["metrics"][k], out) for k, m in self.metrics.items()}
        return {"loss_sums": sums, "batches": acc["batches"] + 1, "metrics": states}

    def merge(self, a: Mapping, b: Mapping) -> dict:
        sums = {
            k: a["loss_sums"].get(k, 0.0) + b["loss_sums"].get(k, 0.0) for k in {**a["loss_sums"], **b["loss_sums"]}
        }
        states = {k: m.merge(a["metrics"][k], b["metrics"][k]) for k, m in self.metrics.items()}
        return {"loss_sums": sums, "batches": a["batches"] + b["batches"], "metrics": states}

    def compute(self, acc: Mapping) -> dict:
        n = max(acc["batches"], 1)
        losses = nd.unflatten({k: v / n for k, v in acc["loss_sums"].items()})
        return {"losses": losses, "metrics": {k: _py(m.compute(acc["metrics"][k])) for k, m in self.metrics.items()}}


class _Report:
    """Progress of a training epoch on a tqdm-like bar: batches, the loss and samples per second."""

    def __init__(self, bar):
        self.bar, self.t0, self.samples, self.shown_at = bar, time.perf_counter(), 0, -1.0

    def __call__(self, outs: list, n: int, loss: float) -> None:
        if self.bar is None:
            return
        for o in outs:
            ids = nd.get(o, keys.SAMPLE_ID, default=None)
            self.samples += len(ids) if ids is not None else 0
        self.bar.update(n)
        el = time.perf_counter() - self.t0
        if el - self.shown_at >= 0.25:  # formatting the postfix every step costs more than the bar
            self.shown_at = el
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{self.samples / max(el, 1e-9):.0f}")


def _check_finite(step: Callable, group: list, outs: list, values: list, state: TrainState, epoch: int, pos: int):
    step_losses = [v["total_loss"] for v in values]
    loss = sum(step_losses) / len(step_losses)
    if not all(math.isfinite(v) for v in step_losses):
        where = f"train step {state.step} (epoch {epoch}, batch {pos})"
        _explain_non_finite(step, outs, where)
        ids = [nd.get(b, keys.SAMPLE_ID, default=None) for b in group]
        raise NonFiniteLossError(
            f"loss is {loss} at step {state.step} (epoch {epoch}, batch {pos}); sample ids {ids}"
            + "".join(f"; {c}" for c in map(_culprits, outs) if c)
        )
    return loss


def _culprits(out: Mapping) -> str:
    """Which samples of a step's output hold non-finite values, and under which keys ("" when none is found)."""
    ids = nd.get(out, keys.SAMPLE_ID, default=None)
    where: dict = {}
    if ids is not None:
        for key, x in nd.flatten(out).items():
            if is_tensor(x) and x.is_floating_point() and x.dim() and x.shape[0] == len(ids):
                rows = torch.nonzero(~torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(dim=1)).flatten()
                for r in rows.tolist():
                    where.setdefault(ids[r], []).append(key)
    if not where:
        return ""
    shown = "; ".join(f"{sid!r} ({', '.join(ks)})" for sid, ks in list(where.items())[:5])
    return f"non-finite values in samples {shown}" + (" …" if len(where) > 5 else "")


@contextlib.contextmanager
def _naming_batch(where: str):
    """A step's invalid-target error (raised when a kernel refused a label) told with the epoch and batch."""
    try:
        yield
    except InvalidTargetError as e:
        raise e.at(f"{e.step} ({where})") from e.__cause__


def _explain_non_finite(step: Callable, outs: Sequence[Mapping], where: str) -> None:
    """Raise the loss error that names the samples, when their targets explain a non-finite loss (check_targets).

    Class-label losses come out NaN on labels they cannot take (fusefn.losses), so this runs
    only after a loss was found non-finite: no cost on the steps that are fine.
    """
    losses = getattr(step, "losses", None)
    if losses:
        for out in outs:
            try:
                check_targets(losses, out, step=where)
            except InvalidTargetError:
                raise
            except Exception:  # a target it cannot read: the non-finite loss error stands
                return


def _fused(train_step: Callable, augment: Callable | None) -> tuple[Callable, Callable | None]:
    """``(step, augment left to the loop)``: an Augmentation moves inside a step that can take it.

    Inside, its params are drawn from the same stream as here and its ``apply`` joins the
    compiled graph; any other callable runs here, eagerly, before the step.
    """
    if augment is None or getattr(train_step, "augment", None) is not None:
        return train_step, augment
    if callable(getattr(train_step, "with_augment", None)) and callable(getattr(augment, "apply_fixed", None)):
        try:
            return train_step.with_augment(augment), None
        except TypeError:  # an unhashable augmentation: kept outside
            return train_step, augment
    return train_step, augment


def train_epoch(
    train_step: Callable,
    state: TrainState,
    batches: Iterable,
    *,
    metrics: Mapping | None = None,
    augment: Callable | None = None,
    accumulate: int = 1,
    device=None,
    progress=None,
    stop: Callable[[], bool] | None = None,
    prefetch: bool = True,
) -> tuple[TrainState, dict | None]:
    """One training epoch, epoch ``state.epoch + 1``: ``(state after it, its results)``.

    Args:
        train_step: from :func:`~fusefn.train.make_train_step` (with the same ``accumulate``).
        batches: the epoch's batches (:func:`~fusefn.train.epoch_batches`). A state saved in
            the middle of an epoch (``batch_in_epoch > 0``) goes on from there: leave out the
            batches it ran (``epoch_batches(skip=state.batch_in_epoch)``); its ``partial`` holds
            their losses and metric states.
        metrics: ``{name: reducer}`` over the step outputs.
        augment: ``augment(batch, rng=...) -> batch`` on the device, with
            ``rng = state.rng.child("augment", step, i)`` (``i``: the mini-batch of the update).
            A :class:`fusefn.augment.Augmentation` runs inside the step (in its compiled graph when
            the step is compiled), with the same random values.
        device: where the batches go before the step (nothing moves when it is the CPU or ``None``).
        prefetch: on CUDA, copy the next batch (pinned, non-blocking, on a side stream) while the step runs.
        progress: a tqdm-like bar (``update(n)``, ``set_postfix(**kw)``) to report to.
        stop: asked after every update; when it says ``True`` the epoch stops there and
            ``(state, None)`` comes back, the state holding ``batch_in_epoch`` and ``partial``
            (what a checkpoint needs to finish the epoch later).

    Returns:
        the state (``epoch`` advanced, ``batch_in_epoch`` 0) and
        ``{"losses": {name: mean over the batches}, "metrics": {name: value}}``.

    Raises:
        NonFiniteLossError: naming the step, the epoch, the batch and its sample ids.
    """
    means = EpochMeans(metrics=metrics or {})
    acc = state.partial if state.batch_in_epoch and state.partial is not None else means.init()
    epoch, pos = state.epoch + 1, state.batch_in_epoch
    train_step, augment = _fused(train_step, augment)
    report, it = _Report(progress), iter(device_batches(batches, device, prefetch=prefetch))
    while group := list(itertools.islice(it, accumulate)):
        if augment is not None:
            group = [augment(b, rng=state.rng.child("augment", state.step, i)) for i, b in enumerate(group)]
        with _naming_batch(f"epoch {epoch}, batch {pos}"):
            state, out = train_step(state, group[0] if accumulate == 1 else group)
        outs = [out] if accumulate == 1 else out
        values = [loss_values(o) for o in outs]
        loss = _check_finite(train_step, group, outs, values, state, epoch, pos)
        for o, v in zip(outs, values):
            acc = means.add(acc, o, v)
        pos += len(group)
        state = state.replace(batch_in_epoch=pos)
        report(outs, len(group), loss)
        if stop is not None and stop():
            return state.replace(partial=acc), None
    results = means.compute(dist_.merge_across_ranks(acc, means.merge))
    return state.replace(epoch=epoch, batch_in_epoch=0, partial=None), results


def eval_epoch(
    eval_step: Callable,
    state: TrainState | tuple,
    batches: Iterable,
    *,
    metrics: Mapping | None = None,
    device=None,
    progress=None,
    prefetch: bool = True,
) -> dict:
    """One pass of ``eval_step`` (:func:`~fusefn.train.make_eval_step`) over ``batches``.

    Returns:
        ``{"losses": {name: mean over the batches}, "metrics": {name: value}}``.

    Raises:
        InvalidTargetError: a batch's targets hold values a loss cannot take (``fusefn.losses``).
        NonFiniteLossError: a batch's loss is NaN or infinite; names the batch, the losses and its sample ids.
    """
    means = EpochMeans(metrics=metrics or {})
    acc = means.init()
    for pos, batch in enumerate(device_batches(batches, device, prefetch=prefetch)):
        with _naming_batch(f"batch {pos}"):
            out = eval_step(state, batch)
        values = loss_values(out)
        if not all(math.isfinite(v) for v in values.values()):
            where = f"eval step (batch {pos})"
            _explain_non_finite(eval_step, [out], where)
            bad = ", ".join(f"{k} = {v}" for k, v in values.items() if not math.isfinite(v))
            found = _culprits(out) or f"sample ids {nd.get(out, keys.SAMPLE_ID, default=None)}"
            raise NonFiniteLossError(f"{bad} in the {where}; {found}")
        acc = means.add(acc, out, values)
        if progress is not None:
            progress.update(1)
    return means.compute(dist_.merge_across_ranks(acc, means.merge))


def summary_table(results: Mapping) -> str:
    """One text table of an epoch's results: a row per key, a column per mode."""
    modes = [m for m in ("train", "validation") if m in results]
    flat = {m: {k: v for k, v in nd.flatten(results[m]).items() if isinstance(v, (int, float))} for m in modes}
    names = sorted(set().union(*[set(f) for f in flat.values()])) if flat else []
    width = max([len(k) for k in names] + [10])
    lines = [f"{'':{width}}  " + "  ".join(f"{m:>12}" for m in modes)]
    for k in names:
        cells = [f"{flat[m][k]:12.4f}" if isinstance(flat[m].get(k), (int, float)) else f"{'-':>12}" for m in modes]
        lines.append(f"{k:{width}}  " + "  ".join(cells))
    if results.get("learning_rate") is not None:
        lines.append(f"{'learning_rate':{width}}  {results['learning_rate']:12.3g}")
    return "\n".join(lines)
