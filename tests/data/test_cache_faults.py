"""Fault injection for the sample cache (issue 19): the cache never serves wrong data.

Each test damages a store the way a real fault would (another table rebuilding the same ids, flipped bytes in
array data, in a table, in HDF5 metadata, a lost build worker, a clear during a build, a full disk) and checks
that no wrong sample is ever served, the error names the sample and the shard (or the path), and the next build
repairs the store.
"""

import os
import pathlib
import pickle
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import polars as pl
import pytest

from fusefn import nd
from fusefn.data import Dataset, DataSource, H5Cache
from fusefn.data.cache import DamagedSampleError, StaleSampleError, StoreBusyError
from fusefn.errors import FusefnError

IDS = [f"s{i}" for i in range(12)]

_OPS = """
import numpy as np
from fusefn import nd


def from_row(s):
    v = s["data"]["source"]["value"]
    return nd.assoc_many(s, {"data.input.img": np.full((2, 3), v, np.float32), "data.gt.label": int(v)})
"""


def table(offset: int, n: int = len(IDS)) -> DataSource:
    ids = [f"s{i}" for i in range(n)]
    return DataSource.from_frame(pl.DataFrame({"sample_id": ids, "value": [offset + i for i in range(n)]}))


@pytest.fixture
def from_row(tmp_path, monkeypatch):
    """A pipeline that stores its source row's value, from a module other processes can import too."""
    mod = tmp_path / "faultops.py"
    mod.write_text(_OPS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("faultops", None)
    import faultops

    yield faultops.from_row
    sys.modules.pop("faultops", None)


def make(s):
    n = int(s["data"]["sample_id"][1:])
    return nd.assoc_many(
        s,
        {"data.input.img": np.full((4, 8), n, np.float32), "data.gt.label": n % 3, "data.meta.name": f"name-{n}"},
    )


def check(sample, sid):
    n = int(sid[1:])
    assert sample["data"]["sample_id"] == sid
    np.testing.assert_array_equal(sample["data"]["input"]["img"], np.full((4, 8), n, np.float32))
    assert sample["data"]["gt"]["label"] == n % 3 and sample["data"]["meta"]["name"] == f"name-{n}"


def shard_of(cache: H5Cache, sid) -> pathlib.Path:
    with cache.open() as reader:
        return cache.path / reader.entry(sid)["shard"]


def flip(path: pathlib.Path, at: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0xFF]))


def row_offset(path: pathlib.Path, dataset: str, row: int) -> int:
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        return ds.id.get_offset() + row * ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))


def row_of(cache: H5Cache, sid) -> int:
    with cache.open() as reader:
        return reader.entry(sid)["rows"][0]


# ------------------------------------------------------------------ another table under the same ids


def test_a_rebuild_from_another_table_is_never_served_in_one_process(tmp_path, from_row, caplog):
    cache = H5Cache(root=tmp_path / "c", pipeline=from_row, progress=False)
    ds_a = Dataset(source=table(0), cache=cache).build()
    Dataset(source=table(100), cache=cache).build()  # a relabel experiment sharing the root
    fresh_a = pickle.loads(pickle.dumps(ds_a))  # a DataLoader worker: opens its own reader now
    for ds in (ds_a, fresh_a):
        for i, sid in enumerate(ds.ids):
            s = ds[i]
            assert s["data"]["gt"]["label"] == i and s["data"]["input"]["img"][0, 0] == i, sid
        assert ds.values("data.gt.label") == list(range(len(IDS)))
    assert "another source row" in caplog.text
    # a reader given the source refuses, naming the sample and the shard
    with cache.open(table(0)) as reader, pytest.raises(StaleSampleError, match=r"'s3'.*shard-") as err:
        reader.read("s3")
    assert err.value.sample_id == "s3" and err.value.shard.startswith("shard-")
    with cache.open(table(100)) as reader:
        assert reader.read("s3")["data"]["gt"]["label"] == 103


_REBUILDER = """
import sys, time
sys.path.insert(0, {mod!r})
import polars as pl
from faultops import from_row
from fusefn.data import DataSource, Dataset, H5Cache

ids = [f"s{{i}}" for i in range({n})]
cache = H5Cache(root={root!r}, pipeline=from_row, shard_size=4, progress=False)
end = time.time() + {seconds}
rounds = 0
while time.time() < end:
    offset = 1000 * (rounds + 1)
    Dataset(source=DataSource.from_frame(pl.DataFrame({{"sample_id": ids, "value": [offset + i for i in range({n})]}})),
            cache=cache).build()
    rounds += 1
print(rounds)
"""


@pytest.mark.slow
def test_a_rebuild_from_another_table_in_another_process_is_never_served(tmp_path, from_row):
    n = 40
    root = tmp_path / "c"
    cache = H5Cache(root=root, pipeline=from_row, shard_size=4, progress=False)
    ds_a = Dataset(source=table(0, n), cache=cache).build()
    script = _REBUILDER.format(mod=str(tmp_path), n=n, root=str(root), seconds=6)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads = wrong = 0
    try:
        while proc.poll() is None:
            ds = pickle.loads(pickle.dumps(ds_a))  # fresh readers see the other table's newest shards
            for i in range(n):
                s = ds[i]
                reads += 1
                wrong += s["data"]["gt"]["label"] != i or s["data"]["input"]["img"][0, 0] != i
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert int(out) > 0 and reads > n
    assert wrong == 0, f"{wrong} of {reads} reads served the other table's rows"


# ------------------------------------------------------------------------------ flipped bytes


def test_flipped_array_bytes_are_caught_on_read_flagged_by_verify_and_repaired(tmp_path, caplog):
    cache = H5Cache(root=tmp_path, pipeline=make, shard_size=6, progress=False, verify_reads=True)
    cache.build(IDS)
    shard = shard_of(cache, "s7")
    flip(shard, row_offset(shard, "stacked/data.input.img", row_of(cache, "s7")) + 5)
    with cache.open() as reader:
        check(reader.read("s6"), "s6")  # rows before are read (the shard is fine up to the damage)
        with pytest.raises(DamagedSampleError, match=rf"'s7'.*{shard.name}.*checksum"):
            reader.read("s7")
    assert any(shard.name in p and "checksum" in p for p in cache.verify(deep=True))
    # a Dataset recomputes instead of serving it, until the next build repairs the shard
    ds = Dataset(source=IDS, cache=cache)
    report = cache.build(IDS)
    assert report.repaired and report.computed == 6, str(report)
    assert cache.verify(deep=True) == []
    ds = ds.build()
    for i, sid in enumerate(IDS):
        check(ds[i], sid)


def test_flipped_bytes_found_by_a_read_are_repaired_by_the_next_build(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=make, shard_size=6, progress=False, verify_reads=True)
    cache.build(IDS)
    shard = shard_of(cache, "s1")
    flip(shard, row_offset(shard, "stacked/data.input.img", row_of(cache, "s1")))
    cache.build(IDS, deep=False)  # a shallow build cannot see it (it reads no arrays) ...
    with cache.open() as reader, pytest.raises(DamagedSampleError):
        reader.read("s1")  # ... but a verifying read does, and marks the shard
    report = cache.build(IDS, deep=False)
    assert report.computed == 6 and "checksum" in report.repaired[0]
    with cache.open() as reader:
        for sid in IDS:
            check(reader.read(sid), sid)


def test_flipped_bytes_in_the_label_table_are_never_served_and_the_build_repairs_them(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=make, shard_size=6, progress=False)
    cache.build(IDS)
    shard = shard_of(cache, "s4")
    flip(shard, row_offset(shard, "table/data.gt.label", row_of(cache, "s4")))
    with cache.open() as reader, pytest.raises(DamagedSampleError, match=rf"'s4'.*{shard.name}"):
        reader.read("s4", keys=("data.gt.label",))
    assert cache.verify() and cache.verify(deep=True)
    report = cache.build(IDS)  # the nothing-to-do shortcut must not skip it
    assert report.repaired and report.computed == 6
    assert cache.verify(deep=True) == []
    with cache.open() as reader:
        for sid in IDS:
            check(reader.read(sid), sid)


def _corrupt_metadata(path: pathlib.Path) -> None:
    """Flip a byte inside every object header but the root group's: the file opens, its datasets do not."""
    data = path.read_bytes()
    headers = [i for i in range(len(data)) if data.startswith(b"OHDR", i)]
    assert len(headers) > 2
    for at in headers[1:]:
        flip(path, at + 6)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_damaged_metadata_fails_reads_by_name_leaks_nothing_and_is_repaired(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=make, shard_size=6, progress=False)
    cache.build(IDS)
    shard = shard_of(cache, "s2")
    _corrupt_metadata(shard)
    reader = cache.open()
    check(reader.read("s9"), "s9")  # the other shard serves
    before = _open_fds()
    for _ in range(50):
        with pytest.raises(DamagedSampleError, match=rf"'s2'.*{shard.name}"):
            reader.read("s2")
    assert _open_fds() <= before  # nothing of the damaged shard stays open (the other shard's handles do)
    reader.close()
    for _ in range(20):  # fresh readers too (each a DataLoader worker)
        with cache.open() as r, pytest.raises(DamagedSampleError):
            r.read("s3")
    assert _open_fds() <= before
    assert any(shard.name in p for p in cache.verify())
    report = cache.build(IDS)  # sizes match: the shortcut must still repair
    assert report.repaired and report.computed == 6
    with cache.open() as reader:
        for sid in IDS:
            check(reader.read(sid), sid)


def test_without_checksums_nothing_is_verified(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=make, shard_size=6, checksum=False, progress=False)
    cache.build(IDS)
    shard = shard_of(cache, "s7")
    with h5py.File(shard, "r") as f:
        assert "sums" not in f


# ------------------------------------------------------------------------------ lost build worker


def test_samples_a_lost_worker_never_stored_fail_the_dataset_unless_allowed(tmp_path, caplog):
    parent = os.getpid()

    def crashy(s):
        if s["data"]["sample_id"] == "s5" and os.getpid() != parent:
            os._exit(3)  # the OOM killer, as the build sees it
        return make(s)

    cache = H5Cache(root=tmp_path, pipeline=crashy, workers=2, shard_size=2, progress=False)
    with pytest.raises(FusefnError, match=r"did not store \d+ of 12 samples.*'s5'"):
        Dataset(source=IDS, cache=cache).build()
    ds = Dataset(source=IDS, cache=cache).build(allow_missing=True)
    assert "s5" not in ds.ids and 0 < len(ds) < len(IDS)
    full = Dataset(source=IDS, cache=cache).build(workers=0)  # in this process: nothing is lost
    assert full.ids == IDS


# ------------------------------------------------------------------------------ clear during a build


_GATE: dict = {}  # the events a slow build waits on (a pipeline's closure over them could not be fingerprinted)


def slow(s):
    _GATE["started"].set()
    _GATE["release"].wait(10)
    return make(s)


def test_clear_refuses_or_waits_while_a_build_runs(tmp_path):
    started, release, result = threading.Event(), threading.Event(), []
    _GATE.update(started=started, release=release)
    cache = H5Cache(root=tmp_path, pipeline=slow, shard_size=2, progress=False)
    t = threading.Thread(target=lambda: result.append(_try(cache.build, IDS)))
    t.start()
    assert started.wait(10)
    with pytest.raises(StoreBusyError, match="being built") as err:
        cache.clear()
    assert "\n" not in str(err.value)
    # the CLI says it in one line too
    from click.testing import CliRunner

    from fusefn.cli import main

    out = CliRunner().invoke(main, ["cache", "clear", str(cache.path), "--yes"])
    assert out.exit_code == 2 and "being built" in out.output
    waiter = threading.Thread(target=lambda: result.append(_try(cache.clear, wait=True)))
    waiter.start()
    time.sleep(0.2)
    release.set()
    t.join(20)
    waiter.join(20)
    build, cleared = result
    assert not isinstance(build, BaseException), build
    assert build.computed == len(IDS) and cleared is None
    assert not cache.path.exists()
    assert cache.build(IDS).computed == len(IDS)  # a build after a clear starts afresh


def _try(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:
        return exc


def test_a_build_waiting_for_a_clear_builds_into_a_fresh_store(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=make, progress=False)
    cache.build(IDS[:4])
    import fusefn.data.cache.builder as builder

    # a build that arrives while a clear holds the lock waits, then finds the old folder gone
    with builder._locked(cache.path, create=False):
        t = threading.Thread(target=lambda: results.append(_try(cache.build, IDS)))
        results: list = []
        t.start()
        time.sleep(0.3)
        trash = cache.path.with_name(".cleared")
        os.replace(cache.path, trash)
    t.join(20)
    (report,) = results
    assert not isinstance(report, BaseException), report
    assert report.computed == len(IDS)
    with cache.open() as reader:
        for sid in IDS:
            check(reader.read(sid), sid)


# ------------------------------------------------------------------------------ disk full


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def big(s):
    n = int(s["data"]["sample_id"][1:])
    return nd.assoc(s, "data.input.img", np.full((128, 256), n, np.float32))  # 128 KiB


@pytest.mark.parametrize("workers", [0, 2])
def test_a_full_disk_names_the_path_leaves_nothing_half_written_and_keeps_what_was_stored(small_disk, workers):
    ids = [f"s{i}" for i in range(24)]
    cache = H5Cache(root=small_disk, pipeline=big, shard_size=2, workers=workers, progress=False)
    with pytest.raises(FusefnError, match=rf"cannot write {cache.path}.*(No space|space)"):
        cache.build(ids)
    names = [p.name for p in cache.path.iterdir()]
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".tmp")], names
    assert all((cache.path / n).with_suffix(".json").exists() for n in names if n.endswith(".h5")), names
    assert cache.verify(deep=True) == []
    with cache.open() as reader:
        stored = reader.ids()
        assert stored, "some shards fit before the disk filled"
        for sid in stored:
            np.testing.assert_array_equal(
                reader.read(sid)["data"]["input"]["img"], big({"data": {"sample_id": sid}})["data"]["input"]["img"]
            )


def test_by_default_the_next_build_finds_and_repairs_flipped_array_bytes(tmp_path):
    # reads do not verify arrays by default (a CRC32 costs more than the read): the build does
    cache = H5Cache(root=tmp_path, pipeline=make, shard_size=6, progress=False)
    cache.build(IDS)
    shard = shard_of(cache, "s2")
    flip(shard, row_offset(shard, "stacked/data.input.img", row_of(cache, "s2")) + 3)
    report = cache.build(IDS)
    assert report.repaired and report.computed == 6, str(report)
    ds = Dataset(source=IDS, cache=cache).build()
    for i, sid in enumerate(IDS):
        check(ds[i], sid)
