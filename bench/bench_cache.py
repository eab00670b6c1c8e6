"""Sample cache: build rate, read rate and disk use (issue 3).

Every system caches the output of the same cheap static op — a deterministic float32 array per sample id — for
2,000 samples of 1×256×256 (2D) and 200 volumes of 1×64×128×128 (3D), building with 2 worker processes, then reads
every sample back once per repetition in one fixed shuffled order, in the main process, and sums its values: a read
counts once every byte of the array has been used, so a system that defers work (fusefn maps large rows instead of
copying them) pays for it inside the timing.

Before every build (untimed, for every system alike) the previous store is deleted and ``os.sync()`` flushes the
dirty pages the last build left: without it a build's time depended on the write-back still pending from the builds
before it, and the 3D build rates swung by up to 3× between repetitions.

Systems and settings:
- FuseMedML 0.4.1: ``SamplesCacher(workers=2)`` + ``DatasetDefault(...).create()``, read with ``dataset[i]``;
  everything else at its documented defaults (audit of the first sample, hashed pipeline folder).
- MONAI 1.6.1: ``PersistentDataset`` (documented defaults: pickle protocol, ``pickle_hashing``), built by iterating a
  ``DataLoader(num_workers=2)`` whose collate returns only the batch length (no array crosses processes), read with
  ``dataset[i]``.
- h5py ceiling: a 2-process pool computes the arrays, the main process writes them into one HDF5 dataset of shape
  ``(n, *shape)`` chunked one sample per chunk, no compression; read with ``dataset[i]`` on the open file.
- fusefn: ``H5Cache(workers=2)`` (defaults otherwise: no compression), ``build(ids)``, read with ``reader.read(id)``
  (``reader = cache.open()``, opened once and kept across repetitions, as the h5py row keeps its file open).
- fusefn, lzf: the same with ``compression="lzf"`` (bytes shuffled, then LZF), to show what disk use below the raw
  bytes costs on this data (uniform random floats: only their exponent bytes compress).
- fusefn, no checksum: the default with ``checksum=False``, to show what the integrity checks cost at build time (by
  default every row's CRC32 is computed when it is written and every build checks the whole store).
- fusefn, reads verified: the default with ``verify_reads=True``: every array row read is checked against its CRC32.

A third case (``ct3d``) repeats the 3D one on int16 CT-like volumes (HU phantom plus scanner noise), the data a CT
cache holds: its disk row is where compression (``fusefn, lzf``) is judged against the raw bytes (issue 20, item
10); on the uniform random floats of the first two cases nothing compresses, and their disk rows are shown for
reference.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

KEY = "data.input.img"
FUSEFN_LZF = "fusefn, lzf"
FUSEFN_NO_CHECKSUM = "fusefn, no checksum"
FUSEFN_VERIFIED = "fusefn, reads verified"


def make_array(sample_id, shape, kind: str = "uniform") -> np.ndarray:
    """The shared static op: a deterministic array from the sample id (cheap: one RNG fill).

    ``uniform``: float32 in [0, 1), incompressible. ``ct``: an int16 CT-like phantom in Hounsfield units (air
    outside an elliptic body, soft tissue, two lungs, a bone ring) plus per-sample scanner noise (σ 12 HU), the
    kind of volume a CT cache holds: compressible, as real scans are.
    """
    gen = np.random.default_rng(int(sample_id))
    if kind == "uniform":
        return gen.random(shape, dtype=np.float32)
    noise = gen.normal(0.0, 12.0, size=shape).astype(np.int16)
    return _ct_phantom(tuple(shape)) + noise


@functools.lru_cache(maxsize=4)
def _ct_phantom(shape: tuple) -> np.ndarray:
    *_, h, w = shape
    y, x = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2
    plane = np.full((h, w), -1000, np.int16)
    plane[body < 1.0] = 40
    plane[(body < 1.0) & (body > 0.85)] = 700
    for cx in (-0.4, 0.4):
        plane[((x - cx) / 0.3) ** 2 + (y / 0.45) ** 2 < 1.0] = -800
    return np.broadcast_to(plane, shape).copy()


def disk_bytes(path: pathlib.Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def fresh(path: pathlib.Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def clean(path: pathlib.Path) -> None:
    """Ahead of a timed build: no previous store, and no dirty pages of it left for the disk to write back."""
    fresh(path)
    os.sync()


# ---------------------------------------------------------------- FuseMedML


def fusemedml_system(shape, ids, root: pathlib.Path, kind: str = "uniform"):
    from fuse.data.datasets.caching.samples_cacher import SamplesCacher
    from fuse.data.datasets.dataset_default import DatasetDefault
    from fuse.data.ops.op_base import OpBase
    from fuse.data.pipelines.pipeline_default import PipelineDefault
    from fuse.data.utils.sample import get_sample_id

    class OpMakeArray(OpBase):
        def __call__(self, sample_dict, key: str, shape: tuple):
            sample_dict[key] = make_array(get_sample_id(sample_dict), shape, kind)
            return sample_dict

    # the op class must be importable by name in the worker processes (fork start method: it is inherited)
    globals()["OpMakeArray"] = OpMakeArray
    state = {}

    def build():
        static = PipelineDefault("static", [(OpMakeArray(), dict(key=KEY, shape=shape))])
        cacher = SamplesCacher("bench", static, cache_dirs=[str(root)], restart_cache=True, workers=2, verbose=0)
        ds = DatasetDefault(sample_ids=list(ids), static_pipeline=static, cacher=cacher)
        ds.create()
        state["ds"] = ds

    def read(order):
        ds = state["ds"]
        total = 0.0
        for i in order:
            x = ds[int(i)][KEY]
            total += float(x.sum())
        assert x.shape == shape and total != 0

    return build, read


# ---------------------------------------------------------------- MONAI


def _count(batch):
    return len(batch)


def monai_system(shape, ids, root: pathlib.Path, kind: str = "uniform"):
    import torch
    from monai.data import DataLoader, PersistentDataset
    from monai.transforms import Transform

    class MakeArrayd(Transform):
        def __call__(self, data):
            return {"id": data["id"], "img": torch.from_numpy(make_array(data["id"], shape, kind))}

    state = {}

    def build():
        ds = PersistentDataset(data=[{"id": int(i)} for i in ids], transform=MakeArrayd(), cache_dir=root)
        for _ in DataLoader(ds, batch_size=16, num_workers=2, collate_fn=_count):
            pass
        state["ds"] = ds

    def read(order):
        ds = state["ds"]
        total = 0.0
        for i in order:
            x = ds[int(i)]["img"]
            total += float(x.sum())
        assert tuple(x.shape) == shape and total != 0

    return build, read


# ---------------------------------------------------------------- plain h5py


def _h5_make(args):
    i, shape, kind = args
    return i, make_array(i, shape, kind)


def h5py_system(shape, ids, root: pathlib.Path, kind: str = "uniform"):
    import h5py

    path = root / "plain.h5"
    state = {}

    def build():
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool, h5py.File(path, "w") as f:
            dtype = "float32" if kind == "uniform" else "int16"
            ds = f.create_dataset("x", shape=(len(ids), *shape), dtype=dtype, chunks=(1, *shape))
            for i, arr in pool.imap(_h5_make, [(int(i), shape, kind) for i in ids], chunksize=8):
                ds[i] = arr

    def read(order):
        if "f" not in state:
            state["f"] = h5py.File(path, "r")
        ds = state["f"]["x"]
        total = 0.0
        for i in order:
            x = ds[int(i)]
            total += float(x.sum())
        assert x.shape == shape and total != 0

    def close():
        if "f" in state:
            state.pop("f").close()

    return build, read, close


# ---------------------------------------------------------------- fusefn


def fusefn_system(
    shape, ids, root: pathlib.Path, compression=None, checksum=True, verify_reads=False, kind: str = "uniform"
):
    """fusefn's side, or the reason it is not there yet."""
    cache_mod, why = C.optional_import("fusefn.data.cache", "H5Cache")
    if cache_mod is None:
        return None, why
    op = MakeArray(key=KEY, shape=tuple(shape), kind=kind)
    state = {}

    def build():
        cache = cache_mod.H5Cache(
            root=root,
            pipeline=op,
            workers=2,
            compression=compression,
            checksum=checksum,
            verify_reads=verify_reads,
            progress=False,
        )
        report = cache.build(list(ids))
        assert report.computed == len(ids), report
        state["cache"] = cache

    def read(order):
        # opened once and kept, as a training process (or DataLoader worker) does, and as the h5py row does
        if "reader" not in state:
            state["reader"] = state["cache"].open()
        reader = state["reader"]
        total = 0.0
        for i in order:
            x = reader.read(int(i))["data"]["input"]["img"]
            total += float(x.sum())
        assert x.shape == shape and total != 0

    def close():
        if "reader" in state:
            state.pop("reader").close()

    return (build, read, close), None


try:
    import attrs

    from fusefn import nd
    from fusefn.core import record

    @record
    class MakeArray:
        """The shared static op as a fusefn record (sample_dict -> sample_dict); part of the bench, not of fusefn."""

        key: str
        shape: tuple = attrs.field(converter=tuple)
        kind: str = "uniform"

        def __call__(self, sample):
            return nd.assoc(sample, self.key, make_array(nd.get(sample, "data.sample_id"), self.shape, self.kind))

except ImportError:  # fusefn is not installed: its rows are skipped
    MakeArray = None


# ---------------------------------------------------------------- driver


def run_case(
    rec: C.Recorder, args, label: str, shape: tuple, n: int, workdir: pathlib.Path, kind: str = "uniform"
) -> None:
    ids = list(range(n))
    order = np.random.default_rng(0).permutation(n)
    raw = n * int(np.prod(shape)) * (4 if kind == "uniform" else 2)
    rec.add_value(f"cache.disk.{label}", "raw array bytes", raw / 1e6, figure="disk use", unit="MB", n=n)
    systems = []

    m, why = C.peer("fuse.data.datasets.caching.samples_cacher", "SamplesCacher")
    if m is None:
        rec.skip(f"cache.*.{label}", C.FUSEMEDML, why)
    else:
        root = workdir / f"fuse_{label}"
        systems.append(
            (C.FUSEMEDML, root, *fusemedml_system(shape, ids, root, kind), None, "SamplesCacher(workers=2) defaults")
        )

    m, why = C.peer("monai.data", "PersistentDataset")
    if m is None:
        rec.skip(f"cache.*.{label}", C.MONAI, why)
    else:
        root = workdir / f"monai_{label}"
        systems.append(
            (
                C.MONAI,
                root,
                *monai_system(shape, ids, root, kind),
                None,
                "PersistentDataset defaults, DataLoader(num_workers=2)",
            )
        )

    root = workdir / f"h5py_{label}"
    b, r, close = h5py_system(shape, ids, root, kind)
    systems.append((C.H5PY, root, b, r, close, "one (n, *shape) dataset, one chunk per sample, no compression"))

    root = workdir / f"fusefn_{label}"
    sides, why = C.attempt(fusefn_system, shape, ids, root, kind=kind)
    if sides is None:
        rec.skip(f"cache.*.{label}", C.FUSEFN, why)
    else:
        systems.append((C.FUSEFN, root, *sides, "H5Cache(workers=2) defaults, read with H5Cache.open().read"))
        # the disk-for-speed trade: on this incompressible data only compression gets under the raw bytes
        root = workdir / f"fusefn_lzf_{label}"
        sides, _ = C.attempt(fusefn_system, shape, ids, root, compression="lzf", kind=kind)
        systems.append((FUSEFN_LZF, root, *sides, 'H5Cache(workers=2, compression="lzf"), shuffled bytes'))
        # what the integrity checks (on by default) cost: the same store without them
        root = workdir / f"fusefn_nosum_{label}"
        sides, _ = C.attempt(fusefn_system, shape, ids, root, checksum=False, kind=kind)
        systems.append((FUSEFN_NO_CHECKSUM, root, *sides, "H5Cache(workers=2, checksum=False)"))
        # what checking every array row on read costs (off by default; every build checks the whole store)
        root = workdir / f"fusefn_verified_{label}"
        sides, _ = C.attempt(fusefn_system, shape, ids, root, verify_reads=True, kind=kind)
        systems.append((FUSEFN_VERIFIED, root, *sides, "H5Cache(workers=2, verify_reads=True)"))

    for system, root, build, read, close, settings in systems:
        try:
            times = C.measure(build, repeats=args.repeats, warmup=args.warmup, before=lambda root=root: clean(root))
            rec.add(
                f"cache.build.{label}",
                system,
                times,
                figure="build rate",
                unit="samples/s",
                n=n,
                rate=True,
                settings=settings,
            )
            times = C.measure(lambda read=read: read(order), repeats=args.repeats, warmup=args.warmup)
            rec.add(
                f"cache.read.{label}",
                system,
                times,
                figure="read rate",
                unit="samples/s",
                n=n,
                rate=True,
                settings=settings,
            )
            rec.add_value(
                f"cache.disk.{label}",
                system,
                disk_bytes(root) / 1e6,
                figure="disk use",
                unit="MB",
                n=n,
                settings=settings,
            )
        except Exception as e:  # one broken system must not hide the others' rows
            rec.skip(f"cache.*.{label}", system, f"failed: {type(e).__name__}: {e}")
        finally:
            if close is not None:
                close()
            shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("cache", args)
    rec = C.Recorder("cache", args)
    if args.device.startswith("cuda"):
        print("  the sample cache is host-side I/O: no CUDA rows")
        return
    n2, n3 = (200, 16) if args.quick else (2000, 200)
    own = args.workdir is None
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="fusefn-bench-cache-")) if own else args.workdir
    try:
        run_case(rec, args, "2d", (1, 256, 256), n2, workdir)
        run_case(rec, args, "3d", (1, 64, 128, 128), n3, workdir)
        run_case(rec, args, "ct3d", (1, 64, 128, 128), n3, workdir, kind="ct")
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
