import os

import pytest

from fusefn._atomic import atomic_path, write_bytes


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
    import subprocess
    import sys

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
