"""Trained models back from their model directories: the one place a model is rebuilt from a checkpoint.

A checkpoint written by ``fit`` holds the model record as config next to its
:class:`~fusefn.train.TrainState`; :func:`load_model` rebuilds the record from that config
(or from ``model.json`` beside the checkpoints, for a file saved without ``model=``),
:func:`load_ensemble` puts several runs together as one :class:`~fusefn.models.Ensemble`.
``infer`` and user code go through these two.

A model directory may come from elsewhere, so neither runs code from it: the checkpoint is
loaded weights-only (:func:`~fusefn.train.load_checkpoint`) and the config rebuilds only
fusefn components and what ``allowed`` names (:func:`fusefn.from_config`): a model with a
record of your own (``Wrapper(module=my_project.Net)``) loads with ``allowed=["my_project"]``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

from fusefn.core import from_config
from fusefn.errors import ConfigError
from fusefn.models import Ensemble
from fusefn.models._record import main_references, unportable_message
from fusefn.train.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from fusefn.train.run_dir import check_checkpoint
from fusefn.train.state import TrainState

__all__ = ["load_model", "load_ensemble"]


def load_model(model_dir: str | os.PathLike, checkpoint="best", *, device="cpu", allowed=()) -> tuple:
    """``(model, state)`` from ``model_dir``: the record rebuilt from its config, the checkpoint's TrainState.

    Args:
        model_dir: a directory written by ``fit``.
        checkpoint: ``"best"``, ``"last"``, ``"best_<source>"``, an epoch number or a path.
        device: where the state's tensors go.
        allowed: what the config may name besides fusefn's components (``from_config(allowed=)``):
            module names, modules, or the classes and functions themselves.

    Raises:
        CheckpointError: no checkpoint, an unreadable one, one that holds pickled objects, or one left in
            ``model_dir`` by an earlier run (:class:`~fusefn.train.run_dir.RunDirError`).
        ConfigError: the config names something neither fusefn's nor ``allowed`` (saying how to allow it),
            or a class defined in the ``__main__`` script of the training process (saying how to fix it).
    """
    path = checkpoint_path(model_dir, checkpoint)
    payload = load_checkpoint(path, device=device)
    check_checkpoint(model_dir, path, payload.get("run_id"))
    cfg = payload.get("model_config")
    if cfg is None:
        cfg_file = pathlib.Path(model_dir) / "model.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{path} holds no model config and {cfg_file} is missing; cannot rebuild the model")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {cfg_file}: {e}") from None
        source = cfg_file
    else:
        source = path
    try:
        return from_config(cfg, allowed=allowed), payload["state"]
    except ConfigError as e:
        scripts = main_references(cfg)
        if scripts:
            raise ConfigError(f"cannot rebuild the model of {source}: {unportable_message(scripts)}") from None
        raise ConfigError(f"cannot rebuild the model of {source}: {e}") from None


def load_ensemble(
    model_dirs: Sequence[str | os.PathLike], checkpoint="best", *, device="cpu", allowed=()
) -> tuple[Ensemble, TrainState]:
    """``(ensemble, state)``: the trained runs of ``model_dirs`` as one :class:`~fusefn.models.Ensemble`.

    Member ``i`` is the model of ``model_dirs[i]`` at its ``checkpoint`` (see :func:`load_model`);
    ``state`` holds the members' parameters and buffers (``members.<i>.<name>``), ready for
    ``make_eval_step(ensemble)`` or ``fusefn.models.apply``. ``allowed`` as for :func:`load_model`.
    """
    dirs = [model_dirs] if isinstance(model_dirs, (str, os.PathLike)) else list(model_dirs)
    if not dirs:
        raise ConfigError("load_ensemble: model_dirs is empty; give the directories of the trained runs")
    members = []
    for d in dirs:
        model, state = load_model(d, checkpoint, device=device, allowed=allowed)
        members.append((model, *state.eval_weights()))  # the EMA weights where the run kept them
    ensemble, params, buffers = Ensemble.stack(members)
    return ensemble, TrainState(params=params, buffers=buffers)
