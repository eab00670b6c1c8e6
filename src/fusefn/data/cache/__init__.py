"""HDF5 sample cache: the static pipeline's output per sample, one store per pipeline fingerprint.

A store is named by :func:`store_key`: the pipeline's configuration fingerprint
combined with the bytecode of its functions and op classes, so changing an op's
settings *or* editing its code gets a new store instead of stale samples. Each
sample also records a digest of its input (id and source row): a changed row is
recomputed by the next build, and a reader given the source (``cache.open(source)``, as a
:class:`~fusefn.data.Dataset` opens it) never serves a row built from another one. Every row
carries checksums that every read verifies (``checksum=True``, the default).

Layout of a store (``<root>/<store_key(pipeline)>/``)::

    store.json                   what the store is (format, fingerprint, pipeline repr)
    shard-<seq>-<uid>.h5         immutable HDF5 shards: one row per output sample
    shard-<seq>-<uid>.json       the shard's manifest; its presence is the commit

The package is cut along those lines: :mod:`~fusefn.data.cache.storekey` names a store,
:mod:`~fusefn.data.cache.shard` is the file format, :mod:`~fusefn.data.cache.builder`
computes and commits samples (resumable, in worker processes), and
:mod:`~fusefn.data.cache.reader` reads them back. Reading goes through a
:class:`Reader` opened explicitly with :meth:`H5Cache.open`, one per process: nothing
is kept at module level, so two caches, two readers or two processes share nothing.

>>> import numpy as np, tempfile
>>> from fusefn import nd
>>> def make(s):
...     return nd.assoc(s, "data.input.img", np.full((1, 4, 4), float(s["data"]["sample_id"]), np.float32))
>>> cache = H5Cache(root=tempfile.mkdtemp(), pipeline=make, progress=False)
>>> report = cache.build([0, 1, 2])
>>> report.computed, report.failed
(3, 0)
>>> with cache.open() as reader:
...     reader.read(2)["data"]["input"]["img"][0, 0, 0]
np.float32(2.0)
>>> cache.build([0, 1, 2, 3]).computed  # resumable: only the new sample is computed
1
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import attrs

from fusefn import validators as v
from fusefn.core import record
from fusefn.data.cache.builder import BuildReport, StoreBusyError, build_store, clear_store
from fusefn.data.cache.check import is_store, shard_problems, store_info, verify_store
from fusefn.data.cache.inputs import id_key, initial_samples, input_digest
from fusefn.data.cache.reader import DamagedSampleError, NotCachedError, Reader, ReaderSlot, StaleSampleError
from fusefn.data.cache.shard import FORMAT
from fusefn.data.cache.storekey import store_key

__all__ = [
    "BuildReport",
    "DamagedSampleError",
    "H5Cache",
    "NotCachedError",
    "Reader",
    "ReaderSlot",
    "StaleSampleError",
    "StoreBusyError",
    "clear_store",
    "id_key",
    "initial_samples",
    "is_store",
    "shard_problems",
    "store_info",
    "store_key",
    "verify_store",
]


def _store_key(cache: H5Cache) -> str:
    # hashed once per record: reads must not re-hash the pipeline (a TableRow may hold a whole table)
    return store_key(cache.pipeline) if callable(cache.pipeline) else ""


@record
class H5Cache:
    """The static pipeline's outputs per sample, in a store named by the pipeline's fingerprint.

    A record of configuration: constructing one touches no file. :meth:`build` computes
    what is missing; :meth:`open` returns a :class:`Reader` of the store.

    Args:
        root: directory holding stores; each pipeline gets ``root/<fingerprint>``.
        pipeline: the static pipeline, ``sample -> sample | None | list[sample]``.
        workers: processes computing samples during :meth:`build` (0: in this process).
        compression: ``None`` (fastest reads), or lossless ``"gzip"``/``"lzf"`` per sample (bytes shuffled
            first for multi-byte types, which lets float images compress).
        shard_bytes: array bytes per shard file before a worker commits it.
        shard_size: samples per build task (default: a few tasks per worker, 32 to 256 samples).
        checksum: store a CRC32 of every row's bytes of every leaf, checked by every :meth:`build`
            (all the data, unless ``deep=False``), by ``verify(deep=True)`` and, with ``verify_reads``, on
            every read. On by default; its cost is measured in bench/ (docs/data.md, "Integrity").
        verify_reads: readers from :meth:`open` check every array row they read against its checksum
            (raising :class:`DamagedSampleError`). Off by default: a CRC32 of a 4 MiB volume costs about
            three times its read, so damage is found by the next build and by ``verify(deep=True)``;
            tables are checked whenever a shard is opened.
        durable: fsync shards before committing (survives power loss, slower).
        progress: show a tqdm bar during builds.
    """

    root: pathlib.Path = attrs.field(converter=pathlib.Path)
    pipeline: Callable = attrs.field(validator=v.is_callable)
    workers: int = attrs.field(default=0, validator=v.non_negative_int)
    compression: str | None = attrs.field(default=None, validator=v.in_((None, "gzip", "lzf")))
    compression_level: int | None = None
    shard_bytes: int = attrs.field(default=256 << 20, validator=v.non_negative_int)
    shard_size: int | None = attrs.field(default=None, validator=v.optional(v.non_negative_int))
    checksum: bool = True
    verify_reads: bool = False
    durable: bool = False
    progress: bool = True
    _fingerprint: str = attrs.field(
        init=False, eq=False, repr=False, default=attrs.Factory(_store_key, takes_self=True)
    )

    @property
    def fingerprint(self) -> str:
        """The static pipeline's fingerprint, the store's name."""
        return self._fingerprint

    @property
    def path(self) -> pathlib.Path:
        """The store directory for this pipeline."""
        return self.root / self._fingerprint

    def build(
        self,
        source,
        *,
        retry_failed: bool = False,
        workers: int | None = None,
        progress: bool | None = None,
        deep: bool = True,
    ) -> BuildReport:
        """Compute and store every sample of ``source`` not stored yet; report what happened.

        Resumable: samples in committed shards are reused, so a build killed half-way
        and run again computes only the rest. A sample whose source row changed is
        recomputed. Samples whose pipeline raised are recorded (see :meth:`Reader.failures`)
        and not retried unless ``retry_failed``. ``workers`` and ``progress`` override the
        record's for this build. Damaged shards (see :func:`shard_problems`) are rebuilt;
        ``deep`` (the default) also checks every stored row's checksums first (reads the whole store).
        """
        return build_store(
            self.pipeline,
            self.path,
            initial_samples(source),
            options={
                "compression": self.compression,
                "compression_level": self.compression_level,
                "shard_bytes": max(1, self.shard_bytes),
                "checksum": self.checksum,
                "durable": self.durable,
            },
            description={"format": FORMAT, "fingerprint": self.fingerprint, "pipeline": repr(self.pipeline)[:4000]},
            workers=self.workers if workers is None else workers,
            shard_size=self.shard_size,
            progress=self.progress if progress is None else progress,
            retry_failed=retry_failed,
            deep=deep,
        )

    def open(self, source=None, *, expect: dict | None = None) -> Reader:
        """A :class:`Reader` of this pipeline's store, for this process (close it, or use ``with``).

        Given ``source`` (what :meth:`build` takes) or ``expect`` (``{id_key(id): input_digest}``),
        the reader serves only rows built from those source rows: a row another table stored
        under the same id raises :class:`StaleSampleError`.
        """
        if source is not None:
            expect = {id_key(s["data"]["sample_id"]): input_digest(s) for s in initial_samples(source)}
        return Reader(self.path, expect=expect, verify=self.verify_reads)

    def verify(self, deep: bool = False) -> list[str]:
        """Problems found in the store (empty when sound): size, HDF5 structure, table checksums, damage
        marks and, with ``deep``, every row's checksums."""
        return verify_store(self.path, deep=deep)

    def clear(self, *, wait: bool = False) -> None:
        """Delete this pipeline's store under its build lock: while a build runs, wait for it (``wait``)
        or raise :class:`StoreBusyError`. Readers still open keep the arrays they handed out."""
        clear_store(self.path, wait=wait)
