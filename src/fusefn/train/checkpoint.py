"""Checkpoints: the whole TrainState plus the model/optimizer config, written atomically.

Layout under ``model_dir``::

    model.json                 the model record as config (fusefn.core.to_config), so infer can rebuild it
    checkpoints/last.pt        after every epoch (and on Ctrl-C)
    checkpoints/best_<source>.pt   when the epoch is the best so far for that source
    checkpoints/epoch_<n>.pt   when n >= start_saving_epochs and (n - start) % gap == 0

Every file is written to a temporary name in the same directory, flushed to disk,
then renamed over the old one, so a crash or a full disk leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from fusefn import nd
from fusefn._atomic import atomic_path
from fusefn.core import fingerprint, from_config, record, to_config
from fusefn.errors import ConfigError, FusefnError
from fusefn.train.state import TrainState, tree_to

__all__ = [
    "BestEpochSource",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_path",
    "best_name",
    "is_better",
    "should_save_epoch",
    "write_json_atomic",
    "config_diff",
    "FORMAT",
]

FORMAT = "fusefn-checkpoint/1"


class CheckpointError(FusefnError):
    """A checkpoint is missing, unreadable, or belongs to another configuration."""


@record
class BestEpochSource:
    """How to pick the best epoch: a key of ``epoch_results`` and a direction.

    ``source`` is a dotted key such as ``"validation.metrics.auc"``; ``optimization``
    ``max`` or ``min``; ``on_equal_values`` ``better`` (a tie replaces the best) or ``worse``.
    """

    source: str
    optimization: str = attrs.field(default="max", validator=attrs.validators.in_(("max", "min")))
    on_equal_values: str = attrs.field(default="better", validator=attrs.validators.in_(("better", "worse")))

    def __attrs_post_init__(self):
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"BestEpochSource.source must be a dotted key, got {self.source!r}")


def best_name(source: BestEpochSource | str) -> str:
    """The checkpoint name for a best-epoch source: ``best_<source>``."""
    key = source.source if isinstance(source, BestEpochSource) else source
    return "best_" + key.replace("/", "_")


def is_better(value: float, best: float | None, src: BestEpochSource) -> bool:
    """Whether ``value`` replaces ``best`` under ``src``'s rules (NaN never does).

    >>> s = BestEpochSource(source="validation.metrics.auc", optimization="max", on_equal_values="worse")
    >>> is_better(0.9, None, s), is_better(0.9, 0.9, s), is_better(0.91, 0.9, s)
    (True, False, True)
    """
    if value != value:  # NaN
        return False
    if best is None or best != best:
        return True
    if value == best:
        return src.on_equal_values == "better"
    return value > best if src.optimization == "max" else value < best


def should_save_epoch(n: int, start_saving_epochs: int | None, gap_between_saving_epochs: int) -> bool:
    """FuseMedML's rule for ``epoch_<n>`` checkpoints.

    >>> [n for n in range(10) if should_save_epoch(n, 4, 2)]
    [4, 6, 8]
    """
    if start_saving_epochs is None or gap_between_saving_epochs < 1:
        return False
    return n >= start_saving_epochs and (n - start_saving_epochs) % gap_between_saving_epochs == 0


def checkpoint_path(model_dir: str | os.PathLike, which: str | int | os.PathLike = "last") -> pathlib.Path:
    """The file of checkpoint ``which``: ``last``, ``best`` (the first best_*), ``best_<source>``, an epoch int, a path."""
    model_dir = pathlib.Path(model_dir)
    ckdir = model_dir / "checkpoints"
    if isinstance(which, int) and not isinstance(which, bool):
        return ckdir / f"epoch_{which}.pt"
    if isinstance(which, os.PathLike) or (isinstance(which, str) and ("/" in which or which.endswith(".pt"))):
        return pathlib.Path(which)
    if which == "best":
        found = sorted(ckdir.glob("best_*.pt")) if ckdir.is_dir() else []
        if not found:
            raise CheckpointError(
                f"no best checkpoint in {ckdir}: train first (fit writes best_<source>.pt), or pass checkpoint='last'"
            )
        return found[0]
    return ckdir / f"{which}.pt"


def _atomic_write(path: pathlib.Path, write, durable: bool = True) -> None:
    """Write through ``write(file)`` atomically (see :mod:`fusefn._atomic`); ``durable`` fsyncs it."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    blob = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True).encode()
    _atomic_write(pathlib.Path(path), lambda f: f.write(blob))


def _state_dict(state: TrainState) -> dict:
    return {f.name: getattr(state, f.name) for f in attrs.fields(TrainState)}


def save_checkpoint(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    state: TrainState,
    *,
    model=None,
    optimizer=None,
    extra=None,
    durable: bool = False,
) -> None:
    """Write ``state`` (+ the model/optimizer config and fingerprints) to ``path`` atomically.

    ``path`` may be several paths (e.g. ``best_…`` and ``last`` of one epoch): the state
    is serialised once and written to each. ``durable`` fsyncs each file (power-loss safe).
    Raises CheckpointError naming the path when the disk is full or not writable;
    the previous file at that path stays intact.
    """
    paths = [pathlib.Path(path)] if isinstance(path, (str, os.PathLike)) else [pathlib.Path(p) for p in path]
    payload = {
        "format": FORMAT,
        "state": tree_to(_state_dict(state), "cpu"),
        "model_config": to_config(model) if model is not None else None,
        "optimizer_config": to_config(optimizer) if optimizer is not None else None,
        "model_fingerprint": fingerprint(model) if model is not None else None,
        "optimizer_fingerprint": fingerprint(optimizer) if optimizer is not None else None,
        "extra": extra or {},
    }
    target = paths[0] if paths else None
    try:
        buf = io.BytesIO()
        torch.save(payload, buf)
        blob = buf.getbuffer()
        for target in paths:
            _atomic_write(target, lambda f: f.write(blob), durable=durable)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {target}: {e.strerror or e}; the previous one is kept") from e


def load_checkpoint(path: str | os.PathLike, *, device="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`: a dict with ``state`` (a TrainState) and configs."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; train first or point to an existing checkpoint")
    try:
        # our own file holds Python objects (metric states, history): it is not loaded weights-only
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fusefn checkpoint")
    fields = {f.name for f in attrs.fields(TrainState)}
    raw = {k: v for k, v in payload["state"].items() if k in fields}
    raw = tree_to(raw, device)
    out = dict(payload)
    out["state"] = TrainState(**raw)
    return out


def rebuild_model(payload: Mapping):
    """The model record stored in a checkpoint payload."""
    if payload.get("model_config") is None:
        raise CheckpointError("the checkpoint holds no model config; it was saved without model=")
    return from_config(payload["model_config"])


def config_diff(a: Any, b: Any) -> list[str]:
    """Dotted fields whose values differ between two configs (records or their to_config form)."""
    fa = nd.flatten(_plain(to_config(a) if not isinstance(a, (dict, type(None))) else a))
    fb = nd.flatten(_plain(to_config(b) if not isinstance(b, (dict, type(None))) else b))
    keys = sorted(set(fa) | set(fb))
    return [f"{k}: {fa.get(k, '<absent>')!r} != {fb.get(k, '<absent>')!r}" for k in keys if fa.get(k) != fb.get(k)]


def _plain(cfg: Any) -> Any:
    """Config with tuples/lists as index-keyed dicts, so flatten names every leaf."""
    if isinstance(cfg, dict):
        if "__tuple__" in cfg and len(cfg) == 1:
            return _plain(cfg["__tuple__"])
        return {str(k).replace(".", "_"): _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return {str(i): _plain(v) for i, v in enumerate(cfg)} or {"_": "[]"}
    return cfg
