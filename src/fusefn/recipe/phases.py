"""The three phases as functions a recipe calls: train (``fit``), infer, and the pieces they share.

Each takes the :class:`~fusefn.recipe.Run` first and fills in what every recipe
passes the same way: the run's seed, device, compile flag and debug limits, the
collate function, the CSV of per-epoch metrics, the paths under ``--out``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from fusefn import keys
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
]


def dataset(source, static: Callable, *, cache_root: str | os.PathLike | None = None):
    """A :class:`fusefn.data.Dataset` of ``source`` through ``static``, cached (HDF5) under ``cache_root`` when given.

    Not built yet: :func:`build` it (a dataset without a cache runs ``static`` once per sample there).
    """
    from fusefn.data import Dataset, H5Cache

    if cache_root is None:
        return Dataset(source=source, static=static, eager=True)
    return Dataset(source=source, cache=H5Cache(root=pathlib.Path(cache_root), pipeline=static, progress=False))


def build(*datasets, workers: int | None = None, progress: bool = False) -> list:
    """Each dataset built (its cache filled); under ``torchrun`` rank 0 builds first, the others then read it."""
    from fusefn.train import distributed

    distributed.init_process_group()
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
):
    """:func:`fusefn.train.fit` with the run's seed, device, compile flag and debug limits.

    Args:
        epochs: capped by the debug mode (``--debug fast``: 2).
        model_dir: default ``run.model_dir``.
        best: a ``BestEpochSource`` (or several) that picks the ``best`` checkpoint.
        batch_size, workers, batch_sampler: the loader settings (``fusefn.data.collate`` batches).
        callbacks: run after the one writing ``metrics.csv`` (:class:`fusefn.train.CsvMetrics`).
        progress: progress bars; default: when stderr is a terminal.

    ``model_dir`` holding another run's checkpoints is refused unless ``run.force`` (``--force``:
    they are replaced) or ``run.resume`` (``--resume``: that run goes on from its last checkpoint).
    """
    import sys

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
            callbacks=(train.CsvMetrics(), *callbacks),
            progress=sys.stderr.isatty() if progress is None else progress,
            resume="last" if run.resume else None,
            overwrite=run.force,
        )


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

    Args:
        pool: a DataSource with a ``label`` column (the folds are stratified by it).
        held_out: the DataSource every fold model (and their ensemble) is tested on.
        dataset: ``DataSource -> Dataset`` (the recipe's static pipeline, not built).
        fit: ``(run, train_dataset, validation_dataset, model_dir) -> Any``, the recipe's training.
        output_columns: ``{"probs": key, "label": key}`` for inference.
    """

    pool: Any = attrs.field(eq=False)
    held_out: Any = attrs.field(eq=False)
    dataset: Callable = attrs.field(eq=False)
    fit: Callable = attrs.field(eq=False)
    output_columns: Mapping = attrs.field(eq=False)
