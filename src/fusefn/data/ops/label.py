"""Label ops: check/convert a class label, one-hot, map values, and a random label (per sample id) for tests.

>>> s = {"data": {"sample_id": "a", "gt": {"label": 2.0}}}
>>> ToLabel(key="data.gt.label", num_classes=3)(s)["data"]["gt"]["label"]
2
>>> OneHot(key="data.gt.label", num_classes=3)(s)["data"]["gt"]["label"].tolist()
[0.0, 0.0, 1.0]
>>> MapValues(key="data.gt.label", mapping={2.0: "malignant"})(s)["data"]["gt"]["label"]
'malignant'
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import keys, nd
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.core import Rng, record
from fusefn.data.ops._base import fail, get, sample_id

__all__ = ["ToLabel", "OneHot", "MapValues", "RandomLabel"]


def _class_index(op, sample, key: str, value, num_classes: int | None) -> int:
    """``value`` as a class index, or an error naming the sample, op and key (NaN, fractional, out of range)."""
    v = value
    if is_tensor(v) or isinstance(v, np.ndarray):
        size = v.numel() if is_tensor(v) else v.size
        if size != 1:
            raise fail(sample, op, key, f"label must be a single value, got shape {tuple(v.shape)}")
        v = v.item()
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(sample, op, key, f"label must be a number, got {value!r}")
    if isinstance(v, float):
        if math.isnan(v):
            raise fail(sample, op, key, "label is NaN")
        if not v.is_integer():
            raise fail(sample, op, key, f"label {v} is not a whole number")
        v = int(v)
    if v < 0 or (num_classes is not None and v >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise fail(sample, op, key, f"label {v} out of range {bound}")
    return v


@record
class ToLabel:
    """Check that ``key`` holds a class index in ``[0, num_classes)`` and store it as an ``int``."""

    key: str = keys.LABEL
    num_classes: int | None = attrs.field(default=None, validator=v.optional(v.positive_int))

    def __call__(self, sample: Mapping) -> dict:
        v = _class_index(self, sample, self.key, get(sample, self, self.key), self.num_classes)
        return nd.assoc(sample, self.key, v)


@record
class OneHot:
    """A float32 one-hot vector of length ``num_classes`` from the class index at ``key``."""

    key: str = keys.LABEL
    num_classes: int = attrs.field(default=2, validator=v.positive_int)
    out_key: str | None = None

    def __call__(self, sample: Mapping) -> dict:
        v = _class_index(self, sample, self.key, get(sample, self, self.key), self.num_classes)
        out = np.zeros(self.num_classes, np.float32)
        out[v] = 1.0
        return nd.assoc(sample, self.out_key or self.key, out)


def _pairs(m) -> tuple:
    if isinstance(m, Mapping):
        return tuple(m.items())
    return tuple(tuple(p) for p in m)


_NO_DEFAULT = "__raise__"

_REAL = (bool, int, float, np.bool_, np.integer, np.floating)


def _fits(value, dtype: np.dtype) -> bool:
    """Whether ``value`` can be stored in ``dtype`` as it is (no wrap-around, truncation or overflow)."""
    v = value.item() if isinstance(value, np.generic) else value
    if dtype.kind == "b":
        return v in (0, 1)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return (isinstance(v, int) or (math.isfinite(v) and float(v).is_integer())) and info.min <= v <= info.max
    if dtype.kind == "f":
        return not math.isfinite(v) or abs(v) <= np.finfo(dtype).max
    return dtype.kind == "c"


def _widen(dtype: np.dtype, value) -> np.dtype:
    v = value.item() if isinstance(value, np.generic) else value
    if (isinstance(v, float) and not (math.isfinite(v) and v.is_integer())) or dtype.kind == "f":
        # float32 at least: float16 would silently round values such as 0.1
        return np.result_type(dtype, np.float32)
    return np.result_type(dtype, np.min_scalar_type(int(v)))


def _map_array(op, sample, arr: np.ndarray) -> np.ndarray:
    """``arr`` mapped element-wise; every output is looked up in the original, so pairs never chain."""
    if arr.dtype.kind not in "biufc":
        raise fail(sample, op, op.key, f"cannot map an array of dtype {arr.dtype} element-wise; expected numbers")
    outs = [out for _, out in op.mapping] + ([] if op.default == _NO_DEFAULT else [op.default])
    dtype = arr.dtype
    for out in outs:
        if not isinstance(out, _REAL):
            raise fail(sample, op, op.key, f"an array maps to numbers only, but the mapping has {out!r}")
        if not _fits(out, dtype):
            dtype = _widen(dtype, out)
    result = arr.astype(dtype, copy=True)
    done = np.zeros(arr.shape, bool)
    for k, out in op.mapping:
        if not isinstance(k, _REAL):
            continue
        # the first matching pair wins, as for a single value
        hit = (arr == k) & ~done
        result[hit] = out
        done |= hit
    if not done.all():
        if op.default == _NO_DEFAULT:
            missing = np.unique(arr[~done])
            shown = ", ".join(repr(x) for x in missing[:10].tolist()) + (", ..." if missing.size > 10 else "")
            known = [k for k, _ in op.mapping]
            raise fail(sample, op, op.key, f"values [{shown}] not in the mapping {known}")
        result[~done] = op.default
    return result


@record
class MapValues:
    """Replace the value at ``key`` through ``mapping``; unmapped values raise unless ``default`` is given.

    A numpy array or torch tensor with at least one axis (a mask) is mapped element-wise and keeps its
    shape, container and device: all pairs are applied at once, so ``{1: 2, 2: 1}`` swaps. Its dtype is
    kept unless a mapped value (or ``default``) does not fit it, e.g. ``-1`` in ``uint8`` gives ``int16``
    and ``0.5`` in an integer array gives at least ``float32``. Elements matching no key raise, or become
    ``default``, just like a single value; list identity pairs (``{0: 0}``) to keep values.
    Zero-dimensional values and numpy scalars are single values and may map to anything.
    """

    key: str = keys.LABEL
    mapping: tuple = attrs.field(default=(), converter=_pairs)
    out_key: str | None = None
    default: object = _NO_DEFAULT

    def __call__(self, sample: Mapping) -> dict:
        v = get(sample, self, self.key)
        if is_tensor(v) and v.ndim > 0:
            import torch

            t = v.detach().cpu()
            exotic = t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64)
            # numpy has no bfloat16/float8: map those in float32 and hand back their own dtype
            mapped = _map_array(self, sample, (t.float() if exotic else t).numpy())
            out = torch.from_numpy(mapped).to(v.device)
            return nd.assoc(sample, self.out_key or self.key, out.to(v.dtype) if exotic else out)
        if isinstance(v, np.ndarray) and v.ndim > 0:
            return nd.assoc(sample, self.out_key or self.key, _map_array(self, sample, v))
        hv = v.item() if isinstance(v, np.generic) or (is_tensor(v) and v.numel() == 1) else v
        for k, out in self.mapping:
            if k == hv:
                return nd.assoc(sample, self.out_key or self.key, out)
        if self.default == _NO_DEFAULT:
            known = [k for k, _ in self.mapping]
            raise fail(sample, self, self.key, f"value {v!r} not in the mapping {known}")
        return nd.assoc(sample, self.out_key or self.key, self.default)


@record
class RandomLabel:
    """A random class index in ``[0, num_classes)`` drawn from ``rng.child(sample_id)``.

    The FuseMedML guide's ProcessorRand, for tests and smoke runs: same sample id, same label, in any process.
    """

    key: str = keys.LABEL
    num_classes: int = attrs.field(default=2, validator=v.positive_int)
    rng: Rng = attrs.field(factory=lambda: Rng(0), validator=v.instance_of(Rng))

    def __call__(self, sample: Mapping) -> dict:
        draw = self.rng.child(str(sample_id(sample))).numpy()
        return nd.assoc(sample, self.key, int(draw.integers(0, self.num_classes)))
