"""fit: the epoch loop around the pure step (data, device, metrics, checkpoints, callbacks, resume).

The loop is the I/O shell; the math lives in :mod:`fusefn.train.step`. Every
random stream derives from ``(seed, purpose, epoch|step)``: the shuffling of
epoch e, the augmentation and dropout of step s. So a run stopped at any epoch
boundary (or by Ctrl-C between two batches) and resumed with ``resume="last"``
goes on exactly as if it had never stopped.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fusefn import nd, optim
from fusefn.core import Rng, to_config
from fusefn.errors import ConfigError
from fusefn.train import distributed as dist_
from fusefn.train.callbacks import Callback, EarlyStopping, RunContext
from fusefn.train.checkpoint import (
    BestEpochSource,
    CheckpointError,
    best_name,
    checkpoint_path,
    config_diff,
    is_better,
    load_checkpoint,
    save_checkpoint,
    should_save_epoch,
    write_json_atomic,
)
from fusefn.train.device import select_device
from fusefn.train.state import TrainState, init_state, tree_to
from fusefn.train.step import NonFiniteLossError, make_eval_step, make_train_step

__all__ = ["fit", "epoch_batches", "default_collate", "run_eval_epoch", "summary_table"]

_log = logging.getLogger("fusefn.train")


# ------------------------------------------------------------------------------ data


def default_collate(samples: Sequence[Mapping]) -> dict:
    """``fusefn.data.collate`` when present, else torch's default collate."""
    try:
        from fusefn.data import collate
    except ImportError:
        collate = None
    if collate is not None:
        return collate(samples)
    return torch.utils.data.default_collate(list(samples))


def _is_map_dataset(data) -> bool:
    return hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (list, tuple))


def _index_batches(
    n: int, epoch: int, seed: int, batch_size: int, shuffle: bool, drop_last: bool, rank: int, world: int
) -> list[list[int]]:
    if shuffle:
        g = Rng(seed).child("shuffle", epoch).generator()
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if world > 1:
        # every rank sees the same number of samples: the tail that does not divide is dropped
        order = order[: n // world * world][rank::world]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def epoch_batches(
    data,
    epoch: int,
    *,
    seed: int = 0,
    batch_size: int = 32,
    shuffle: bool = True,
    drop_last: bool = False,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    skip: int = 0,
    rank: int = 0,
    world: int = 1,
    batch_sampler=None,
) -> tuple[Iterable, int]:
    """``(batches, count)`` of one epoch, the first ``skip`` batches left out.

    ``data`` is a map-style dataset (indexed ``0..len-1``; shuffled by a generator
    derived from ``(seed, epoch)``, split by rank) or an iterable of ready batch_dicts
    (used as is; its order is its own). A ``batch_sampler`` (e.g. ``fusefn.data.BalancedBatchSampler``,
    which splits by rank itself) replaces the seeded shuffling; its ``set_epoch`` is called first.
    """
    if _is_map_dataset(data):
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        if batch_sampler is not None:
            if hasattr(batch_sampler, "set_epoch"):
                batch_sampler.set_epoch(epoch)
            batches = [list(b) for b in batch_sampler][skip:]
        else:
            batches = _index_batches(len(data), epoch, seed, batch_size, shuffle, drop_last, rank, world)[skip:]
        loader = torch.utils.data.DataLoader(
            data,
            batch_sampler=batches,
            collate_fn=collate_fn or default_collate,
            num_workers=num_workers,
        )
        return loader, len(batches)
    if callable(data) and not hasattr(data, "__iter__"):
        data = data(epoch)
    try:
        count = len(data)
    except TypeError:
        count = None
    it = itertools.islice(iter(data), skip, None)
    return it, (None if count is None else max(count - skip, 0))


# --------------------------------------------------------------------------- helpers


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


def _accumulators(metrics: Mapping) -> dict:
    return {"loss_sums": {}, "batches": 0, "metrics": {k: m.init() for k, m in metrics.items()}}


def _loss_values(out: Mapping) -> dict:
    """``{flat loss key: float}`` of one step's output (one host read per loss)."""
    return {k: float(v) for k, v in nd.flatten(out.get("losses", {})).items()}


def _accumulate(acc: dict, out: Mapping, metrics: Mapping, values: Mapping | None = None) -> dict:
    """``acc`` plus one batch: loss sums (``values`` when already read, else from ``out``) and metric states."""
    sums = dict(acc["loss_sums"])
    for k, v in (_loss_values(out) if values is None else values).items():
        sums[k] = sums.get(k, 0.0) + v
    mstates = {k: metrics[k].update(acc["metrics"][k], out) for k in metrics} if metrics else acc["metrics"]
    return {"loss_sums": sums, "batches": acc["batches"] + 1, "metrics": mstates}


def _reduce(acc: dict, metrics: Mapping) -> dict:
    if dist_.world_size() > 1:

        def add(a, b):
            return {
                "loss_sums": {k: a["loss_sums"].get(k, 0.0) + b["loss_sums"].get(k, 0.0) for k in a["loss_sums"]},
                "batches": a["batches"] + b["batches"],
            }

        merged = dist_.merge_across_ranks({"loss_sums": acc["loss_sums"], "batches": acc["batches"]}, add)
        mstates = {k: dist_.merge_across_ranks(acc["metrics"][k], metrics[k].merge) for k in metrics}
        acc = {**merged, "metrics": mstates}
    n = max(acc["batches"], 1)
    losses = nd.unflatten({k: v / n for k, v in acc["loss_sums"].items()})
    values = {}
    for k, m in metrics.items():
        values[k] = _py(m.compute(acc["metrics"][k]))
    return {"losses": losses, "metrics": values}


def summary_table(results: Mapping) -> str:
    """One text table of an epoch's results: a row per key, a column per mode."""
    modes = [m for m in ("train", "validation") if m in results]
    flat = {m: {k: v for k, v in nd.flatten(results[m]).items() if isinstance(v, (int, float))} for m in modes}
    keys = sorted(set().union(*[set(f) for f in flat.values()])) if flat else []
    width = max([len(k) for k in keys] + [10])
    lines = [f"{'':{width}}  " + "  ".join(f"{m:>12}" for m in modes)]
    for k in keys:
        cells = []
        for m in modes:
            v = flat[m].get(k)
            cells.append(f"{v:12.4f}" if isinstance(v, (int, float)) else f"{'-':>12}")
        lines.append(f"{k:{width}}  " + "  ".join(cells))
    if results.get("learning_rate") is not None:
        lines.append(f"{'learning_rate':{width}}  {results['learning_rate']:12.3g}")
    return "\n".join(lines)


def _check_sources(sources: Sequence[BestEpochSource], losses: Mapping, metrics_by_mode: Mapping) -> None:
    available = ["learning_rate"]
    for mode, ms in metrics_by_mode.items():
        available += [f"{mode}.losses.total_loss"] + [f"{mode}.losses.{k}" for k in losses]
        available += [f"{mode}.metrics.{k}" for k in ms]
    for src in sources:
        if not any(src.source == a or src.source.startswith(a + ".") for a in available):
            raise ConfigError(
                f"best epoch source {src.source!r} will not exist in the epoch results; available: "
                + ", ".join(available)
            )


def _source_value(results: Mapping, key: str):
    value = nd.get(results, key, default=None)
    if value is None or isinstance(value, Mapping):
        flat = [k for k, v in nd.flatten(results).items() if isinstance(v, (int, float))]
        what = "is not a number" if isinstance(value, Mapping) else "is not in the epoch results"
        raise ConfigError(f"best epoch source {key!r} {what}; available: {', '.join(sorted(flat))}")
    return float(value)


class _InterruptFlag:
    """Defers Ctrl-C to the next batch boundary, so a checkpoint is never taken mid-update."""

    def __init__(self):
        self.raised = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self.raised:  # a second Ctrl-C stops at once
                    raise KeyboardInterrupt
                self.raised = True

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


# -------------------------------------------------------------------------------- fit


def run_eval_epoch(eval_step, state, data, metrics: Mapping, *, device, batch_kwargs: Mapping, desc: str, progress):
    """One pass of ``eval_step`` over ``data``: ``{"losses": …, "metrics": …}``."""
    batches, count = epoch_batches(data, 0, shuffle=False, **batch_kwargs)
    acc = _accumulators(metrics)
    with tqdm(total=count, desc=desc, disable=not progress, leave=False, unit="batch") as bar:
        for batch in batches:
            out = eval_step(state, tree_to(batch, device))
            acc = _accumulate(acc, out, metrics)
            bar.update(1)
    return _reduce(acc, metrics)


def fit(
    model,
    losses: Mapping[str, Callable],
    optimizer,
    train_data,
    validation_data=None,
    *,
    model_dir: str | os.PathLike,
    epochs: int,
    metrics: Mapping | None = None,
    train_metrics: Mapping | None = None,
    validation_metrics: Mapping | None = None,
    batch_size: int = 32,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    batch_sampler=None,
    augment: Callable | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    compile: bool = False,
    precision: str = "fp32",
    accumulate: int = 1,
    best_epoch_sources: Sequence[BestEpochSource] | BestEpochSource | None = None,
    start_saving_epochs: int | None = None,
    gap_between_saving_epochs: int = 1,
    validate_first: bool = False,
    callbacks: Sequence[Callback] = (),
    resume: str | int | os.PathLike | None = None,
    plateau: optim.ReduceLROnPlateau | None = None,
    progress: bool = True,
    apply: Callable | None = None,
    init: Callable | None = None,
    durable_checkpoints: bool = False,
) -> TrainState:
    """Train ``model`` for ``epochs`` epochs and write checkpoints under ``model_dir``.

    Args:
        losses: ``{name: loss}``; their sum is ``losses.total_loss``.
        train_data, validation_data: map-style datasets of sample dicts (batched here,
            ``batch_size``/``collate_fn``/``num_workers``) or iterables of ready batch_dicts.
        batch_sampler: yields the index batches of the training epochs instead of the seeded
            shuffle (e.g. ``fusefn.data.BalancedBatchSampler``).
        metrics: reducers (``init/update/compute``) used in both modes, unless
            ``train_metrics``/``validation_metrics`` are given.
        augment: ``augment(batch, generator) -> batch``, applied on the device after the move,
            with a generator derived from ``(seed, step)``.
        best_epoch_sources: which epochs are "best" (``best_<source>.pt``); default the
            validation (else train) total loss, minimised.
        start_saving_epochs, gap_between_saving_epochs: the ``epoch_<n>.pt`` rule.
        validate_first: a validation pass before training (epoch 0 of the history).
        resume: ``"last"`` (start fresh when there is none), ``"best"``, an epoch number or a path.
        plateau: a ReduceLROnPlateau reducer whose scale multiplies the learning rate.
        durable_checkpoints: fsync every checkpoint (survives a power loss; checkpoints are
            atomic either way, so a killed process never leaves half a file).

    ``epoch_results`` (one per epoch, kept in ``state.history``) is
    ``{"epoch": n, "learning_rate": lr at the start of the epoch, "train": {"losses": {…}, "metrics": {…}},
    "validation": {…}}``; losses are means over the epoch's batches.

    Returns:
        the final TrainState (its ``history`` holds every epoch's results).
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"fit: epochs must be an int >= 0, got {epochs!r}")
    model_dir = pathlib.Path(model_dir)
    dist_.init_process_group()  # joins torchrun's group when launched by it; no-op otherwise
    rank, world = dist_.rank(), dist_.world_size()
    main = rank == 0
    if main:
        if model_dir.exists() and not model_dir.is_dir():
            raise ConfigError(f"model_dir {model_dir} is a file; pass a directory")
        try:
            (model_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create model_dir {model_dir}: {e.strerror or e}") from e
        if not os.access(model_dir, os.W_OK):
            raise CheckpointError(f"model_dir {model_dir} is not writable; choose another directory")
    dev = select_device(device)
    train_metrics = dict(train_metrics if train_metrics is not None else (metrics or {}))
    validation_metrics = dict(validation_metrics if validation_metrics is not None else (metrics or {}))
    by_mode = {"train": train_metrics}
    if validation_data is not None:
        by_mode["validation"] = validation_metrics
    if best_epoch_sources is None:
        mode = "validation" if validation_data is not None else "train"
        best_epoch_sources = (BestEpochSource(source=f"{mode}.losses.total_loss", optimization="min"),)
    elif isinstance(best_epoch_sources, BestEpochSource):
        best_epoch_sources = (best_epoch_sources,)
    best_epoch_sources = tuple(best_epoch_sources)
    _check_sources(best_epoch_sources, losses, by_mode)
    if plateau is not None:
        _check_sources((BestEpochSource(source=plateau.source),), losses, by_mode)

    # ---- state: fresh or resumed
    state = None
    if resume is not None:
        path = checkpoint_path(model_dir, resume)
        if path.is_file():
            payload = load_checkpoint(path, device=dev)
            _check_same_config(payload, model, optimizer, path)
            state = payload["state"]
            _log.info("resuming from %s (epoch %d, step %d)", path, state.epoch, state.step)
        elif resume != "last":
            raise CheckpointError(f"cannot resume: checkpoint {path} not found")
    if state is None:
        state = init_state(model, optimizer, seed, init=init, device=dev)
    if main:
        write_json_atomic(model_dir / "model.json", to_config(model))

    train_step = make_train_step(
        model, losses, optimizer, apply=apply, compile=compile, precision=precision, accumulate=accumulate
    )
    eval_step = make_eval_step(model, losses, apply=apply, precision=precision, compile=compile)
    batch_kw = {
        "batch_size": batch_size,
        "collate_fn": collate_fn,
        "num_workers": num_workers,
        "rank": rank,
        "world": world,
    }
    show = progress and main
    run = RunContext(model_dir=model_dir, epochs=epochs, state=state)
    cbs = tuple(callbacks) if main else ()
    for cb in cbs:
        cb.on_fit_start(run)

    def save(names: Sequence[str], st: TrainState) -> None:
        if main:
            paths = [model_dir / "checkpoints" / f"{n}.pt" for n in names]
            save_checkpoint(paths, st, model=model, optimizer=optimizer, durable=durable_checkpoints)

    try:
        if validate_first and validation_data is not None and not state.history and state.epoch == 0:
            res = {"epoch": 0, "learning_rate": optim.learning_rate(optimizer, state.opt_state, state.lr_scale)}
            res["validation"] = run_eval_epoch(
                eval_step, state, validation_data, validation_metrics, device=dev, batch_kwargs=batch_kw,
                desc="epoch 0 validation", progress=show,
            )  # fmt: skip
            state = state.replace(history=(*state.history, res))
            _log.info("epoch 0 (before training)\n%s", summary_table(res))
        if any(isinstance(cb, EarlyStopping) and cb.should_stop(state.history) for cb in callbacks):
            _log.info("early stopping already reached in the resumed history; nothing to train")
            return state

        with _InterruptFlag() as flag:
            for epoch in range(state.epoch + 1, epochs + 1):
                t0 = time.perf_counter()
                lr = optim.learning_rate(optimizer, state.opt_state, state.lr_scale)
                skip = state.batch_in_epoch
                acc = state.partial if (skip and state.partial is not None) else _accumulators(train_metrics)
                batches, count = epoch_batches(
                    train_data, epoch, seed=state.seed, shuffle=shuffle, drop_last=drop_last, skip=skip,
                    batch_sampler=batch_sampler, **batch_kw,
                )  # fmt: skip
                wait = 0.0
                samples = 0
                shown_at = -1.0
                with tqdm(
                    total=None if count is None else count + skip, initial=skip, desc=f"epoch {epoch} train",
                    disable=not show, leave=False, unit="batch",
                ) as bar:  # fmt: skip
                    it = iter(batches)
                    pos = skip
                    while True:
                        tw = time.perf_counter()
                        group = list(itertools.islice(it, accumulate))
                        wait += time.perf_counter() - tw
                        if not group:
                            break
                        if dev.type != "cpu":  # loaders yield CPU tensors: nothing to move on the CPU
                            group = [tree_to(b, dev) for b in group]
                        if augment is not None:
                            group = [
                                augment(b, Rng(state.seed).child("augment", state.step, i).generator(dev))
                                for i, b in enumerate(group)
                            ]
                        state, out = train_step(state, group[0] if accumulate == 1 else group)
                        outs = [out] if accumulate == 1 else out
                        values = [_loss_values(o) for o in outs]
                        step_losses = [v["total_loss"] for v in values]
                        loss = sum(step_losses) / len(step_losses)
                        if not all(math.isfinite(v) for v in step_losses):
                            ids = [nd.get(b, "data.sample_id", default=None) for b in group]
                            last = model_dir / "checkpoints" / "last.pt"
                            raise NonFiniteLossError(
                                f"loss is {loss} at step {state.step} (epoch {epoch}, batch {pos}); "
                                f"sample ids {ids}; last good checkpoint: {last if last.exists() else 'none'}"
                            )
                        for o, v in zip(outs, values):
                            acc = _accumulate(acc, o, train_metrics, v)
                        pos += len(group)
                        state = state.replace(batch_in_epoch=pos)
                        if show:
                            for o in outs:
                                n = o.get("data", {}).get("sample_id")
                                samples += len(n) if n is not None else 0
                            bar.update(len(group))
                            el = time.perf_counter() - t0
                            if el - shown_at >= 0.25:  # formatting the postfix every step costs more than the bar
                                shown_at = el
                                bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples / max(el, 1e-9):.0f}")
                        if flag.raised:
                            state = state.replace(partial=acc)
                            save(["last"], state)
                            _log.warning("interrupted at epoch %d batch %d; wrote the last checkpoint", epoch, pos)
                            raise KeyboardInterrupt
                res = {"epoch": epoch, "learning_rate": lr, "train": _reduce(acc, train_metrics)}
                if validation_data is not None:
                    res["validation"] = run_eval_epoch(
                        eval_step, state, validation_data, validation_metrics, device=dev, batch_kwargs=batch_kw,
                        desc=f"epoch {epoch} validation", progress=show,
                    )  # fmt: skip
                best = dict(state.best)
                improved = []
                for src in best_epoch_sources:
                    v = _source_value(res, src.source)
                    prev = best.get(src.source)
                    if is_better(v, None if prev is None else prev["value"], src):
                        best[src.source] = {"value": v, "epoch": epoch}
                        improved.append(src)
                sched = state.scheduler_state
                lr_scale = state.lr_scale
                if plateau is not None:
                    sched = plateau.update(sched if sched is not None else plateau.init(), res_value(res, plateau))
                    lr_scale = sched["scale"]
                state = state.replace(
                    epoch=epoch,
                    batch_in_epoch=0,
                    partial=None,
                    best=best,
                    history=(*state.history, res),
                    scheduler_state=sched,
                    lr_scale=lr_scale,
                )
                names = [best_name(src) for src in improved]
                if should_save_epoch(epoch, start_saving_epochs, gap_between_saving_epochs):
                    names.append(f"epoch_{epoch}")
                save([*names, "last"], state)  # "last" after the others: a resume never skips a best
                dist_.barrier()
                epoch_s = time.perf_counter() - t0
                run.state = state
                run.timings = {
                    "epoch_s": epoch_s,
                    "data_wait_s": wait,
                    "history_s": [*run.timings.get("history_s", []), epoch_s],
                }
                if main:
                    marks = ", ".join(f"best {s.source}" for s in improved)
                    _log.info(
                        "epoch %d/%d (%.1f s%s)\n%s", epoch, epochs, epoch_s, f"; {marks}" if marks else "",
                        summary_table(res),
                    )  # fmt: skip
                stop = False
                for cb in cbs:
                    stop = bool(cb.on_epoch_end(run, epoch, res)) or stop
                stop = dist_.broadcast_object(stop)
                if stop:
                    break
    finally:
        run.state = state
        for cb in cbs:
            cb.on_fit_end(run)
    return state


def res_value(results: Mapping, plateau: optim.ReduceLROnPlateau) -> float:
    """The value a plateau reducer watches in one epoch's results."""
    return _source_value(results, plateau.source)


def _check_same_config(payload: Mapping, model, optimizer, path) -> None:
    from fusefn.core import fingerprint

    for what, obj in (("model", model), ("optimizer", optimizer)):
        saved = payload.get(f"{what}_fingerprint")
        if saved is not None and saved != fingerprint(obj):
            diff = config_diff(payload.get(f"{what}_config"), to_config(obj))
            raise CheckpointError(
                f"cannot resume from {path}: it was saved with another {what} config; differing fields: "
                + "; ".join(diff[:8])
            )
