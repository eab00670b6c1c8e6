"""A model directory belongs to one run: ``run.json`` records its id and configuration, checkpoints carry the id.

Why: a model directory is where ``infer``, ``load_model`` and the recipes find a model by
name (``best``). Training another model into a directory that holds an earlier run's
checkpoints would leave that run's ``best_*.pt`` beside the new ones, to be served as if
it were the new model; re-running a finished training would silently replace it.

``fit`` calls :func:`claim_run_dir` before its first epoch:

* a directory without checkpoints gets a new ``run.json`` (a fresh run id);
* one with checkpoints is refused with a :class:`RunDirError` naming the directory and what
  differs from its ``run.json`` — unless ``resume`` is given (the run goes on under its id)
  or ``overwrite=True`` (the old checkpoints are deleted and a new id recorded).

Every checkpoint ``fit`` writes carries the run id; :func:`check_checkpoint` (called by
``load_model``) refuses a checkpoint of the directory whose id is not the directory's.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> record = claim_run_dir(d, {"model": {"channels": 8}})
>>> (d / "checkpoints").mkdir(); (d / "checkpoints" / "last.pt").write_bytes(b"")
0
>>> claim_run_dir(d, {"model": {"channels": 16}})
Traceback (most recent call last):
...
fusefn.train.run_dir.RunDirError: model_dir ... holds the checkpoints of another run (differs: model.channels: 8 != 16); pass overwrite=True (recipes: --force) to replace them, or resume='last' (--resume) to continue that run
>>> claim_run_dir(d, {"model": {"channels": 8}}, resume="last")["run_id"] == record["run_id"]
True
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

from fusefn.core import Rng, fingerprint, to_config
from fusefn.errors import ConfigError
from fusefn.train.checkpoint import RUN_FILE, CheckpointError, config_diff, write_json_atomic

__all__ = ["RunDirError", "RUN_FILE", "run_config", "run_config_part", "claim_run_dir", "read_run", "check_checkpoint"]

_log = logging.getLogger("fusefn.train")
FORMAT = "fusefn-run/1"


class RunDirError(CheckpointError):
    """A model directory holds another run's checkpoints, or a checkpoint there belongs to another run."""


def run_config_part(obj: Any) -> Any:
    """``obj`` as config; a component that cannot be saved as config is described by its type."""
    try:
        return to_config(obj)
    except (ConfigError, TypeError, ValueError):
        return {"__unsaveable__": f"{type(obj).__module__}.{type(obj).__qualname__}"}


def _data(data) -> Any:
    """What fit knows of a dataset: its type, length, and the digests of its ids and static pipeline."""
    if data is None:
        return None
    out: dict = {"type": f"{type(data).__module__}.{type(data).__qualname__}"}
    try:
        out["length"] = len(data)
    except TypeError:
        out["length"] = None
    source = getattr(data, "source", None)
    ids = getattr(source, "ids", None)
    try:
        ids = ids() if callable(ids) else ids
        if ids is not None:
            out["ids"] = hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]
    except Exception:  # a source that cannot list its ids is described by its length
        pass
    static = getattr(data, "static", None)
    if static is not None:
        with contextlib.suppress(Exception):  # a pipeline with a closure has no fingerprint
            out["static"] = fingerprint(static)
    return out


def run_config(
    model,
    losses: Mapping,
    optimizer,
    *,
    rng: Rng,
    metrics: Mapping,
    best: Any,
    train_data,
    validation_data,
    extra=None,
) -> dict:
    """The configuration a run directory records: what makes two runs the same run (not their length)."""
    return {
        "model": run_config_part(model),
        "losses": {k: run_config_part(v) for k, v in losses.items()},
        "optimizer": run_config_part(optimizer),
        "metrics": {mode: {k: run_config_part(m) for k, m in ms.items()} for mode, ms in metrics.items()},
        "best": [s.source for s in best],
        "seed": rng.seed,
        "data": {"train": _data(train_data), "validation": _data(validation_data)},
        **(extra or {}),
    }


def _digest(config: Mapping) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:32]


def read_run(model_dir: str | os.PathLike) -> dict | None:
    """The ``run.json`` record of ``model_dir`` (``None`` when there is none or it cannot be read)."""
    path = pathlib.Path(model_dir) / RUN_FILE
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def _checkpoints(model_dir: pathlib.Path) -> list[pathlib.Path]:
    ckdir = model_dir / "checkpoints"
    return sorted(ckdir.glob("*.pt")) if ckdir.is_dir() else []


def _differences(old: Mapping | None, config: Mapping) -> str:
    if old is None:
        return f"it has no {RUN_FILE} (written by an older fusefn or by hand)"
    diff = config_diff(old.get("config"), config)
    if not diff:
        return "the same configuration: a finished or interrupted run of it"
    more = f"; and {len(diff) - 4} more" if len(diff) > 4 else ""
    return "differs: " + "; ".join(diff[:4]) + more


def claim_run_dir(
    model_dir: str | os.PathLike, config: Mapping, *, resume=None, overwrite: bool = False, write: bool = True
) -> dict:
    """The run record of ``model_dir`` for a run of ``config`` (written to ``run.json`` when ``write``).

    Raises :class:`RunDirError` when the directory holds checkpoints and neither ``resume`` nor
    ``overwrite`` is given. ``overwrite`` deletes those checkpoints (when ``write``).
    """
    model_dir = pathlib.Path(model_dir)
    config = json.loads(json.dumps(config, default=str))  # what run.json will hold, compared alike
    old, found = read_run(model_dir), _checkpoints(model_dir)
    record = {"format": FORMAT, "config": config, "fingerprint": _digest(config)}
    if found and resume is not None and not overwrite:
        if old is not None and old.get("fingerprint") != record["fingerprint"]:
            _log.info("resuming %s with a changed configuration (%s)", model_dir, _differences(old, config))
        run_id = old.get("run_id") if old is not None else None
    elif found and not overwrite:
        raise RunDirError(
            f"model_dir {model_dir} holds the checkpoints of another run ({_differences(old, config)}); "
            "pass overwrite=True (recipes: --force) to replace them, or resume='last' (--resume) to continue that run"
        )
    else:
        run_id = None
        if found and write:
            for path in found:
                path.unlink(missing_ok=True)
            _log.info("overwrite: deleted %d checkpoints of the previous run in %s", len(found), model_dir)
    record["run_id"] = run_id or uuid.uuid4().hex
    record["created"] = (old or {}).get("created") if run_id else _now()
    if write:
        write_json_atomic(model_dir / RUN_FILE, record)
    _log.debug("run %s configuration: %s", record["run_id"], json.dumps(record, sort_keys=True, default=str))
    return record


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_checkpoint(model_dir: str | os.PathLike, path: str | os.PathLike, run_id: str | None) -> None:
    """A :class:`RunDirError` when ``path``, a checkpoint of ``model_dir``, carries another run's id than its run.json.

    Checkpoints outside ``model_dir/checkpoints``, without a run id (written before run ids
    existed), or in a directory without ``run.json`` are not checked.
    """
    model_dir, path = pathlib.Path(model_dir), pathlib.Path(path)
    try:
        inside = path.resolve().parent == (model_dir / "checkpoints").resolve()
    except OSError:
        inside = False
    run = read_run(model_dir) if inside and run_id is not None else None
    if run is not None and run.get("run_id") not in (None, run_id):
        raise RunDirError(
            f"checkpoint {path} belongs to an earlier run (run id {run_id[:8]}), not to the run recorded in "
            f"{model_dir / RUN_FILE} (run id {str(run['run_id'])[:8]}): it is stale; train again with "
            "overwrite=True (recipes: --force) or delete it"
        )
