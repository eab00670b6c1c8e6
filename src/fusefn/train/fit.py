"""fit: the epoch loop glued from the public pieces (epoch_batches, train_epoch, eval_epoch, BestEpochs, checkpoints).

The loop is the I/O shell; the math lives in :mod:`fusefn.train.step`. Every
random stream derives from ``(seed, purpose, epoch|step)``: the shuffling of
epoch e, the augmentation and dropout of step s. So a run stopped at any epoch
boundary (or by Ctrl-C between two batches) and resumed with ``resume="last"``
goes on exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from fusefn import keys, nd, optim
from fusefn._atomic import sweep_temporaries
from fusefn.core import Rng, fingerprint, to_config
from fusefn.errors import ConfigError, FusefnError
from fusefn.losses import InvalidTargetError
from fusefn.models._record import warn_if_unportable
from fusefn.train import distributed as dist_
from fusefn.train.batch_norm import DEFAULT_BATCH_NORM, BatchNormStats, has_batch_norm, recompute_batch_norm
from fusefn.train.batches import epoch_batches
from fusefn.train.callbacks import Callback, EarlyStopping, RunContext
from fusefn.train.checkpoint import (
    BestEpochs,
    BestEpochSource,
    CheckpointError,
    checkpoint_path,
    config_diff,
    epoch_value,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from fusefn.train.device import select_device
from fusefn.train.loop import ValidationError, eval_epoch, summary_table, train_epoch
from fusefn.train.run_dir import claim_run_dir, run_config, run_config_part
from fusefn.train.settings import CheckpointRule, LoaderSettings, StepSettings
from fusefn.train.start_checks import check_batch_keys, check_epoch_keys, epoch_keys
from fusefn.train.state import TrainState, init_state
from fusefn.train.step import NonFiniteLossError, make_eval_step, make_train_step

__all__ = ["fit"]

_log = logging.getLogger("fusefn.train")


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
    loader: LoaderSettings = LoaderSettings(),
    step: StepSettings = StepSettings(),
    checkpoints: CheckpointRule = CheckpointRule(),
    augment: Callable | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    validate_first: bool = False,
    callbacks: Sequence[Callback] = (),
    resume: str | int | os.PathLike | None = None,
    overwrite: bool = False,
    plateau: optim.ReduceLROnPlateau | None = None,
    batch_norm: BatchNormStats | None = DEFAULT_BATCH_NORM,
    progress: bool = True,
    apply: Callable | None = None,
    init: Callable | None = None,
) -> TrainState:
    """Train ``model`` for ``epochs`` epochs, write checkpoints under ``model_dir``; returns the final TrainState.

    Args:
        losses: ``{name: loss}``; their sum is ``losses.total_loss``.
        train_data, validation_data: map-style datasets of sample dicts (batched as ``loader`` says)
            or iterables of ready batch_dicts (see :func:`~fusefn.train.epoch_batches`).
        metrics: reducers used in both modes, unless ``train_metrics``/``validation_metrics`` are given.
        loader, step, checkpoints: :class:`LoaderSettings`, :class:`StepSettings`, :class:`CheckpointRule`.
            ``step.ema`` keeps a moving average of the weights (:class:`~fusefn.train.EMA`) that validation,
            best-epoch selection and the checkpoints' inference use.
        augment: ``augment(batch, rng=Rng) -> batch`` on the device (see :func:`~fusefn.train.train_epoch`).
        seed: the run's ``Rng(seed)``: parameters, shuffling, augmentation and dropout derive from it.
        validate_first: a validation pass before training (epoch 0 of the history).
        resume: ``"last"`` (start fresh when there is none), ``"best"``, an epoch number or a path.
        overwrite: replace the checkpoints of another run in ``model_dir`` (else that is refused:
            :mod:`fusefn.train.run_dir`; ``resume`` continues that run instead).
        plateau: a ReduceLROnPlateau reducer whose scale multiplies the learning rate.
        batch_norm: batch-norm statistics recomputed after every training epoch from unaugmented
            training samples (:mod:`fusefn.train.batch_norm` says why); ``None``: the running averages.
        progress: progress bars, and one line per epoch when logging does not show fit's tables.
        apply, init: the model's functions (default ``fusefn.models.apply`` / ``init``).

    Every key a metric, loss, callback or best-epoch rule reads is checked before the first epoch
    (:mod:`fusefn.train.start_checks`). Under torchrun, fit runs inside
    :func:`~fusefn.train.distributed.process_group`. ``epoch_results`` (one per epoch, in ``state.history``)
    is ``{"epoch", "learning_rate", "train": {"losses", "metrics"}, "validation"}``. A failing validation
    raises :class:`~fusefn.train.loop.ValidationError` naming the epoch once ``last`` holds its training.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"fit: epochs must be an int >= 0, got {epochs!r}")
    model_dir = pathlib.Path(model_dir)
    with contextlib.ExitStack() as scope:
        scope.enter_context(dist_.process_group())
        main, dev, show = dist_.is_main(), select_device(device), progress and dist_.is_main()
        modes = _metrics_by_mode(metrics, train_metrics, validation_metrics, validation_data is not None)
        best = BestEpochs(sources=checkpoints.sources(validation_data is not None))
        _check_keys(model, losses, modes, best.sources, plateau, callbacks, train_data)
        parts = (model, losses, optimizer, seed, modes, best.sources, train_data, validation_data, augment, batch_norm)
        run_id = _claim(model_dir, *parts, main=main, resume=resume, overwrite=overwrite)
        state = _resumed(model_dir, resume, model, optimizer, dev)
        if state is None:
            state = init_state(model, optimizer, rng=Rng(seed), init=init, device=dev)
        if step.ema is None and state.ema is not None:
            _log.warning("the resumed state holds a moving average of the weights but step.ema is None: dropped")
            state = state.replace(ema=None)
        train_step = make_train_step(model, losses, optimizer, apply=apply, **step.train_kwargs())
        eval_step = make_eval_step(model, losses, apply=apply, **step.eval_kwargs())
        io_kw = {"device": dev, "prefetch": step.prefetch}
        epoch_kw = {"metrics": modes["train"], "augment": augment, "accumulate": step.accumulate, **io_kw}
        save = functools.partial(_save, model_dir, main=main, model=model, optimizer=optimizer, rule=checkpoints)
        save = functools.partial(save, run_id=run_id)

        def validate(st: TrainState, epoch: int) -> dict:
            batches, count = epoch_batches(validation_data, **_batch_kw(loader))
            with _bar(count, f"epoch {epoch} validation", show) as bar:
                return eval_epoch(eval_step, st, batches, metrics=modes["validation"], progress=bar, **io_kw)

        run = RunContext(model_dir=model_dir, epochs=epochs, state=state)
        cbs = tuple(callbacks) if main else ()
        scope.enter_context(_callbacks(cbs, run))
        scope.enter_context(_naming_last_checkpoint(model_dir))
        if validate_first and validation_data is not None and not state.history and state.epoch == 0:
            res = {"epoch": 0, "learning_rate": _lr(optimizer, state), "validation": validate(state, 0)}
            state = run.state = state.replace(history=(res,))
            _log.info("epoch 0 (before training)\n%s", summary_table(res))
        if any(isinstance(cb, EarlyStopping) and cb.should_stop(state.history) for cb in callbacks):
            _log.info("early stopping already reached in the resumed history; nothing to train")
            return state
        flag = scope.enter_context(_InterruptFlag())
        for epoch in range(state.epoch + 1, epochs + 1):
            t0, lr, skip = time.perf_counter(), _lr(optimizer, state), state.batch_in_epoch
            batches = _Timed(*epoch_batches(train_data, epoch, skip=skip, **_batch_kw(loader, state.rng)))
            with _bar(batches.count, f"epoch {epoch} train", show, initial=skip) as bar:
                state, train_res = train_epoch(train_step, state, batches, progress=bar, stop=flag.is_set, **epoch_kw)
            run.state = state
            if train_res is None:
                _interrupted(save, state, epoch)
            state = run.state = _batch_norm(batch_norm, model, state, train_data, loader, epoch, dev, apply)
            res = {"epoch": epoch, "learning_rate": lr, "train": train_res}
            if validation_data is not None:
                res["validation"] = _validated(validate, state, res, save, model_dir)
            new_best = best.update(state.best, res)
            improved = best.improved(state.best, new_best)
            state = run.state = state.replace(
                best=new_best, history=(*state.history, res), **_plateau(plateau, state, res)
            )
            save(checkpoints.names(epoch, improved), state)
            dist_.barrier()
            if _end_epoch(run, cbs, res, improved, time.perf_counter() - t0, batches.wait_s, show):
                break
    return state


# ------------------------------------------------------------------------------------- the glue's helpers


def _batch_kw(loader: LoaderSettings, train_rng: Rng | None = None) -> dict:
    """``epoch_batches``' arguments: this rank's share; for training (``train_rng``) its order and sampler too."""
    kw = {"batch_size": loader.batch_size, "collate": loader.collate, "workers": loader.workers}
    kw.update(rank=dist_.rank(), world=dist_.world_size())
    if train_rng is not None:
        rng = train_rng if loader.shuffle else None
        kw.update(rng=rng, drop_last=loader.drop_last, batch_sampler=loader.batch_sampler)
    return kw


def _save(
    model_dir: pathlib.Path, names: Sequence[str], state: TrainState, *, main: bool, model, optimizer, rule, run_id
) -> None:
    """Checkpoints ``names`` of ``state`` (rank 0 writes them), each carrying the run's id."""
    if main:
        paths = [model_dir / "checkpoints" / f"{n}.pt" for n in names]
        save_checkpoint(paths, state, model=model, optimizer=optimizer, durable=rule.durable, run_id=run_id)


def _batch_norm(settings, model, state: TrainState, data, loader: LoaderSettings, epoch: int, device, apply):
    """``state`` with its batch-norm statistics recomputed for the epoch's weights (when the model has any)."""
    if settings is None or apply is not None or not has_batch_norm(model):
        return state
    kw = {**_batch_kw(loader), "rng": state.rng.child("batch_norm")}
    rng = state.rng.child("batch_norm", epoch)
    batches, _ = epoch_batches(data, epoch, **kw)
    state = recompute_batch_norm(model, state, batches, rng=rng, max_samples=settings.samples, device=device)
    if state.ema is None:
        return state
    # evaluation runs the averaged weights: their statistics, on the same samples
    averaged = state.replace(params=state.ema["params"], buffers=state.ema["buffers"])
    batches, _ = epoch_batches(data, epoch, **kw)
    averaged = recompute_batch_norm(model, averaged, batches, rng=rng, max_samples=settings.samples, device=device)
    return state.replace(ema={**state.ema, "buffers": averaged.buffers})


def _interrupted(save: Callable, state: TrainState, epoch: int) -> None:
    save(["last"], state)
    _log.warning("interrupted at epoch %d batch %d; wrote the last checkpoint", epoch, state.batch_in_epoch)
    raise KeyboardInterrupt


def _validated(validate: Callable, state: TrainState, res: Mapping, save: Callable, model_dir: pathlib.Path) -> dict:
    """The epoch's validation results; when validation fails, the epoch's training is checkpointed first.

    ``last`` then holds the trained epoch, its history entry carrying ``validation_error``, so
    ``resume="last"`` goes on once the data is fixed. Non-finite metric values (undefined on
    the data, e.g. an AUC over one class) are kept as NaN, warned about, and never chosen as best.
    """
    epoch = res["epoch"]
    try:
        out = validate(state, epoch)
    except Exception as e:
        save(["last"], state.replace(history=(*state.history, {**res, "validation_error": str(e)})))
        kept = f"the epoch's training is saved in {model_dir / 'checkpoints' / 'last.pt'}"
        if not isinstance(e, FusefnError):
            _log.error("epoch %d validation failed; %s", epoch, kept)
            raise
        raise ValidationError(f"epoch {epoch} validation failed: {e}; {kept} (resume='last' goes on)") from e
    bad = [k for k, x in nd.flatten(out).items() if isinstance(x, float) and not math.isfinite(x)]
    if bad:
        _log.warning("epoch %d: validation values not finite (kept as NaN): %s", epoch, ", ".join(bad))
    return out


def _lr(optimizer, state: TrainState):
    return optim.learning_rate(optimizer, state.opt_state, state.lr_scale)


def _prepare(model_dir: pathlib.Path) -> None:
    if model_dir.exists() and not model_dir.is_dir():
        raise ConfigError(f"model_dir {model_dir} is a file; pass a directory")
    try:
        (model_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create model_dir {model_dir}: {e.strerror or e}") from e
    if not os.access(model_dir, os.W_OK):
        raise CheckpointError(f"model_dir {model_dir} is not writable; choose another directory")
    # a process killed while writing a checkpoint leaves its temporary file (one run writes a model_dir at a time)
    sweep_temporaries(model_dir)
    sweep_temporaries(model_dir / "checkpoints")


def _metrics_by_mode(metrics, train_metrics, validation_metrics, validation: bool) -> dict:
    modes = {"train": dict(train_metrics if train_metrics is not None else (metrics or {}))}
    if validation:
        modes["validation"] = dict(validation_metrics if validation_metrics is not None else (metrics or {}))
    return modes


def _plateau_sources(plateau) -> tuple:
    return () if plateau is None else (BestEpochSource(source=plateau.source),)


def _check_keys(model, losses: Mapping, modes: Mapping, sources, plateau, callbacks, train_data) -> None:
    """Every key the metrics, losses, callbacks and best-epoch rules read, checked before the first epoch."""
    readers = [("best epoch source", s) for s in sources] + [("plateau source", p) for p in (plateau,) if p]
    readers += [(f"callback {type(cb).__name__} source", cb) for cb in callbacks]
    check_epoch_keys(readers, epoch_keys(losses, modes))
    components = {f"loss {k!r}": loss for k, loss in losses.items()}
    components.update({f"{mode} metric {k!r}": m for mode, ms in modes.items() for k, m in ms.items()})
    check_batch_keys(components, model=model, losses=losses, data=train_data)


def _claim(
    model_dir: pathlib.Path,
    model,
    losses,
    optimizer,
    seed,
    modes,
    sources,
    train_data,
    validation_data,
    augment,
    batch_norm,
    *,
    main: bool,
    resume,
    overwrite: bool,
) -> str:
    """The run id of this fit in ``model_dir``: the directory prepared and claimed (``fusefn.train.run_dir``)."""
    extra = {
        "augment": None if augment is None else run_config_part(augment),
        "batch_norm": run_config_part(batch_norm),
    }
    config = run_config(
        model,
        losses,
        optimizer,
        rng=Rng(seed),
        metrics=modes,
        best=sources,
        train_data=train_data,
        validation_data=validation_data,
        extra=extra,
    )
    if main:
        _prepare(model_dir)
        warn_if_unportable(model)
    record = claim_run_dir(model_dir, config, resume=resume, overwrite=overwrite, write=main)
    if main:
        write_json_atomic(model_dir / "model.json", to_config(model))
    return record["run_id"]


def _resumed(model_dir: pathlib.Path, resume, model, optimizer, device) -> TrainState | None:
    """The state to resume from (``None``: start fresh)."""
    if resume is None:
        return None
    path = checkpoint_path(model_dir, resume)
    if not path.is_file():
        if resume == "last":
            return None
        raise CheckpointError(f"cannot resume: checkpoint {path} not found")
    payload = load_checkpoint(path, device=device)
    for what, obj in (("model", model), ("optimizer", optimizer)):
        saved = payload.get(f"{what}_fingerprint")
        if saved is not None and saved != fingerprint(obj):
            diff = config_diff(payload.get(f"{what}_config"), to_config(obj))
            raise CheckpointError(
                f"cannot resume from {path}: it was saved with another {what} config; differing fields: "
                + "; ".join(diff[:8])
            )
    state = payload["state"]
    _log.info("resuming from %s (epoch %d, step %d)", path, state.epoch, state.step)
    return state


def _plateau(plateau, state: TrainState, results: Mapping) -> dict:
    """The plateau reducer's state and learning-rate scale after one epoch."""
    if plateau is None:
        return {}
    sched = state.scheduler_state if state.scheduler_state is not None else plateau.init()
    sched = plateau.update(sched, epoch_value(results, plateau.source))
    return {"scheduler_state": sched, "lr_scale": sched["scale"]}


def _end_epoch(
    run: RunContext, cbs: Sequence[Callback], res: Mapping, improved, epoch_s: float, wait_s: float, show: bool = False
) -> bool:
    """Timings, the epoch's log and the callbacks; whether one asked to stop (the same answer on every rank)."""
    epoch = res["epoch"]
    run.timings = {"epoch_s": epoch_s, "data_wait_s": wait_s, "history_s": [*run.timings.get("history_s", []), epoch_s]}
    if dist_.is_main():
        marks = ", ".join(f"best {s.source}" for s in improved)
        tail = f"; {marks}" if marks else ""
        _log.info("epoch %d/%d (%.1f s%s)\n%s", epoch, run.epochs, epoch_s, tail, summary_table(res))
        if show and not (_log.isEnabledFor(logging.INFO) and _log.hasHandlers()):
            # nobody shows the logged table: one line on stderr, so a plain script sees its run progress
            tqdm.write(epoch_line(res, run.epochs, epoch_s, improved), file=sys.stderr)
    stop = False
    for cb in cbs:
        stop = bool(cb.on_epoch_end(run, epoch, res)) or stop
    return dist_.broadcast_object(stop)


def epoch_line(res: Mapping, epochs: int, epoch_s: float, improved=()) -> str:
    """One line of an epoch's results: its total losses and its metrics, per mode, and the bests it set.

    >>> epoch_line({"epoch": 2, "train": {"losses": {"total_loss": 0.5}, "metrics": {"auc": {"macro": 0.9}}},
    ...             "validation": {"losses": {"total_loss": 0.61}, "metrics": {}}}, 5, 1.25)
    'epoch 2/5 (1.2 s)  train loss 0.5000 auc.macro 0.9000 | validation loss 0.6100'
    """
    parts = []
    for mode in ("train", "validation"):
        sub = res.get(mode)
        if not sub:
            continue
        words = [mode, "loss", _fmt(nd.get(sub, keys.TOTAL_LOSS, default=None))]
        flat = nd.flatten(sub.get("metrics") or {})
        words += [f"{k} {_fmt(v)}" for k, v in list(flat.items())[:8] if isinstance(v, (int, float))]
        parts.append(" ".join(words))
    best = "; best " + ", ".join(s.source for s in improved) if improved else ""
    return f"epoch {res['epoch']}/{epochs} ({epoch_s:.1f} s)  " + " | ".join(parts) + best


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@contextlib.contextmanager
def _callbacks(cbs: Sequence[Callback], run: RunContext) -> Iterator[None]:
    for cb in cbs:
        cb.on_fit_start(run)
    try:
        yield
    finally:
        for cb in cbs:
            cb.on_fit_end(run)


@contextlib.contextmanager
def _naming_last_checkpoint(model_dir: pathlib.Path) -> Iterator[None]:
    """A non-finite loss or invalid target error that also names the last good checkpoint."""
    try:
        yield
    except (NonFiniteLossError, InvalidTargetError) as e:
        last = model_dir / "checkpoints" / "last.pt"
        tail = f"; last good checkpoint: {last if last.exists() else 'none'}"
        if isinstance(e, InvalidTargetError):
            raise e.at(e.step, tail) from e.__cause__
        raise NonFiniteLossError(f"{e}{tail}") from None


def _bar(total, desc: str, show: bool, initial: int = 0):
    """A tqdm bar when ``show`` (else a context that gives ``None``)."""
    if not show:
        return contextlib.nullcontext()
    total = None if total is None else total + initial
    return tqdm(total=total, initial=initial, desc=desc, leave=False, unit="batch")


class _Timed:
    """``batches`` (``count`` of them) counting the time spent waiting for the next one (``wait_s``)."""

    def __init__(self, batches: Iterable, count: int | None):
        self.it, self.count, self.wait_s = iter(batches), count, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.wait_s += time.perf_counter() - t


class _InterruptFlag:
    """Defers Ctrl-C to the next batch boundary, so a checkpoint is never taken mid-update."""

    def __init__(self):
        self.raised = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def is_set(self) -> bool:
        return self.raised

    def _handler(self, signum, frame):
        if self.raised:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
