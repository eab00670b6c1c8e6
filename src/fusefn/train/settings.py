"""The settings records of ``fit``: how batches are made, how the step runs, which checkpoints are kept.

Each is a frozen record validated at construction, so a bad value fails before any
training starts, naming the record and the field.

>>> from fusefn.train import CheckpointRule, LoaderSettings, StepSettings
>>> LoaderSettings(batch_size=16).workers
0
>>> StepSettings(precision="fp8")
Traceback (most recent call last):
...
fusefn.errors.ConfigError: StepSettings.precision must be one of ('auto', 'fp32', 'bf16', 'fp16'), got 'fp8'
>>> CheckpointRule(start_saving_epochs=2, every=2).names(4, ())
['epoch_4', 'last']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from fusefn import keys
from fusefn import validators as v
from fusefn.core import record
from fusefn.train._compile import COMPILE_MODES, MEMORY_FORMATS, PRECISIONS
from fusefn.train.checkpoint import BestEpochSource, best_name, should_save_epoch
from fusefn.train.ema import EMA

__all__ = ["LoaderSettings", "StepSettings", "CheckpointRule"]


@record
class LoaderSettings:
    """How ``fit`` batches a map-style dataset (see :func:`fusefn.train.epoch_batches`).

    Fields:
        batch_size: samples per batch (per rank under torchrun).
        workers: DataLoader worker processes.
        shuffle: the seeded shuffle of every training epoch (``Rng(seed).child("shuffle", epoch)``).
        drop_last: leave out a last training batch smaller than ``batch_size``.
        collate: ``samples -> batch_dict``; default :func:`fusefn.train.default_collate`.
        batch_sampler: yields the index batches of the training epochs instead of the seeded
            shuffle (e.g. ``fusefn.data.BalancedBatchSampler``).
    """

    batch_size: int = attrs.field(default=32, validator=v.positive_int)
    workers: int = attrs.field(default=0, validator=v.non_negative_int)
    shuffle: bool = attrs.field(default=True, validator=v.instance_of(bool))
    drop_last: bool = attrs.field(default=False, validator=v.instance_of(bool))
    collate: Callable | None = attrs.field(default=None, validator=v.optional(v.is_callable), eq=False)
    batch_sampler: object = attrs.field(default=None, eq=False)


@record
class StepSettings:
    """How the train and eval steps run (see :func:`fusefn.train.make_train_step`).

    Fields:
        compile: ``torch.compile`` the whole step (augmentation, model, losses, optimizer update) into one
            graph: ``True`` (= ``"default"``), ``"reduce-overhead"`` (CUDA graphs), ``"max-autotune"``,
            ``"max-autotune-no-cudagraphs"``; ``"partial"`` allows graph breaks (docs/train.md).
        precision: ``auto`` (bf16 autocast on a CUDA device with bf16, else fp32), ``fp32``, ``bf16``
            (autocast) or ``fp16`` (autocast + dynamic loss scaling).
        accumulate: mini-batches per optimizer update (their gradients are averaged).
        memory_format: ``channels_last`` puts 4-d/5-d inputs and weights in channels-last layout.
        prefetch: copy the next batch to the device while the step runs (pinned memory, a side CUDA stream).
        cudnn_benchmark: let cuDNN time its convolution algorithms once (CUDA only).
        ema: an :class:`~fusefn.train.EMA` of the weights, updated in the train step; validation, the
            ``best_*`` checkpoints and ``infer`` then use the averaged weights (``None``: no average).
    """

    compile: bool | str = attrs.field(default=False, validator=v.in_((False, True, *COMPILE_MODES)))
    precision: str = attrs.field(default="auto", validator=v.in_(PRECISIONS))
    accumulate: int = attrs.field(default=1, validator=v.positive_int)
    memory_format: str = attrs.field(default="contiguous", validator=v.in_(MEMORY_FORMATS))
    prefetch: bool = attrs.field(default=True, validator=v.instance_of(bool))
    cudnn_benchmark: bool = attrs.field(default=True, validator=v.instance_of(bool))
    ema: EMA | None = attrs.field(default=None, validator=v.optional(v.instance_of(EMA)))

    def train_kwargs(self) -> dict:
        """The keyword arguments of :func:`~fusefn.train.make_train_step` these settings give."""
        return {
            "compile": self.compile,
            "precision": self.precision,
            "accumulate": self.accumulate,
            "memory_format": self.memory_format,
            "cudnn_benchmark": self.cudnn_benchmark,
            "ema": self.ema,
        }

    def eval_kwargs(self) -> dict:
        """The keyword arguments of :func:`~fusefn.train.make_eval_step` these settings give."""
        return {"compile": self.compile, "precision": self.precision, "memory_format": self.memory_format}


def _sources(value) -> tuple | None:
    if value is None or isinstance(value, BestEpochSource):
        return None if value is None else (value,)
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


@record
class CheckpointRule:
    """Which checkpoints ``fit`` writes under ``<model_dir>/checkpoints``.

    Fields:
        best: the :class:`BestEpochSource` (or several) whose best epochs get a ``best_<source>.pt``;
            ``None``: the validation total loss (the train total loss without validation data), minimised.
        start_saving_epochs, every: ``epoch_<n>.pt`` for ``n >= start_saving_epochs`` every ``every``
            epochs (none when ``start_saving_epochs`` is ``None``).
        durable: fsync every checkpoint (survives a power loss; checkpoints are atomic either way,
            so a killed process never leaves half a file).
    """

    best: tuple | None = attrs.field(
        default=None,
        converter=_sources,
        validator=v.optional(v.and_(v.min_len(1), v.deep_iterable(v.instance_of(BestEpochSource)))),
    )
    start_saving_epochs: int | None = attrs.field(default=None, validator=v.optional(v.non_negative_int))
    every: int = attrs.field(default=1, validator=v.positive_int)
    durable: bool = attrs.field(default=False, validator=v.instance_of(bool))

    def sources(self, validation: bool) -> tuple[BestEpochSource, ...]:
        """The best-epoch sources, the default resolved for a run with (or without) ``validation`` data."""
        if self.best is not None:
            return self.best
        mode = "validation" if validation else "train"
        return (BestEpochSource(source=f"{mode}.{keys.TOTAL_LOSS}", optimization="min"),)

    def names(self, epoch: int, improved: Sequence[BestEpochSource]) -> list[str]:
        """The checkpoint names of ``epoch``: its ``best_*`` (the sources it ``improved``), ``epoch_<n>``, ``last``.

        ``last`` comes last: written after the others, a resume never skips a best.
        """
        names = [best_name(src) for src in improved]
        if should_save_epoch(epoch, self.start_saving_epochs, self.every):
            names.append(f"epoch_{epoch}")
        return [*names, "last"]
