"""infer: load a trained model (:func:`~fusefn.train.load_model`), run eval steps, write a Parquet file.

The Parquet file holds ``sample_id`` plus one column per requested key (vectors
as list columns). Per-sample arrays larger than ``max_inline`` values (e.g.
segmentation maps) go to an HDF5 file beside it (``<name>.h5``) instead: dataset
``<column>/<safe_name(sample_id)>`` (:func:`fusefn.data.visualize.safe_name`: ids such
as ``a/b``, ``.`` or ``..`` are percent-encoded) with the id in its ``sample_id``
attribute, and ``_index/sample_id`` / ``_index/name`` listing ids and dataset names in
the Parquet file's row order. Several model directories make an ensemble: floating
outputs are averaged, and for probability columns a ``<column>_vote`` column holds the
majority vote of the members' argmax.

Volumes (``sliding_window=SlidingWindowSettings(...)``, :mod:`fusefn.train.infer_volumes`): one case
at a time through :func:`~fusefn.train.sliding_window.sliding_window`, streamed to a label map,
post-processed, stored in the ``.h5`` file and, with ``nifti_dir``, written as a NIfTI mask on the
case's original grid.

Under ``torchrun``, ``shard=True`` on every rank splits a map-style dataset by position (rank r
takes r, r + world, …); rank 0 gathers the parts (:func:`fusefn.train.distributed.gather_to_main`),
restores the dataset's order and writes the one output set, which every rank then returns.

A sample whose loading fails (a :class:`~fusefn.errors.SampleError`) does not stop
the job: the others are written and the failures listed in ``<name>.failed.json``;
so is an array the HDF5 file cannot hold (with its ``column``).

The output set (Parquet, ``.h5``, ``.failed.json``) is built in memory, each file
written to a temporary file beside its target, and only when all are written are they
renamed in (the Parquet file last) and files of an earlier run that the new set lacks
removed: a failure (a full disk) leaves the previous set as it was, names the path in an
``OSError``, and leaves no temporary file. The gap: a kill during the final renames
(microseconds) can pair new sidecars with the previous Parquet file. A whole-folder swap
(:func:`fusefn._atomic.atomic_dir`) is not used because ``output_file``'s folder is the
caller's and may hold anything.
"""

from __future__ import annotations

import contextlib
import io
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
from fusefn._atomic import atomic_path, sweep_temporaries
from fusefn.data.visualize import safe_name
from fusefn.errors import ConfigError, FusefnError, SampleError
from fusefn.train import distributed as dist_
from fusefn.train.batches import default_collate, epoch_batches, is_map_dataset
from fusefn.train.checkpoint import CheckpointError, checkpoint_path
from fusefn.train.device import select_device
from fusefn.train.loading import load_model
from fusefn.train.state import tree_to
from fusefn.train.step import make_eval_step

__all__ = ["infer"]

_log = logging.getLogger("fusefn.train")
_INDEX = "_index"  # the .h5 group listing sample ids and dataset names in row order
_AT = "_at"  # a failure record's position in the dataset (dropped before it is written)


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
    if _INDEX in cols:
        raise ConfigError(f"infer: {_INDEX!r} names the sample index of the .h5 file; choose another column name")
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
    """A dataset whose failing samples come back as error records instead of stopping the job.

    Each item carries its position in ``data`` (``at``): a sharded run puts the rows of every rank
    back in the order one process would have written them.
    """

    def __init__(self, data, at: Sequence[int] | None = None):
        self.data, self.at = data, at

    def __len__(self) -> int:
        return len(self.data) if self.at is None else len(self.at)

    def __getitem__(self, i: int):
        j = i if self.at is None else int(self.at[i])
        try:
            return ("ok", self.data[j], j)
        except SampleError as e:
            return ("error", e.sample_id if e.sample_id is not None else f"#{j}", str(e), j)


def _tolerant_collate(collate_fn):
    """``items -> (batch | None, errors, positions of the good items)``; each error record holds its ``_at``."""
    collate_fn = collate_fn or default_collate

    def collate(items):
        good = [x[1] for x in items if x[0] == "ok"]
        errors = [{"sample_id": x[1], "error": x[2], _AT: x[3]} for x in items if x[0] == "error"]
        return (collate_fn(good) if good else None), errors, [x[2] for x in items if x[0] == "ok"]

    return collate


def _run_one(model_dir, data, cols, checkpoint, batch_kw: dict, device, allowed, at=None) -> tuple:
    """``(ids, columns, failed, positions)`` of one model over ``data`` (only the positions ``at`` when given)."""
    model, state = load_model(model_dir, checkpoint, device=device, allowed=allowed)
    eval_step = make_eval_step(model)
    ids: list = []
    failed: list = []
    positions: list = []
    out_cols: dict[str, list] = {c: [] for c in cols}
    tolerant = is_map_dataset(data)
    if tolerant:
        kw = {**batch_kw, "collate": _tolerant_collate(batch_kw["collate"])}
        batches, _ = epoch_batches(_Tolerant(data, at), 0, **kw)
    else:
        batches, _ = epoch_batches(data, 0, **batch_kw)
    for item in batches:
        batch, errors, good = item if tolerant else (item, [], None)
        failed.extend(errors)
        if batch is None:
            continue
        out = eval_step(state, tree_to(batch, device))
        bid = nd.get(out, keys.SAMPLE_ID)
        n = len(bid)
        ids.extend(bid)
        positions.extend(good if good is not None else range(len(positions), len(positions) + n))
        for c, key in cols.items():
            out_cols[c].extend(_rows(nd.get(out, key), n))
    return ids, out_cols, failed, positions


def _is_big(values: list, max_inline: int) -> bool:
    return any(isinstance(v, np.ndarray) and (v.ndim > 1 or v.size > max_inline) for v in values)


def _h5_image(big: Mapping[str, list], ids: list, failed: list) -> bytes:
    """The ``.h5`` sidecar as bytes; arrays it cannot hold are added to ``failed`` (the rest is kept).

    Built in memory (the arrays are in memory already): HDF5 defers its writes, and on a
    full disk it fails while closing or freeing objects, in ways that can kill the process.
    """
    import h5py

    names: list[str] = []
    seen: set[str] = set()
    for i, sid in enumerate(ids):
        name = safe_name(sid)
        name = f"{name}%~{i}" if name in seen else name  # a repeated id
        seen.add(name)
        names.append(name)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        index = f.create_group(_INDEX)
        index.create_dataset("sample_id", data=[str(x) for x in ids], dtype=h5py.string_dtype())
        index.create_dataset("name", data=names, dtype=h5py.string_dtype())
        for c, values in big.items():
            g = f.create_group(c)
            for sid, name, arr in zip(ids, names, values):
                try:
                    g.create_dataset(name, data=np.asarray(arr), compression="gzip")
                except (TypeError, ValueError) as e:
                    failed.append({"sample_id": sid, "column": c, "error": f"cannot store in the .h5 file: {e}"})
                    continue
                g[name].attrs["sample_id"] = sid if isinstance(sid, (str, int)) else str(sid)
    return buf.getvalue()


def _write_set(files: Mapping[pathlib.Path, bytes | None]) -> None:
    """Write ``{path: bytes}`` as a set: all to temporary files, then renamed in (the first path last).

    A path whose value is ``None`` is not part of the new set: an earlier run's file there is removed
    once the set is in place. On a failure nothing is renamed and the temporary files are removed.
    """
    for path in files:  # left by a killed run
        sweep_temporaries(path.parent, path.name)
    with contextlib.ExitStack() as staged:  # exits in reverse: the first path is renamed in last
        for path, data in files.items():
            if data is not None:
                staged.enter_context(atomic_path(path)).write_bytes(data)
    for path, data in files.items():
        if data is None:
            path.unlink(missing_ok=True)


def _vote(member_rows: list[list]) -> list[int]:
    votes = np.stack([np.argmax(np.stack(rows), axis=1) for rows in member_rows])  # members x samples
    return [int(np.bincount(votes[:, i]).argmax()) for i in range(votes.shape[1])]


def infer(
    model_dir: str | os.PathLike | Sequence[str | os.PathLike],
    data,
    *,
    output_file: str | os.PathLike,
    output_columns: Sequence[str] | Mapping[str, str] | None = None,
    checkpoint: str | int | os.PathLike = "best",
    batch_size: int = 64,
    collate_fn=None,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    max_inline: int = 4096,
    allowed=(),
    sliding_window=None,
    postprocess=None,
    nifti_dir: str | os.PathLike | None = None,
    shard: bool = False,
) -> pl.DataFrame:
    """Run the trained model(s) of ``model_dir`` over ``data`` and write ``output_file`` (Parquet).

    Args:
        model_dir: one directory written by ``fit``, or several (an ensemble).
        data: a map-style dataset of sample dicts or an iterable of batch_dicts.
        output_columns: keys to save (column named as the key), or ``{column: key}``; default
            :func:`keys.probs() <fusefn.keys.probs>` (none besides the label map in volume mode).
        sliding_window: a :class:`~fusefn.train.SlidingWindowSettings` turns on volume mode
            (:mod:`fusefn.train.infer_volumes`): one case at a time (``batch_size`` and ``collate_fn``
            unused), windows blended and streamed to a label map stored in the ``.h5`` sidecar under
            its ``label_key``; ensemble members are averaged window by window.
        postprocess: volume mode: ``sample -> sample`` run on the label map (e.g. ``chain`` of
            :class:`~fusefn.data.ops.KeepLargestComponent`, ...) before it is stored.
        nifti_dir: volume mode: write each case's mask there, on its original grid, as
            ``<safe_name(sample_id)>.nii.gz`` (column ``mask_file``); each file atomic, written as its
            case finishes.
        checkpoint: ``"best"``, ``"last"``, ``"best_<source>"``, an epoch number or a path.
        max_inline: per-sample arrays with more values (or 2+ dims) go to ``<output>.h5``.
        allowed: modules or objects, besides fusefn's, the saved model config may name
            (see :func:`fusefn.from_config`).
        shard: every rank of the active process group (``torchrun``) calls ``infer`` alike, and each
            predicts its share of a map-style ``data`` (positions ``rank, rank + world, …``; volume mode:
            writing the masks of its cases); rank 0 gathers the rows, puts them in ``data``'s order and
            writes the files one process would write (the same rows, every rank's failures; the same
            values in volume mode, equal to float rounding in batched mode, whose batches differ);
            every rank returns that frame. A failure on one rank is raised on all. Without a group (or
            with ``data`` an iterable of batches) it runs as usual.

    Returns:
        the frame written.
    """
    dirs = [model_dir] if isinstance(model_dir, (str, os.PathLike)) else list(model_dir)
    if not dirs:
        raise ConfigError("infer: no model_dir given")
    volumes = sliding_window is not None
    if not volumes and (postprocess is not None or nifti_dir is not None):
        raise ConfigError(
            "infer: postprocess and nifti_dir are for volumes; pass sliding_window=SlidingWindowSettings(...)"
        )
    if output_columns is None:
        output_columns = () if volumes else (keys.probs(),)
    cols = _columns(output_columns) if output_columns or not volumes else {}
    output_file = pathlib.Path(output_file)
    if output_file.exists() and output_file.is_dir():
        raise ConfigError(f"infer: output_file {output_file} is a directory; give a .parquet file path")
    for d in dirs:  # fail before any work when a checkpoint is missing
        p = checkpoint_path(d, checkpoint)
        if not p.is_file():
            raise CheckpointError(f"checkpoint not found: {p}; train first (or pass another checkpoint)")
    dev = select_device(device)
    shard = shard and dist_.world_size() > 1
    at = _shard(data) if shard else None

    def work() -> tuple:
        if volumes:
            from fusefn.train.infer_volumes import run_volumes

            return run_volumes(
                dirs,
                data,
                cols,
                checkpoint=checkpoint,
                settings=sliding_window,
                postprocess=postprocess,
                nifti_dir=nifti_dir,
                device=dev,
                allowed=allowed,
                num_workers=num_workers,
                at=at,
            )
        return _run_all(dirs, data, cols, checkpoint, batch_size, collate_fn, num_workers, dev, allowed, at)

    def finish(ids: list, merged: dict, failed: list) -> pl.DataFrame:
        if not ids:
            what = "case" if volumes else "sample"
            raise SampleError(f"infer: every {what} failed; first: {failed[0]['error'] if failed else '?'}")
        return _write_outputs(output_file, ids, merged, failed, max_inline)

    if not shard:
        return finish(*_merge([work()], replicated=True))
    return _on_ranks(work, lambda parts: finish(*_merge(parts, replicated=at is None)))


def _shard(data) -> list[int] | None:
    """This rank's positions of ``data`` (every ``world``-th from ``rank``); ``None``: all (no ``len``)."""
    if not is_map_dataset(data):
        return None
    return list(range(dist_.rank(), len(data), dist_.world_size()))


def _merge(parts: Sequence[tuple], *, replicated: bool) -> tuple[list, dict, list]:
    """One ``(ids, columns, failed)`` from the ranks' ``(ids, columns, failed, positions)``, in dataset order.

    ``replicated``: every rank ran every sample (data without ``len``), so the first part is the whole.
    """
    parts = parts[:1] if replicated else parts
    rows = sorted((pos, r, i) for r, part in enumerate(parts) for i, pos in enumerate(part[3]))
    ids = [parts[r][0][i] for _, r, i in rows]
    # a rank with no rows (its share failed) lacks the columns the others add (e.g. an ensemble's votes)
    names = list(dict.fromkeys(c for p in parts if p[0] for c in p[1])) or list(parts[0][1])
    merged = {c: [parts[r][1][c][i] for _, r, i in rows] for c in names}
    failed = sorted((f for part in parts for f in part[2]), key=lambda f: f.get(_AT, -1))
    return ids, merged, [{k: x for k, x in f.items() if k != _AT} for f in failed]


def _on_ranks(work, finish):
    """``work()`` on every rank, the parts gathered on rank 0, ``finish(parts)`` there; its result on every rank.

    A failure on any rank (in ``work`` or ``finish``) is raised on every rank, so none waits for the others.
    """
    try:
        local, error = work(), None
    except Exception as e:
        local, error = None, e
    outcome = None if error is None else f"rank {dist_.rank()}: {type(error).__name__}: {error}"
    parts = dist_.gather_to_main((outcome, local))
    result = None
    if parts is not None:
        bad = [msg for msg, _ in parts if msg is not None]
        if bad:
            result = ("error", bad[0])
        else:
            try:
                result = ("ok", finish([p for _, p in parts]))
            except Exception as e:
                error = error or e
                result = ("error", f"rank 0: {type(e).__name__}: {e}")
    result = dist_.broadcast_object(result)
    if error is not None:
        raise error
    if result[0] == "error":
        raise FusefnError(f"infer: failed on another rank: {result[1]}")
    return result[1]


def _run_all(dirs, data, cols, checkpoint, batch_size, collate_fn, num_workers, dev, allowed, at=None):
    """``(ids, columns, failed, positions)`` of batched inference; several members averaged (probabilities voted)."""
    batch_kw = {"batch_size": batch_size, "collate": collate_fn, "workers": num_workers}
    runs = [_run_one(d, data, cols, checkpoint, batch_kw, dev, allowed, at) for d in dirs]
    ids, failed, positions = runs[0][0], runs[0][2], runs[0][3]
    for d, (other, _, _, _) in zip(dirs[1:], runs[1:]):
        if other != ids:
            raise ConfigError(f"infer: ensemble member {d} saw other samples than {dirs[0]}")
    merged: dict[str, list] = {}
    for c in cols:
        members = [r[1][c] for r in runs]
        first = members[0]
        floating = all(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in first) or all(
            isinstance(v, float) for v in first
        )
        if len(runs) > 1 and floating and first:
            merged[c] = list(np.mean(np.stack([np.stack(m) for m in members]), axis=0))
            if "prob" in c and isinstance(first[0], np.ndarray) and first[0].ndim == 1:
                merged[f"{c}_vote"] = _vote(members)
        else:
            merged[c] = first
    return ids, merged, failed, positions


def _write_outputs(output_file: pathlib.Path, ids: list, merged: dict, failed: list, max_inline: int) -> pl.DataFrame:
    """Write the Parquet file, its ``.h5`` sidecar and ``.failed.json`` as a set; the frame written."""
    big = {c: v for c, v in merged.items() if _is_big(v, max_inline)}
    table = {"sample_id": ids}
    for c, v in merged.items():
        if c in big:
            continue
        table[c] = [x.tolist() if isinstance(x, np.ndarray) else x for x in v]
    frame = pl.DataFrame(table)
    h5_path, errors_path = output_file.with_suffix(".h5"), output_file.with_suffix(".failed.json")
    failed = list(failed)
    h5 = _h5_image(big, ids, failed) if big else None
    parquet = io.BytesIO()
    frame.write_parquet(parquet)
    blob = json.dumps(failed, indent=2, default=str).encode() if failed else None
    _write_set({output_file: parquet.getvalue(), h5_path: h5, errors_path: blob})
    if big:
        _log.info("wrote %s (%s)", h5_path, ", ".join(big))
    if failed:
        _log.warning("infer: %d failures (see %s); first: %s", len(failed), errors_path, failed[0]["error"])
    _log.info("wrote %s (%d samples, columns %s)", output_file, frame.height, ", ".join(frame.columns))
    return frame
