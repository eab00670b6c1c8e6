"""Training engine: TrainState, the pure train/eval step, fit, callbacks, checkpoints, infer.

>>> from fusefn import train
>>> train.BestEpochSource(source="validation.metrics.auc").optimization
'max'
"""

from fusefn.train.callbacks import Callback, CsvMetrics, EarlyStopping, RunContext, TensorBoard, TimeStats
from fusefn.train.checkpoint import (
    BestEpochSource,
    CheckpointError,
    checkpoint_path,
    is_better,
    load_checkpoint,
    save_checkpoint,
    should_save_epoch,
)
from fusefn.train.device import select_device
from fusefn.train.distributed import init_process_group, is_main, rank, world_size
from fusefn.train.fit import epoch_batches, fit, summary_table
from fusefn.train.infer import infer, load_model
from fusefn.train.state import TrainState, init_state, tree_clone, tree_to
from fusefn.train.step import NonFiniteLossError, make_eval_step, make_train_step, total_loss

__all__ = [
    "BestEpochSource",
    "Callback",
    "CheckpointError",
    "CsvMetrics",
    "EarlyStopping",
    "NonFiniteLossError",
    "RunContext",
    "TensorBoard",
    "TimeStats",
    "TrainState",
    "checkpoint_path",
    "epoch_batches",
    "fit",
    "init_process_group",
    "infer",
    "init_state",
    "is_better",
    "is_main",
    "load_checkpoint",
    "load_model",
    "make_eval_step",
    "make_train_step",
    "rank",
    "save_checkpoint",
    "select_device",
    "should_save_epoch",
    "summary_table",
    "total_loss",
    "tree_clone",
    "tree_to",
    "world_size",
]
