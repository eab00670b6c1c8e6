"""Intensity ops: min-max normalize to a range, z-score, clip, window (numpy arrays or tensors).

>>> import numpy as np
>>> s = {"data": {"sample_id": 0, "input": {"img": np.array([0.0, 5.0, 10.0])}}}
>>> Normalize(keys="data.input.img", low=-1.0, high=1.0)(s)["data"]["input"]["img"].tolist()
[-1.0, 0.0, 1.0]
>>> Window(keys="data.input.img", center=5.0, width=4.0)(s)["data"]["input"]["img"].tolist()
[0.0, 0.5, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.core import record
from fusefn.data.ops._base import KEYS, as_float, map_keys
from fusefn.errors import ConfigError

__all__ = ["Normalize", "ZScore", "Clip", "Window"]


def _clip(x, lo, hi):
    if is_tensor(x):
        return x.clamp(lo, hi)
    import numpy as np

    return np.clip(x, lo, hi)


@record
class Normalize:
    """Map each array's [min, max] (or the fixed ``source`` range) linearly onto [low, high]."""

    keys: tuple = attrs.field(**KEYS)
    low: float = 0.0
    high: float = 1.0
    source: tuple | None = None

    def __attrs_post_init__(self):
        if not self.high > self.low:
            raise ConfigError(f"Normalize.high ({self.high}) must exceed Normalize.low ({self.low})")
        if self.source is not None and not (len(self.source) == 2 and self.source[1] > self.source[0]):
            raise ConfigError(f"Normalize.source must be (min, max) with max > min, got {self.source!r}")

    def _kernel(self, x, key):
        x = as_float(x)
        lo, hi = self.source if self.source is not None else (float(x.min()), float(x.max()))
        if hi == lo:  # a constant image has no range to stretch
            return x * 0 + self.low
        y = (x - lo) / (hi - lo) * (self.high - self.low) + self.low
        return _clip(y, self.low, self.high) if self.source is not None else y

    def __call__(self, sample: Mapping) -> dict:
        return map_keys(self, sample, self.keys, self._kernel)


@record
class ZScore:
    """``(x - mean) / std`` with fixed statistics, or each array's own when ``mean``/``std`` are None."""

    keys: tuple = attrs.field(**KEYS)
    mean: float | None = None
    std: float | None = attrs.field(default=None, validator=v.optional(v.gt(0)))
    eps: float = 1e-8

    def _kernel(self, x, key):
        x = as_float(x)
        mean = float(x.mean()) if self.mean is None else self.mean
        std = float(x.std()) if self.std is None else self.std
        return (x - mean) / (std + self.eps)

    def __call__(self, sample: Mapping) -> dict:
        return map_keys(self, sample, self.keys, self._kernel)


@record
class Clip:
    """Clip values to [low, high]."""

    keys: tuple = attrs.field(**KEYS)
    low: float
    high: float

    def __attrs_post_init__(self):
        if not self.high >= self.low:
            raise ConfigError(f"Clip.high ({self.high}) must be >= Clip.low ({self.low})")

    def __call__(self, sample: Mapping) -> dict:
        return map_keys(self, sample, self.keys, lambda x, k: _clip(x, self.low, self.high))


@record
class Window:
    """A radiology window: clip to ``center ± width/2`` and map onto [0, 1] (float32)."""

    keys: tuple = attrs.field(**KEYS)
    center: float
    width: float = attrs.field(validator=v.gt(0))

    def _kernel(self, x, key):
        lo = self.center - self.width / 2
        return _clip((as_float(x) - lo) / self.width, 0.0, 1.0)

    def __call__(self, sample: Mapping) -> dict:
        return map_keys(self, sample, self.keys, self._kernel)
