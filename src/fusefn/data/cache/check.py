"""Checking a store without a pipeline: what it holds (:func:`store_info`) and what is damaged
(:func:`shard_problems`, :func:`verify_store`), for ``fusefn cache info|verify`` and the build's repair.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib

from fusefn.data.cache.reader import MARK, Reader, _CorruptRow, _Shard, mark_damaged
from fusefn.data.cache.shard import crc32
from fusefn.errors import FusefnError

__all__ = ["is_store", "shard_problems", "store_info", "verify_store"]


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a store directory (it holds ``store.json``)."""
    return (pathlib.Path(path) / "store.json").is_file()


def shard_problems(path: str | os.PathLike, deep: bool = False) -> dict[str, str]:
    """``{shard file: problem}`` of every shard of the store at ``path`` that cannot be served whole.

    Always: an unreadable manifest, a missing or truncated file, HDF5 metadata that does not open or
    walk, a table cell that fails its checksum, a damage mark left by a read. With ``deep``, also every
    row of every array against its checksum (reads all the data).
    """
    path = pathlib.Path(path)
    problems = {}
    for mpath in sorted(path.glob("shard-*.json")):
        name = mpath.name[: -len(".json")] + ".h5"
        try:
            manifest = json.loads(mpath.read_text())
            h5 = path / manifest["file"]
        except (OSError, ValueError, KeyError) as exc:
            problems[name] = f"unreadable manifest ({exc})"
            continue
        if not h5.exists():
            problems[name] = "missing"
            continue
        if h5.stat().st_size != manifest["size"]:
            problems[name] = "truncated"
            continue
        mark = path / (name + MARK)
        if mark.exists():
            why = ""
            with contextlib.suppress(OSError):
                why = mark.read_text()
            problems[name] = f"damaged ({why or 'marked by a read'})"
            continue
        shard = _Shard(str(h5), manifest)
        try:
            shard.load(verify=True)
            bad = [key for key, *_, rows in shard.tables if rows]
            if bad:
                raise _CorruptRow(f"table cells of {bad} do not match their checksums")
            if deep:
                for row in range(manifest["n_rows"]):
                    shard.read(row)
        except _CorruptRow as exc:
            problems[name] = f"checksum mismatch ({exc})"
        except Exception as exc:
            problems[name] = f"unreadable ({type(exc).__name__}: {exc})"
        finally:
            shard.close()
        if name not in problems and deep and "crc32" in manifest and crc32(h5) != manifest["crc32"]:
            problems[name] = "checksum mismatch (file CRC32)"
    return problems


def verify_store(path: str | os.PathLike, deep: bool = False) -> list[str]:
    """Problems found in the store at ``path`` (empty when sound), as ``"<shard>: <problem>"``: see
    :func:`shard_problems`; ``deep`` also reads every row and checks its checksums.

    Needs no pipeline, so ``fusefn cache verify`` can check any store on disk. A damaged shard it
    finds is marked (when the store is writable), so the next build rebuilds it.
    """
    path = pathlib.Path(path)
    problems = shard_problems(path, deep=deep)
    for name, why in problems.items():
        if (path / name).exists() and not (path / (name + MARK)).exists():
            mark_damaged(path, name, why)
    return [f"{name}: {why}" for name, why in problems.items()]


def store_info(path: str | os.PathLike) -> dict:
    """What a store holds: its description, sample counts by status, shards and bytes on disk."""
    path = pathlib.Path(path)
    if not is_store(path):
        raise FusefnError(f"{path} is not a fusefn cache store (no store.json)")
    with Reader(path) as reader:
        counts: dict[str, int] = {}
        for e in reader.entries():
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        return {
            "path": str(path),
            "store": json.loads((path / "store.json").read_text()),
            "samples": counts,
            "outputs": len(reader),
            "shards": len(reader.shards()),
            "damaged": dict(reader.bad),
            "bytes": sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
        }
