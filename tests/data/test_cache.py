import json
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from fusefn import chain, nd
from fusefn.data import H5Cache, NotCachedError, ops
from fusefn.errors import ConfigError, SampleError


def make(s):
    """A cheap static op: every kind of leaf the cache stores."""
    sid = s["data"]["sample_id"]
    n = int(str(sid).lstrip("s") or 0)
    return nd.assoc_many(
        s,
        {
            "data.input.img": np.full((1, 4, 5), n, np.float32),
            "data.input.ragged": np.arange(n % 3 + 1, dtype=np.int16),
            "data.input.t": torch.full((2,), n, dtype=torch.int64),
            "data.gt.label": n % 3,
            "data.meta.weight": n / 2,
            "data.meta.flag": n % 2 == 0,
            "data.meta.name": f"name-{n}",
            "data.meta.none": None,
            "data.meta.np": np.float32(n),
            "data.meta.spacing": (1.0, 2.5),
        },
    )


def fail_on_3(s):
    if s["data"]["sample_id"] == "s3":
        raise ValueError("bad pixels")
    return s


def odd_only(s):
    return s if int(s["data"]["sample_id"][1:]) % 2 else None


IDS = [f"s{i}" for i in range(10)]
MMAP = mmap.mmap  # the type, kept before any test replaces the function


def assert_same(a, b):
    fa, fb = nd.flatten(a), nd.flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = fa[k], fb[k]
        assert type(x) is type(y), k
        if isinstance(x, (np.ndarray, torch.Tensor)):
            assert x.dtype == y.dtype and tuple(x.shape) == tuple(y.shape), k
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            assert x == y, k


def test_round_trip_every_leaf_kind(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=make, progress=False)
    report = cache.build(IDS)
    assert (report.total, report.computed, report.failed, report.outputs) == (10, 10, 0, 10)
    reader = cache.open()
    for sid in IDS:
        assert_same(reader.read(sid), make({"data": {"sample_id": sid}}))
    assert reader.ids() == IDS and "s3" in reader and "nope" not in reader
    assert reader.read("s4", keys=("data.gt",)) == {"data": {"sample_id": "s4", "gt": {"label": 1}}}
    assert cache.verify(deep=True) == []


def test_store_per_fingerprint_and_reuse(tmp_path):
    a = H5Cache(root=tmp_path, pipeline=chain(make), progress=False)
    assert a.build(IDS).computed == 10
    assert H5Cache(root=tmp_path, pipeline=chain(make), progress=False).build(IDS).computed == 0
    b = H5Cache(root=tmp_path, pipeline=chain(make, ops.Clip(keys="data.input.img", low=0, high=1)), progress=False)
    assert b.path != a.path
    assert b.build(IDS).computed == 10  # a changed pipeline never serves the old store
    assert (
        b.open().read("s7")["data"]["input"]["img"].max() == 1
        and a.open().read("s7")["data"]["input"]["img"].max() == 7
    )


def test_failures_recorded_reported_and_rest_cached(tmp_path, caplog):
    cache = H5Cache(root=tmp_path, pipeline=chain(make, fail_on_3), progress=False)
    report = cache.build(IDS)
    assert report.failed == 1 and report.computed == 9
    (f,) = report.failures
    assert f["sample_id"] == "s3" and f["op"] == "fail_on_3" and "bad pixels" in f["error"]
    assert "s3" in str(report) and "bad pixels" in caplog.text
    assert cache.open().failures() == [f]
    with pytest.raises(SampleError, match="sample 's3', op fail_on_3.*bad pixels"):
        cache.open().read("s3")
    assert cache.build(IDS).computed == 0  # not retried by default
    assert cache.build(IDS, retry_failed=True).computed == 0  # retried, fails again
    assert cache.build(IDS, retry_failed=True).failed == 1


def test_missing_file_error_names_sample_op_key(tmp_path):
    read = ops.ReadNpy(path=str(tmp_path / "{sample_id}.npy"))
    np.save(tmp_path / "a.npy", np.zeros(3))
    report = H5Cache(root=tmp_path / "c", pipeline=read, progress=False).build(["a", "b"])
    assert report.failures == (
        {"sample_id": "b", "op": "ReadNpy", "key": "data.input.img", "error": f"file not found: {tmp_path / 'b.npy'}"},
    )


def test_drop_and_split(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=chain(make, odd_only), progress=False)
    report = cache.build(IDS)
    assert report.dropped == 5 and report.outputs == 5
    assert cache.open().ids(IDS) == ["s1", "s3", "s5", "s7", "s9"]
    with pytest.raises(NotCachedError, match="dropped"):
        cache.open().read("s2")
    patches = H5Cache(
        root=tmp_path, pipeline=chain(make, ops.Patches(keys="data.input.img", shape=(2, 2))), progress=False
    )
    patches.build(["s1", "s2"])
    assert patches.open().ids(["s2"]) == ["s2#0", "s2#1", "s2#2", "s2#3"]
    assert patches.open().read("s2#1")["data"]["patch"]["origin"] == (0, 2)


def test_changed_source_row_is_recomputed(tmp_path):
    import polars as pl

    from fusefn.data import DataSource

    label = ops.TableRow(table=pl.DataFrame({"sample_id": ["x"], "v": [0]}), columns={"v": "data.v"})
    del label  # rows reach the pipeline through data.source instead of a bound table

    def from_source(s):
        return nd.assoc(s, "data.gt.label", s["data"]["source"]["label"])

    cache = H5Cache(root=tmp_path, pipeline=from_source, progress=False)
    src = DataSource.from_frame(pl.DataFrame({"sample_id": ["a", "b"], "label": [0, 1]}))
    cache.build(src)
    src2 = DataSource.from_frame(pl.DataFrame({"sample_id": ["a", "b"], "label": [0, 5]}))
    assert cache.build(src2).computed == 1
    assert cache.open().read("b")["data"]["gt"]["label"] == 5


def test_unstorable_value_is_a_recorded_failure(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=lambda s: nd.assoc(s, "data.obj", object()), progress=False)
    (f,) = cache.build(["a"]).failures
    assert f["key"] == "data.obj" and "cannot store" in f["error"]


def test_truncated_shard_is_detected_and_rebuilt(tmp_path, caplog):
    cache = H5Cache(root=tmp_path, pipeline=make, shard_size=5, progress=False)
    cache.build(IDS)
    shards = sorted(cache.path.glob("shard-*.h5"))
    assert len(shards) == 2
    with open(shards[1], "r+b") as fh:
        fh.truncate(os.path.getsize(shards[1]) // 2)
    with pytest.raises(NotCachedError):
        cache.open().read("s7")  # never garbage (a fresh reader, as a fresh process would see it)
    assert cache.verify() == [f"{shards[1].name}: truncated"]
    report = cache.build(IDS)
    assert report.computed == 5 and len(report.repaired) == 1 and "truncated" in caplog.text
    reader = cache.open()
    for sid in IDS:
        assert_same(reader.read(sid), make({"data": {"sample_id": sid}}))
    assert cache.verify() == []


def test_short_read_after_open_is_an_error(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=make, shard_size=10, progress=False)
    cache.build(IDS)
    reader = cache.open()
    reader.read("s0")  # the shard is open and checked before it is damaged
    (shard,) = cache.path.glob("shard-*.h5")
    with open(shard, "r+b") as fh:
        fh.truncate(1024)
    with pytest.raises(NotCachedError, match="damaged"):
        reader.read("s9")


def test_parallel_build_equals_serial(tmp_path):
    serial = H5Cache(root=tmp_path / "a", pipeline=make, progress=False)
    parallel = H5Cache(root=tmp_path / "b", pipeline=make, workers=2, shard_size=3, progress=False)
    serial.build(IDS)
    report = parallel.build(IDS)
    assert report.computed == 10 and len(list(parallel.path.glob("shard-*.json"))) == 4
    for sid in IDS:
        assert_same(parallel.open().read(sid), serial.open().read(sid))


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_round_trip(tmp_path, compression):
    cache = H5Cache(root=tmp_path, pipeline=make, compression=compression, progress=False)
    cache.build(IDS)
    reader = cache.open()
    for sid in IDS:
        assert_same(reader.read(sid), make({"data": {"sample_id": sid}}))


def _scan(s):
    # a float image with a lot of background, like a CT slice: compressible once its bytes are shuffled
    n = int(s["data"]["sample_id"][1:])
    img = np.zeros((1, 128, 128), np.float32)
    img[0, 32:96, 32:96] = np.random.default_rng(n).normal(size=(64, 64)).astype(np.float32)
    return nd.assoc(s, "data.input.img", img)


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_stores_less_than_the_raw_bytes(tmp_path, compression):
    ids = [f"s{i}" for i in range(8)]
    raw = len(ids) * 128 * 128 * 4
    plain = H5Cache(root=tmp_path / "plain", pipeline=_scan, progress=False)
    packed = H5Cache(root=tmp_path / "packed", pipeline=_scan, compression=compression, progress=False)
    plain.build(ids)
    packed.build(ids)
    size = sum(f.stat().st_size for f in packed.path.glob("shard-*.h5"))
    assert size < 0.6 * raw < sum(f.stat().st_size for f in plain.path.glob("shard-*.h5"))
    for sid in ids:
        np.testing.assert_array_equal(
            packed.open().read(sid)["data"]["input"]["img"], _scan({"data": {"sample_id": sid}})["data"]["input"]["img"]
        )


def test_editing_an_op_body_gets_a_new_store(tmp_path):
    def v1(s):
        return nd.assoc(s, "data.x", 1)

    def v2(s):
        return nd.assoc(s, "data.x", 2)

    v2.__qualname__ = v1.__qualname__  # same name, new body: what editing a recipe's function looks like
    assert H5Cache(root=tmp_path, pipeline=v1).path != H5Cache(root=tmp_path, pipeline=v2).path


def test_bad_config():
    with pytest.raises(ConfigError, match="H5Cache.workers"):
        H5Cache(root="x", pipeline=make, workers=-1)
    with pytest.raises(ConfigError, match="H5Cache.compression"):
        H5Cache(root="x", pipeline=make, compression="zstd")
    with pytest.raises(ConfigError, match="H5Cache.pipeline must be callable"):
        H5Cache(root="x", pipeline=3)
    with pytest.raises(ConfigError, match="duplicate ids"):
        H5Cache(root="x", pipeline=make).build(["a", "a"])


MODULE = textwrap.dedent(
    """
    import time
    import numpy as np
    from fusefn import nd

    def slow(s):
        time.sleep(0.02)
        n = int(s["data"]["sample_id"][1:])
        return nd.assoc(s, "data.input.img", np.full((1, 8, 8), n, np.float32) + np.arange(64).reshape(1, 8, 8))
    """
)
SCRIPT = textwrap.dedent(
    """
    import sys
    from fusefn.data import H5Cache
    from slowmod import slow

    ids = [f"s{i}" for i in range(int(sys.argv[3]))]
    H5Cache(root=sys.argv[1], pipeline=slow, workers=int(sys.argv[2]), shard_size=4, progress=False).build(ids)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, workers, monkeypatch):
    script = tmp_path / "build.py"
    script.write_text(SCRIPT)
    (tmp_path / "slowmod.py").write_text(MODULE)
    n = 80
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed"), str(workers), str(n)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(list((tmp_path / "killed").glob("*/shard-*.json"))) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # the builder only: its workers must not outlive it
    proc.wait()
    (store,) = (tmp_path / "killed").iterdir()
    committed = len(list(store.glob("shard-*.json")))
    assert 3 <= committed < n // 4, "the build was not interrupted half-way"

    subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), str(workers), str(n)], env=env, check=True)
    subprocess.run([sys.executable, str(script), str(tmp_path / "clean"), "0", str(n)], env=env, check=True)

    ids = [f"s{i}" for i in range(n)]
    seen = [e["id"] for m in store.glob("shard-*.json") for e in json.loads(m.read_text())["samples"]]
    assert sorted(seen) == sorted(ids)  # every sample cached exactly once
    assert not list(store.glob(".tmp-*")) and not list(store.glob(".*.tmp"))

    monkeypatch.syspath_prepend(str(tmp_path))
    from slowmod import slow

    killed = H5Cache(root=tmp_path / "killed", pipeline=slow, progress=False)
    clean = H5Cache(root=tmp_path / "clean", pipeline=slow, progress=False)
    assert killed.path.name == clean.path.name == store.name
    for sid in ids:
        np.testing.assert_array_equal(
            killed.open().read(sid)["data"]["input"]["img"], clean.open().read(sid)["data"]["input"]["img"]
        )
    assert killed.verify() == []


def test_source_rows_with_dates_are_stored_as_text(tmp_path):
    import datetime

    import polars as pl

    from fusefn.data import DataSource

    src = DataSource.from_frame(pl.DataFrame({"sample_id": ["a"], "scan": [datetime.date(2020, 1, 2)]}))
    cache = H5Cache(root=tmp_path, pipeline=lambda s: s, progress=False)
    assert cache.build(src).failed == 0
    assert cache.open().read("a")["data"]["source"]["scan"] == "2020-01-02"


def test_a_dead_worker_is_reported_and_the_next_build_finishes(tmp_path, caplog):
    marker = tmp_path / "crash"
    marker.touch()

    def crashy(s, marker=str(marker)):
        if s["data"]["sample_id"] == "s5" and os.path.exists(marker):
            os._exit(3)  # a segfault or the OOM killer, as the pool sees it
        return make(s)

    cache = H5Cache(root=tmp_path / "c", pipeline=crashy, workers=2, shard_size=2, progress=False)
    report = cache.build(IDS)
    assert report.failed > 0 and any("worker lost" in f["error"] for f in report.failures)
    assert "worker died" in caplog.text
    marker.unlink()
    again = cache.build(IDS)
    assert again.failed == 0 and again.reused == 10 - report.failed
    reader = cache.open()
    for sid in IDS:
        assert_same(reader.read(sid), make({"data": {"sample_id": sid}}))


def test_keys_present_in_some_samples_only(tmp_path):
    def sometimes(s):
        n = int(s["data"]["sample_id"][1:])
        if n % 2:
            return s
        return nd.assoc_many(s, {"data.extra": n, "data.mask": np.full((2, 2), n, np.uint8)})

    cache = H5Cache(root=tmp_path, pipeline=sometimes, shard_size=10, progress=False)
    cache.build(IDS)
    reader = cache.open()
    for sid in IDS:
        assert_same(reader.read(sid), sometimes({"data": {"sample_id": sid}}))


def test_a_complete_store_is_only_read(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=make, progress=False)
    cache.build(IDS)
    (cache.path / ".lock").unlink()
    report = cache.build(IDS)
    assert report.reused == 10 and report.computed == 0
    assert not (cache.path / ".lock").exists()  # no lock taken, nothing written: a read-only copy works


def test_reads_share_no_mutable_values(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=lambda s: nd.assoc(s, "data.tags", ["a", "b"]), progress=False)
    cache.build(["x"])
    reader = cache.open()
    first = reader.read("x")
    first["data"]["tags"].append("mutated")
    first["data"]["sample_id"] = "changed"
    assert reader.read("x")["data"] == {"sample_id": "x", "tags": ["a", "b"]}


_STORE_KEY_SCRIPT = """
from fusefn import chain
from fusefn.data import ops
from fusefn.data.cache import store_key
print(store_key(chain(ops.ReadNpy(add_channel=True), ops.Normalize(keys="data.input.img"))))
"""


def test_store_key_is_the_same_in_every_process():
    # a store named differently per process would never be reused by the next run
    import os
    import subprocess
    import sys

    keys = {
        subprocess.run(
            [sys.executable, "-c", _STORE_KEY_SCRIPT],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(keys) == 1


def test_verify_reports_a_torn_manifest(tmp_path):
    from fusefn import nd
    from fusefn.data import H5Cache, verify_store

    def make(s):
        return nd.assoc(s, "data.x", np.ones(3, np.float32))

    cache = H5Cache(root=tmp_path, pipeline=make, progress=False)
    cache.build([0, 1])
    manifest = next(cache.path.glob("shard-*.json"))
    manifest.write_text(manifest.read_text()[:10])
    problems = verify_store(cache.path)
    assert problems and "unreadable manifest" in problems[0]


_HELPER_MODULE = """
import numpy as np
from fusefn import nd


def _helper(x):
    return x * {factor}


def op(sample):
    return nd.assoc(sample, "data.x", _helper(np.ones(2)))
"""


def test_editing_a_helper_the_op_calls_changes_the_store(tmp_path, monkeypatch):
    import importlib

    from fusefn.data.cache import store_key

    monkeypatch.syspath_prepend(str(tmp_path))
    keys = []
    for factor in (1, 2):
        (tmp_path / f"helper_mod_{factor}.py").write_text(_HELPER_MODULE.format(factor=factor))
        mod = importlib.import_module(f"helper_mod_{factor}")
        keys.append(store_key(mod.op))
    assert keys[0] != keys[1]


def _volume(s):
    n = int(s["data"]["sample_id"][1:])
    vol = np.random.default_rng(n).random((1, 64, 64, 64), dtype=np.float32)  # 1 MiB: read by mapping
    return nd.assoc_many(s, {"data.input.vol": vol, "data.input.t": torch.from_numpy(vol[0, 0].copy())})


def _mapped_base(x) -> bool:
    while x is not None and not isinstance(x, MMAP):
        x = x.obj if isinstance(x, memoryview) else getattr(x, "base", None)
    return x is not None


def test_large_rows_are_mapped_writable_and_private(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=_volume, progress=False)
    cache.build(["v1", "v2"])
    (shard,) = cache.path.glob("shard-*.h5")
    before = shard.read_bytes()
    reader = cache.open()
    first = reader.read("v1")["data"]["input"]["vol"]
    expected = _volume({"data": {"sample_id": "v1"}})["data"]["input"]["vol"]
    assert _mapped_base(first) and first.flags.writeable
    np.testing.assert_array_equal(first, expected)
    first[0, 0, 0, :] = -1.0  # copy-on-write: neither the file nor the next read of the sample sees it
    first *= 2
    again = reader.read("v1")["data"]["input"]["vol"]
    np.testing.assert_array_equal(again, expected)
    assert shard.read_bytes() == before
    np.testing.assert_array_equal(
        reader.read("v2")["data"]["input"]["vol"], _volume({"data": {"sample_id": "v2"}})["data"]["input"]["vol"]
    )
    # a mapped array outlives the store's handles and survives pickling (DataLoader workers send it)
    import pickle

    reader.close()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(again)), expected)


def test_mapping_failure_falls_back_to_a_copy(tmp_path, monkeypatch):
    from fusefn.data.cache import reader as cache_mod

    cache = H5Cache(root=tmp_path, pipeline=make, progress=False)
    cache.build(IDS)
    monkeypatch.setattr(cache_mod, "_MAP_MIN_BYTES", 1)  # map every row, even the small ones
    reader = cache.open()
    mapped = {sid: reader.read(sid) for sid in IDS}
    assert _mapped_base(mapped["s3"]["data"]["input"]["img"])

    def refuse(*a, **k):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refuse)
    for sid in IDS:
        copied = reader.read(sid)
        assert not _mapped_base(copied["data"]["input"]["img"])
        assert_same(copied, mapped[sid])
        assert_same(copied, make({"data": {"sample_id": sid}}))


def test_mapped_read_of_a_truncated_file_is_an_error_not_a_crash(tmp_path, monkeypatch):
    from fusefn.data.cache import reader as cache_mod

    monkeypatch.setattr(cache_mod, "_MAP_MIN_BYTES", 1)
    cache = H5Cache(root=tmp_path, pipeline=make, shard_size=10, progress=False)
    cache.build(IDS)
    reader = cache.open()
    reader.read("s0")
    (shard,) = cache.path.glob("shard-*.h5")
    with open(shard, "r+b") as fh:
        fh.truncate(1024)
    with pytest.raises(NotCachedError, match="damaged"):
        reader.read("s9")


def test_readers_hold_no_hdf5_chunk_cache(tmp_path):
    # each sample is read once per epoch: HDF5's chunk cache (8 MiB per dataset since HDF5 2.0) would only
    # hold decompressed chunks in every DataLoader worker, for every shard it opened
    cache = H5Cache(root=tmp_path, pipeline=make, compression="lzf", progress=False)
    cache.build(IDS)
    reader = cache.open()
    reader.read("s1")
    (shard,) = [s for s in reader.shards().values() if s.loaded]
    assert shard.chunked, "the compressed arrays are chunked datasets"
    for _key, _kind, ds, _sums in shard.chunked:
        assert ds.id.get_access_plist().get_chunk_cache()[1] == 0


def _import_fresh(name: str):
    import importlib
    import sys

    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return importlib.import_module(name)


@pytest.mark.parametrize("style", ["from helpers import scale", "import helpers"])
def test_editing_a_helper_in_another_module_changes_the_store(tmp_path, monkeypatch, style):
    from fusefn.data.cache import store_key

    monkeypatch.syspath_prepend(str(tmp_path))
    call = "scale(x)" if style.startswith("from") else "helpers.scale(x)"
    (tmp_path / "user_ops.py").write_text(
        f"from fusefn import nd\n{style}\n\ndef op(s):\n    x = 1.0\n    return nd.assoc(s, 'data.x', {call})\n"
    )
    keys = []
    for factor in (2, 3):
        (tmp_path / "helpers.py").write_text(f"def scale(x):\n    return x * {factor}\n")
        _import_fresh("helpers")
        op = _import_fresh("user_ops").op
        assert op({"data": {"sample_id": 0}})["data"]["x"] == factor
        keys.append(store_key(op))
    assert keys[0] != keys[1]
    monkeypatch.delitem(__import__("sys").modules, "helpers")
    monkeypatch.delitem(__import__("sys").modules, "user_ops")


def test_changing_a_module_constant_the_op_reads_changes_the_store(tmp_path, monkeypatch):
    from fusefn.data.cache import store_key

    monkeypatch.syspath_prepend(str(tmp_path))
    keys = []
    for scale in (2, 3):
        (tmp_path / "const_ops.py").write_text(
            f"from fusefn import nd\nSCALE = {scale}\nNAMES = ('a', 'b')\n\n"
            "def op(s):\n    return nd.assoc(s, 'data.x', SCALE * len(NAMES))\n"
        )
        keys.append(store_key(_import_fresh("const_ops").op))
    assert keys[0] != keys[1]
    monkeypatch.delitem(__import__("sys").modules, "const_ops")


def test_numpy_integer_ids_find_their_samples(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=lambda s: nd.assoc(s, "data.x", 1), progress=False)
    cache.build([1, 2])
    reader = cache.open()
    assert np.int64(1) in reader and reader.entry(np.int64(2))["status"] == "ok"
    assert reader.read(np.int64(2))["data"]["sample_id"] == 2


def test_a_tensor_numpy_cannot_hold_is_a_recorded_failure(tmp_path):
    def op(s):
        dtype = torch.bfloat16 if s["data"]["sample_id"] == 2 else torch.float32
        return nd.assoc(s, "data.t", torch.ones(3, dtype=dtype))

    cache = H5Cache(root=tmp_path, pipeline=op, progress=False)
    report = cache.build([1, 2, 3])
    assert (report.computed, report.failed) == (2, 1)
    (failure,) = cache.open().failures()
    assert failure["sample_id"] == 2 and failure["key"] == "data.t" and "bfloat16" in failure["error"]
    assert cache.open().read(3)["data"]["t"].dtype == torch.float32


def test_two_sources_with_one_output_id_are_reported_not_hidden(tmp_path):
    def by_patient(s):  # a static op that (wrongly) re-keys every sample by its patient
        return nd.assoc_many(s, {"data.sample_id": "patient1", "data.x": s["data"]["sample_id"]})

    cache = H5Cache(root=tmp_path, pipeline=by_patient, progress=False)
    report = cache.build([1, 2])
    (failure,) = report.failures
    assert failure["sample_id"] == 2 and "'patient1'" in failure["error"] and "1 and 2" in failure["error"]
    with pytest.raises(SampleError, match="produced by source samples 1 and 2"):
        cache.open().read("patient1")


def test_mapped_rows_are_aligned_after_a_small_key(tmp_path):
    def op(s):
        return nd.assoc_many(s, {"data.a": np.zeros(3, np.uint8), "data.v": np.ones((1, 64, 64, 64), np.float64)})

    cache = H5Cache(root=tmp_path, pipeline=op, progress=False)
    cache.build([0, 1])
    v = cache.open().read(1)["data"]["v"]
    assert _mapped_base(v) and v.flags.aligned and v.ctypes.data % 8 == 0


def test_a_read_error_while_mapping_falls_back_to_a_copy(tmp_path, monkeypatch):
    import errno

    from fusefn.data.cache import reader as cache_mod

    class FailingMap(MMAP):
        def madvise(self, *args):
            raise OSError(errno.EIO, "Input/output error")

    cache = H5Cache(root=tmp_path, pipeline=_volume, progress=False)
    cache.build(["v1"])
    monkeypatch.setattr(cache_mod.mmap, "mmap", FailingMap)
    v = cache.open().read("v1")["data"]["input"]["vol"]
    assert not _mapped_base(v)
    np.testing.assert_array_equal(v, _volume({"data": {"sample_id": "v1"}})["data"]["input"]["vol"])


def test_shards_whose_samples_were_all_rebuilt_are_deleted(tmp_path):
    import polars as pl

    from fusefn.data import DataSource

    def from_source(s):
        return nd.assoc(s, "data.img", np.full((16, 16), s["data"]["source"]["v"], np.float32))

    cache = H5Cache(root=tmp_path, pipeline=from_source, shard_size=2, progress=False)
    frame = pl.DataFrame({"sample_id": ["a", "b", "c", "d"], "v": [0, 1, 2, 3]})
    cache.build(DataSource.from_frame(frame))
    assert len(list(cache.path.glob("shard-*.h5"))) == 2
    other = cache.open()  # another process's view, scanned before the rebuild, no shard opened yet

    # a, b and c change: the shard of a and b is superseded whole, the one of c and d only in part
    cache.build(DataSource.from_frame(frame.with_columns(v=pl.Series([10, 11, 12, 3]))))
    shards = sorted(p.name for p in cache.path.glob("shard-*.h5"))
    manifests = sorted(p.name[: -len(".json")] + ".h5" for p in cache.path.glob("shard-*.json"))
    assert len(shards) == 3 and shards == manifests
    reader = cache.open()
    for sid, v in zip("abcd", [10, 11, 12, 3]):
        assert reader.read(sid)["data"]["img"][0, 0] == v
    assert cache.verify() == []
    # the other view's shard of a and b is gone: it looks again instead of calling the store damaged
    assert other.read("a")["data"]["img"][0, 0] == 10
    other.close()


def test_a_reader_is_explicit_and_pickles_as_its_path(tmp_path):
    import pickle

    from fusefn.data.cache import Reader, ReaderSlot

    cache = H5Cache(root=tmp_path / "root", pipeline=make, progress=False)
    assert not (tmp_path / "root").exists()  # a record of configuration: constructing it touches no file
    cache.build(IDS)
    with cache.open() as reader:
        assert isinstance(reader, Reader) and len(reader) == 10
        reader.read("s1")  # a shard is open
        again = pickle.loads(pickle.dumps(reader))  # handles never travel: the copy opens the store itself
    assert again.path == reader.path
    assert_same(again.read("s2"), make({"data": {"sample_id": "s2"}}))
    slot = ReaderSlot()
    assert slot.get(cache.open) is slot.get(lambda: pytest.fail("opened twice"))
    assert pickle.loads(pickle.dumps(slot)).get(lambda: again) is again  # a pickled slot arrives empty
