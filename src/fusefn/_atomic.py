"""Atomic writes: a file, or a run's whole output set, appears whole or not at all, even if the process is killed.

Every file fusefn writes goes through :func:`atomic_path`: the content is written to
a temporary file beside the target (``.<name>.<random>.tmp``), which is then renamed
over it. The HDF5 cache writes its shards and manifests this way too, and its next
build sweeps the temporary files a killed build left.

A set of files that belong together (``metrics.json``, the report and its figures) goes
through :func:`atomic_dir`: written into a fresh sibling folder that then replaces the
previous set, so a failure half-way never leaves new files next to old ones.

An ``OSError`` raised here names the path involved (a full disk's bare
``[Errno 28] No space left on device`` does not).

>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out" / "a.txt"
>>> write_bytes(target, b"whole")
>>> target.read_bytes(), [p.name for p in target.parent.iterdir()]
(b'whole', ['a.txt'])
>>> with atomic_dir(target.parent / "report") as tmp:
...     write_bytes(tmp / "metrics.json", b"{}")
>>> sorted(p.name for p in (target.parent / "report").iterdir())
['.fusefn-set', 'metrics.json']
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import glob
import os
import pathlib
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator

from fusefn.errors import FusefnError

__all__ = ["SET_MARKER", "atomic_dir", "atomic_path", "sweep_temporaries", "write_bytes"]

SET_MARKER = ".fusefn-set"
"""The file :func:`atomic_dir` leaves in each output set: the names the set holds, one a line."""


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


def _under(name, tmp: str | os.PathLike | None) -> bool:
    if tmp is None:
        return False
    with contextlib.suppress(ValueError, TypeError):
        pathlib.Path(os.fsdecode(name)).relative_to(tmp)
        return True
    return False


@contextlib.contextmanager
def _naming(path: pathlib.Path, tmp: str | os.PathLike | None = None) -> Iterator[None]:
    """Re-raise an OSError that names no path, or a temporary one, naming ``path`` (or the file under it).

    A file under the temporary ``tmp`` is named by where it would have landed: the temporary
    is gone when the error reaches the user.
    """
    try:
        yield
    except OSError as e:
        if e.filename is not None and not _under(e.filename, tmp):
            raise
        name = path if e.filename is None else path / pathlib.Path(os.fsdecode(e.filename)).relative_to(tmp)
        if e.errno is None:  # h5py's, for one: keep its type where it takes a message
            try:
                named = type(e)(f"{os.fspath(name)}: {e}")
            except TypeError:
                named = OSError(f"{os.fspath(name)}: {e}")
            raise named from e
        # OSError(errno, ...) picks the matching subclass (FileNotFoundError, ...): callers' excepts still work
        raise OSError(e.errno, e.strerror, os.fspath(name), None, e.filename2) from e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[pathlib.Path]:
    """A temporary path to write; renamed over ``path`` when the block succeeds, removed when it fails.

    ``durable`` also flushes the file and its folder to the disk (fsync): safe against a
    power loss, at a few milliseconds per file.
    """
    path = pathlib.Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _naming(path, tmp):
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


def sweep_temporaries(folder: str | os.PathLike, name: str | None = None) -> None:
    """Remove the temporary files :func:`atomic_path` writers killed mid-write left in ``folder``.

    Only those of ``name`` when given (else all). Call it where one writer owns the folder
    (one build under its lock, one run per model dir): a live writer's temporary would go too.
    """
    pattern = f".{glob.escape(name)}.*.tmp" if name is not None else ".*.tmp"
    with contextlib.suppress(OSError):
        for stray in pathlib.Path(folder).glob(pattern):
            stray.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- output sets

_NEW, _OLD = "fusefn-new-", "fusefn-old-"
_STALE_S = 24 * 3600  # without flock (Windows), a temporary this old is taken as a killed run's


def _stray_name(final: pathlib.Path, kind: str, token: str) -> pathlib.Path:
    return final.parent / f".{final.name}.{kind}{token}"


def _rmtree(path: pathlib.Path) -> None:
    def gone_ok(func, p, exc):
        e = exc if isinstance(exc, BaseException) else exc[1]
        if not isinstance(e, FileNotFoundError):  # a concurrent sweep may remove it first
            raise e

    with _naming(path):
        if path.is_symlink():
            path.unlink()
            return
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=gone_ok)
        else:
            shutil.rmtree(path, onerror=gone_ok)


def _lock(folder: pathlib.Path) -> int | None:
    """An open descriptor holding an exclusive flock on ``folder`` (None where flock does not exist)."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _alive(folder: pathlib.Path) -> bool:
    """Whether a running ``atomic_dir`` still holds ``folder`` (it keeps it flocked until it is done)."""
    try:
        fd = _lock(folder)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # locked: a live writer
    if fd is None:
        with contextlib.suppress(FileNotFoundError):
            return time.time() - folder.stat().st_mtime < _STALE_S
        return False
    os.close(fd)
    return False


def _sweep(final: pathlib.Path) -> None:
    """Clean up after runs killed inside :func:`atomic_dir`: their temporary and set-aside folders.

    Killed between setting the old set aside and renaming the new one in, a run leaves no
    ``final``: the old set is put back (the new one may be incomplete as far as anyone knows).
    """
    prefix = f".{final.name}."
    tokens = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(final.parent):
            for kind in (_NEW, _OLD):
                if entry.startswith(prefix + kind):
                    tokens.add(entry[len(prefix + kind) :])
    for token in sorted(tokens):
        new, old = _stray_name(final, _NEW, token), _stray_name(final, _OLD, token)
        if new.exists() and _alive(new):
            continue
        if old.exists():
            if not final.exists() and not final.is_symlink():
                with _naming(old), contextlib.suppress(FileNotFoundError):
                    os.rename(old, final)
            else:
                _rmtree(old)
        if new.exists():
            _rmtree(new)


def _set_entries(folder: pathlib.Path) -> list[str]:
    return sorted(e for e in os.listdir(folder) if e != SET_MARKER)


def _foreign(final: pathlib.Path, owned: Iterable[str]) -> list[str]:
    """Entries of the existing ``final`` that no output set put there: replacing it would delete them."""
    try:
        entries = _set_entries(final)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return [final.name]
    marker = final / SET_MARKER
    ours: set[str] = set()
    if marker.is_file():
        with _naming(marker):
            ours = set(marker.read_text(encoding="utf-8").splitlines())
    owned = list(owned)
    return [e for e in entries if e not in ours and not any(fnmatch.fnmatchcase(e, pat) for pat in owned)]


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, owned: Iterable[str] = ()) -> Iterator[pathlib.Path]:
    """A fresh, empty temporary folder beside ``final``; it replaces ``final`` as a whole when the block succeeds.

    Write a run's whole output set into the yielded folder. On normal exit the previous
    ``final`` is renamed aside, the new folder renamed in, and the old one removed, so a
    reader sees the old set or the new one, never a mix. When the block raises, the
    temporary folder is removed and ``final`` is left as it was. Temporaries a killed run
    left (``.<name>.fusefn-new-*`` / ``.fusefn-old-*`` beside ``final``) are swept by the
    next call; those of a run still going (it holds a lock on its folder) are left alone.

    ``final`` must hold one output set and nothing else: it is replaced whole. A folder
    that holds other things (a run folder with ``model/`` and ``report/``) is not passed
    here; its output subfolder is. To keep that from deleting someone's files, ``final``
    must be absent, empty, or hold only entries of the set this function wrote there (it
    leaves a ``.fusefn-set`` file listing them) or matching the ``owned`` patterns (fnmatch:
    the names of a set written before ``.fusefn-set`` existed, or files a caller adds to the
    set after it was written). Otherwise a
    :class:`~fusefn.errors.FusefnError` naming ``final`` and the other entries is raised,
    before anything is written.

    Every ``OSError`` names the path involved; one from the block naming a file in the
    temporary folder names the file of ``final`` it stands for.
    """
    final = pathlib.Path(os.path.abspath(final))
    if final.is_symlink():  # an output folder linked to another disk: the set is swapped there, the link kept
        final = final.resolve()
    if final.parent == final:
        raise FusefnError(f"cannot write an output set as {final}: it has no parent folder")
    with _naming(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final)
    foreign = _foreign(final, owned)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FusefnError(
            f"{final} holds {shown}, which no fusefn output set wrote there; it would be replaced as a whole: "
            "write to a new or empty folder"
        )
    token = secrets.token_hex(6)
    tmp, aside = _stray_name(final, _NEW, token), _stray_name(final, _OLD, token)
    with _naming(tmp):
        tmp.mkdir(mode=0o777)  # mode & ~umask: an ordinary folder, unlike mkdtemp's 0700
        lock = _lock(tmp)
    try:
        with _naming(final, tmp):
            yield tmp
            entries = _set_entries(tmp)
            write_bytes(tmp / SET_MARKER, "".join(e + "\n" for e in entries).encode())
        # checked again: something may have been put into final while the block ran
        foreign = _foreign(final, owned)
        if foreign:
            raise FusefnError(f"{final} gained {', '.join(foreign[:5])} while it was being rewritten; left as it was")
        moved = False
        with _naming(final):
            if final.exists() or final.is_symlink():
                os.rename(final, aside)
                moved = True
            try:
                os.rename(tmp, final)
            except OSError:
                if moved:
                    os.rename(aside, final)
                raise
        if moved:
            with contextlib.suppress(OSError):  # the new set is in place; a leftover is swept next time
                _rmtree(aside)
    except BaseException:
        if tmp.exists():
            _rmtree(tmp)
        raise
    finally:
        if lock is not None:
            os.close(lock)
