"""Training engine: TrainState, the pure train/eval step, one epoch at a time, fit, callbacks, checkpoints, infer.

``fit`` is glued from public pieces a loop of your own can use too: :func:`init_state`,
:func:`make_train_step` / :func:`make_eval_step`, :func:`epoch_batches`,
:func:`train_epoch` / :func:`eval_epoch`, the :class:`BestEpochs` reducer and
:func:`save_checkpoint` (docs/train.md shows one).

>>> from fusefn import train
>>> train.BestEpochSource(source="validation.metrics.auc").optimization
'max'
"""

from fusefn.train import distributed
from fusefn.train._compile import COMPILE_MODES, MEMORY_FORMATS, GraphBreakError
from fusefn.train.batch_norm import BatchNormStats, has_batch_norm, recompute_batch_norm
from fusefn.train.batches import default_collate, epoch_batches, is_map_dataset
from fusefn.train.callbacks import Callback, CsvMetrics, EarlyStopping, RunContext, TensorBoard, TimeStats
from fusefn.train.checkpoint import (
    BestEpochs,
    BestEpochSource,
    CheckpointError,
    best_name,
    checkpoint_path,
    convert_checkpoint,
    is_better,
    load_checkpoint,
    save_checkpoint,
    should_save_epoch,
)
from fusefn.train.device import select_device
from fusefn.train.distributed import (
    destroy_process_group,
    init_process_group,
    is_main,
    process_group,
    rank,
    world_size,
)
from fusefn.train.ema import EMA
from fusefn.train.fit import fit
from fusefn.train.infer import infer
from fusefn.train.infer_volumes import SlidingWindowSettings
from fusefn.train.loading import load_ensemble, load_model
from fusefn.train.loop import EpochMeans, ValidationError, eval_epoch, summary_table, train_epoch
from fusefn.train.prefetch import device_batches
from fusefn.train.run_dir import RunDirError, read_run
from fusefn.train.settings import CheckpointRule, LoaderSettings, StepSettings
from fusefn.train.sliding_window import sliding_window
from fusefn.train.state import TrainState, init_state, tree_clone, tree_to
from fusefn.train.step import NonFiniteLossError, make_eval_step, make_train_step, total_loss

__all__ = [
    "EMA",
    "COMPILE_MODES",
    "MEMORY_FORMATS",
    "GraphBreakError",
    "device_batches",
    "BatchNormStats",
    "RunDirError",
    "has_batch_norm",
    "read_run",
    "recompute_batch_norm",
    "BestEpochSource",
    "BestEpochs",
    "Callback",
    "CheckpointError",
    "CheckpointRule",
    "CsvMetrics",
    "EarlyStopping",
    "EpochMeans",
    "LoaderSettings",
    "NonFiniteLossError",
    "RunContext",
    "StepSettings",
    "TensorBoard",
    "TimeStats",
    "TrainState",
    "ValidationError",
    "best_name",
    "checkpoint_path",
    "convert_checkpoint",
    "default_collate",
    "destroy_process_group",
    "distributed",
    "epoch_batches",
    "eval_epoch",
    "fit",
    "infer",
    "init_process_group",
    "init_state",
    "is_better",
    "is_main",
    "is_map_dataset",
    "load_checkpoint",
    "load_ensemble",
    "load_model",
    "make_eval_step",
    "make_train_step",
    "process_group",
    "rank",
    "save_checkpoint",
    "select_device",
    "should_save_epoch",
    "summary_table",
    "total_loss",
    "train_epoch",
    "tree_clone",
    "tree_to",
    "world_size",
    "SlidingWindowSettings",
    "sliding_window",
]
