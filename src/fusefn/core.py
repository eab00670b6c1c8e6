"""The component protocol: frozen records, composition, fingerprints, configs, seeds.

A fusefn component is a frozen attrs record that holds configuration only and is
called as a pure function ``batch_dict -> batch_dict``. This module gives:

* :func:`record` — the decorator every component uses (frozen, slotted, keyword-only);
* :func:`chain` — left-to-right composition that flattens nested chains;
* :func:`on_keys` — lift an array kernel ``x -> y`` into a keyed op over several keys;
* :func:`fingerprint` — a stable hash of a component's configuration (cache keys);
* :func:`to_config` / :func:`from_config` — a record as plain JSON-able data and back;
* :class:`Rng` — seeds derived from ``(seed, epoch, rank, index)``, never global state.

>>> from fusefn import nd
>>> double = on_keys(lambda x: 2 * x, keys=("data.a", "data.b"))
>>> inc = on_keys(lambda x: x + 1, keys=("data.a",))
>>> pipeline = chain(double, chain(inc))
>>> pipeline({"data": {"a": 1, "b": 5}})
{'data': {'a': 3, 'b': 10}}
>>> len(pipeline.fns)  # nested chains are flattened
2
>>> Rng(7).child(0, 1).seed == Rng(7).child(0, 1).seed
True
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import inspect
import json
import math
import pathlib
import types
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from fusefn import nd
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.errors import ConfigError

__all__ = [
    "record",
    "Chain",
    "chain",
    "OnKeys",
    "on_keys",
    "fingerprint",
    "to_config",
    "from_config",
    "Rng",
    "derive_seed",
]


def record(cls=None, **kwargs):
    """Decorator for components: ``attrs.frozen`` with keyword-only fields.

    >>> @record
    ... class Scale:
    ...     factor: float = 2.0
    ...     def __call__(self, x):
    ...         return x * self.factor
    >>> Scale(factor=3.0)(2)
    6.0
    """
    kwargs.setdefault("kw_only", True)
    if cls is None:
        return lambda c: attrs.frozen(c, **kwargs)
    return attrs.frozen(cls, **kwargs)


@record
class Chain:
    """Left-to-right composition of ``batch_dict -> batch_dict`` functions."""

    fns: tuple = attrs.field(converter=tuple, validator=v.deep_iterable(v.is_callable))

    def __call__(self, batch: Mapping) -> dict:
        for fn in self.fns:
            batch = fn(batch)
        return batch


def chain(*fns: Callable):
    """Compose ``fns`` left to right; nested chains are flattened. The one ``chain`` of fusefn.

    Transforms give a :class:`Chain`. Kinds that compose differently say how through a
    ``__chain__(fns)`` class attribute: gradient transformations give ``fusefn.optim.Chain``,
    augmentations ``fusefn.augment.Pipeline``. Mixing kinds is an error.
    """
    combines = {getattr(type(fn), "__chain__", None) for fn in fns}
    if len(combines) > 1:
        kinds = sorted({type(fn).__name__ for fn in fns})
        raise ConfigError(f"chain: cannot mix kinds of components in one chain: {kinds}")
    combine = combines.pop() if combines else None
    if combine is not None:
        return combine(fns)
    flat: list = []
    for fn in fns:
        if isinstance(fn, Chain):
            flat.extend(fn.fns)
        else:
            flat.append(fn)
    return Chain(fns=tuple(flat))


def _keys_tuple(value) -> tuple:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@record
class OnKeys:
    """Apply an array kernel to each of ``keys``; results go to ``out_keys`` (default: in place)."""

    kernel: Callable
    keys: tuple = attrs.field(converter=_keys_tuple, validator=v.and_(v.min_len(1), v.keys))
    out_keys: tuple | None = attrs.field(
        default=None, converter=attrs.converters.optional(_keys_tuple), validator=v.optional(v.keys)
    )

    def __attrs_post_init__(self):
        if self.out_keys is not None and len(self.out_keys) != len(self.keys):
            raise ConfigError(f"OnKeys.out_keys has {len(self.out_keys)} keys for {len(self.keys)} input keys")

    def __call__(self, batch: Mapping) -> dict:
        outs = self.out_keys or self.keys
        updates = {o: self.kernel(nd.get(batch, k)) for k, o in zip(self.keys, outs)}
        return nd.assoc_many(batch, updates)


def on_keys(kernel: Callable, keys, out_keys=None) -> OnKeys:
    """Lift ``kernel: array -> array`` into an op over dotted ``keys`` of a batch_dict."""
    return OnKeys(kernel=kernel, keys=keys, out_keys=out_keys)


# --------------------------------------------------------------------------- configs


def _qualname(obj) -> str:
    mod = getattr(obj, "__module__", None)
    qn = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if mod is None or qn is None:
        raise ConfigError(f"{obj!r} has no importable name")
    return f"{mod}:{qn}"


def _import(path: str):
    mod, _, qn = path.partition(":")
    obj = importlib.import_module(mod)
    for part in qn.split("."):
        obj = getattr(obj, part)
    return obj


def _is_importable(obj) -> bool:
    try:
        return _import(_qualname(obj)) is obj
    except Exception:
        return False


def to_config(obj: Any) -> Any:
    """A JSON-able description of ``obj`` that :func:`from_config` turns back into it.

    Records become ``{"__type__": "module:Qualname", <fields>}``; functions and
    classes become ``{"__ref__": "module:qualname"}``; tuples keep their type.
    Lambdas and closures have no importable name and are refused.

    >>> to_config(chain())
    {'__type__': 'fusefn.core:Chain', 'fns': {'__tuple__': []}}
    >>> from_config(to_config(chain())) == chain()
    True
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return {"__float__": repr(obj)}
    if isinstance(obj, enum.Enum):
        return {"__enum__": _qualname(type(obj)), "name": obj.name}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return to_config(obj.item())
    if isinstance(obj, pathlib.PurePath):
        return {"__path__": str(obj)}
    if attrs.has(type(obj)):
        out = {"__type__": _qualname(type(obj))}
        for f in attrs.fields(type(obj)):
            if f.init:
                out[f.name] = to_config(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple):
        return {"__tuple__": [to_config(v) for v in obj]}
    if isinstance(obj, list):
        return [to_config(v) for v in obj]
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str) for k in obj):
            raise ConfigError(f"config dict keys must be strings, got {list(obj)!r}")
        return {k: to_config(v) for k, v in obj.items()}
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)) or callable(obj):
        if _is_importable(obj):
            return {"__ref__": _qualname(obj)}
        raise ConfigError(
            f"{obj!r} cannot be saved as config: use a module-level function or a record, not a lambda or closure"
        )
    if is_tensor(obj):
        return {"__array__": np.asarray(obj.detach().cpu()).tolist(), "dtype": str(obj.dtype), "torch": True}
    if isinstance(obj, np.ndarray):
        return {"__array__": obj.tolist(), "dtype": str(obj.dtype)}
    raise ConfigError(f"cannot turn a {type(obj).__name__} into config: {obj!r}")


def from_config(cfg: Any) -> Any:
    """Rebuild the object described by :func:`to_config`."""
    if isinstance(cfg, list):
        return [from_config(v) for v in cfg]
    if not isinstance(cfg, dict):
        return cfg
    if "__type__" in cfg:
        cls = _import(cfg["__type__"])
        kwargs = {k: from_config(v) for k, v in cfg.items() if k != "__type__"}
        return cls(**kwargs)
    if "__ref__" in cfg:
        return _import(cfg["__ref__"])
    if "__tuple__" in cfg:
        return tuple(from_config(v) for v in cfg["__tuple__"])
    if "__float__" in cfg:
        return float(cfg["__float__"])
    if "__path__" in cfg:
        return pathlib.Path(cfg["__path__"])
    if "__enum__" in cfg:
        return _import(cfg["__enum__"])[cfg["name"]]
    if "__array__" in cfg:
        if cfg.get("torch"):
            import torch

            return torch.tensor(cfg["__array__"], dtype=getattr(torch, cfg["dtype"].removeprefix("torch.")))
        return np.asarray(cfg["__array__"], dtype=cfg["dtype"])
    return {k: from_config(v) for k, v in cfg.items()}


# ----------------------------------------------------------------------- fingerprint


def _canonical(obj: Any) -> Any:
    """Like to_config, but total: arrays are hashed, local functions hashed by code."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return {"__float__": repr(obj)}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return _canonical(obj.item())
    if isinstance(obj, enum.Enum):
        return {"__enum__": _qualname(type(obj)), "name": obj.name}
    if isinstance(obj, pathlib.PurePath):
        return {"__path__": str(obj)}
    if attrs.has(type(obj)):
        out = {"__type__": _qualname(type(obj))}
        for f in attrs.fields(type(obj)):
            out[f.name] = _canonical(getattr(obj, f.name))
        return out
    if isinstance(obj, (tuple, list)):
        return {"__seq__": type(obj).__name__, "items": [_canonical(v) for v in obj]}
    if isinstance(obj, Mapping):
        return {"__map__": sorted(([_canonical(k), _canonical(v)] for k, v in obj.items()), key=json.dumps)}
    if is_tensor(obj) or isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(np.asarray(obj.detach().cpu()) if is_tensor(obj) else obj)
        digest = hashlib.sha256(arr.tobytes()).hexdigest()
        return {"__array__": digest, "dtype": str(arr.dtype), "shape": list(arr.shape)}
    if isinstance(obj, types.FunctionType):
        if _is_importable(obj):
            return {"__ref__": _qualname(obj)}
        code = obj.__code__
        # a lambda or closure: identify it by its bytecode, constants and captured values
        closure = [_canonical(c.cell_contents) for c in (obj.__closure__ or ())]
        return {
            "__code__": hashlib.sha256(code.co_code).hexdigest(),
            "consts": [_const_repr(c) for c in code.co_consts if not inspect.iscode(c)],
            "names": list(code.co_names),
            "closure": closure,
            "defaults": _canonical(obj.__defaults__),
        }
    if isinstance(obj, types.ModuleType):  # e.g. captured by a closure that calls np.sqrt
        return {"__module__": obj.__name__}
    if isinstance(obj, types.MethodType):  # a bound method is its function *and* the object it is bound to
        return {"__method__": _canonical(obj.__func__), "self": _canonical(obj.__self__)}
    if isinstance(obj, (types.BuiltinFunctionType, type)) or callable(obj):
        return {"__ref__": _qualname(obj)}
    raise ConfigError(f"cannot fingerprint a {type(obj).__name__}: {obj!r}")


def _const_repr(c) -> str:
    # a frozenset's repr order follows the process's hash seed
    return repr(sorted(map(repr, c))) if isinstance(c, frozenset) else repr(c)


def fingerprint(component: Any) -> str:
    """A stable hex digest of ``component``'s configuration.

    Equal configurations give the same string in every process and run; changing
    any field (at any depth) changes it. Used to key caches and to check that a
    checkpoint belongs to a model config.

    >>> fingerprint(chain()) == fingerprint(chain())
    True
    """
    blob = json.dumps(_canonical(component), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# ------------------------------------------------------------------------------- Rng


def _as_entropy(part) -> int:
    if isinstance(part, (bool, np.bool_)):
        return int(part)
    if isinstance(part, (int, np.integer)):
        if part < 0:
            raise ValueError(f"seed components must be >= 0, got {part}")
        return int(part)
    if isinstance(part, str):
        return int.from_bytes(hashlib.blake2b(part.encode(), digest_size=8).digest(), "little")
    raise TypeError(f"seed components must be ints or strings, got {part!r}")


def derive_seed(seed: int, *path) -> int:
    """An independent 63-bit seed for the stream named by ``path`` under ``seed``.

    ``derive_seed(seed, epoch, rank, index)`` is how workers, ranks and epochs get
    streams that never overlap. Uses NumPy's SeedSequence (counter-based hashing).
    """
    ss = np.random.SeedSequence(entropy=_as_entropy(seed), spawn_key=tuple(_as_entropy(p) for p in path))
    lo, hi = ss.generate_state(2, dtype=np.uint32)
    return (int(hi) << 32 | int(lo)) & ((1 << 63) - 1)


@attrs.frozen  # positional on purpose: Rng(1234) reads better than Rng(seed=1234)
class Rng:
    """A seed and the path that led to it; children are derived, never drawn.

    >>> r = Rng(1234)
    >>> r.child("epoch", 3).seed != r.child("epoch", 4).seed
    True
    >>> import torch
    >>> g = r.child(0).generator()
    >>> torch.rand(2, generator=g).shape
    torch.Size([2])
    """

    seed: int = attrs.field(validator=v.and_(v.instance_of(int), v.ge(0)))

    def child(self, *path) -> Rng:
        return Rng(seed=derive_seed(self.seed, *path))

    def generator(self, device: str | Any = "cpu"):
        """A fresh ``torch.Generator`` on ``device`` seeded with this seed."""
        import torch

        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        return g

    def tensor(self):
        """This seed as a 0-d int64 tensor: the form a compiled step passes, so its graph does not specialise on it."""
        import torch

        return torch.tensor(self.seed, dtype=torch.int64)

    def numpy(self) -> np.random.Generator:
        """A fresh NumPy ``Generator`` seeded with this seed."""
        return np.random.default_rng(self.seed)
