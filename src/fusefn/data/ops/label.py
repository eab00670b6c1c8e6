"""Label ops: check/convert a class label, one-hot, map values, and a seeded random label for tests.

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

from fusefn import nd
from fusefn.core import derive_seed, record
from fusefn.data.ops._base import fail, get, is_tensor, sample_id
from fusefn.errors import ConfigError

__all__ = ["ToLabel", "OneHot", "MapValues", "RandomLabel"]


def _positive_or_none(instance, attribute, value) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be a positive int, got {value!r}")


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

    key: str = "data.gt.label"
    num_classes: int | None = attrs.field(default=None, validator=_positive_or_none)

    def __call__(self, sample: Mapping) -> dict:
        v = _class_index(self, sample, self.key, get(sample, self, self.key), self.num_classes)
        return nd.assoc(sample, self.key, v)


@record
class OneHot:
    """A float32 one-hot vector of length ``num_classes`` from the class index at ``key``."""

    key: str = "data.gt.label"
    num_classes: int = attrs.field(default=2, validator=_positive_or_none)
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


@record
class MapValues:
    """Replace the value at ``key`` through ``mapping``; unmapped values raise unless ``default`` is given."""

    key: str = "data.gt.label"
    mapping: tuple = attrs.field(default=(), converter=_pairs)
    out_key: str | None = None
    default: object = _NO_DEFAULT

    def __call__(self, sample: Mapping) -> dict:
        v = get(sample, self, self.key)
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
    """A random class index in ``[0, num_classes)`` drawn from ``derive_seed(seed, sample_id)``.

    The seed's ProcessorRand, for tests and smoke runs: same sample id, same label, in any process.
    """

    key: str = "data.gt.label"
    num_classes: int = attrs.field(default=2, validator=_positive_or_none)
    seed: int = 0

    def __call__(self, sample: Mapping) -> dict:
        rng = np.random.default_rng(derive_seed(self.seed, str(sample_id(sample))))
        return nd.assoc(sample, self.key, int(rng.integers(0, self.num_classes)))
