"""Building a store: compute the samples not stored yet, in worker processes, and commit them as shards.

A shard is written under a temporary name and renamed into place, then its manifest
is written the same way (:mod:`fusefn._atomic`): a build killed at any moment leaves
only temporary files (removed by the next build) or complete shards. A restarted
build computes only the samples no committed manifest lists, and deletes the shards
whose samples it has all rebuilt (their source rows changed). A shard that fails its
size check or does not open, whose table fails its checksums, or that a read or a verify
marked damaged, is set aside (``*.corrupt``) and its samples rebuilt, even when nothing
else is to be done. Clearing a store takes the build lock too (:func:`clear_store`).

Workers are processes started for one build and given their tasks over a pipe each;
they die with the building process (Linux), so an interrupted build leaves no orphans.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import pathlib
import pickle
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import NamedTuple

from fusefn import keys, nd
from fusefn._atomic import atomic_path, sweep_temporaries, write_bytes
from fusefn.core import record
from fusefn.data.cache.check import shard_problems
from fusefn.data.cache.inputs import id_key, input_digest, unique_outputs
from fusefn.data.cache.reader import MARK, Reader, clash_message
from fusefn.data.cache.shard import FORMAT, array_bytes, check_leaf, write_shard
from fusefn.data.pipeline import run_pipeline
from fusefn.errors import FusefnError, SampleError

__all__ = ["BuildReport", "build_store", "clear_store"]

_log = logging.getLogger("fusefn")


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


class _Job(NamedTuple):
    """What every task of one build shares; a worker receives it once, when it starts."""

    pipeline: Callable
    store_dir: str
    options: dict
    parent_pid: int | None


# ------------------------------------------------------------------------- computing


def _failure(sid, exc: BaseException) -> dict:
    if isinstance(exc, SampleError):
        return {"sample_id": sid, "op": exc.op, "key": exc.key, "error": exc.reason}
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return {"sample_id": sid, "op": None, "key": None, "error": f"{type(exc).__name__}: {exc}{where}"}


def _build_items(job: _Job, items: list[tuple[str, dict]]) -> list[dict]:
    """Compute ``items`` [(digest, sample)] and commit them as one or more shards; their manifests."""
    manifests = []
    entries: list[dict] = []
    rows: list[dict] = []
    nbytes = 0

    def flush():
        nonlocal entries, rows, nbytes
        if entries:
            manifests.append(_commit(job, entries, rows))
        entries, rows, nbytes = [], [], 0

    for digest, sample in items:
        sid = sample["data"]["sample_id"]
        entry = {"id": sid, "digest": digest}
        try:
            outs = unique_outputs(sid, run_pipeline(job.pipeline, sample))
            flat_outs = []
            for o in outs:
                flat = nd.flatten(o)
                for k, v in flat.items():
                    check_leaf(v, k, nd.get(o, keys.SAMPLE_ID))
                flat_outs.append(flat)
            size = sum(array_bytes(v) for f in flat_outs for v in f.values())
        except Exception as exc:
            entry.update(status="failed", **{k: v for k, v in _failure(sid, exc).items() if k != "sample_id"})
            entries.append(entry)
            continue
        entry["status"] = "ok" if flat_outs else "dropped"
        entry["rows"] = list(range(len(rows), len(rows) + len(flat_outs)))
        entry["outputs"] = [f[keys.SAMPLE_ID] for f in flat_outs]
        rows.extend(flat_outs)
        entries.append(entry)
        nbytes += size
        if nbytes >= job.options["shard_bytes"]:
            flush()
    flush()
    return manifests


def _commit(job: _Job, entries, rows) -> dict:
    options = job.options
    seq = time.time_ns()
    stem = f"shard-{seq:020d}-{uuid.uuid4().hex[:12]}"
    store_dir = pathlib.Path(job.store_dir)
    h5 = store_dir / f"{stem}.h5"
    try:
        with atomic_path(h5, durable=options["durable"]) as tmp:
            write_shard(tmp, rows, options["compression"], options["compression_level"], checksum=options["checksum"])
            manifest = {
                "format": FORMAT,
                "file": h5.name,
                "size": os.path.getsize(tmp),
                "seq": seq,
                "n_rows": len(rows),
                "samples": entries,
            }
            if job.parent_pid is not None and os.getppid() != job.parent_pid:
                # the build that asked for this shard is gone: do not commit into a store it no longer owns
                tmp.unlink()
                os._exit(1)
    except (OSError, RuntimeError) as exc:  # h5py reports a full disk as either
        raise _write_error(h5, exc) from exc
    # the manifest's presence is the commit: an .h5 without one would be swept by the next build, but is
    # removed now so a failed build leaves nothing half-written
    try:
        write_bytes(store_dir / f"{stem}.json", json.dumps(manifest).encode(), durable=options["durable"])
    except OSError as exc:
        h5.unlink(missing_ok=True)
        raise _write_error(store_dir / f"{stem}.json", exc) from exc
    return manifest


def _write_error(path: pathlib.Path, exc: BaseException) -> FusefnError:
    reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else f"{type(exc).__name__}: {exc}"
    return FusefnError(
        f"cache: cannot write {path}: {reason}; the samples stored before stay, run the build again once there is room"
    )


# --------------------------------------------------------------------------- workers


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
    its pages in again, a large part of a 3D build's time. Only build workers do this; they exit when
    the build ends.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: arrays up to 32 MiB come from the reusable heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap for the next samples
    except Exception:
        pass


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a FusefnError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return FusefnError(f"a build worker raised {type(exc).__name__}: {exc}")


def _worker(job: _Job, conn) -> None:
    """A build worker: tasks in over ``conn``, ``("ok", manifests)`` or ``("error", exc)`` back, until ``None``."""
    _pdeathsig()
    _keep_freed_memory()
    if os.getppid() != job.parent_pid:
        os._exit(1)
    torch = sys.modules.get("torch")  # importing it here would cost each worker seconds
    if torch is not None:
        torch.set_num_threads(1)
    with contextlib.suppress(EOFError, OSError):
        while (task := conn.recv()) is not None:
            try:
                reply = ("ok", _build_items(job, task))
            except Exception as exc:
                reply = ("error", _portable(exc))
            conn.send(reply)


def _run_workers(job: _Job, tasks: list, workers: int, done: Callable[[int], None]) -> list[dict]:
    """Run ``tasks`` on ``workers`` processes; the manifests of what they committed.

    A worker that dies (out of memory, a crash in a C library) ends the build: what was
    committed stays, the rest is reported as not stored and computed by the next build.
    """
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pending = iter(tasks)
    procs: dict = {}  # connection -> process
    busy: dict = {}  # connection -> samples in its task
    manifests: list[dict] = []

    def feed(conn) -> None:
        task = next(pending, None)
        if task is not None:
            busy[conn] = len(task)  # a worker gone by now is found dead by the wait below
        with contextlib.suppress(OSError):
            conn.send(task)

    try:
        for _ in range(min(workers, len(tasks))):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(job, theirs), name="fusefn-cache-build")
            proc.start()
            theirs.close()
            procs[ours] = proc
            feed(ours)
        while busy:
            sentinels = {procs[c].sentinel: c for c in busy}
            for ready in mp.connection.wait([*busy, *sentinels]):
                conn = sentinels.get(ready, ready)
                if conn not in busy:
                    continue
                try:
                    status, value = conn.recv() if conn.poll() else (None, None)
                except (EOFError, OSError, pickle.UnpicklingError):
                    status, value = None, None
                if status is None:
                    _log.error(
                        "cache %s: a build worker died (exit code %s); reporting the rest",
                        job.store_dir,
                        procs[conn].exitcode,
                    )
                    return manifests
                if status == "error":
                    raise value
                manifests.extend(value)
                done(busy.pop(conn))
                feed(conn)
        for proc in procs.values():
            proc.join()
        return manifests
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
        for conn, proc in procs.items():
            proc.join()
            conn.close()


# -------------------------------------------------------------------------- the build


class StoreBusyError(FusefnError):
    """Another build holds the store's lock."""


@contextlib.contextmanager
def _locked(store_dir: pathlib.Path, *, wait: bool = True, create: bool = True):
    """Hold ``store_dir``'s build lock (waiting for it, or raising :class:`StoreBusyError`). Yields
    False when there is no store (and ``create`` is off)."""
    import fcntl

    while True:
        if create:
            try:
                store_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _write_error(store_dir, exc) from exc
        try:
            fh = open(store_dir / ".lock", "a+")  # noqa: SIM115 - closed below, after the loop's checks
        except FileNotFoundError:
            if not create:
                yield False
                return
            continue  # cleared between the mkdir and the open: make it again
        except OSError as exc:
            raise _write_error(store_dir / ".lock", exc) from exc
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise StoreBusyError(
                        f"cache {store_dir} is being built by another process (its lock is held); "
                        "try again when the build ends"
                    ) from None
                _log.info("cache %s: waiting for another build to finish", store_dir)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                current = os.stat(store_dir / ".lock").st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                yield True
                return
        # the store was cleared while this process waited: the lock held is of a deleted folder


def clear_store(store_dir: pathlib.Path, *, wait: bool = False) -> bool:
    """Delete the store at ``store_dir`` under its build lock: a build running now makes this wait
    (``wait``) or raise :class:`StoreBusyError`. Whether there was a store."""
    import shutil

    store_dir = pathlib.Path(store_dir)
    if not store_dir.is_dir():
        return False
    with _locked(store_dir, wait=wait, create=False) as held:
        if not held:
            return False
        # renamed first: readers and waiting builds see no store at once, never a half-deleted one
        trash = store_dir.with_name(f".{store_dir.name}.cleared-{uuid.uuid4().hex[:8]}")
        os.replace(store_dir, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _todo(store: Reader, samples: list, digests: list, retry_failed: bool) -> list:
    """``(digest, sample)`` of the samples with no entry, a changed input, or (when retrying) a failure."""
    if store.bad:
        return list(zip(digests, samples))  # let the locked pass repair and decide
    todo = []
    for digest, s in zip(digests, samples):
        e = store.entry(s["data"]["sample_id"])
        if e is None or e["digest"] != digest or (retry_failed and e["status"] == "failed"):
            todo.append((digest, s))
    return todo


def _repair(store_dir: pathlib.Path, deep: bool) -> list[str]:
    """Set aside every shard :func:`~fusefn.data.cache.check.shard_problems` flags; say which."""
    repaired = []
    for name, problem in shard_problems(store_dir, deep=deep).items():
        _log.warning("cache %s: shard %s is %s; its samples will be rebuilt", store_dir, name, problem)
        h5 = store_dir / name
        for p in (h5, h5.with_suffix(".json")):
            if p.exists():
                os.replace(p, p.with_name(p.name + ".corrupt"))
        (store_dir / (name + MARK)).unlink(missing_ok=True)
        repaired.append(f"{name}: {problem}")
    # an .h5 with no manifest was renamed but never committed (killed in between)
    for h5 in store_dir.glob("shard-*.h5"):
        if not h5.with_suffix(".json").exists():
            h5.unlink(missing_ok=True)
    for mark in store_dir.glob(f"shard-*.h5{MARK}"):  # of a shard deleted since
        if not mark.with_suffix("").exists():
            mark.unlink(missing_ok=True)
    return repaired


def _drop_superseded(store_dir: pathlib.Path) -> None:
    """Delete the shards none of whose samples is current any more (each was rebuilt since), so a
    store keeps the size of what it serves. A shard holding one current sample stays whole."""
    with Reader(store_dir) as store:
        live = {e["shard"] for e in store.entries()}
        dead = [name for name in store.shards() if name not in live]
    for name in dead:
        h5 = store_dir / name
        # the manifest first: a shard without one is uncommitted, and the next build sweeps it
        h5.with_suffix(".json").unlink(missing_ok=True)
        h5.unlink(missing_ok=True)
    if dead:
        _log.info("cache %s: deleted %d shard(s) whose samples were all rebuilt", store_dir, len(dead))


def _compute(job: _Job, todo: list, *, workers: int, shard_size: int | None, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    if not todo:
        return []
    # a few tasks per worker balance the load; at least 32 samples each keeps small builds in few files
    per_task = shard_size or min(256, max(32, -(-len(todo) // (max(1, workers) * 4))))
    tasks = [todo[i : i + per_task] for i in range(0, len(todo), per_task)]
    store_name = pathlib.Path(job.store_dir).name
    with tqdm(total=len(todo), desc=f"cache {store_name[:8]}", unit="sample", disable=not progress) as bar:
        if workers == 0:
            manifests: list[dict] = []
            for task in tasks:
                manifests.extend(_build_items(job, task))
                bar.update(len(task))
            return manifests
        return _run_workers(job._replace(parent_pid=os.getpid()), tasks, workers, bar.update)


def _report(store: Reader, samples, todo, manifests, repaired, t0) -> BuildReport:
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
    wanted = {id_key(s["data"]["sample_id"]) for s in samples}
    for oid, first, other in store.clashes():
        if id_key(other) in wanted:
            failures.append(
                {"sample_id": other, "op": None, "key": keys.SAMPLE_ID, "error": clash_message(oid, first, other)}
            )
    computed = sum(1 for m in manifests for e in m["samples"] if e["status"] != "failed")
    report = BuildReport(
        store=str(store.path),
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


def _sweep_temporaries(store_dir: pathlib.Path) -> None:
    sweep_temporaries(store_dir)
    for tmp in store_dir.glob(".tmp-*"):  # the naming of stores written before fusefn._atomic
        tmp.unlink(missing_ok=True)


def build_store(
    pipeline: Callable,
    store_dir: pathlib.Path,
    samples: list[dict],
    *,
    options: dict,
    description: dict,
    workers: int,
    shard_size: int | None,
    progress: bool,
    retry_failed: bool,
    deep: bool = False,
) -> BuildReport:
    """Compute and commit the ``samples`` not stored in ``store_dir`` yet; what happened.

    ``options`` are the shard settings (compression, compression_level, shard_bytes, checksum,
    durable); ``description`` is written to ``store.json`` when the store is new. ``deep`` also
    checks every stored row against its checksums (reads the whole store) and rebuilds what fails.
    """
    t0 = time.perf_counter()
    digests = [input_digest(s) for s in samples]
    if store_dir.is_dir():
        with Reader(store_dir) as store:
            if not _todo(store, samples, digests, retry_failed) and not shard_problems(store_dir, deep=deep):
                # everything is stored and sound: no lock, no writes (works on a read-only copy of the store)
                return _report(store, samples, [], [], [], t0)
    with _locked(store_dir):
        info = store_dir / "store.json"
        if not info.exists():
            try:
                write_bytes(info, json.dumps(description).encode())
            except OSError as exc:
                raise _write_error(info, exc) from exc
        _sweep_temporaries(store_dir)  # left by a killed build
        repaired = _repair(store_dir, deep)
        with Reader(store_dir) as store:
            todo = _todo(store, samples, digests, retry_failed)
            rebuilt = any(store.entry(s["data"]["sample_id"]) is not None for _, s in todo)
        job = _Job(pipeline=pipeline, store_dir=str(store_dir), options=options, parent_pid=None)
        try:
            manifests = _compute(job, todo, workers=workers, shard_size=shard_size, progress=progress)
        except BaseException:
            # workers stopped mid-write (another worker's error, disk full) leave their temporaries
            _sweep_temporaries(store_dir)
            raise
        if rebuilt:  # only a sample stored before can leave a shard with nothing current in it
            _drop_superseded(store_dir)
    with Reader(store_dir) as store:
        return _report(store, samples, todo, manifests, repaired, t0)
