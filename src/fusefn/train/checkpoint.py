"""Checkpoints: the whole TrainState plus the model/optimizer config, written atomically.

Layout under ``model_dir``::

    model.json                 the model record as config (fusefn.core.to_config), so infer can rebuild it
    run.json                   the run's id and configuration (fusefn.train.run_dir); every checkpoint carries the id
    checkpoints/last.pt        after every epoch (and on Ctrl-C)
    checkpoints/best_<source>.pt   when the epoch is the best so far for that source
    checkpoints/epoch_<n>.pt   when n >= start_saving_epochs and (n - start) % gap == 0

Every file is written to a temporary name in the same directory, flushed to disk,
then renamed over the old one, so a crash or a full disk leaves the previous
checkpoint intact.

A file is ``{"format", "document", "tensors"}``: the tensors by name and one JSON string
for all the rest (history, metric states, best epochs, configs; see ``fusefn.train._codec``),
so ``torch.load(path, weights_only=True)`` reads it and loading never runs code from it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from fusefn import nd
from fusefn import validators as v
from fusefn._atomic import atomic_path
from fusefn.core import Rng, fingerprint, record, to_config
from fusefn.errors import ConfigError, FusefnError
from fusefn.train import _codec
from fusefn.train.state import TrainState, tree_to

__all__ = [
    "BestEpochSource",
    "BestEpochs",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "convert_checkpoint",
    "checkpoint_path",
    "best_name",
    "is_better",
    "epoch_value",
    "should_save_epoch",
    "write_json_atomic",
    "config_diff",
    "FORMAT",
    "RUN_FILE",
]

FORMAT = "fusefn-checkpoint/2"
_FORMAT_1 = "fusefn-checkpoint/1"  # the whole payload pickled: read when weights-only loading can, or trusted
_CONFIG_KEYS = ("model_config", "optimizer_config", "model_fingerprint", "optimizer_fingerprint", "run_id")
RUN_FILE = "run.json"  # the run record of a model_dir (fusefn.train.run_dir)
_log = logging.getLogger(__name__)


class CheckpointError(FusefnError):
    """A checkpoint is missing, unreadable, or belongs to another configuration."""


@record
class BestEpochSource:
    """How to pick the best epoch: a key of ``epoch_results`` and a direction.

    ``source`` is a dotted key such as ``"validation.metrics.auc"``; ``optimization``
    ``max`` or ``min``; ``on_equal_values`` ``better`` (a tie replaces the best) or ``worse``.
    """

    source: str = attrs.field(validator=v.key)
    optimization: str = attrs.field(default="max", validator=v.in_(("max", "min")))
    on_equal_values: str = attrs.field(default="better", validator=v.in_(("better", "worse")))


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


def epoch_value(results: Mapping, key: str) -> float:
    """The number at dotted ``key`` of one epoch's results; a ConfigError listing the keys there when it is not one.

    >>> epoch_value({"epoch": 1, "validation": {"metrics": {"auc": 0.75}}}, "validation.metrics.auc")
    0.75
    """
    value = nd.get(results, key, default=None)
    if value is None or isinstance(value, Mapping):
        flat = [k for k, x in nd.flatten(results).items() if isinstance(x, (int, float))]
        what = "is not a number" if isinstance(value, Mapping) else "is not in the epoch results"
        raise ConfigError(f"best epoch source {key!r} {what}; available: {', '.join(sorted(flat))}")
    return float(value)


def _as_sources(value) -> tuple:
    return (value,) if isinstance(value, BestEpochSource) else tuple(value)


@record
class BestEpochs:
    """Best-epoch tracking as a reducer over epoch results (:class:`fusefn.Reducer`).

    Its state is ``TrainState.best``: ``{source: {"value": float, "epoch": int}}``.
    ``update(best, epoch_results)`` folds in one epoch (its ``"epoch"`` entry names it);
    ``compute(best)`` is ``{source: best epoch}``; ``improved(before, after)`` the sources
    whose best the last update replaced (the ``best_<source>.pt`` files to write).

    >>> best = BestEpochs(sources=BestEpochSource(source="validation.metrics.auc"))
    >>> s1 = best.update(best.init(), {"epoch": 1, "validation": {"metrics": {"auc": 0.7}}})
    >>> s2 = best.update(s1, {"epoch": 2, "validation": {"metrics": {"auc": 0.6}}})
    >>> best.compute(s2), best.improved(s1, s2), [s.source for s in best.improved({}, s1)]
    ({'validation.metrics.auc': 1}, (), ['validation.metrics.auc'])
    """

    sources: tuple = attrs.field(
        converter=_as_sources, validator=v.and_(v.min_len(1), v.deep_iterable(v.instance_of(BestEpochSource)))
    )

    def init(self) -> dict:
        return {}

    def update(self, best: Mapping, results: Mapping) -> dict:
        """``best`` with the epoch of ``results`` where it is better (``is_better``) for a source."""
        out = dict(best)
        for src in self.sources:
            value = epoch_value(results, src.source)
            prev = out.get(src.source)
            if is_better(value, None if prev is None else prev["value"], src):
                out[src.source] = {"value": value, "epoch": results["epoch"]}
        return out

    def merge(self, a: Mapping, b: Mapping) -> dict:
        """The bests of two runs of epochs, ``b``'s after ``a``'s (as if ``b``'s epochs were folded in after)."""
        out = dict(a)
        for src in self.sources:
            later = b.get(src.source)
            if later is not None and is_better(later["value"], out.get(src.source, {}).get("value"), src):
                out[src.source] = later
        return out

    def compute(self, best: Mapping) -> dict:
        return {k: entry["epoch"] for k, entry in best.items()}

    def improved(self, before: Mapping, after: Mapping) -> tuple[BestEpochSource, ...]:
        """The sources whose best changed from ``before`` to ``after``."""
        return tuple(src for src in self.sources if after.get(src.source) != before.get(src.source))


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
        preferred = _run_best(model_dir)
        if preferred is not None and (ckdir / f"{preferred}.pt").is_file():
            return ckdir / f"{preferred}.pt"
        found = sorted(ckdir.glob("best_*.pt")) if ckdir.is_dir() else []
        if not found:
            raise CheckpointError(
                f"no best checkpoint in {ckdir}: train first (fit writes best_<source>.pt), or pass checkpoint='last'"
            )
        return found[0]
    return ckdir / f"{which}.pt"


def _run_best(model_dir: pathlib.Path) -> str | None:
    """``best_<source>`` of the run's first best-epoch source (from its run.json), if recorded."""
    try:
        sources = json.loads((model_dir / RUN_FILE).read_text())["config"]["best"]
        return best_name(sources[0]) if sources and isinstance(sources[0], str) else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _atomic_write(path: pathlib.Path, write, durable: bool = True) -> None:
    """Write through ``write(file)`` atomically (see :mod:`fusefn._atomic`); ``durable`` fsyncs it."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    blob = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True).encode()
    _atomic_write(pathlib.Path(path), lambda f: f.write(blob))


def _state_dict(state: TrainState) -> dict:
    # the run's Rng is stored as its seed int (the "seed" entry): the file needs no fusefn class to read
    out = {f.name: getattr(state, f.name) for f in attrs.fields(TrainState) if f.name != "rng"}
    out["seed"] = state.rng.seed
    return out


def _write(paths: list[pathlib.Path], doc: dict, tensors: dict, durable: bool) -> None:
    # tensors stay tensors; all else is one JSON string: torch.load(weights_only=True) reads the whole file
    payload = {"format": FORMAT, "document": _codec.dumps(doc), "tensors": tensors}
    target = paths[0] if paths else None
    try:
        buf = io.BytesIO()
        torch.save(payload, buf)
        blob = buf.getbuffer()
        for target in paths:
            _atomic_write(target, lambda f: f.write(blob), durable=durable)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {target}: {e.strerror or e}; the previous one is kept") from e


def _document(state_tree: dict, configs: Mapping, extra: Any) -> tuple[dict, dict]:
    """The JSON document and tensors of a checkpoint; a CheckpointError names a value only pickle could store."""
    try:
        state_doc, tensors = _codec.encode(state_tree, "state")
        extra_doc, extra_tensors = _codec.encode(extra or {}, "extra")
    except _codec.CodecError as e:
        raise CheckpointError(str(e)) from None
    tensors.update(extra_tensors)
    return {"state": state_doc, "extra": extra_doc, **configs}, tensors


def save_checkpoint(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    state: TrainState,
    *,
    model=None,
    optimizer=None,
    extra=None,
    durable: bool = False,
    run_id: str | None = None,
) -> None:
    """Write ``state`` (+ the model/optimizer config and fingerprints) to ``path`` atomically.

    ``path`` may be several paths (e.g. ``best_…`` and ``last`` of one epoch): the state
    is serialised once and written to each. ``durable`` fsyncs each file (power-loss safe).
    Tensors are stored as tensors; NumPy arrays as their bytes; everything else (history,
    metric states, best epochs, optimizer scalars, ``extra``) as JSON, so the file loads with
    ``torch.load(path, weights_only=True)``. ``run_id`` names the run of the model directory
    (:mod:`fusefn.train.run_dir`), so a checkpoint left by another run is never loaded as this one's.
    A value that only pickle could store (an arbitrary
    object in a metric state or ``extra``) is a CheckpointError naming where it is.
    Raises CheckpointError naming the path when the disk is full or not writable;
    the previous file at that path stays intact.
    """
    paths = [pathlib.Path(path)] if isinstance(path, (str, os.PathLike)) else [pathlib.Path(p) for p in path]
    configs = {
        "model_config": to_config(model) if model is not None else None,
        "optimizer_config": to_config(optimizer) if optimizer is not None else None,
        "model_fingerprint": fingerprint(model) if model is not None else None,
        "optimizer_fingerprint": fingerprint(optimizer) if optimizer is not None else None,
        "run_id": run_id,
    }
    doc, tensors = _document(tree_to(_state_dict(state), "cpu"), configs, extra)
    _write(paths, doc, tensors, durable)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _read(path: pathlib.Path, trust: bool) -> Any:
    """The unpickled file: weights-only, unless ``trust`` lets an old checkpoint's objects be unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # a pickled object is loaded by naming its class or function (a GLOBAL): that is what gets refused
        found = _GLOBAL.search(str(e))
        if found is None:
            reason = str(e).partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0]
            raise CheckpointError(f"cannot read checkpoint {path}: {reason.strip() or e}") from None
        if not trust:
            raise CheckpointError(
                f"refusing to load checkpoint {path}: it holds pickled Python objects ({found.group(1)}), and "
                "unpickling them can run arbitrary code. Checkpoints written by this fusefn never do; a file from "
                "an older fusefn that you trust can be converted once with "
                "fusefn.train.checkpoint.convert_checkpoint(path) (or read with load_checkpoint(path, trust=True)); "
                "never do either for a file from elsewhere"
            ) from None
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    _log.warning("unpickling %s with trust=True: only do this for a checkpoint you wrote yourself", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def _contents(payload: Any, path: pathlib.Path) -> tuple[dict, dict]:
    """``(state tree, the rest)`` of a loaded file of either format."""
    if not isinstance(payload, Mapping) or payload.get("format") not in (FORMAT, _FORMAT_1):
        raise CheckpointError(f"{path} is not a fusefn checkpoint")
    if payload["format"] == _FORMAT_1:  # pickled tree (only read when it holds nothing but plain types, or trusted)
        rest = {k: val for k, val in payload.items() if k != "state"}
        return dict(payload["state"]), rest
    tensors = payload.get("tensors")
    try:
        doc = json.loads(payload["document"])
        if not isinstance(doc, dict) or not isinstance(tensors, dict):
            raise _codec.CodecError("no document or no tensors")
        state = _codec.decode(doc.get("state"), tensors, "state")
        extra = _codec.decode(doc.get("extra", {}), tensors, "extra")
    except (ValueError, TypeError, KeyError, _codec.CodecError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is damaged: its state is a {type(state).__name__}")
    rest = {k: doc.get(k) for k in _CONFIG_KEYS}
    rest.update(format=FORMAT, extra=extra)
    return state, rest


def load_checkpoint(path: str | os.PathLike, *, device="cpu", trust: bool = False) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`: a dict with ``state`` (a TrainState) and configs.

    The file is loaded with ``torch.load(weights_only=True)``: loading never runs code from it.
    A checkpoint of an older fusefn whose state holds pickled objects (e.g. NumPy metric states
    of an interrupted epoch) is refused with a CheckpointError saying how to convert it;
    ``trust=True`` unpickles such a file, which runs whatever code it carries: only for files
    you wrote yourself. Files in the current format never need it.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; train first or point to an existing checkpoint")
    raw, rest = _contents(_read(path, trust), path)
    fields = {f.name for f in attrs.fields(TrainState)}
    state = tree_to({k: val for k, val in raw.items() if k in fields}, device)
    try:
        state["rng"] = Rng(int(raw.get("seed", 0)))
        out = {**rest, "state": TrainState(**state)}
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged: {e}") from None
    return out


def convert_checkpoint(path: str | os.PathLike, output: str | os.PathLike | None = None) -> pathlib.Path:
    """Rewrite a trusted checkpoint of an older fusefn in the current format (``output``, default in place).

    This unpickles ``path`` (``load_checkpoint(path, trust=True)``), which runs any code the
    file carries: convert only files you wrote yourself. Returns the written path.
    """
    payload = load_checkpoint(path, trust=True)
    target = pathlib.Path(output if output is not None else path)
    configs = {k: payload.get(k) for k in _CONFIG_KEYS}
    doc, tensors = _document(_state_dict(payload["state"]), configs, payload.get("extra"))
    _write([target], doc, tensors, durable=True)
    return target


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
        return {str(k).replace(".", "_"): _plain(val) for k, val in cfg.items()}
    if isinstance(cfg, list):
        return {str(i): _plain(val) for i, val in enumerate(cfg)} or {"_": "[]"}
    return cfg
