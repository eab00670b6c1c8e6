"""infer: load a trained model (:func:`~fusefn.train.load_model`), run eval steps, write a Parquet file.

The Parquet file holds ``sample_id`` plus one column per requested key (vectors
as list columns). Per-sample arrays larger than ``max_inline`` values (e.g.
segmentation maps) go to an HDF5 file beside it (``<name>.h5``, dataset
``<column>/<sample_id>``) instead. Several model directories make an ensemble:
floating outputs are averaged, and for probability columns a ``<column>_vote``
column holds the majority vote of the members' argmax.

A sample whose loading fails (a :class:`~fusefn.errors.SampleError`) does not stop
the job: the others are written and the failures listed in ``<name>.failed.json``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import torch

from fusefn import keys, nd
from fusefn._atomic import atomic_path
from fusefn.errors import ConfigError, SampleError
from fusefn.train.batches import default_collate, epoch_batches, is_map_dataset
from fusefn.train.checkpoint import CheckpointError, checkpoint_path
from fusefn.train.device import select_device
from fusefn.train.loading import load_model
from fusefn.train.state import tree_to
from fusefn.train.step import make_eval_step

__all__ = ["infer"]

_log = logging.getLogger("fusefn.train")


def _columns(output_columns) -> dict[str, str]:
    if isinstance(output_columns, str):
        output_columns = (output_columns,)
    if isinstance(output_columns, Mapping):
        cols = dict(output_columns)
    else:
        cols = {k: k for k in output_columns}
    if not cols:
        raise ConfigError("infer: output_columns is empty; name the keys to save (e.g. model.head_0.probs)")
    if "sample_id" in cols:
        raise ConfigError("infer: 'sample_id' is always written; do not list it in output_columns")
    return cols


def _rows(value: Any, n: int) -> list:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        value = value.numpy()
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return [value.item()] * n
        return list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n


class _Tolerant(torch.utils.data.Dataset):
    """A dataset whose failing samples come back as error records instead of stopping the job."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        try:
            return ("ok", self.data[i])
        except SampleError as e:
            return ("error", e.sample_id if e.sample_id is not None else f"#{i}", str(e))


def _tolerant_collate(collate_fn):
    collate_fn = collate_fn or default_collate

    def collate(items):
        good = [x[1] for x in items if x[0] == "ok"]
        errors = [{"sample_id": x[1], "error": x[2]} for x in items if x[0] == "error"]
        return (collate_fn(good) if good else None), errors

    return collate


def _run_one(model_dir, data, cols, checkpoint, batch_kw: dict, device) -> tuple[list, dict[str, list], list]:
    model, state = load_model(model_dir, checkpoint, device=device)
    eval_step = make_eval_step(model)
    ids: list = []
    failed: list = []
    out_cols: dict[str, list] = {c: [] for c in cols}
    tolerant = is_map_dataset(data)
    if tolerant:
        kw = {**batch_kw, "collate": _tolerant_collate(batch_kw["collate"])}
        batches, _ = epoch_batches(_Tolerant(data), 0, **kw)
    else:
        batches, _ = epoch_batches(data, 0, **batch_kw)
    for item in batches:
        batch, errors = item if tolerant else (item, [])
        failed.extend(errors)
        if batch is None:
            continue
        out = eval_step(state, tree_to(batch, device))
        bid = nd.get(out, keys.SAMPLE_ID)
        n = len(bid)
        ids.extend(bid)
        for c, key in cols.items():
            out_cols[c].extend(_rows(nd.get(out, key), n))
    return ids, out_cols, failed


def _is_big(values: list, max_inline: int) -> bool:
    return any(isinstance(v, np.ndarray) and (v.ndim > 1 or v.size > max_inline) for v in values)


def _atomic(path: pathlib.Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path`` (see :mod:`fusefn._atomic`)."""
    with atomic_path(path) as tmp:
        write(str(tmp))


def _vote(member_rows: list[list]) -> list[int]:
    votes = np.stack([np.argmax(np.stack(rows), axis=1) for rows in member_rows])  # members x samples
    return [int(np.bincount(votes[:, i]).argmax()) for i in range(votes.shape[1])]


def infer(
    model_dir: str | os.PathLike | Sequence[str | os.PathLike],
    data,
    *,
    output_file: str | os.PathLike,
    output_columns: Sequence[str] | Mapping[str, str] = (keys.probs(),),
    checkpoint: str | int | os.PathLike = "best",
    batch_size: int = 64,
    collate_fn=None,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    max_inline: int = 4096,
) -> pl.DataFrame:
    """Run the trained model(s) of ``model_dir`` over ``data`` and write ``output_file`` (Parquet).

    Args:
        model_dir: one directory written by ``fit``, or several (an ensemble).
        data: a map-style dataset of sample dicts or an iterable of batch_dicts.
        output_columns: keys to save (column named as the key), or ``{column: key}``.
        checkpoint: ``"best"``, ``"last"``, ``"best_<source>"``, an epoch number or a path.
        max_inline: per-sample arrays with more values (or 2+ dims) go to ``<output>.h5``.

    Returns:
        the frame written.
    """
    dirs = [model_dir] if isinstance(model_dir, (str, os.PathLike)) else list(model_dir)
    if not dirs:
        raise ConfigError("infer: no model_dir given")
    cols = _columns(output_columns)
    output_file = pathlib.Path(output_file)
    if output_file.exists() and output_file.is_dir():
        raise ConfigError(f"infer: output_file {output_file} is a directory; give a .parquet file path")
    for d in dirs:  # fail before any work when a checkpoint is missing
        p = checkpoint_path(d, checkpoint)
        if not p.is_file():
            raise CheckpointError(f"checkpoint not found: {p}; train first (or pass another checkpoint)")
    dev = select_device(device)
    batch_kw = {"batch_size": batch_size, "collate": collate_fn, "workers": num_workers}
    runs = [_run_one(d, data, cols, checkpoint, batch_kw, dev) for d in dirs]
    ids, failed = runs[0][0], runs[0][2]
    if not ids:
        raise SampleError(f"infer: every sample failed; first: {failed[0]['error'] if failed else '?'}")
    for d, (other, _, _) in zip(dirs[1:], runs[1:]):
        if other != ids:
            raise ConfigError(f"infer: ensemble member {d} saw other samples than {dirs[0]}")
    merged: dict[str, list] = {}
    for c in cols:
        members = [r[1][c] for r in runs]
        first = members[0]
        floating = all(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in first) or all(
            isinstance(v, float) for v in first
        )
        if len(runs) > 1 and floating:
            merged[c] = list(np.mean(np.stack([np.stack(m) for m in members]), axis=0))
            if "prob" in c and isinstance(first[0], np.ndarray) and first[0].ndim == 1:
                merged[f"{c}_vote"] = _vote(members)
        else:
            merged[c] = first
    big = {c: v for c, v in merged.items() if _is_big(v, max_inline)}
    table = {"sample_id": ids}
    for c, v in merged.items():
        if c in big:
            continue
        table[c] = [x.tolist() if isinstance(x, np.ndarray) else x for x in v]
    frame = pl.DataFrame(table)
    if big:
        import h5py

        h5_path = output_file.with_suffix(".h5")

        def write_h5(tmp):
            with h5py.File(tmp, "w") as f:
                for c, values in big.items():
                    g = f.create_group(c)
                    for sid, arr in zip(ids, values):
                        g.create_dataset(str(sid), data=np.asarray(arr), compression="gzip")

        _atomic(h5_path, write_h5)
        _log.info("wrote %s (%s)", h5_path, ", ".join(big))
    errors_path = output_file.with_suffix(".failed.json")
    if failed:
        blob = json.dumps(failed, indent=2, default=str)
        _atomic(errors_path, lambda tmp: pathlib.Path(tmp).write_text(blob))
        _log.warning(
            "infer: %d samples failed and are left out (see %s); first: %s",
            len(failed),
            errors_path,
            failed[0]["error"],
        )
    elif errors_path.exists():
        errors_path.unlink()  # from an earlier run
    _atomic(output_file, lambda tmp: frame.write_parquet(tmp))
    _log.info("wrote %s (%d samples, columns %s)", output_file, frame.height, ", ".join(frame.columns))
    return frame
