"""What every metric shares: reading keys as arrays, input checks, the reducer protocol.

A metric is a frozen record holding configuration. Its state lives outside it:
``init() -> state``, ``update(state, batch) -> state``, ``merge(a, b) -> state``,
``compute(state) -> value``. Internally a metric also exposes

* ``extract(batch) -> {name: array}``: the per-sample columns it needs (axis 0 = sample);
* ``accumulate(state, cols) -> state``: ``update`` without the key reading;
* ``resampled(cols, counts) -> values``: the metric on many weighted resamples at once,
  ``counts[b, i]`` being how often sample ``i`` appears in resample ``b``.

so that :class:`~fusefn.metrics.Bootstrap` and :class:`~fusefn.metrics.GroupBy`
can wrap any metric without knowing it: :class:`Metric` is that protocol,
:class:`MetricBase` the mixin the built-in metrics share.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fusefn import keys, nd
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.errors import ConfigError, SampleError
from fusefn.protocols import Reducer


class UndefinedMetricWarning(UserWarning):
    """A metric value is undefined on the given data (e.g. AUC with one class); NaN is returned."""


def undefined(reason: str, stacklevel: int = 3) -> float:
    """Warn that a value is undefined and why; return NaN (never a sentinel like -1)."""
    warnings.warn(reason, UndefinedMetricWarning, stacklevel=stacklevel)
    return float("nan")


def to_numpy(value: Any, key: str = "?") -> np.ndarray:
    """A NumPy array from a tensor (any device, detached), a Polars Series, a list or an array."""
    if is_tensor(value):
        t = value.detach().cpu()
        if not t.dtype.is_floating_point or t.dtype.itemsize >= 4:
            return t.numpy()
        return t.float().numpy()  # NumPy has no bfloat16
    if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray):
        value = value.to_numpy()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    try:
        arr = np.asarray(value)
        if arr.dtype == object:  # a list of equal-length lists/arrays from a Polars list column
            arr = np.stack([np.asarray(v) for v in value])
    except ValueError as e:
        raise SampleError(f"cannot read values as an array: {e}", key=key) from None
    return arr


def read(batch: Mapping, key: str | Sequence[str]) -> np.ndarray:
    """The value at ``key`` as an array; a tuple of keys is stacked as columns (N, K)."""
    if isinstance(key, str):
        return to_numpy(nd.get(batch, key), key)
    cols = [to_numpy(nd.get(batch, k), k) for k in key]
    n = {c.shape[0] for c in cols}
    if len(n) > 1:
        raise SampleError(f"columns have different lengths {sorted(n)}", key=", ".join(key))
    return np.stack([c.reshape(c.shape[0]) for c in cols], axis=1)


def key_name(key: str | Sequence[str]) -> str:
    return key if isinstance(key, str) else "(" + ", ".join(key) + ")"


def sample_ids(batch: Mapping, n: int) -> list | None:
    ids = nd.get(batch, keys.SAMPLE_ID, None)
    if ids is None:
        return None
    ids = list(to_numpy(ids).tolist()) if not isinstance(ids, list) else ids
    return ids if len(ids) == n else None


def _name_rows(rows: np.ndarray, ids: list | None) -> str:
    rows = [int(r) for r in rows[:5]]
    names = [repr(ids[r]) for r in rows] if ids is not None else [f"row {r}" for r in rows]
    more = "" if len(rows) < 5 else ", …"
    return ", ".join(names) + more


def check_finite(arr: np.ndarray, key: str, ids: list | None) -> np.ndarray:
    """``arr`` unchanged when finite; otherwise an error naming the key and the samples."""
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1))
        raise SampleError(
            f"{bad.size} sample(s) have NaN or infinite values: {_name_rows(bad, ids)}",
            sample_id=ids[int(bad[0])] if ids is not None else None,
            key=key,
        )
    return arr


def labels(arr: np.ndarray, key: str, ids: list | None, num_classes: int | None = None) -> np.ndarray:
    """Integer class labels (N,) in ``[0, num_classes)``; errors name the key and the samples."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise SampleError(f"expected one label per sample, got shape {arr.shape}", key=key)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iuf":
        raise SampleError(f"labels must be numbers, got dtype {arr.dtype}", key=key)
    check_finite(arr, key, ids)
    if arr.dtype.kind == "f":
        frac = np.flatnonzero(arr != np.round(arr))
        if frac.size:
            raise SampleError(f"labels must be whole numbers: {_name_rows(frac, ids)}", key=key)
    out = arr.astype(np.int64)
    bad = np.flatnonzero((out < 0) | ((out >= num_classes) if num_classes is not None else False))
    if bad.size:
        allowed = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise SampleError(
            f"labels outside the class set {allowed}: {sorted(set(out[bad].tolist()))[:5]} at {_name_rows(bad, ids)}",
            sample_id=ids[int(bad[0])] if ids is not None else None,
            key=key,
        )
    return out


def same_length(key_a: str, a: np.ndarray, key_b: str, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise SampleError(f"{a.shape[0]} predictions ({key_a}) but {b.shape[0]} targets ({key_b})", key=key_a)


def scores(arr: np.ndarray, key: str, ids: list | None) -> np.ndarray:
    """Float scores (N,) or (N, C); an (N, 1) column is flattened."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iufb":
        raise SampleError(f"scores must be numbers, got dtype {arr.dtype}", key=key)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim not in (1, 2):
        raise SampleError(f"scores must be (N,) or (N, C), got shape {arr.shape}", key=key)
    return check_finite(arr, key, ids)


def class_names_for(num: int, names: tuple | None, field: str = "class_names") -> tuple:
    if names is None:
        return tuple(str(i) for i in range(num))
    if len(names) != num:
        raise ConfigError(f"{field} has {len(names)} names but the scores have {num} classes")
    return tuple(names)


def optional_tuple(value):
    if value is None or isinstance(value, str):
        return value
    return tuple(value)


def key_field(value):
    """Converter: a key is a dotted string or a tuple of them (columns stacked)."""
    if isinstance(value, str):
        return value
    return tuple(value)


_KEYS = v.and_(v.min_len(1), v.keys)


def validate_key(instance, attribute, value):
    """A dotted batch_dict key, or a non-empty tuple of them (columns stacked)."""
    (v.key if isinstance(value, str) else _KEYS)(instance, attribute, value)


def cat(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate two column stores (either may be empty)."""
    # copies: a state must never share memory with the caller's arrays (they may be reused or edited)
    if not a:
        return {k: np.array(v, copy=True) for k, v in b.items()}
    if not b:
        return {k: np.array(v, copy=True) for k, v in a.items()}
    if a.keys() != b.keys():
        raise ValueError(f"cannot merge states with columns {sorted(a)} and {sorted(b)}")
    out = {}
    for k in a:
        x, y = a[k], b[k]
        if x.shape[1:] != y.shape[1:]:
            raise SampleError(f"cannot merge values of shapes {x.shape} and {y.shape}", key=k)
        out[k] = np.concatenate([x, y])
    return out


def take(cols: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in cols.items()}


def num_samples(cols: Mapping[str, np.ndarray]) -> int:
    return next(iter(cols.values())).shape[0] if cols else 0


@runtime_checkable
class Metric(Reducer, Protocol):
    """A :class:`~fusefn.protocols.Reducer` that also reads its per-sample columns and resamples them.

    ``extract(batch) -> cols``, ``accumulate(state, cols) -> state`` and
    ``resampled(cols, counts) -> values``: what :class:`~fusefn.metrics.Bootstrap` and
    :class:`~fusefn.metrics.GroupBy` call on the metric they wrap.
    """

    def extract(self, batch: Mapping, /) -> Mapping: ...

    def accumulate(self, state: Any, cols: Mapping, /) -> Any: ...

    def resampled(self, cols: Mapping, counts: np.ndarray, /) -> Any: ...


class MetricBase:
    """Mixin giving ``update`` from ``extract`` + ``accumulate`` and a generic ``resampled``."""

    __slots__ = ()

    def update(self, state, batch: Mapping):
        """The state after seeing ``batch`` (tensors on any device are detached and copied to CPU)."""
        return self.accumulate(state, self.extract(batch))

    def resampled(self, cols: Mapping[str, np.ndarray], counts: np.ndarray):
        """The metric on each weighted resample (generic: one ``compute`` per resample)."""
        n = num_samples(cols)
        outs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            for row in counts:
                idx = np.repeat(np.arange(n), row)
                outs.append(self.compute(self.accumulate(self.init(), take(cols, idx))))
        return stack_values(outs)


class ColumnStore(MetricBase):
    """A reducer whose state is its per-sample columns, concatenated (needed by rank statistics)."""

    __slots__ = ()

    def init(self) -> dict:
        return {}

    def accumulate(self, state: Mapping, cols: Mapping) -> dict:
        return cat(state, cols)

    def merge(self, a: Mapping, b: Mapping) -> dict:
        return cat(a, b)


def stack_values(outs: list):
    """A list of values (floats or nested dicts of floats) -> one array per leaf."""
    if not outs:
        return np.array([])
    if isinstance(outs[0], Mapping):
        return {k: stack_values([o[k] for o in outs]) for k in outs[0]}
    return np.asarray(outs, dtype=np.float64)
