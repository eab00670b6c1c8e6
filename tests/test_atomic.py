import errno
import os
import subprocess
import sys

import pytest

from fusefn._atomic import SET_MARKER, atomic_dir, atomic_path, write_bytes
from fusefn.errors import FusefnError


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.txt"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_written_files_are_ordinary_files(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    write_bytes(tmp_path / "a" / "b.json", b"{}", durable=True)
    assert (tmp_path / "a" / "b.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_importing_does_not_touch_the_umask():
    # reading the umask means setting it; importing fusefn must leave process state alone
    script = (
        "import os\n"
        "calls = []\n"
        "real = os.umask\n"
        "os.umask = lambda m: calls.append(m) or real(m)\n"
        "import fusefn._atomic, fusefn.data\n"
        "print(len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"


# ------------------------------------------------------------------------------ atomic_dir


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def _write_set(final, files):
    with atomic_dir(final) as tmp:
        for name, data in files.items():
            write_bytes(tmp / name, data)


def test_atomic_dir_replaces_the_set_as_a_whole(tmp_path):
    final = tmp_path / "report"
    _write_set(final, {"metrics.json": b"old", "roc.png": b"old"})
    _write_set(final, {"metrics.json": b"new"})
    assert _names(final) == [SET_MARKER, "metrics.json"]  # roc.png of the old set is gone, not mixed in
    assert (final / "metrics.json").read_bytes() == b"new"
    assert _names(tmp_path) == ["report"]


def test_atomic_dir_exception_inside_keeps_the_old_set_and_leaves_nothing(tmp_path):
    final = tmp_path / "report"
    _write_set(final, {"metrics.json": b"old", "report.md": b"old"})
    with pytest.raises(RuntimeError, match="plotting"), atomic_dir(final) as tmp:
        write_bytes(tmp / "metrics.json", b"new")
        raise RuntimeError("plotting failed")
    assert (final / "metrics.json").read_bytes() == b"old" and (final / "report.md").read_bytes() == b"old"
    assert _names(tmp_path) == ["report"]


def test_atomic_dir_first_set_and_failed_first_set(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "a" / "report") as tmp:
        write_bytes(tmp / "x", b"1")
        raise RuntimeError
    assert _names(tmp_path / "a") == []
    _write_set(tmp_path / "a" / "report", {"x": b"1"})
    assert (tmp_path / "a" / "report" / "x").read_bytes() == b"1"


def test_atomic_dir_sweeps_what_a_killed_run_left(tmp_path):
    final = tmp_path / "report"
    _write_set(final, {"metrics.json": b"old"})
    script = (
        "import os, sys\n"
        "from fusefn._atomic import atomic_dir, write_bytes\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    write_bytes(tmp / 'metrics.json', b'half')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(final)], capture_output=True)
    assert r.returncode == -9
    strays = [n for n in _names(tmp_path) if n != "report"]
    assert len(strays) == 1 and strays[0].startswith(".report.fusefn-new-")
    assert (final / "metrics.json").read_bytes() == b"old"
    _write_set(final, {"metrics.json": b"new"})
    assert _names(tmp_path) == ["report"]


def test_atomic_dir_killed_between_the_renames_puts_the_old_set_back(tmp_path):
    final = tmp_path / "report"
    _write_set(final, {"metrics.json": b"old"})
    # the state a kill between "old set aside" and "new set in" leaves
    os.rename(final, tmp_path / ".report.fusefn-old-abc")
    (tmp_path / ".report.fusefn-new-abc").mkdir()
    (tmp_path / ".report.fusefn-new-abc" / "metrics.json").write_bytes(b"maybe half")
    with pytest.raises(RuntimeError), atomic_dir(final):
        assert (final / "metrics.json").read_bytes() == b"old"  # restored before anything else
        raise RuntimeError
    assert _names(tmp_path) == ["report"] and (final / "metrics.json").read_bytes() == b"old"


def test_atomic_dir_leaves_a_live_run_alone(tmp_path):
    final = tmp_path / "report"
    with atomic_dir(final) as outer:
        write_bytes(outer / "a", b"outer")
        _write_set(final, {"a": b"inner"})  # sweeps on entry: must not take the outer run's folder
        assert outer.is_dir()
    assert (final / "a").read_bytes() == b"outer"
    assert _names(tmp_path) == ["report"]


def test_atomic_dir_refuses_a_folder_with_other_things(tmp_path):
    (tmp_path / "preds.csv").write_text("id,score\n")
    with pytest.raises(FusefnError, match=r"preds\.csv"), atomic_dir(tmp_path):
        pytest.fail("must refuse before the block runs")
    assert _names(tmp_path) == ["preds.csv"]
    # a set written before the marker existed: its files are named by ``owned``
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.txt").write_text("old")
    with atomic_dir(tmp_path / "old", owned=("report.*", "*.png")) as tmp:
        write_bytes(tmp / "report.txt", b"new")
    # a file the user added to a set is not deleted either
    (tmp_path / "old" / "notes.txt").write_text("mine")
    with pytest.raises(FusefnError, match=r"notes\.txt"), atomic_dir(tmp_path / "old"):
        pass
    assert (tmp_path / "old" / "notes.txt").read_text() == "mine"


def test_errors_name_the_path(tmp_path):
    final = tmp_path / "report"
    with pytest.raises(OSError, match="No space") as e, atomic_dir(final) as tmp:  # noqa: SIM117 (tmp is needed)
        with atomic_path(tmp / "metrics.json") as f:
            f.write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(final / "metrics.json")
    with pytest.raises(OSError) as e, atomic_dir(final):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.filename == str(final)
    with pytest.raises(FileNotFoundError) as e, atomic_dir(final) as tmp:
        (tmp / "missing").read_bytes()
    assert e.value.filename == str(final / "missing")
    with pytest.raises(OSError) as e, atomic_path(tmp_path / "a.txt"):
        raise OSError(errno.EIO, "Input/output error")
    assert e.value.filename == str(tmp_path / "a.txt")


def test_atomic_dir_through_a_symlink_swaps_the_linked_folder(tmp_path):
    (tmp_path / "disk").mkdir()
    _write_set(tmp_path / "disk" / "eval", {"a": b"old"})
    (tmp_path / "eval").symlink_to(tmp_path / "disk" / "eval")
    _write_set(tmp_path / "eval", {"a": b"new"})
    assert (tmp_path / "eval").is_symlink() and (tmp_path / "disk" / "eval" / "a").read_bytes() == b"new"
    assert _names(tmp_path / "disk") == ["eval"]
