"""Atomic file writes: a file appears whole or not at all, even if the process is killed.

Every file fusefn writes goes through :func:`atomic_path`: the content is written to
a temporary file beside the target (``.<name>.<random>.tmp``), which is then renamed
over it. The HDF5 cache writes its shards and manifests this way too, and its next
build sweeps the temporary files a killed build left.

>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out" / "a.txt"
>>> write_bytes(target, b"whole")
>>> target.read_bytes(), [p.name for p in target.parent.iterdir()]
(b'whole', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_path", "write_bytes"]


@functools.cache
def _file_mode() -> int:
    """The mode of an ordinary new file under this process's umask: mkstemp makes 0600 files.

    Read on first use, not at import: reading the umask means setting it, and importing
    fusefn must not touch process state. Cached, so it is set (and restored) once per process.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[pathlib.Path]:
    """A temporary path to write; renamed over ``path`` when the block succeeds, removed when it fails.

    ``durable`` also flushes the file and its folder to the disk (fsync): safe against a
    power loss, at a few milliseconds per file.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _file_mode())
        yield pathlib.Path(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if durable:
        _fsync(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)
