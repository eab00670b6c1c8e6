"""HDF5 sample cache: the static pipeline's output per sample, one store per pipeline fingerprint.

A store is named by :func:`store_key`: the pipeline's configuration fingerprint
combined with the bytecode of its functions and op classes, so changing an op's
settings *or* editing its code gets a new store instead of stale samples. Each
sample also records a digest of its input (id and source row): a changed row is
recomputed by the next build.

Layout of a store (``<root>/<store_key(pipeline)>/``)::

    store.json                   what the store is (format, fingerprint, pipeline repr)
    shard-<seq>-<uid>.h5         immutable HDF5 shards: one row per output sample
    shard-<seq>-<uid>.json       the shard's manifest; its presence is the commit

A shard is written under a temporary name and renamed into place, then its
manifest is written the same way: a build killed at any moment leaves only
temporary files (removed by the next build) or complete shards. A restarted
build computes only the samples no committed manifest lists, and deletes the
shards whose samples it has all rebuilt (their source rows changed). Every
shard's size is checked against its manifest on open; a truncated or unreadable
shard is reported, set aside (``*.corrupt``) and its samples rebuilt.

Arrays of one shape and dtype are stored as one ``(n, *shape)`` dataset per key
(contiguous, one row per sample); other arrays as one dataset per sample; scalars
and strings as columns held in memory by readers. A contiguous row is read with a
single ``pread`` straight into the output buffer or, from 1 MiB up (volumes), is
mapped copy-on-write: the page-cache pages are mapped into the array handed out
(no copy), and writing to it copies only the pages written, never touching the
file or another read of the same sample. Each process opens the store lazily, so
DataLoader workers never share an HDF5 handle.

>>> import numpy as np, tempfile
>>> from fusefn import nd
>>> def make(s):
...     return nd.assoc(s, "data.input.img", np.full((1, 4, 4), float(s["data"]["sample_id"]), np.float32))
>>> cache = H5Cache(root=tempfile.mkdtemp(), pipeline=make, progress=False)
>>> report = cache.build([0, 1, 2])
>>> report.computed, report.failed
(3, 0)
>>> cache.read(2)["data"]["input"]["img"][0, 0, 0]
np.float32(2.0)
>>> cache.build([0, 1, 2, 3]).computed  # resumable: only the new sample is computed
1
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime
import decimal
import errno
import functools
import hashlib
import json
import logging
import mmap
import multiprocessing as mp
import os
import pathlib
import signal
import sys
import threading
import time
import traceback
import types
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from fusefn import nd
from fusefn.core import fingerprint, from_config, record, to_config
from fusefn.data.pipeline import run_pipeline
from fusefn.errors import ConfigError, FusefnError, SampleError

__all__ = ["H5Cache", "BuildReport", "NotCachedError", "initial_samples", "store_key"]

FORMAT = 1
SAMPLE_ID = "data.sample_id"
_log = logging.getLogger("fusefn")
_LOCK = threading.RLock()
# rows this large are mapped instead of copied: below it a pread is as fast, and each mapping
# costs the process one of its limited memory-map slots (vm.max_map_count) while the array lives
_MAP_MIN_BYTES = 1 << 20
# Linux >= 5.14: fault the mapped page-cache pages in at read time (no copy), so a read hands out
# resident data and the first touch pays no page faults; older kernels refuse it and get readahead
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


class NotCachedError(FusefnError, KeyError):
    """The sample id has no entry in the store (never built, or its shard was damaged)."""

    def __str__(self) -> str:
        return str(self.args[0])


# ----------------------------------------------------------------------------- inputs


def initial_samples(source) -> list[dict]:
    """The sample dicts a pipeline starts from: ``data.sample_id`` plus the source row at ``data.source``.

    ``source`` is a :class:`~fusefn.data.DataSource` or an iterable of ids (or of
    ready sample dicts).
    """
    from fusefn.data.sources import DataSource

    if isinstance(source, DataSource):
        out = []
        for row in source.rows():
            sid = row.pop(source.id_column)
            row = {k: _plain_cell(v) for k, v in row.items()}
            out.append({"data": {"sample_id": sid, "source": row}} if row else {"data": {"sample_id": sid}})
        return out
    out = []
    for item in source:
        if isinstance(item, Mapping):
            if not nd.contains(item, SAMPLE_ID):
                raise ConfigError(f"a sample dict given to the cache has no {SAMPLE_ID!r}: {sorted(nd.keys(item))}")
            out.append(dict(item))
        else:
            out.append({"data": {"sample_id": item.item() if isinstance(item, np.generic) else item}})
    ids = [s["data"]["sample_id"] for s in out]
    if len(set(map(_id_key, ids))) != len(ids):
        raise ConfigError("the samples given to the cache have duplicate ids")
    return out


def _plain_cell(v):
    # dates, times and decimals become text, so every row can be hashed and stored
    if isinstance(v, (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal)):
        return str(v)
    return v


def _digest(sample: dict) -> str:
    try:
        return fingerprint(sample)
    except ConfigError:
        return hashlib.sha256(repr(sample).encode()).hexdigest()[:32]


def _id_key(sid) -> str:
    # ids may be ints or strings: keep 1 and "1" distinct; the common cases skip JSON (hot on reads)
    t = type(sid)
    if t is str:
        return "s" + sid
    if t is int:
        return f"i{sid}"
    if isinstance(sid, np.generic):  # np.int64(1) from an index array is the id 1
        return _id_key(sid.item())
    return "j" + json.dumps(sid)


# ----------------------------------------------------------------------------- report


@record
class BuildReport:
    """What a :meth:`H5Cache.build` did: counts, failures (sample id, op, key, error), timing."""

    store: str
    total: int
    reused: int
    computed: int
    failed: int
    dropped: int
    outputs: int
    seconds: float
    failures: tuple = ()
    repaired: tuple = ()

    def __str__(self) -> str:
        lines = [
            f"cache {self.store}: {self.total} samples, {self.reused} reused, {self.computed} computed "
            f"({self.outputs} outputs, {self.dropped} dropped), {self.failed} failed in {self.seconds:.1f} s"
        ]
        lines += [f"  repaired: {r}" for r in self.repaired]
        lines += [
            f"  failed: sample {f['sample_id']!r} op {f.get('op')} key {f.get('key')!r}: {f['error']}"
            for f in self.failures[:20]
        ]
        if len(self.failures) > 20:
            lines.append(f"  … and {len(self.failures) - 20} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------- encoding


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _signature(v) -> tuple:
    """How a leaf is stored: arrays by (kind, dtype, shape), scalars by their Python kind."""
    if _is_tensor(v):
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
    if _is_tensor(v):
        return v.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(v)


def _array_bytes(v) -> int:
    if _is_tensor(v):
        return v.nelement() * v.element_size()
    return v.nbytes if isinstance(v, np.ndarray) else 0


_TABLE_DTYPES = {"bool": np.bool_, "int": np.int64, "float": np.float64}


def _ds_name(key: str) -> str:
    return key.replace("%", "%25").replace("/", "%2F")


def _key_name(name: str) -> str:
    return name.replace("%2F", "/").replace("%25", "%")


_IOV_MAX = 512


def _write_shard(path: str, rows: list[dict], compression, compression_level) -> None:
    """Write flattened sample dicts ``rows`` as one HDF5 file at ``path``."""
    import h5py

    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    n = len(rows)
    raw: list[tuple[int, list]] = []
    # large datasets start on a page boundary, so every row of a stacked array is aligned for its dtype
    # (readers map rows of volumes straight into arrays)
    with h5py.File(
        path, "w", libver="latest", locking=False, alignment_threshold=_MAP_MIN_BYTES, alignment_interval=4096
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
                for i, (v, p) in enumerate(zip(values, present)):
                    if p:
                        a = _as_numpy(v)
                        chunked = compression is not None and a.size > 0
                        g.create_dataset(
                            str(i),
                            data=a,
                            compression=compression if chunked else None,
                            compression_opts=compression_level if chunked else None,
                            shuffle=chunked and a.dtype.itemsize > 1,
                        )
            elif len(sigs) == 1 and complete and kinds <= set(_TABLE_DTYPES):
                ds = f.create_dataset(f"table/{name}", data=np.asarray(values, dtype=_TABLE_DTYPES[next(iter(kinds))]))
                ds.attrs["kind"] = next(iter(kinds))
            elif len(sigs) == 1 and complete and kinds == {"npscalar"}:
                ds = f.create_dataset(f"table/{name}", data=np.asarray(values))
                ds.attrs["kind"] = "npscalar"
            elif len(sigs) == 1 and complete and kinds == {"str"}:
                ds = f.create_dataset(f"table/{name}", data=values, dtype=h5py.string_dtype())
                ds.attrs["kind"] = "str"
            elif len(sigs) == 1 and complete and kinds == {"none"}:
                ds = f.create_dataset(f"table/{name}", shape=(n,), dtype=np.bool_)
                ds.attrs["kind"] = "none"
            else:
                # mixed kinds or holes: each row as JSON text (rare, small values)
                enc = [json.dumps(to_config(_plain(v))) if p else "" for v, p in zip(values, present)]
                ds = f.create_dataset(f"table/{name}", data=enc, dtype=h5py.string_dtype())
                ds.attrs["kind"] = "json"
                ds.attrs["present"] = np.asarray(present, dtype=np.bool_)
    if raw:
        fd = os.open(path, os.O_WRONLY)
        try:
            for offset, arrays in raw:
                for i in range(0, len(arrays), _IOV_MAX):
                    part = arrays[i : i + _IOV_MAX]
                    want = sum(a.nbytes for a in part)
                    if os.pwritev(fd, part, offset) != want:
                        raise OSError(f"short write to {path}")
                    offset += want
        finally:
            os.close(fd)


def _plain(v):
    if _is_tensor(v):
        return v.detach().cpu().numpy()
    return v


def _check_leaf(v, key: str, sid) -> None:
    if _is_tensor(v):
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


# ----------------------------------------------------------------------------- builder

_WORKER: dict = {}


def _pdeathsig() -> None:
    """Have the kernel kill this worker when the building process dies (Linux), so an
    interrupted build never leaves orphans writing into the store."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _keep_freed_memory() -> None:
    """Have glibc keep freed memory in this build worker instead of handing it back to the kernel.

    A worker allocates and frees arrays of the same sizes sample after sample. By default glibc serves
    large ones from fresh mappings and hands freed heap back to the kernel, so every next sample faults
    its pages in again: about a sixth of a 3D build's time here. Only build workers do this; they exit when
    the build ends.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: arrays up to 32 MiB come from the reusable heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap for the next samples
    except Exception:
        pass


def _init_worker(pipeline, store_dir, parent_pid, options) -> None:
    _pdeathsig()
    _keep_freed_memory()
    if os.getppid() != parent_pid:
        os._exit(1)
    torch = sys.modules.get("torch")  # importing it here would cost each worker seconds
    if torch is not None:
        torch.set_num_threads(1)
    _WORKER.update(pipeline=pipeline, store_dir=store_dir, parent_pid=parent_pid, options=options)


def _run_task(items: list[tuple[str, dict]]) -> list[dict]:
    w = _WORKER
    return _build_items(w["pipeline"], w["store_dir"], items, w["options"], w["parent_pid"])


def _outputs(sid, outs: list[dict]) -> list[dict]:
    """The pipeline's outputs with unique ids (``<id>#<k>`` when several share one)."""
    if len(outs) > 1:
        ids = [nd.get(o, SAMPLE_ID, sid) for o in outs]
        if len({_id_key(i) for i in ids}) != len(ids):
            outs = [nd.assoc(o, SAMPLE_ID, f"{sid}#{k}") for k, o in enumerate(outs)]
    fixed = []
    for o in outs:
        oid = nd.get(o, SAMPLE_ID, sid)
        if isinstance(oid, np.generic):
            oid = oid.item()
        if not isinstance(oid, (str, int)) or isinstance(oid, bool):
            raise SampleError(f"output sample id must be a str or int, got {oid!r}", sample_id=sid, key=SAMPLE_ID)
        fixed.append(o if nd.get(o, SAMPLE_ID, None) is oid else nd.assoc(o, SAMPLE_ID, oid))
    return fixed


def _failure(sid, exc: BaseException) -> dict:
    if isinstance(exc, SampleError):
        return {"sample_id": sid, "op": exc.op, "key": exc.key, "error": exc.reason}
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return {"sample_id": sid, "op": None, "key": None, "error": f"{type(exc).__name__}: {exc}{where}"}


def _build_items(pipeline, store_dir: str, items, options: dict, parent_pid: int | None) -> list[dict]:
    """Compute ``items`` [(digest, sample)] and commit them as one or more shards; their manifests."""
    manifests = []
    entries: list[dict] = []
    rows: list[dict] = []
    nbytes = 0

    def flush():
        nonlocal entries, rows, nbytes
        if entries:
            manifests.append(_commit(store_dir, entries, rows, options, parent_pid))
        entries, rows, nbytes = [], [], 0

    for digest, sample in items:
        sid = sample["data"]["sample_id"]
        entry = {"id": sid, "digest": digest}
        try:
            outs = _outputs(sid, run_pipeline(pipeline, sample))
            flat_outs = []
            for o in outs:
                flat = nd.flatten(o)
                for k, v in flat.items():
                    _check_leaf(v, k, nd.get(o, SAMPLE_ID))
                flat_outs.append(flat)
            size = sum(_array_bytes(v) for f in flat_outs for v in f.values())
        except Exception as exc:
            entry.update(status="failed", **{k: v for k, v in _failure(sid, exc).items() if k != "sample_id"})
            entries.append(entry)
            continue
        entry["status"] = "ok" if flat_outs else "dropped"
        entry["rows"] = list(range(len(rows), len(rows) + len(flat_outs)))
        entry["outputs"] = [f[SAMPLE_ID] for f in flat_outs]
        rows.extend(flat_outs)
        entries.append(entry)
        nbytes += size
        if nbytes >= options["shard_bytes"]:
            flush()
    flush()
    return manifests


def _commit(store_dir: str, entries, rows, options: dict, parent_pid: int | None) -> dict:
    seq = time.time_ns()
    stem = f"shard-{seq:020d}-{uuid.uuid4().hex[:12]}"
    tmp_h5 = os.path.join(store_dir, f".tmp-{stem}.h5")
    _write_shard(tmp_h5, rows, options["compression"], options["compression_level"])
    size = os.path.getsize(tmp_h5)
    manifest = {
        "format": FORMAT,
        "file": f"{stem}.h5",
        "size": size,
        "seq": seq,
        "n_rows": len(rows),
        "samples": entries,
    }
    if options["checksum"]:
        manifest["crc32"] = _crc32(tmp_h5)
    if options["durable"]:
        _fsync(tmp_h5)
    if parent_pid is not None and os.getppid() != parent_pid:
        # the build that asked for this shard is gone: do not commit into a store it no longer owns
        os.unlink(tmp_h5)
        os._exit(1)
    os.replace(tmp_h5, os.path.join(store_dir, f"{stem}.h5"))
    _write_json_atomic(os.path.join(store_dir, f"{stem}.json"), manifest, durable=options["durable"])
    return {k: v for k, v in manifest.items() if k != "samples"} | {"samples": entries}


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: str, obj, durable: bool = False) -> None:
    tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex[:12]}-{os.path.basename(path)}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(store_dir: pathlib.Path):
    import fcntl

    with open(store_dir / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log.info("cache %s: waiting for another build to finish", store_dir)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


# ----------------------------------------------------------------------------- reader


class _Shard:
    """One committed shard, opened lazily in the process that reads it."""

    def __init__(self, path: str, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.loaded = False
        self.fd = None
        self.h5 = None

    def load(self) -> None:
        import h5py

        size = os.path.getsize(self.path)
        if size != self.manifest["size"]:
            raise OSError(f"{self.path} is {size} bytes, its manifest says {self.manifest['size']} (truncated?)")
        # no chunk cache: an epoch reads each sample once, so HDF5's cache (8 MiB per dataset since HDF5 2.0)
        # would only hold memory, in every worker and for every shard opened
        self.h5 = h5py.File(self.path, "r", locking=False, rdcc_nbytes=0)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.raw: list[tuple] = []  # (key, kind, offset, row_nbytes, shape, dtype)
        self.chunked: list[tuple] = []  # (key, kind, dataset)
        self.ragged: list[tuple] = []  # (key, kind, group)
        self.tables: list[tuple] = []  # (key, values, present|None)
        for group in ("stacked", "ragged", "table"):
            if group not in self.h5:
                continue
            for name, obj in self.h5[group].items():
                key = _key_name(name)
                kind = obj.attrs["kind"]
                if isinstance(kind, bytes):
                    kind = kind.decode()
                if group == "stacked":
                    offset = obj.id.get_offset()
                    if obj.chunks is None and obj.compression is None and (offset is not None or obj.size == 0):
                        row = obj.dtype.itemsize * int(np.prod(obj.shape[1:], dtype=np.int64))
                        self.raw.append((key, kind, offset or 0, row, obj.shape[1:], obj.dtype))
                    else:
                        self.chunked.append((key, kind, obj))
                elif group == "ragged":
                    self.ragged.append((key, kind, obj))
                else:
                    self.tables.append((key, *_decode_table(obj, kind)))
        self.loaded = True

    def read(self, row: int, keys: tuple | None = None) -> dict:
        """Row ``row`` as a sample dict (only ``keys`` and the sub-trees under them, when given)."""
        if not self.loaded:
            with _LOCK:  # a prefetching thread and the main thread may open the same shard at once
                if not self.loaded:
                    self.load()

        def wanted(k: str) -> bool:
            return keys is None or k == SAMPLE_ID or any(k == q or k.startswith(q + ".") for q in keys)

        flat: dict[str, Any] = {}
        for key, kind, offset, nbytes, shape, dtype in self.raw:
            if wanted(key):
                flat[key] = _wrap(self._row(offset + row * nbytes, nbytes, shape, dtype), kind)
        for key, kind, ds in self.chunked:
            if wanted(key):
                flat[key] = _wrap(ds[row], kind)
        for key, kind, g in self.ragged:
            if wanted(key) and str(row) in g:
                flat[key] = _wrap(g[str(row)][()], kind)
        for key, values, present in self.tables:
            if wanted(key) and (present is None or present[row]):
                flat[key] = values[row]
        return nd.unflatten(flat)

    def _row(self, at: int, nbytes: int, shape: tuple, dtype) -> np.ndarray:
        """``nbytes`` at file offset ``at`` as a fresh, writable array of ``shape``."""
        if nbytes >= _MAP_MIN_BYTES and at % dtype.alignment == 0:  # stores written before rows were aligned: copy
            # checked per read: touching a mapped page past the end of a file truncated since kills the process
            if os.fstat(self.fd).st_size < at + nbytes:
                raise OSError(f"{self.path}: row at {at} ends past the end of the file; the file was truncated")
            try:
                return _mapped(self.fd, at, nbytes, shape, dtype)
            except (OSError, ValueError):  # no mapping slot left, or a file system that cannot map: copy
                pass
        buf = np.empty(shape, dtype)  # read straight into the array handed out: no extra copy
        if nbytes:
            got = os.preadv(self.fd, [buf], at)
            if got != nbytes:
                raise OSError(f"{self.path}: short read ({got} of {nbytes} bytes); the file was truncated")
        return buf

    def close(self) -> None:
        # arrays mapped from this shard stay valid: each mapping holds its own reference to the file
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        if self.h5 is not None:
            with contextlib.suppress(Exception):
                self.h5.close()
        self.loaded, self.fd, self.h5 = False, None, None


def _mapped(fd: int, at: int, nbytes: int, shape: tuple, dtype) -> np.ndarray:
    """A private copy-on-write mapping of ``nbytes`` at ``at`` in ``fd``, as an array; unmapped when it dies."""
    start = at - at % mmap.ALLOCATIONGRANULARITY
    m = mmap.mmap(fd, at - start + nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
    try:
        m.madvise(_MADV_POPULATE_READ)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            # a read error or a short file: a mapping would kill the process on first touch; the caller
            # copies instead, and a copy reports the error
            m.close()
            raise
        with contextlib.suppress(OSError):  # a kernel without MADV_POPULATE_READ: start readahead instead
            m.madvise(mmap.MADV_WILLNEED)
    return np.frombuffer(m, dtype, count=int(np.prod(shape, dtype=np.int64)), offset=at - start).reshape(shape)


def _wrap(arr: np.ndarray, kind: str):
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


def _decode_table(ds, kind: str) -> tuple:
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


class _Store:
    """A process's view of one store directory: manifests, row index, open shards."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.pid = os.getpid()
        self.shards: dict[str, _Shard] = {}
        self.entries: dict[str, dict] = {}  # id key -> latest manifest entry (+ "shard")
        self.rows: dict[str, tuple[str, int]] = {}  # output id key -> (shard file, row)
        self.owner: dict[str, str] = {}  # output id key -> id key of the source sample that produced it
        self.clashes: dict[str, tuple] = {}  # output id key -> (output id, first source id, other source id)
        self.bad: dict[str, str] = {}
        self.scan()

    def scan(self) -> None:
        """Read manifests not seen yet; check each new shard's size (cheap) and record damage."""
        with _LOCK:
            self._scan()

    def _scan(self) -> None:
        if not self.path.is_dir():
            return
        new = []
        for mpath in sorted(self.path.glob("shard-*.json")):
            name = mpath.name[: -len(".json")] + ".h5"
            if name in self.shards or name in self.bad:
                continue
            try:
                manifest = json.loads(mpath.read_text())
                h5 = self.path / manifest["file"]
                size = h5.stat().st_size
            except FileNotFoundError:
                self.bad[name] = "shard file missing"
                continue
            except (OSError, ValueError, KeyError) as exc:
                self.bad[name] = f"unreadable manifest: {exc}"
                continue
            if size != manifest["size"]:
                self.bad[name] = f"truncated: {size} bytes on disk, {manifest['size']} committed"
                continue
            new.append((manifest["seq"], name, manifest))
        for _, name, manifest in sorted(new, key=lambda t: (t[0], t[1])):
            self.shards[name] = _Shard(str(self.path / name), manifest)
            for e in manifest["samples"]:
                src = _id_key(e["id"])
                old = self.entries.get(src)
                if old is not None:  # a newer build of this sample supersedes the old rows
                    for o in old.get("outputs", ()):
                        if self.owner.get(_id_key(o)) == src:
                            self.rows.pop(_id_key(o), None)
                            self.owner.pop(_id_key(o), None)
                self.entries[src] = {**e, "shard": name}
                for o, r in zip(e.get("outputs", ()), e.get("rows", ())):
                    out = _id_key(o)
                    first = self.owner.get(out)
                    if first is not None and first != src:
                        # two source samples claim one output id: serving either would hide the other
                        self.clashes[out] = (o, self.entries[first]["id"], e["id"])
                    self.rows[out] = (name, r)
                    self.owner[out] = src

    def entry(self, sid) -> dict | None:
        return self.entries.get(_id_key(sid))

    def read(self, sid, keys: tuple | None = None, retry: bool = True) -> dict:
        loc = self.rows.get(_id_key(sid))
        if loc is None:
            self.scan()  # a build in another process may have committed it since
            loc = self.rows.get(_id_key(sid))
        if self.clashes and _id_key(sid) in self.clashes:
            raise SampleError(_clash_message(*self.clashes[_id_key(sid)]), sample_id=sid, key=SAMPLE_ID)
        if loc is None:
            e = self.entry(sid)
            if e is not None and e.get("status") == "failed":
                reason = f"failed when the cache was built: {e['error']}"
                raise SampleError(reason, sample_id=sid, op=e.get("op"), key=e.get("key"))
            why = "was dropped by the static pipeline" if e is not None else "is not in the cache; run cache.build()"
            raise NotCachedError(f"sample {sid!r} {why} (store {self.path})")
        name, row = loc
        shard = self.shards[name]
        try:
            return shard.read(row, keys)
        except FileNotFoundError:
            if retry:
                # a build in another process rebuilt every sample of this shard and deleted it: look again
                self.reset()
                return self.read(sid, keys, retry=False)
            raise NotCachedError(f"sample {sid!r} is not in the cache any more (store {self.path})") from None
        except OSError as exc:
            self.bad[name] = str(exc)
            raise NotCachedError(
                f"sample {sid!r}: shard {name} is damaged ({exc}); rebuild with cache.build()"
            ) from exc

    def close(self) -> None:
        for s in self.shards.values():
            s.close()

    def reset(self) -> None:
        """Forget everything read so far and scan the directory afresh."""
        with _LOCK:
            self.close()
            self.shards, self.entries, self.rows, self.owner, self.clashes, self.bad = {}, {}, {}, {}, {}, {}
            self._scan()


def _clash_message(out, first, other) -> str:
    return (
        f"output sample id {out!r} is produced by source samples {first!r} and {other!r}; the static "
        "pipeline must give every output its own id"
    )


_STORES: dict[str, _Store] = {}


def _store(path: pathlib.Path) -> _Store:
    key = str(path)
    st = _STORES.get(key)
    if st is None or st.pid != os.getpid():
        # a store opened before a fork is reopened: HDF5 handles must not cross processes
        st = _STORES[key] = _Store(path)
    return st


def _forget(path: pathlib.Path) -> None:
    st = _STORES.pop(str(path), None)
    if st is not None and st.pid == os.getpid():
        st.close()


# ------------------------------------------------------------------------------ H5Cache


def _code_digest(obj, h, seen: set) -> None:
    """Feed ``h`` the bytecode of every function and op class reachable from ``obj``."""
    if id(obj) in seen or obj is None or isinstance(obj, (bool, int, float, str, bytes, np.ndarray)):
        return
    seen.add(id(obj))
    if isinstance(obj, types.FunctionType):
        _feed_code(obj.__code__, h)
        for cell in obj.__closure__ or ():
            with contextlib.suppress(ValueError):
                _code_digest(cell.cell_contents, h, seen)
        _code_digest(obj.__defaults__, h, seen)
        # what the function uses from the code around it: editing a helper it calls (in its module, in the
        # user's other modules, or elsewhere in its own package) or a constant it reads changes what it computes
        names = sorted(_names(obj.__code__))
        for name in names:
            ref = obj.__globals__.get(name)
            if _is_constant(ref):
                h.update(f"{name}={_constant_repr(ref)}".encode())
            elif isinstance(ref, types.ModuleType) and _followed(ref, obj):
                for attr in names:  # `helpers.scale(x)`: the attribute names are among the code's names
                    sub = getattr(ref, attr, None)
                    if _is_constant(sub):
                        h.update(f"{name}.{attr}={_constant_repr(sub)}".encode())
                    else:
                        _follow(sub, obj, h, seen)
            else:
                _follow(ref, obj, h, seen)
    elif isinstance(obj, type):
        _feed_methods(obj, h, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _code_digest(v, h, seen)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _code_digest(v, h, seen)
    elif attrs.has(type(obj)) or (callable(obj) and not isinstance(obj, types.BuiltinFunctionType)):
        _feed_methods(type(obj), h, seen)
        if attrs.has(type(obj)):
            for f in attrs.fields(type(obj)):
                _code_digest(getattr(obj, f.name), h, seen)


def _follow(ref, user, h, seen: set) -> None:
    ref = getattr(ref, "__wrapped__", ref)  # functools.cache / wraps decorate the real function
    if isinstance(ref, (types.FunctionType, type)) and _followed(ref, user):
        _code_digest(ref, h, seen)


def _followed(ref, user) -> bool:
    """Whether the code of ``ref`` (function, class or module) counts in the store key of code using it:
    the user's own code, and anything in the same top-level package; not the standard library or the
    installed third-party packages (numpy, torch: their version is not the pipeline's business)."""
    module = getattr(ref, "__module__", None) if not isinstance(ref, types.ModuleType) else ref.__name__
    if module is None:
        return False
    if module == user.__module__ or module.partition(".")[0] == str(user.__module__).partition(".")[0]:
        return True
    path = getattr(sys.modules.get(module), "__file__", None)
    return path is not None and not os.path.realpath(path).startswith(_library_dirs())


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    import sysconfig

    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs |= {os.path.realpath(p) for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)}
    return tuple(sorted(d + os.sep for d in dirs))


_CONSTANT_TYPES = (bool, int, float, complex, str, bytes, type(None))


def _is_constant(v) -> bool:
    if isinstance(v, _CONSTANT_TYPES):
        return True
    if isinstance(v, (tuple, frozenset)):
        return all(_is_constant(x) for x in v)
    return False


def _constant_repr(v) -> str:
    if isinstance(v, frozenset):  # its repr order follows the process's hash seed
        return repr(sorted(map(_constant_repr, v)))
    if isinstance(v, tuple):
        return "(" + ",".join(map(_constant_repr, v)) + ")"
    return repr(v)


def _feed_methods(cls: type, h, seen: set) -> None:
    """Feed ``h`` the methods of ``cls`` and its bases (and, through them, their module's helpers)."""
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "attr", "attrs") or ("class", id(klass)) in seen:
            continue
        seen.add(("class", id(klass)))
        for name, member in sorted(vars(klass).items()):
            # attrs-generated methods are skipped: the fields they encode are in the fingerprint, and
            # __hash__ embeds a per-process salt that would give every process its own store
            if isinstance(member, types.FunctionType) and not member.__code__.co_filename.startswith("<attrs"):
                h.update(name.encode())
                _code_digest(member, h, seen)


def _names(code) -> set[str]:
    """Global names used by ``code`` and the code objects nested in it (comprehensions, lambdas)."""
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


def _feed_code(code, h) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _feed_code(c, h)
        elif isinstance(c, frozenset):  # its repr order follows the process's hash seed
            h.update(repr(sorted(map(repr, c))).encode())
        else:
            h.update(repr(c).encode())


def store_key(pipeline) -> str:
    """The name of ``pipeline``'s store: its :func:`~fusefn.core.fingerprint` (configuration) combined
    with the bytecode of its functions and op classes, of the helpers they call from the user's modules or
    their own package, and the plain constants those read: editing any of them gets a new store.

    Not covered: file contents behind paths, module-level arrays or dicts, installed library versions.
    """
    h = hashlib.sha256(fingerprint(pipeline).encode())
    _code_digest(pipeline, h, set())
    return h.hexdigest()[:32]


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a store directory (it holds ``store.json``)."""
    return (pathlib.Path(path) / "store.json").is_file()


def verify_store(path: str | os.PathLike, deep: bool = False) -> list[str]:
    """Problems found in the store at ``path`` (empty when sound): size, HDF5 structure, with ``deep`` CRC32.

    Needs no pipeline, so ``fusefn cache verify`` can check any store on disk.
    """
    import h5py

    path = pathlib.Path(path)
    problems = []
    for mpath in sorted(path.glob("shard-*.json")):
        try:
            manifest = json.loads(mpath.read_text())
            h5 = path / manifest["file"]
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{mpath.name}: unreadable manifest ({exc})")
            continue
        if not h5.exists():
            problems.append(f"{h5.name}: missing")
            continue
        if h5.stat().st_size != manifest["size"]:
            problems.append(f"{h5.name}: truncated")
            continue
        try:
            with h5py.File(h5, "r", locking=False) as f:
                if f.attrs["n"] != manifest["n_rows"]:
                    problems.append(f"{h5.name}: {f.attrs['n']} rows, manifest says {manifest['n_rows']}")
        except Exception as exc:
            problems.append(f"{h5.name}: unreadable ({exc})")
            continue
        if deep and "crc32" in manifest and _crc32(str(h5)) != manifest["crc32"]:
            problems.append(f"{h5.name}: checksum mismatch")
    return problems


def store_info(path: str | os.PathLike) -> dict:
    """What a store holds: its description, sample counts by status, shards and bytes on disk."""
    path = pathlib.Path(path)
    if not is_store(path):
        raise FusefnError(f"{path} is not a fusefn cache store (no store.json)")
    store = _Store(path)  # a private view: never shared with readers of this process
    try:
        counts: dict[str, int] = {}
        for e in store.entries.values():
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        return {
            "path": str(path),
            "store": json.loads((path / "store.json").read_text()),
            "samples": counts,
            "outputs": len(store.rows),
            "shards": len(store.shards),
            "damaged": dict(store.bad),
            "bytes": sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
        }
    finally:
        store.close()


def _nonneg_int(instance, attribute, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"H5Cache.{attribute.name} must be an int >= 0, got {value!r}")


def _compression_ok(instance, attribute, value) -> None:
    if value not in (None, "gzip", "lzf"):
        raise ConfigError(f"H5Cache.compression must be None, 'gzip' or 'lzf', got {value!r}")


def _callable(instance, attribute, value) -> None:
    if not callable(value):
        raise ConfigError(f"H5Cache.pipeline must be callable (an op or a chain of ops), got {value!r}")


@record
class H5Cache:
    """The static pipeline's outputs per sample, in a store named by the pipeline's fingerprint.

    Args:
        root: directory holding stores; each pipeline gets ``root/<fingerprint>``.
        pipeline: the static pipeline, ``sample -> sample | None | list[sample]``.
        workers: processes computing samples during :meth:`build` (0: in this process).
        compression: ``None`` (fastest reads), or lossless ``"gzip"``/``"lzf"`` per sample (bytes shuffled
            first for multi-byte types, which lets float images compress).
        shard_bytes: array bytes per shard file before a worker commits it.
        checksum: store a CRC32 per shard, checked by ``verify(deep=True)``.
        durable: fsync shards before committing (survives power loss, slower).
        progress: show a tqdm bar during builds.
    """

    root: pathlib.Path = attrs.field(converter=pathlib.Path)
    pipeline: Callable = attrs.field(validator=_callable)
    workers: int = attrs.field(default=0, validator=_nonneg_int)
    compression: str | None = attrs.field(default=None, validator=_compression_ok)
    compression_level: int | None = None
    shard_bytes: int = attrs.field(default=256 << 20, validator=_nonneg_int)
    shard_size: int | None = None
    checksum: bool = False
    durable: bool = False
    progress: bool = True
    _fingerprint: str = attrs.field(init=False, eq=False, repr=False)
    _path: pathlib.Path = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        # hashed once: reads must not re-hash the pipeline (a TableRow may hold a whole table)
        object.__setattr__(self, "_fingerprint", store_key(self.pipeline))
        object.__setattr__(self, "_path", self.root / self._fingerprint)

    @property
    def fingerprint(self) -> str:
        """The static pipeline's fingerprint, the store's name."""
        return self._fingerprint

    @property
    def path(self) -> pathlib.Path:
        """The store directory for this pipeline."""
        return self._path

    def _options(self) -> dict:
        return {
            "compression": self.compression,
            "compression_level": self.compression_level,
            "shard_bytes": max(1, self.shard_bytes),
            "checksum": self.checksum,
            "durable": self.durable,
        }

    # ------------------------------------------------------------------ build

    def build(self, source, *, retry_failed: bool = False) -> BuildReport:
        """Compute and store every sample of ``source`` not stored yet; report what happened.

        Resumable: samples in committed shards are reused, so a build killed half-way
        and run again computes only the rest. A sample whose source row changed is
        recomputed. Samples whose pipeline raised are recorded (see :meth:`failures`)
        and not retried unless ``retry_failed``.
        """
        t0 = time.perf_counter()
        samples = initial_samples(source)
        store_dir = self.path
        digests = [_digest(s) for s in samples]
        if store_dir.is_dir() and not self._todo(_store(store_dir), samples, digests, retry_failed):
            # everything is stored already: no lock, no writes (works on a read-only copy of the store)
            return self._report(store_dir, samples, [], [], [], t0)
        store_dir.mkdir(parents=True, exist_ok=True)
        fp = store_dir.name
        with _locked(store_dir):
            info = store_dir / "store.json"
            if not info.exists():
                _write_json_atomic(
                    str(info), {"format": FORMAT, "fingerprint": fp, "pipeline": repr(self.pipeline)[:4000]}
                )
            for tmp in store_dir.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)
            repaired = self._repair(store_dir)
            _forget(store_dir)
            store = _Store(store_dir)
            todo = self._todo(store, samples, digests, retry_failed)
            rebuilt = any(store.entry(s["data"]["sample_id"]) is not None for _, s in todo)
            store.close()
            manifests = self._compute(store_dir, todo)
            if rebuilt:  # only a sample stored before can leave a shard with nothing current in it
                self._drop_superseded(store_dir)
        _forget(store_dir)
        return self._report(store_dir, samples, todo, manifests, repaired, t0)

    @staticmethod
    def _drop_superseded(store_dir: pathlib.Path) -> None:
        """Delete the shards none of whose samples is current any more (each was rebuilt since), so a
        store keeps the size of what it serves. A shard holding one current sample stays whole."""
        store = _Store(store_dir)
        try:
            live = {e["shard"] for e in store.entries.values()}
            dead = [name for name in store.shards if name not in live]
        finally:
            store.close()
        for name in dead:
            h5 = store_dir / name
            # the manifest first: a shard without one is uncommitted, and the next build sweeps it
            h5.with_suffix(".json").unlink(missing_ok=True)
            h5.unlink(missing_ok=True)
        if dead:
            _log.info("cache %s: deleted %d shard(s) whose samples were all rebuilt", store_dir, len(dead))

    @staticmethod
    def _todo(store: _Store, samples: list, digests: list, retry_failed: bool) -> list:
        """``(digest, sample)`` of the samples with no entry, a changed input, or (when retrying) a failure."""
        if store.bad:
            return [(d, s) for d, s in zip(digests, samples)]  # let the locked pass repair and decide
        todo = []
        for digest, s in zip(digests, samples):
            e = store.entry(s["data"]["sample_id"])
            if e is None or e["digest"] != digest or (retry_failed and e["status"] == "failed"):
                todo.append((digest, s))
        return todo

    def _report(self, store_dir, samples, todo, manifests, repaired, t0) -> BuildReport:
        store = _store(store_dir)
        failures, dropped, outputs = [], 0, 0
        for s in samples:
            sid = s["data"]["sample_id"]
            e = store.entry(sid)
            if e is None:
                failures.append({"sample_id": sid, "op": None, "key": None, "error": "not stored (worker lost)"})
            elif e["status"] == "failed":
                failures.append({"sample_id": sid, "op": e.get("op"), "key": e.get("key"), "error": e["error"]})
            elif e["status"] == "dropped":
                dropped += 1
            else:
                outputs += len(e["outputs"])
        wanted = {_id_key(s["data"]["sample_id"]) for s in samples}
        for oid, first, other in store.clashes.values():
            if _id_key(other) in wanted:
                failures.append(
                    {"sample_id": other, "op": None, "key": SAMPLE_ID, "error": _clash_message(oid, first, other)}
                )
        computed = sum(1 for m in manifests for e in m["samples"] if e["status"] != "failed")
        report = BuildReport(
            store=str(store_dir),
            total=len(samples),
            reused=len(samples) - len(todo),
            computed=computed,
            failed=len(failures),
            dropped=dropped,
            outputs=outputs,
            seconds=time.perf_counter() - t0,
            failures=tuple(failures),
            repaired=tuple(repaired),
        )
        if failures or repaired:
            _log.warning("%s", report)
        elif todo:
            _log.info("%s", report)
        return report

    def _repair(self, store_dir: pathlib.Path) -> list[str]:
        """Set aside shards that fail the size check or do not open; say which."""
        import h5py

        repaired = []
        for mpath in sorted(store_dir.glob("shard-*.json")):
            h5 = mpath.with_suffix(".h5")
            problem = None
            try:
                manifest = json.loads(mpath.read_text())
                size = h5.stat().st_size
                if size != manifest["size"]:
                    problem = f"truncated ({size} of {manifest['size']} bytes)"
                else:
                    with h5py.File(h5, "r", locking=False):
                        pass
            except FileNotFoundError:
                problem = "shard file missing"
            except Exception as exc:
                problem = f"unreadable ({type(exc).__name__}: {exc})"
            if problem:
                _log.warning("cache %s: shard %s is %s; its samples will be rebuilt", store_dir, h5.name, problem)
                for p in (h5, mpath):
                    if p.exists():
                        os.replace(p, p.with_name(p.name + ".corrupt"))
                repaired.append(f"{h5.name}: {problem}")
        # an .h5 with no manifest was renamed but never committed (killed in between)
        for h5 in store_dir.glob("shard-*.h5"):
            if not h5.with_suffix(".json").exists():
                h5.unlink(missing_ok=True)
        return repaired

    def _compute(self, store_dir: pathlib.Path, todo: list) -> list[dict]:
        from tqdm.auto import tqdm

        if not todo:
            return []
        # a few tasks per worker balance the load; at least 32 samples each keeps small builds in few files
        per_task = self.shard_size or min(256, max(32, -(-len(todo) // (max(1, self.workers) * 4))))
        tasks = [todo[i : i + per_task] for i in range(0, len(todo), per_task)]
        options = self._options()
        manifests: list[dict] = []
        bar = tqdm(total=len(todo), desc=f"cache {store_dir.name[:8]}", unit="sample", disable=not self.progress)
        try:
            if self.workers == 0:
                for task in tasks:
                    manifests.extend(_build_items(self.pipeline, str(store_dir), task, options, None))
                    bar.update(len(task))
            else:
                ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
                init = (self.pipeline, str(store_dir), os.getpid(), options)
                with cf.ProcessPoolExecutor(
                    self.workers, mp_context=ctx, initializer=_init_worker, initargs=init
                ) as ex:
                    futures = {ex.submit(_run_task, t): len(t) for t in tasks}
                    for fut in cf.as_completed(futures):
                        try:
                            manifests.extend(fut.result())
                        except cf.process.BrokenProcessPool as exc:
                            # a worker died (out of memory, a crash in a C library): what was committed
                            # stays; the rest is reported as not stored and computed by the next build
                            _log.error("cache %s: a build worker died (%s); reporting the rest", store_dir, exc)
                            break
                        bar.update(futures[fut])
        finally:
            bar.close()
        return manifests

    # ------------------------------------------------------------------- read

    def read(self, sample_id, keys: Sequence[str] | None = None) -> dict:
        """The stored output sample ``sample_id`` (a fresh dict of fresh arrays).

        Args:
            keys: read only these keys (and the sub-trees under them), e.g. ``("data.gt.label",)``.
        """
        return _store(self.path).read(sample_id, None if keys is None else tuple(keys))

    def read_many(self, ids: Iterable, keys: Sequence[str] | None = None) -> list[dict]:
        """:meth:`read` of several ids."""
        store = _store(self.path)
        keys = None if keys is None else tuple(keys)
        return [store.read(i, keys) for i in ids]

    def __contains__(self, sample_id) -> bool:
        return _id_key(sample_id) in _store(self.path).rows

    def entry(self, source_id) -> dict | None:
        """The manifest entry of a source sample: status (ok/dropped/failed), outputs, error."""
        return _store(self.path).entry(source_id)

    def ids(self, source=None) -> list:
        """Output sample ids, in source order when ``source`` (DataSource or ids) is given."""
        store = _store(self.path)
        if source is None:
            return [o for e in store.entries.values() for o in e.get("outputs", ())]
        out = []
        for s in initial_samples(source):
            e = store.entry(s["data"]["sample_id"])
            if e is not None:
                out.extend(e.get("outputs", ()))
        return out

    def failures(self) -> list[dict]:
        """``{sample_id, op, key, error}`` of every sample whose pipeline raised."""
        store = _store(self.path)
        return [
            {"sample_id": e["id"], "op": e.get("op"), "key": e.get("key"), "error": e["error"]}
            for e in store.entries.values()
            if e["status"] == "failed"
        ]

    def verify(self, deep: bool = False) -> list[str]:
        """Problems found in the store (empty when sound): size, HDF5 structure and, with ``deep``, CRC32."""
        return verify_store(self.path, deep=deep)

    def clear(self) -> None:
        """Delete this pipeline's store."""
        import shutil

        _forget(self.path)
        shutil.rmtree(self.path, ignore_errors=True)
