"""Reading a store: a :class:`Reader` per process, shards opened lazily, rows by ``pread`` or mapping.

A :class:`Reader` is opened explicitly (``cache.open()``) and belongs to the process
that opened it: HDF5 handles and file descriptors must not cross a fork, so a reader
used in a forked child (a DataLoader worker) starts over there, and a pickled reader
reopens its store where it is unpickled. An object shared with workers keeps its
reader in a :class:`ReaderSlot`, which opens one per process on first use.

A contiguous row is read with a single ``pread`` straight into the output buffer or,
from 1 MiB up (volumes), is mapped copy-on-write: the page-cache pages are mapped into
the array handed out (no copy), and writing to it copies only the pages written, never
touching the file or another read of the same sample.

What a read checks (see docs/data.md, "Integrity"): a reader opened with the digests of
its source rows (``cache.open(source)``, as a :class:`~fusefn.data.Dataset` does) serves a
row only if the stored input digest is the reader's (:class:`StaleSampleError` otherwise),
and every row's stored checksums are compared with its bytes (:class:`DamagedSampleError`).
A shard found damaged is marked (``<shard>.damaged``) so the next build rebuilds it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import pathlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from fusefn import keys as well_known
from fusefn import nd
from fusefn.data.cache.inputs import id_key, initial_samples
from fusefn.data.cache.shard import ALIGNED_BYTES, cell_sums, decode_table, key_name, row_sum, wrap
from fusefn.errors import FusefnError, SampleError

__all__ = [
    "DamagedSampleError",
    "NotCachedError",
    "Reader",
    "ReaderSlot",
    "StaleSampleError",
    "mark_damaged",
]

# rows this large are mapped instead of copied: below it a pread is as fast, and each mapping
# costs the process one of its limited memory-map slots (vm.max_map_count) while the array lives
_MAP_MIN_BYTES = ALIGNED_BYTES
# Linux >= 5.14: fault the mapped page-cache pages in at read time (no copy), so a read hands out
# resident data and the first touch pays no page faults; older kernels refuse it and get readahead
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


class NotCachedError(FusefnError, KeyError):
    """The store cannot serve the sample: never built, built from another source row, or damaged.

    ``sample_id`` and ``shard`` (the shard file, when one is involved) name what was read.
    """

    def __init__(self, message: str, *, sample_id=None, shard: str | None = None):
        super().__init__(message)
        self.sample_id = sample_id
        self.shard = shard

    def __str__(self) -> str:
        return str(self.args[0])


class StaleSampleError(NotCachedError):
    """The stored sample was built from another source row (or table) than the reader's: never served."""


class DamagedSampleError(NotCachedError):
    """The stored sample's shard is damaged (checksum mismatch, unreadable HDF5, truncated)."""


class _CorruptRow(Exception):
    """A row's bytes do not match its stored checksum."""


MARK = ".damaged"  # "<shard>.h5.damaged": found damaged by a read or a verify; the next build rebuilds it


def mark_damaged(store_dir: pathlib.Path, name: str, why: str) -> None:
    """Leave a note that shard ``name`` is damaged, so the next build sets it aside (best effort: a
    read-only store just is not marked)."""
    from fusefn._atomic import write_bytes

    with contextlib.suppress(OSError):
        write_bytes(store_dir / (name + MARK), why.encode())


class _Shard:
    """One committed shard, opened on its first read."""

    def __init__(self, path: str, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.loaded = False
        self.file = None
        self.h5 = None

    def load(self, verify: bool = True) -> None:
        """Open the file and index its datasets (and, with ``verify``, check every table cell's checksum).
        On any error nothing stays open."""
        try:
            self._load(verify)
        except BaseException:
            self.close()
            raise

    def _load(self, verify: bool) -> None:
        import h5py

        size = os.path.getsize(self.path)
        if size != self.manifest["size"]:
            raise OSError(f"{self.path} is {size} bytes, its manifest says {self.manifest['size']} (truncated?)")
        # no chunk cache: an epoch reads each sample once, so HDF5's cache (8 MiB per dataset since HDF5 2.0)
        # would only hold memory, in every worker and for every shard opened
        self.h5 = h5py.File(self.path, "r", locking=False, rdcc_nbytes=0)
        self.file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - lives as long as the shard is open
        n = int(self.h5.attrs["n"])
        if n != self.manifest.get("n_rows", n):
            raise OSError(f"{self.path} holds {n} rows, its manifest says {self.manifest['n_rows']}")
        sums = self.h5.get("sums")  # tables are checked here, once (cheap); arrays per read, when ``verify``
        self.raw: list[tuple] = []  # (key, kind, offset, row_nbytes, shape, dtype, sums|None)
        self.chunked: list[tuple] = []  # (key, kind, dataset, sums|None)
        self.ragged: list[tuple] = []  # (key, kind, group, sums|None)
        self.tables: list[tuple] = []  # (key, values, present|None, rows whose cell fails its checksum)
        for group in ("stacked", "ragged", "table"):
            if group not in self.h5:
                continue
            for name, obj in self.h5[group].items():
                key = key_name(name)
                kind = obj.attrs["kind"]
                if isinstance(kind, bytes):
                    kind = kind.decode()
                expected = None
                if sums is not None and f"{group}/{name}" in sums:
                    expected = sums[f"{group}/{name}"][()]
                    if expected.shape != (n,):
                        raise OSError(f"{self.path}: checksums of {group}/{name} have shape {expected.shape}")
                    expected = expected.tolist()  # list indexing and int compares are the cheapest per read
                checked = expected if verify else None
                if group == "stacked":
                    offset = obj.id.get_offset()
                    if obj.chunks is None and obj.compression is None and (offset is not None or obj.size == 0):
                        row = obj.dtype.itemsize * int(np.prod(obj.shape[1:], dtype=np.int64))
                        self.raw.append((key, kind, offset or 0, row, obj.shape[1:], obj.dtype, checked))
                    else:
                        self.chunked.append((key, kind, obj, checked))
                elif group == "ragged":
                    self.ragged.append((key, kind, obj, checked))
                else:
                    bad: frozenset = frozenset()
                    if expected is not None and kind != "none":
                        stored = obj.asstr()[()].tolist() if kind in ("str", "json") else obj[()]
                        bad = frozenset(np.flatnonzero(cell_sums(stored) != np.asarray(expected, np.uint32)).tolist())
                    self.tables.append((key, *decode_table(obj, kind), bad))
        self.loaded = True

    def read(self, row: int, keys: tuple | None = None) -> dict:
        """Row ``row`` as a sample dict (only ``keys`` and the sub-trees under them, when given)."""

        def wanted(k: str) -> bool:
            return keys is None or k == well_known.SAMPLE_ID or any(k == q or k.startswith(q + ".") for q in keys)

        flat: dict[str, Any] = {}
        for key, kind, offset, nbytes, shape, dtype, sums in self.raw:
            if wanted(key):
                flat[key] = wrap(_checked(self._row(offset + row * nbytes, nbytes, shape, dtype), sums, row, key), kind)
        for key, kind, ds, sums in self.chunked:
            if wanted(key):
                flat[key] = wrap(_checked(ds[row], sums, row, key), kind)
        for key, kind, g, sums in self.ragged:
            if wanted(key) and str(row) in g:
                flat[key] = wrap(_checked(g[str(row)][()], sums, row, key), kind)
        for key, values, present, bad in self.tables:
            if wanted(key) and (present is None or present[row]):
                if row in bad:
                    raise _CorruptRow(f"key {key!r}: row {row} does not match its checksum")
                flat[key] = values[row]
        return nd.unflatten(flat)

    def _row(self, at: int, nbytes: int, shape: tuple, dtype) -> np.ndarray:
        """``nbytes`` at file offset ``at`` as a fresh, writable array of ``shape``."""
        fd = self.file.fileno()
        if nbytes >= _MAP_MIN_BYTES and at % dtype.alignment == 0:  # stores written before rows were aligned: copy
            # checked per read: touching a mapped page past the end of a file truncated since kills the process
            if os.fstat(fd).st_size < at + nbytes:
                raise OSError(f"{self.path}: row at {at} ends past the end of the file; the file was truncated")
            try:
                return _mapped(fd, at, nbytes, shape, dtype)
            except (OSError, ValueError):  # no mapping slot left, or a file system that cannot map: copy
                pass
        buf = np.empty(shape, dtype)  # read straight into the array handed out: no extra copy
        if nbytes:
            got = os.preadv(fd, [buf], at)
            if got != nbytes:
                raise OSError(f"{self.path}: short read ({got} of {nbytes} bytes); the file was truncated")
        return buf

    def close(self) -> None:
        # arrays mapped from this shard stay valid: each mapping holds its own reference to the file
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.h5 is not None:
            with contextlib.suppress(Exception):
                self.h5.close()
        self.loaded, self.file, self.h5 = False, None, None


def _checked(arr: np.ndarray, sums: list | None, row: int, key: str) -> np.ndarray:
    if sums is not None and row_sum(arr) != sums[row]:
        raise _CorruptRow(f"key {key!r}: row {row} does not match its checksum")
    return arr


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


def clash_message(out, first, other) -> str:
    """Why output id ``out``, produced by two source samples, is served by neither."""
    return (
        f"output sample id {out!r} is produced by source samples {first!r} and {other!r}; the static "
        "pipeline must give every output its own id"
    )


class Reader:
    """One process's open view of a store directory: its manifests, row index and open shards.

    Open one with :meth:`H5Cache.open <fusefn.data.H5Cache.open>` (or ``Reader(path)``); close it
    with :meth:`close` or a ``with`` block. Manifests are read when it opens; a sample not found
    is looked for again (a build in another process may have committed it since). Shards open on
    their first read. Safe to share between the threads of one process.

    Args:
        expect: ``{id_key(source id): input digest}`` of the reader's source rows: a stored sample
            built from another row (another table sharing the root) raises :class:`StaleSampleError`
            instead of being served. Without it any stored row is served.
        verify: check every array row read against its stored checksums (stores built with ``checksum``);
            table cells are checked when a shard opens either way.
    """

    def __init__(self, path: str | os.PathLike, *, expect: dict | None = None, verify: bool = True):
        self.path = pathlib.Path(path)
        self._expect = expect
        self._verify = verify
        self._lock = threading.RLock()
        self._start()

    def __reduce__(self):
        # handles never travel: the receiving process opens the store itself
        return (_reopen, (str(self.path), self._expect, self._verify))

    def __repr__(self) -> str:
        return f"Reader({str(self.path)!r})"

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._shards: dict[str, _Shard] = {}
        self._entries: dict[str, dict] = {}  # id key -> latest manifest entry (+ "shard")
        self._rows: dict[str, tuple[str, int]] = {}  # output id key -> (shard file, row)
        self._owner: dict[str, str] = {}  # output id key -> id key of the source sample that produced it
        self._clashes: dict[str, tuple] = {}  # output id key -> (output id, first source id, other source id)
        self.bad: dict[str, str] = {}  # shard file -> what is wrong with it
        self.warned: set = set()  # shards a user of this reader has warned about already
        self._scan()

    def _own(self) -> None:
        if self._pid != os.getpid():
            # opened before a fork: the parent's handles stay the parent's; this process opens its own
            self._lock = threading.RLock()
            self._start()

    def _scan(self) -> None:
        """Read manifests not seen yet; check each new shard's size (cheap) and record damage."""
        with self._lock:
            self._scan_locked()

    def _scan_locked(self) -> None:
        if not self.path.is_dir():
            return
        new = []
        for mpath in sorted(self.path.glob("shard-*.json")):
            name = mpath.name[: -len(".json")] + ".h5"
            if name in self._shards or name in self.bad:
                continue
            try:
                manifest = json.loads(mpath.read_text())
                size = (self.path / manifest["file"]).stat().st_size
            except FileNotFoundError:
                self.bad[name] = "shard file missing"
                continue
            except (OSError, ValueError, KeyError) as exc:
                self.bad[name] = f"unreadable manifest: {exc}"
                continue
            if size != manifest["size"]:
                self.bad[name] = f"truncated: {size} bytes on disk, {manifest['size']} committed"
                continue
            if (self.path / (name + MARK)).exists():
                # indexed all the same: a read of its samples names the shard as damaged, not as missing
                self.bad[name] = "found damaged by an earlier read or verify"
            new.append((manifest["seq"], name, manifest))
        for _, name, manifest in sorted(new, key=lambda t: (t[0], t[1])):
            self._shards[name] = _Shard(str(self.path / name), manifest)
            for e in manifest["samples"]:
                src = id_key(e["id"])
                old = self._entries.get(src)
                if old is not None:  # a newer build of this sample supersedes the old rows
                    for o in old.get("outputs", ()):
                        if self._owner.get(id_key(o)) == src:
                            self._rows.pop(id_key(o), None)
                            self._owner.pop(id_key(o), None)
                self._entries[src] = {**e, "shard": name}
                for o, r in zip(e.get("outputs", ()), e.get("rows", ())):
                    out = id_key(o)
                    first = self._owner.get(out)
                    if first is not None and first != src:
                        # two source samples claim one output id: serving either would hide the other
                        self._clashes[out] = (o, self._entries[first]["id"], e["id"])
                    self._rows[out] = (name, r)
                    self._owner[out] = src

    # ------------------------------------------------------------------ queries

    def entry(self, source_id) -> dict | None:
        """The manifest entry of a source sample: status (ok/dropped/failed), outputs, error, shard."""
        self._own()
        return self._entries.get(id_key(source_id))

    def entries(self) -> list[dict]:
        """The manifest entry of every source sample in the store."""
        self._own()
        return list(self._entries.values())

    def shards(self) -> dict[str, _Shard]:
        """The committed shards by file name."""
        self._own()
        return dict(self._shards)

    def clashes(self) -> list[tuple]:
        """``(output id, first source id, other source id)`` of every output id two source samples produce."""
        self._own()
        return list(self._clashes.values())

    def __contains__(self, sample_id) -> bool:
        self._own()
        return id_key(sample_id) in self._rows

    def __len__(self) -> int:
        """The number of output samples stored."""
        self._own()
        return len(self._rows)

    def ids(self, source=None) -> list:
        """Output sample ids, in source order when ``source`` (DataSource or ids) is given."""
        self._own()
        if source is None:
            return [o for e in self._entries.values() for o in e.get("outputs", ())]
        out = []
        for s in initial_samples(source):
            e = self._entries.get(id_key(s["data"]["sample_id"]))
            if e is not None:
                out.extend(e.get("outputs", ()))
        return out

    def failures(self) -> list[dict]:
        """``{sample_id, op, key, error}`` of every sample whose pipeline raised."""
        return [
            {"sample_id": e["id"], "op": e.get("op"), "key": e.get("key"), "error": e["error"]}
            for e in self.entries()
            if e["status"] == "failed"
        ]

    # --------------------------------------------------------------------- reads

    def read(self, sample_id, keys: Sequence[str] | None = None) -> dict:
        """The stored output sample ``sample_id`` (a fresh dict of fresh arrays).

        Args:
            keys: read only these keys (and the sub-trees under them), e.g. ``("data.gt.label",)``.
        """
        self._own()
        return self._read(sample_id, None if keys is None else tuple(keys), retry=True)

    def read_many(self, ids: Iterable, keys: Sequence[str] | None = None) -> list[dict]:
        """:meth:`read` of several ids."""
        return [self.read(i, keys) for i in ids]

    def _read(self, sid, keys: tuple | None, retry: bool) -> dict:
        k = id_key(sid)
        loc = self._rows.get(k)
        if loc is None:
            self._scan()  # a build in another process may have committed it since
            loc = self._rows.get(k)
        if self._clashes and k in self._clashes:
            raise SampleError(clash_message(*self._clashes[k]), sample_id=sid, key=well_known.SAMPLE_ID)
        if loc is None:
            e = self._entries.get(k)
            if e is not None and e.get("status") == "failed":
                reason = f"failed when the cache was built: {e['error']}"
                raise SampleError(reason, sample_id=sid, op=e.get("op"), key=e.get("key"))
            why = "was dropped by the static pipeline" if e is not None else "is not in the cache; run cache.build()"
            raise NotCachedError(f"sample {sid!r} {why} (store {self.path})")
        name, row = loc
        if self._expect is not None:
            src = self._owner[k]
            want = self._expect.get(src)
            if want is not None and self._entries[src]["digest"] != want:
                if retry:
                    # a build from this reader's rows may have committed since (the store is shared)
                    self._scan()
                    return self._read(sid, keys, retry=False)
                raise StaleSampleError(
                    f"sample {sid!r}: the row stored in shard {name} was built from another source row than "
                    f"this reader's (another table sharing the cache root?); not served (store {self.path})",
                    sample_id=sid,
                    shard=name,
                )
        if name in self.bad:
            raise DamagedSampleError(
                f"sample {sid!r}: shard {name} is damaged ({self.bad[name]}); rebuild with cache.build() "
                f"(store {self.path})",
                sample_id=sid,
                shard=name,
            )
        shard = self._shards[name]
        try:
            if not shard.loaded:
                with self._lock:  # two threads (a prefetcher and the main one) may open the same shard at once
                    if not shard.loaded:
                        shard.load(self._verify)
            return shard.read(row, keys)
        except FileNotFoundError:
            if retry:
                # a build in another process rebuilt every sample of this shard and deleted it: look again
                self._reset()
                return self._read(sid, keys, retry=False)
            raise NotCachedError(
                f"sample {sid!r} is not in the cache any more (store {self.path})", sample_id=sid, shard=name
            ) from None
        except MemoryError:
            raise  # the process's trouble, not the shard's
        except Exception as exc:
            # OSError: truncated or unreadable; anything else (h5py's RuntimeError, KeyError): damaged HDF5
            # metadata, or a row that fails its checksum. Marked, so the next build rebuilds the shard.
            why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (OSError, _CorruptRow)) else str(exc)
            with self._lock:
                self.bad[name] = why
                shard.close()
            if not isinstance(exc, OSError):  # an OSError may pass (EMFILE); damage that lasts, the build finds
                mark_damaged(self.path, name, why)
            raise DamagedSampleError(
                f"sample {sid!r}: shard {name} is damaged ({why}); rebuild with cache.build() (store {self.path})",
                sample_id=sid,
                shard=name,
            ) from exc

    def close(self) -> None:
        """Close every open shard; arrays already read stay valid."""
        if self._pid != os.getpid():
            return
        with self._lock:
            for s in self._shards.values():
                s.close()

    def _reset(self) -> None:
        """Forget everything read so far and scan the directory afresh."""
        with self._lock:
            self.close()
            self._start()


def _reopen(path: str, expect: dict | None, verify: bool) -> Reader:
    return Reader(path, expect=expect, verify=verify)


class ReaderSlot:
    """The :class:`Reader` of the current process, opened on first use, for an object shared with workers.

    A :class:`~fusefn.data.Dataset` sent to DataLoader workers (forked or pickled) carries
    one: each process opens its own reader the first time it reads, and a pickled slot
    arrives empty. This is state of the object that holds the slot, never of the module.
    """

    __slots__ = ("_lock", "_pid", "_reader")

    def __init__(self):
        self._pid: int | None = None
        self._reader: Reader | None = None
        self._lock = threading.Lock()

    def __reduce__(self):
        return (ReaderSlot, ())

    def __repr__(self) -> str:
        return "ReaderSlot()"

    def get(self, open_reader: Callable[[], Reader]) -> Reader:
        """This process's reader, opened with ``open_reader()`` when there is none yet."""
        pid = os.getpid()
        reader = self._reader
        if reader is not None and self._pid == pid:
            return reader
        with self._lock:
            if self._reader is None or self._pid != pid:
                self._reader, self._pid = open_reader(), pid
            return self._reader
