"""The three phases as functions a recipe calls: train (``fit``), infer, and the pieces they share.

Each takes the :class:`~fusefn.recipe.Run` first and fills in what every recipe
passes the same way: the run's seed, device, compile flag and debug limits, the
collate function, the CSV of per-epoch metrics, the paths under ``--out``; and what a
run shows while it works: progress bars on a terminal, one line per epoch with the time left.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from fusefn import keys, nd
from fusefn.core import Rng, record
from fusefn.recipe.run import RecipeInputError, Run

__all__ = [
    "dataset",
    "build",
    "fit",
    "infer",
    "check_trained",
    "per_fold_head",
    "with_folds",
    "classification_metrics",
    "CVTask",
    "EpochLine",
    "eta_text",
]


def _terminal() -> bool:
    return sys.stderr.isatty()


def dataset(source, static: Callable, *, cache_root: str | os.PathLike | None = None):
    """A :class:`fusefn.data.Dataset` of ``source`` through ``static``, cached (HDF5) under ``cache_root`` when given.

    Not built yet: :func:`build` it (a dataset without a cache runs ``static`` once per sample there).
    """
    from fusefn.data import Dataset, H5Cache

    if cache_root is None:
        return Dataset(source=source, static=static, eager=True)
    return Dataset(source=source, cache=H5Cache(root=pathlib.Path(cache_root), pipeline=static, progress=False))


def build(*datasets, workers: int | None = None, progress: bool | None = None) -> list:
    """Each dataset built (its cache filled); in a process group rank 0 builds first, the others then read it.

    ``progress``: a bar per cache build; default: when stderr is a terminal.

    It uses the run's process group and never joins one: :meth:`Recipe.execute` holds it around the phases
    every rank runs (``Recipe.all_ranks``) and leaves it before rank 0 goes on alone, where joining again
    would wait for ranks that have returned. A script under ``torchrun`` holds
    ``fusefn.train.process_group()`` itself.
    """
    from fusefn.train import distributed

    progress = _terminal() if progress is None else progress
    if distributed.world_size() == 1:  # no group, or rank 0 alone after the run's group was left
        return [d.build(workers=workers, progress=progress) for d in datasets]
    built = [d.build(workers=workers, progress=progress) for d in datasets] if distributed.rank() == 0 else None
    distributed.barrier()
    return built if built is not None else [d.build(workers=workers, progress=progress) for d in datasets]


def with_folds(source, n_folds: int, *, rng: Rng, stratify: str | None = "label", max_samples: int | None = None):
    """``source`` with a (stratified) ``fold`` column; with ``max_samples`` the first rows of each fold only."""
    src = source.with_folds(n_folds, stratify=stratify, rng=rng)
    return src if max_samples is None else per_fold_head(src, max(max_samples // n_folds, 4))


def per_fold_head(source, per_fold: int):
    """The first ``per_fold`` rows of each fold of ``source`` (every fold stays present in a smoke run)."""
    from fusefn.data import DataSource

    frame = source.frame.group_by("fold", maintain_order=True).head(per_fold).sort(source.id_column)
    return DataSource.from_frame(frame, id_column=source.id_column, name=source.name)


def classification_metrics(
    probs: str = keys.probs(), target: str = keys.LABEL, *, class_names: Sequence[str] | None = None
) -> dict:
    """``{"auc": AUCROC, "accuracy": Accuracy}`` of the probabilities ``probs`` against ``target``."""
    from fusefn.metrics import AUCROC, Accuracy

    return {
        "auc": AUCROC(pred=probs, target=target, class_names=class_names),
        "accuracy": Accuracy(pred=probs, target=target),
    }


def fit(
    run: Run,
    model,
    losses: Mapping,
    optimizer,
    train_data,
    validation_data=None,
    *,
    epochs: int,
    model_dir: str | os.PathLike | None = None,
    metrics: Mapping | None = None,
    augment=None,
    best=None,
    batch_size: int = 32,
    workers: int = 0,
    batch_sampler=None,
    callbacks: Sequence = (),
    progress: bool | None = None,
    batch_norm=...,
):
    """:func:`fusefn.train.fit` with the run's seed, device, compile flag and debug limits.

    Args:
        epochs: capped by the debug mode (``--debug fast``: 2).
        model_dir: default ``run.model_dir``.
        best: a ``BestEpochSource`` (or several) that picks the ``best`` checkpoint.
        batch_size, workers, batch_sampler: the loader settings (``fusefn.data.collate`` batches).
        callbacks: run after the one writing ``metrics.csv`` (:class:`fusefn.train.CsvMetrics`) and the
            one logging each epoch's line with the time left (:class:`EpochLine`).
        progress: in-epoch progress bars; default: when stderr is a terminal (elsewhere the epoch lines
            are the progress: a bar redrawn into a log file is noise).
        batch_norm: a ``train.BatchNormStats`` (how many training samples re-estimate the batch-norm
            statistics after each epoch) or ``None`` (keep the running averages); default ``train.fit``'s.

    ``model_dir`` holding another run's checkpoints is refused unless ``run.force`` (``--force``:
    they are replaced) or ``run.resume`` (``--resume``: that run goes on from its last checkpoint).
    """
    import torch

    from fusefn import train
    from fusefn.data import collate

    loader = train.LoaderSettings(
        batch_size=batch_size, workers=run.limit(workers, "num_workers"), collate=collate, batch_sampler=batch_sampler
    )
    checkpoints = train.CheckpointRule() if best is None else train.CheckpointRule(best=best)
    with torch.autograd.set_detect_anomaly(run.debug.detect_anomaly):
        return train.fit(
            model,
            losses,
            optimizer,
            train_data,
            validation_data,
            model_dir=pathlib.Path(model_dir or run.model_dir),
            epochs=run.limit(epochs, "max_epochs"),
            metrics=metrics,
            loader=loader,
            step=train.StepSettings(compile=run.compile),
            checkpoints=checkpoints,
            augment=augment,
            seed=run.rng.seed,
            device=run.device,
            callbacks=(train.CsvMetrics(), EpochLine(best=_sources(best), logger=run.logger.name), *callbacks),
            progress=_terminal() if progress is None else progress,
            resume="last" if run.resume else None,
            overwrite=run.force,
            **({} if batch_norm is ... else {"batch_norm": batch_norm}),
        )


def _sources(best) -> tuple:
    if best is None:
        return ((f"validation.{keys.TOTAL_LOSS}", "min"),)
    many = best if isinstance(best, (list, tuple)) else (best,)
    return tuple((b.source, b.optimization) for b in many)


def eta_text(seconds: float) -> str:
    """A duration as a person reads it on a progress line.

    >>> eta_text(42.4), eta_text(200), eta_text(7300)
    ('42 s', '3 min 20 s', '2 h 01 min')
    """
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _fmt(value) -> str:
    return "nan" if value is None else f"{value:.4f}"


def _mode_words(sub: Mapping) -> list[str]:
    """A mode's total loss and its metrics; per-class entries give way to their macro mean (ten AUCs crowd a line)."""
    words = ["loss", _fmt(nd.get(sub, keys.TOTAL_LOSS, default=None))]
    flat = {k: v for k, v in nd.flatten(sub.get("metrics") or {}).items() if isinstance(v, (int, float))}
    head = {k: k.rpartition(".") for k in flat}
    shown = [k for k, (h, _, t) in head.items() if not (h and t != "macro" and f"{h}.macro" in flat)]
    return words + [f"{k} {_fmt(flat[k])}" for k in shown[:5]]


@record
class EpochLine:
    """A :func:`fusefn.train.fit` callback: one INFO line per epoch with its results, the best so far and the time left.

    ``best`` is ``((source, "max" | "min"), ...)``: the line says when the epoch is the best yet. A recipe's
    console shows this line (fit's full table goes to the log files); on a terminal the bars show the epoch.

    >>> import logging, types
    >>> res = {"epoch": 2, "train": {"losses": {"total_loss": 0.5}, "metrics": {}},
    ...        "validation": {"losses": {"total_loss": 0.4}, "metrics": {"auc": 0.91}}}
    >>> run = types.SimpleNamespace(epochs=10, timings={"epoch_s": 4.0, "history_s": [6.0, 4.0]},
    ...                             state=types.SimpleNamespace(history=({"validation": {"metrics": {"auc": 0.9}}}, res)))
    >>> EpochLine(best=(("validation.metrics.auc", "max"),)).line(run, 2, res)
    'epoch 2/10 (4.0 s, about 40 s left)  train loss 0.5000 | validation loss 0.4000 auc 0.9100; best validation.metrics.auc'
    """

    best: tuple = attrs.field(default=(), converter=tuple)
    logger: str = "fusefn.recipes"

    def reads(self) -> tuple[str, ...]:
        return ()

    def on_fit_start(self, run) -> None:
        return None

    def on_fit_end(self, run) -> None:
        return None

    def line(self, run, epoch: int, results: Mapping) -> str:
        done = [d for d in run.timings.get("history_s", []) if d] or [run.timings.get("epoch_s") or 0.0]
        left = max(run.epochs - epoch, 0) * sum(done) / len(done)
        parts = [
            f"{mode} " + " ".join(_mode_words(results[mode])) for mode in ("train", "validation") if results.get(mode)
        ]
        head = f"epoch {epoch}/{run.epochs} ({run.timings.get('epoch_s') or 0.0:.1f} s, about {eta_text(left)} left)"
        improved = [s for s, how in self.best if self._is_best(run.state.history, s, how)]
        return f"{head}  " + " | ".join(parts) + ("; best " + ", ".join(improved) if improved else "")

    @staticmethod
    def _is_best(history, source: str, how: str) -> bool:
        values = [nd.get(h, source, default=None) for h in history]
        values = [v if isinstance(v, (int, float)) and v == v else None for v in values]
        if not values or values[-1] is None:
            return False
        others = [v for v in values[:-1] if v is not None]
        return not others or (values[-1] >= max(others) if how == "max" else values[-1] <= min(others))

    def on_epoch_end(self, run, epoch: int, results: dict) -> None:
        logging.getLogger(self.logger).info("%s", self.line(run, epoch, results))


def check_trained(model_dir: str | os.PathLike) -> None:
    """A one-line :class:`RecipeInputError` when ``train`` has not written ``model_dir`` yet."""
    from fusefn import train

    try:
        path = train.checkpoint_path(model_dir, "best")
    except Exception:
        path = None
    if path is None or not pathlib.Path(path).is_file():
        raise RecipeInputError(f"no trained model in {model_dir}: run `train` first (or `all`) with the same --out")


def infer(
    run: Run,
    data,
    columns: Mapping[str, str],
    *,
    model_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    output_file: str | os.PathLike | None = None,
    batch_size: int = 128,
    sliding_window=None,
    postprocess=None,
    nifti_dir: str | os.PathLike | None = None,
):
    """:func:`fusefn.train.infer` of the best checkpoint(s) of ``model_dir`` (default ``run.model_dir``).

    Several ``model_dir`` are an ensemble. Writes ``output_file`` (default ``run.infer_file``)
    with ``sample_id`` and ``{column: key}`` of ``columns``; returns the frame. Volumes: with
    ``sliding_window`` (a :class:`fusefn.train.SlidingWindowSettings`) each case is predicted
    window by window, ``postprocess`` runs on its label map, and ``nifti_dir`` receives one mask
    per case on the grid its scan was read on (docs/segmentation3d.md).
    """
    from fusefn import train
    from fusefn.data import collate

    model_dir = run.model_dir if model_dir is None else model_dir
    dirs = [model_dir] if isinstance(model_dir, (str, os.PathLike)) else list(model_dir)
    for d in dirs:
        check_trained(d)
    return train.infer(
        model_dir,
        data,
        output_file=pathlib.Path(output_file or run.infer_file),
        output_columns=dict(columns) if columns else None,
        checkpoint="best",
        batch_size=batch_size,
        collate_fn=collate,
        device=run.device,
        **(
            {}
            if sliding_window is None
            else {"sliding_window": sliding_window, "postprocess": postprocess, "nifti_dir": nifti_dir}
        ),
    )


@record
class CVTask:
    """What the ``cross_validation`` recipe needs from a recipe: the pool the folds split, a held-out set, training.

    A classifier gives the first five fields: its folds are stratified by ``label``, its models infer
    ``probs`` and are scored by ROC AUC. Any other task (a segmentation) says how its folds are drawn,
    how a model (or the fold models' ensemble) predicts and how a prediction file is scored.

    Args:
        pool: a DataSource the folds split.
        held_out: the DataSource every fold model (and their ensemble) is tested on.
        dataset: ``DataSource -> Dataset`` (the recipe's static pipeline, not built).
        fit: ``(run, train_dataset, validation_dataset, model_dir) -> Any``, the recipe's training.
        output_columns: ``{"probs": key, "label": key}`` for inference (unused with ``infer``).
        stratify: the column of ``pool`` the folds are stratified by; ``None``: not stratified.
        infer: ``(run, built_dataset, model_dir_or_dirs, output_file) -> frame``: inference by one fold's
            model, or by the ensemble of all (a list of directories); default
            ``recipe.infer(run, data, output_columns, model_dir=, output_file=)``.
        score: ``(run, output_file, source) -> {"value", "lower", "upper", ...}``: the score (with its 95 % CI)
            of the predictions ``infer`` wrote for ``source`` (a ``per_class`` ``{name: {"value", ...}}`` is
            reported for the ensemble too); default: ROC AUC of ``probs[:, 1]``.
        score_name: what ``score`` measures, as the report names it.

    ``run`` in each hook is the cross-validated recipe's run (its hyper-parameters); in ``score`` its
    ``hp["n_boot"]`` is cross_validation's ``--n-boot``.

    >>> task = CVTask(pool=None, held_out=None, dataset=list, fit=print, output_columns={})
    >>> task.stratify, task.infer, task.score_name
    ('label', None, 'ROC AUC')
    """

    pool: Any = attrs.field(eq=False)
    held_out: Any = attrs.field(eq=False)
    dataset: Callable = attrs.field(eq=False)
    fit: Callable = attrs.field(eq=False)
    output_columns: Mapping = attrs.field(eq=False)
    stratify: str | None = "label"
    infer: Callable | None = attrs.field(default=None, eq=False)
    score: Callable | None = attrs.field(default=None, eq=False)
    score_name: str = "ROC AUC"
