"""Nested-dict helpers over plain dicts addressed by dotted keys.

A batch_dict is an ordinary nested ``dict``: ``{"data": {"input": {"img": x}}}``
is addressed as ``"data.input.img"``. Every function here is pure: edits return a
new tree that shares the untouched sub-trees with the input, which is never
mutated. A leaf is any value that is not a ``dict``.

>>> t = {"data": {"gt": {"label": 3}}}
>>> get(t, "data.gt.label")
3
>>> t2 = assoc(t, "model.head_0.logits", [0.1])
>>> sorted(keys(t2))
['data.gt.label', 'model.head_0.logits']
>>> t["data"] is t2["data"]  # untouched sub-tree shared, input unchanged
True
>>> select(t2, "*.*.label")
{'data.gt.label': 3}
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator, Mapping
from typing import Any

from fusefn.errors import MissingKeyError

__all__ = [
    "get",
    "contains",
    "assoc",
    "assoc_many",
    "dissoc",
    "flatten",
    "unflatten",
    "keys",
    "select",
    "merge",
]

_MISSING: Any = object()  # "no default given"
_ABSENT: Any = object()  # a default that no tree holds (module-level so torch.compile can trace it)


def _split(key: str) -> list[str]:
    if not isinstance(key, str) or not key:
        raise TypeError(f"a key must be a non-empty dotted string, got {key!r}")
    parts = key.split(".")
    if any(p == "" for p in parts):
        raise ValueError(f"malformed key {key!r}: empty component")
    return parts


def _iter_leaves(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict):
            if v:
                yield from _iter_leaves(v, full + ".")
            else:
                yield full, v
        else:
            yield full, v


def _all_paths(tree: Mapping, prefix: str = "") -> Iterator[str]:
    for k, v in tree.items():
        full = f"{prefix}{k}"
        yield full
        if isinstance(v, dict):
            yield from _all_paths(v, full + ".")


def _missing(tree: Mapping, key: str) -> MissingKeyError:
    candidates = list(_all_paths(tree))
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    if not close:
        # fall back to keys sharing the last component, e.g. "label"
        last = key.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == last][:3]
    hint = f"; closest: {', '.join(close)}" if close else ""
    if not candidates:
        hint = "; the dict is empty"
    return MissingKeyError(key, f"key {key!r} not found{hint}")


def get(tree: Mapping, key: str, default: Any = _MISSING) -> Any:
    """Value at dotted ``key``; ``default`` if given and the key is absent.

    Raises:
        MissingKeyError: (a ``KeyError``) naming the key and the closest existing keys.
    """
    node: Any = tree
    for part in _split(key):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            if default is not _MISSING:
                return default
            raise _missing(tree, key)
    return node


def contains(tree: Mapping, key: str) -> bool:
    """Whether dotted ``key`` addresses a value (leaf or sub-tree) in ``tree``."""
    return get(tree, key, _ABSENT) is not _ABSENT


def _assoc(node: Mapping, parts: list[str], value: Any, key: str) -> dict:
    head, rest = parts[0], parts[1:]
    out = dict(node)
    if not rest:
        out[head] = value
        return out
    child = node.get(head, {})
    if not isinstance(child, Mapping):
        raise TypeError(f"cannot set {key!r}: {head!r} holds a {type(child).__name__}, not a dict")
    out[head] = _assoc(child, rest, value, key)
    return out


def assoc(tree: Mapping, key: str, value: Any) -> dict:
    """A new tree with ``value`` at ``key`` (intermediate dicts created as needed)."""
    return _assoc(tree, _split(key), value, key)


def assoc_many(tree: Mapping, items: Mapping[str, Any]) -> dict:
    """``assoc`` of every ``key -> value`` in ``items``, in order."""
    out = tree if isinstance(tree, dict) else dict(tree)
    for k, v in items.items():
        out = assoc(out, k, v)
    return out


def dissoc(tree: Mapping, key: str) -> dict:
    """A new tree without ``key``; parents left empty by the removal are removed too."""
    parts = _split(key)
    get(tree, key)  # raises the helpful error when absent

    def rec(node: Mapping, ps: list[str]) -> dict:
        out = dict(node)
        if len(ps) == 1:
            del out[ps[0]]
            return out
        child = rec(node[ps[0]], ps[1:])
        if child:
            out[ps[0]] = child
        else:
            del out[ps[0]]
        return out

    return rec(tree, parts)


def flatten(tree: Mapping) -> dict[str, Any]:
    """``{dotted_key: leaf}`` for every leaf; an empty sub-dict is kept as a leaf."""
    return dict(_iter_leaves(tree))


def unflatten(flat: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten`."""
    out: dict = {}
    for k, v in flat.items():
        parts = _split(k)
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ValueError(f"key {k!r} conflicts with the leaf at {p!r}")
            node = nxt
        if parts[-1] in node and isinstance(node[parts[-1]], dict) and node[parts[-1]]:
            raise ValueError(f"key {k!r} conflicts with a sub-tree of the same name")
        node[parts[-1]] = v
    return out


def keys(tree: Mapping) -> list[str]:
    """Dotted keys of every leaf, in insertion order."""
    return [k for k, _ in _iter_leaves(tree)]


def select(tree: Mapping, pattern: str) -> dict[str, Any]:
    """``{dotted_key: leaf}`` of the leaves whose key matches ``pattern``.

    ``*`` matches exactly one key component; ``**`` matches any number (≥ 0).
    A pattern that is a sub-tree key selects every leaf under it.
    """
    pat = _split(pattern)

    def match(ps: list[str], ks: list[str]) -> bool:
        if not ps:
            return not ks
        if ps[0] == "**":
            return any(match(ps[1:], ks[i:]) for i in range(len(ks) + 1))
        return bool(ks) and fnmatch.fnmatchcase(ks[0], ps[0]) and match(ps[1:], ks[1:])

    out = {}
    for k, v in _iter_leaves(tree):
        ks = k.split(".")
        if match(pat, ks) or (len(ks) > len(pat) and match(pat, ks[: len(pat)])):
            out[k] = v
    return out


def merge(a: Mapping, b: Mapping) -> dict:
    """Deep merge: leaves of ``b`` win; neither input is mutated."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out
