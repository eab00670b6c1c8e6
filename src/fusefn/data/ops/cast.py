"""Casts: to torch tensors, to numpy arrays, to a dtype (named by string, so configs stay plain data).

>>> import numpy as np
>>> s = {"data": {"sample_id": 0, "input": {"img": np.ones((2, 2), np.uint8)}}}
>>> ToTensor(keys="data.input.img", dtype="float32")(s)["data"]["input"]["img"].dtype
torch.float32
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn._types import is_tensor
from fusefn.core import record
from fusefn.data.ops._base import KEYS, map_keys
from fusefn.errors import ConfigError

__all__ = ["ToTensor", "ToNumpy", "AsType"]


def _dtype_ok(instance, attribute, value) -> None:
    # numpy decides which names are dtypes; no fusefn.validators combination can ask it
    if value is None:
        return
    try:
        np.dtype(value)
    except TypeError:
        raise ConfigError(f"{type(instance).__name__}.{attribute.name}: unknown dtype {value!r}") from None


def _torch_dtype(name: str):
    import torch

    return getattr(torch, np.dtype(name).name) if np.dtype(name) != np.bool_ else torch.bool


@record
class ToTensor:
    """Arrays/scalars/lists to ``torch.Tensor`` (optionally of ``dtype``); shares memory when it can."""

    keys: tuple = attrs.field(**KEYS)
    dtype: str | None = attrs.field(default=None, validator=_dtype_ok)

    def _kernel(self, x, key):
        import torch

        t = x if is_tensor(x) else torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
        return t.to(_torch_dtype(self.dtype)) if self.dtype is not None else t

    def __call__(self, sample: Mapping) -> dict:
        return map_keys(self, sample, self.keys, self._kernel)


@record
class ToNumpy:
    """Tensors (on any device) and lists to numpy arrays."""

    keys: tuple = attrs.field(**KEYS)
    dtype: str | None = attrs.field(default=None, validator=_dtype_ok)

    def _kernel(self, x, key):
        a = x.detach().cpu().numpy() if is_tensor(x) else np.asarray(x)
        return a.astype(self.dtype, copy=False) if self.dtype is not None else a

    def __call__(self, sample: Mapping) -> dict:
        return map_keys(self, sample, self.keys, self._kernel)


@record
class AsType:
    """Cast arrays or tensors to ``dtype`` (``"float32"``, ``"int64"``, …), keeping their kind."""

    keys: tuple = attrs.field(**KEYS)
    dtype: str = attrs.field(validator=_dtype_ok)

    def _kernel(self, x, key):
        if is_tensor(x):
            return x.to(_torch_dtype(self.dtype))
        return np.asarray(x).astype(self.dtype, copy=False)

    def __call__(self, sample: Mapping) -> dict:
        return map_keys(self, sample, self.keys, self._kernel)
