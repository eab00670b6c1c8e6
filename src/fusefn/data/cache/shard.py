"""The shard format: how flattened sample dicts are laid out in one HDF5 file, and read back.

A shard holds one row per output sample, in three groups:

* ``stacked/<key>``: arrays of one shape and dtype, one ``(n, *shape)`` dataset (contiguous,
  rows written with one ``pwritev`` when uncompressed; chunked by row when compressed);
* ``ragged/<key>/<row>``: arrays of differing shapes, one dataset per sample;
* ``table/<key>``: bools, ints, floats, NumPy scalars, strings and ``None`` as columns;
  anything else (mixed kinds, holes, lists, dicts) as one JSON text per row;
* ``sums/<group>/<key>``: when checksums are on (the default), the CRC32 of every row's
  stored bytes of that leaf (``uint32``, one per row), which every read checks.

Each dataset's ``kind`` attribute says what the leaf was (``torch`` tensors come back as
tensors). Keys are dataset names with ``%`` and ``/`` escaped.

>>> import tempfile, pathlib, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "s.h5"
>>> write_shard(path, [{"data.x": np.ones(2), "data.t": torch.zeros(1), "data.n": 1}], None, None)
>>> import h5py
>>> with h5py.File(path, "r") as f:
...     sorted(f["stacked"]), sorted(f["table"]), f.attrs["n"], f["sums/stacked/data.x"][0] == row_sum(np.ones(2))
(['data.t', 'data.x'], ['data.n'], np.int64(1), np.True_)
"""

from __future__ import annotations

import errno
import json
import os
import zlib

import numpy as np

from fusefn._types import is_tensor
from fusefn.core import from_config, to_config
from fusefn.errors import SampleError

__all__ = [
    "FORMAT",
    "ALIGNED_BYTES",
    "write_shard",
    "check_leaf",
    "array_bytes",
    "crc32",
    "row_sum",
    "cell_sums",
    "key_name",
    "decode_table",
    "wrap",
]

FORMAT = 2
"""2: per-row checksums (``sums/``); stores of format 1 are read without them."""
ALIGNED_BYTES = 1 << 20
"""Datasets at least this large start on a page boundary, so readers can map their rows."""

_TABLE_DTYPES = {"bool": np.bool_, "int": np.int64, "float": np.float64}
_IOV_MAX = 512


def _signature(v) -> tuple:
    """How a leaf is stored: arrays by (kind, dtype, shape), scalars by their Python kind."""
    if is_tensor(v):
        return ("torch", str(v.dtype).removeprefix("torch."), tuple(v.shape))
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "biufc":
            return ("numpy", v.dtype.str, v.shape)
        return ("json",)
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return ("npscalar", v.dtype.str)
    if isinstance(v, bool):
        return ("bool",)
    if isinstance(v, int):
        return ("int",) if -(2**63) <= v < 2**63 else ("json",)
    if isinstance(v, float):
        return ("float",)
    if isinstance(v, str):
        return ("str",)
    if v is None:
        return ("none",)
    return ("json",)


def _as_numpy(v) -> np.ndarray:
    if is_tensor(v):
        return v.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(v)


def _plain(v):
    if is_tensor(v):
        return v.detach().cpu().numpy()
    return v


def array_bytes(v) -> int:
    """The bytes of array data in leaf ``v`` (0 for scalars and strings)."""
    if is_tensor(v):
        return v.nelement() * v.element_size()
    return v.nbytes if isinstance(v, np.ndarray) else 0


def _ds_name(key: str) -> str:
    return key.replace("%", "%25").replace("/", "%2F")


def key_name(name: str) -> str:
    """The batch_dict key of dataset ``name``."""
    return name.replace("%2F", "/").replace("%25", "%")


def check_leaf(v, key: str, sid) -> None:
    """Raise a :class:`~fusefn.errors.SampleError` naming ``sid`` and ``key`` when ``v`` cannot be stored."""
    if is_tensor(v):
        try:
            v.new_empty(0, device="cpu").numpy()
        except TypeError:
            raise SampleError(
                f"cannot store a {v.dtype} tensor in the cache: numpy has no such type; cast it in the static "
                "pipeline (e.g. .float()) or leave the cast to the dynamic pipeline",
                sample_id=sid,
                key=key,
            ) from None
        return
    if _signature(v) == ("json",):
        try:
            json.dumps(to_config(_plain(v)))
        except Exception as exc:
            raise SampleError(
                f"cannot store a {type(v).__name__} in the cache: {exc}", sample_id=sid, key=key
            ) from None


def row_sum(a) -> int:
    """The checksum of one stored row of an array: the CRC32 of its bytes (zlib's, 3 to 4 GB/s here: it
    catches any burst of flipped bits up to 32 long and any two flipped bits in a row)."""
    return zlib.crc32(a if a.flags.c_contiguous else np.ascontiguousarray(a))


def cell_sums(column) -> np.ndarray:
    """The checksum of every cell of a stored ``table/`` column: a NumPy array or a list of texts."""
    if isinstance(column, np.ndarray):
        raw = column.view(np.uint8).reshape(len(column), -1) if len(column) else column
        return np.fromiter((zlib.crc32(r) for r in raw), np.uint32, len(column))
    return np.fromiter((zlib.crc32(t.encode()) for t in column), np.uint32, len(column))


def write_shard(
    path: str | os.PathLike, rows: list[dict], compression, compression_level, *, checksum: bool = True
) -> None:
    """Write flattened sample dicts ``rows`` as one HDF5 file at ``path`` (with per-row checksums when
    ``checksum``)."""
    import h5py

    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    n = len(rows)
    raw: list[tuple[int, list]] = []
    sums: dict[str, list | np.ndarray] = {}  # "<group>/<name>" -> checksum per row
    # large datasets start on a page boundary, so every row of a stacked array is aligned for its dtype
    # (readers map rows of volumes straight into arrays)
    with h5py.File(
        path, "w", libver="latest", locking=False, alignment_threshold=ALIGNED_BYTES, alignment_interval=4096
    ) as f:
        f.attrs["format"] = FORMAT
        f.attrs["n"] = n
        for key in keys:
            name = _ds_name(key)
            present = [key in r for r in rows]
            values = [r.get(key) for r in rows]
            sigs = {_signature(v) for v, p in zip(values, present) if p}
            kinds = {s[0] for s in sigs}
            complete = all(present)
            if len(sigs) == 1 and complete and kinds <= {"torch", "numpy"}:
                (sig,) = sigs
                arrays = [_as_numpy(v) for v in values]
                if checksum:
                    sums[f"stacked/{name}"] = [row_sum(a) for a in arrays]
                shape, dtype = (n, *arrays[0].shape), arrays[0].dtype
                if compression is None:
                    # space allocated now, never filled: rows are written below with one pwritev,
                    # skipping a stacked copy and HDF5's per-call overhead
                    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                    ds = f.create_dataset(f"stacked/{name}", shape=shape, dtype=dtype, dcpl=dcpl, fill_time="never")
                    offset = ds.id.get_offset()
                    if offset is None:  # zero-size arrays have no storage
                        ds[...] = np.empty(shape, dtype)
                    else:
                        raw.append((offset, arrays))
                else:
                    ds = f.create_dataset(
                        f"stacked/{name}",
                        data=np.stack(arrays),
                        chunks=(1, *shape[1:]) if len(shape) > 1 and np.prod(shape) else None,
                        compression=compression,
                        compression_opts=compression_level,
                        shuffle=dtype.itemsize > 1,
                    )
                ds.attrs["kind"] = sig[0]
            elif len(kinds) == 1 and kinds <= {"torch", "numpy"}:
                g = f.create_group(f"ragged/{name}")
                g.attrs["kind"] = next(iter(kinds))
                ragged_sums = sums[f"ragged/{name}"] = [0] * n
                for i, (v, p) in enumerate(zip(values, present)):
                    if p:
                        a = _as_numpy(v)
                        ragged_sums[i] = row_sum(a) if checksum else 0
                        chunked = compression is not None and a.size > 0
                        g.create_dataset(
                            str(i),
                            data=a,
                            compression=compression if chunked else None,
                            compression_opts=compression_level if chunked else None,
                            shuffle=chunked and a.dtype.itemsize > 1,
                        )
            elif len(sigs) == 1 and complete and kinds <= set(_TABLE_DTYPES):
                column = np.asarray(values, dtype=_TABLE_DTYPES[next(iter(kinds))])
                ds = f.create_dataset(f"table/{name}", data=column)
                ds.attrs["kind"] = next(iter(kinds))
                sums[f"table/{name}"] = cell_sums(column)
            elif len(sigs) == 1 and complete and kinds == {"npscalar"}:
                column = np.asarray(values)
                ds = f.create_dataset(f"table/{name}", data=column)
                ds.attrs["kind"] = "npscalar"
                sums[f"table/{name}"] = cell_sums(column)
            elif len(sigs) == 1 and complete and kinds == {"str"}:
                ds = f.create_dataset(f"table/{name}", data=values, dtype=h5py.string_dtype())
                ds.attrs["kind"] = "str"
                sums[f"table/{name}"] = cell_sums(values)
            elif len(sigs) == 1 and complete and kinds == {"none"}:
                ds = f.create_dataset(f"table/{name}", shape=(n,), dtype=np.bool_)
                ds.attrs["kind"] = "none"
            else:
                # mixed kinds or holes: each row as JSON text (rare, small values)
                enc = [json.dumps(to_config(_plain(v))) if p else "" for v, p in zip(values, present)]
                ds = f.create_dataset(f"table/{name}", data=enc, dtype=h5py.string_dtype())
                ds.attrs["kind"] = "json"
                ds.attrs["present"] = np.asarray(present, dtype=np.bool_)
                sums[f"table/{name}"] = cell_sums(enc)
        if checksum:
            for where, values in sums.items():
                f.create_dataset(f"sums/{where}", data=np.asarray(values, dtype=np.uint32))
    if raw:
        fd = os.open(path, os.O_WRONLY)
        try:
            for offset, arrays in raw:
                for i in range(0, len(arrays), _IOV_MAX):
                    part = arrays[i : i + _IOV_MAX]
                    want = sum(a.nbytes for a in part)
                    got = os.pwritev(fd, part, offset)
                    if got != want:
                        _write_rest(fd, part, offset, got)
                    offset += want
        finally:
            os.close(fd)


def _write_rest(fd: int, arrays: list, offset: int, done: int) -> None:
    """Finish a short ``pwritev``: the rest with ``pwrite``, so a full disk raises its own error (ENOSPC)."""
    pos = 0
    for a in arrays:
        mv = memoryview(a).cast("B")
        start = max(0, done - pos)
        while start < len(mv):
            n = os.pwrite(fd, mv[start:], offset + pos + start)
            if n == 0:
                raise OSError(errno.EIO, "a write made no progress")
            start += n
        pos += len(mv)


def crc32(path: str | os.PathLike) -> int:
    """The CRC32 of the file at ``path``."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


# ------------------------------------------------------------------------------ decoding


def wrap(arr: np.ndarray, kind: str):
    """A stored array as the leaf it was: a tensor for kind ``torch``."""
    if kind == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(arr))
    return arr


class _JsonColumn:
    """JSON cells decoded on every read, so no two reads share a mutable list or dict."""

    def __init__(self, raw: list[str]):
        self.raw = raw

    def __getitem__(self, row: int):
        return from_config(json.loads(self.raw[row]))


def decode_table(ds, kind: str) -> tuple:
    """``(values, present | None)`` of a ``table/`` dataset: values indexable by row."""
    if kind == "str":
        return ds.asstr()[()].tolist(), None
    if kind == "json":
        present = np.asarray(ds.attrs["present"], dtype=bool)
        raw = ds.asstr()[()].tolist()
        return _JsonColumn(raw), present
    if kind == "none":
        return [None] * ds.shape[0], None
    if kind == "npscalar":
        arr = ds[()]
        return [arr[i] for i in range(len(arr))], None
    return ds[()].tolist(), None
