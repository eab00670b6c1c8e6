"""Shared plumbing of the per-sample ops: key lists, errors that name sample/op/key, array helpers."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fusefn import keys, nd
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.errors import FusefnError, MissingKeyError, SampleError


def keys_tuple(value) -> tuple:
    """A key or several keys as a tuple of dotted strings."""
    if isinstance(value, str):
        return (value,)
    return tuple(value)


KEYS = dict(converter=keys_tuple, validator=v.and_(v.min_len(1), v.keys))
"""attrs.field arguments of an op's ``keys``: one key or several, at least one."""


def sample_id(sample: Mapping) -> Any:
    return nd.get(sample, keys.SAMPLE_ID, None)


def op_name(op) -> str:
    return type(op).__name__


def fail(sample: Mapping, op, key: str | None, message: str) -> SampleError:
    """A SampleError naming the sample id of ``sample``, the op and the key."""
    return SampleError(message, sample_id=sample_id(sample), op=op_name(op), key=key)


def get(sample: Mapping, op, key: str) -> Any:
    """``nd.get`` whose error also names the sample id and the op."""
    try:
        return nd.get(sample, key)
    except MissingKeyError as exc:
        raise fail(sample, op, key, str(exc)) from None


def map_keys(op, sample: Mapping, keys, fn: Callable[[Any, str], Any], out_keys=None) -> dict:
    """``sample`` with ``fn(value, key)`` at every key; any error names the sample id, op and key."""
    updates = {}
    for key, out in zip(keys, out_keys or keys):
        value = get(sample, op, key)
        try:
            updates[out] = fn(value, key)
        except SampleError:
            raise
        except Exception as exc:
            raise fail(sample, op, key, f"{type(exc).__name__}: {exc}") from exc
    return nd.assoc_many(sample, updates)


def require(module: str, extra: str, op: str):
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FusefnError(f"{op} needs the optional package {module!r}: pip install 'fusefn[{extra}]'") from exc


def to_torch(x):
    """``(tensor, was_numpy)`` so a kernel can hand back the type it was given."""
    import torch

    if is_tensor(x):
        return x, False
    return torch.as_tensor(np.ascontiguousarray(x)), True


def back(t, was_numpy: bool):
    return t.numpy() if was_numpy else t


def as_float(x):
    """Integers and bools become float32; floats are kept."""
    if is_tensor(x):
        return x if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
