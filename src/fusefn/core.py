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
from collections.abc import Callable, Iterable, Mapping
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


# What a config may name besides fusefn itself and the caller's ``allowed``: references (never
# called by from_config) to torch.nn layer classes, torch.nn.functional functions, NumPy ufuncs and
# scalar types, i.e. the callables fusefn records take as fields (Wrapper.module, Loss.fn, on_keys).
_TORCH_NN = ("torch.nn.modules", "torch.nn.functional")


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@attrs.frozen
class _Trust:
    """Who from_config may import: module prefixes and exact objects by import path."""

    modules: tuple
    objects: Mapping

    @classmethod
    def of(cls, allowed) -> _Trust:
        if isinstance(allowed, (str, types.ModuleType)) or not isinstance(allowed, Iterable):
            allowed = (allowed,)
        modules, objects = ["fusefn"], {}
        for entry in allowed:
            if isinstance(entry, str) and entry and ":" not in entry:
                modules.append(entry)
            elif isinstance(entry, types.ModuleType):
                modules.append(entry.__name__)
            elif callable(entry) and _is_importable(entry):
                objects[_qualname(entry)] = entry
            else:
                raise ConfigError(
                    f"from_config: allowed entry {entry!r} is not a module name, a module or an importable "
                    "class or function"
                )
        return cls(modules=tuple(modules), objects=objects)

    def resolve(self, path, tag: str, where: str):
        """The object at ``path`` if it is trusted; else a ConfigError saying how to allow it (nothing imported)."""
        if not isinstance(path, str) or path.count(":") != 1:
            raise ConfigError(f"config entry {where}: {tag} {path!r} is not a 'module:qualname' path")
        if path in self.objects:
            return self.objects[path]
        mod, _, qn = path.partition(":")
        parts = qn.split(".")
        ok = bool(mod) and all(p.isidentifier() and not p.startswith("__") for p in [*mod.split("."), *parts])
        if ok and _under(mod, self.modules):
            obj = _import_named(path, tag, where)
            # the object must live where it was named: `fusefn.x:np.load` reaches numpy through a fusefn module
            ok = _under(getattr(obj, "__module__", None) or "", self.modules) or _qualname_or_none(obj) in self.objects
        elif ok and (_under(mod, _TORCH_NN) or mod == "numpy"):
            ok = _is_tensor_library_ref(obj := _import_named(path, tag, where), mod)
        else:
            ok = False
        if not ok:
            top = path.partition(":")[0].partition(".")[0] or path
            raise ConfigError(
                f"config entry {where}: {tag} {path!r} is not a fusefn component nor allowed by the caller, so it is "
                f"not imported (a config from elsewhere could name any callable). If you trust it, pass it: "
                f"from_config(cfg, allowed=[<the class or function>]) or allowed=[{top!r}] for its package "
                "(load_model, load_ensemble and infer take the same allowed=)"
            )
        return obj


def _import_named(path: str, tag: str, where: str):
    try:
        return _import(path)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"config entry {where}: cannot import {tag} {path!r}: {e}") from None


def _qualname_or_none(obj) -> str | None:
    try:
        return _qualname(obj)
    except ConfigError:
        return None


def _is_tensor_library_ref(obj, mod: str) -> bool:
    if mod == "numpy":
        return isinstance(obj, np.ufunc) or (isinstance(obj, type) and issubclass(obj, np.generic))
    import torch

    if isinstance(obj, type):
        return issubclass(obj, torch.nn.Module) and _under(obj.__module__, _TORCH_NN)
    return isinstance(obj, types.FunctionType) and obj.__module__ == "torch.nn.functional"


def from_config(cfg: Any, *, allowed: Iterable | str | types.ModuleType = ()) -> Any:
    """Rebuild the object described by :func:`to_config`, importing only what is trusted.

    A config names classes and functions by import path and rebuilding a record calls its
    class, so a config from elsewhere (a ``model.json`` next to a downloaded checkpoint) could
    name any callable. ``from_config`` rebuilds only:

    * fusefn's own components (``__type__``: records of modules under ``fusefn.``; ``__ref__``: their functions);
    * references to ``torch.nn`` layer classes, ``torch.nn.functional`` functions, NumPy ufuncs and
      scalar types (``Wrapper(module=torch.nn.Linear)``, ``Loss(fn=F.mse_loss)``, ``on_keys(np.sqrt)``);
    * what ``allowed`` names: a module name (``"my_project"``: it and its submodules), a module,
      or the class or function itself.

    ``__type__`` must be an attrs record (what :func:`to_config` writes), so a config never calls
    a plain function. Anything else raises ConfigError naming the entry and how to allow it;
    nothing is imported for it.

    >>> from_config({"__type__": "fusefn.core:Rng", "seed": 3})
    Rng(seed=3)
    >>> try:
    ...     from_config({"fn": {"__ref__": "os:system"}})
    ... except ConfigError as e:
    ...     print(str(e)[:69])
    config entry <root>.fn: __ref__ 'os:system' is not a fusefn component
    """
    return _rebuild(cfg, _Trust.of(allowed), "<root>")


def _rebuild(cfg: Any, trust: _Trust, where: str) -> Any:
    if isinstance(cfg, list):
        return [_rebuild(x, trust, f"{where}[{i}]") for i, x in enumerate(cfg)]
    if not isinstance(cfg, dict):
        return cfg
    if "__type__" in cfg:
        cls = trust.resolve(cfg["__type__"], "__type__", where)
        if not (isinstance(cls, type) and attrs.has(cls)):
            raise ConfigError(f"config entry {where}: __type__ {cfg['__type__']!r} is not a record class")
        kwargs = {k: _rebuild(x, trust, f"{where}.{k}") for k, x in cfg.items() if k != "__type__"}
        return cls(**kwargs)
    if "__ref__" in cfg:
        return trust.resolve(cfg["__ref__"], "__ref__", where)
    if "__tuple__" in cfg:
        return tuple(_rebuild(x, trust, f"{where}[{i}]") for i, x in enumerate(cfg["__tuple__"]))
    if "__float__" in cfg:
        return float(cfg["__float__"])
    if "__path__" in cfg:
        return pathlib.Path(cfg["__path__"])
    if "__enum__" in cfg:
        cls = trust.resolve(cfg["__enum__"], "__enum__", where)
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            raise ConfigError(f"config entry {where}: __enum__ {cfg['__enum__']!r} is not an Enum")
        return cls[cfg["name"]]
    if "__array__" in cfg:
        return _array(cfg, where)
    return {k: _rebuild(x, trust, f"{where}.{k}") for k, x in cfg.items()}


def _array(cfg: Mapping, where: str):
    if cfg.get("torch"):
        import torch

        dtype = getattr(torch, str(cfg["dtype"]).removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ConfigError(f"config entry {where}: {cfg['dtype']!r} is not a torch dtype")
        return torch.tensor(cfg["__array__"], dtype=dtype)
    dtype = np.dtype(str(cfg["dtype"]))
    if dtype.kind == "O":
        raise ConfigError(f"config entry {where}: arrays of Python objects are not rebuilt from config")
    return np.asarray(cfg["__array__"], dtype=dtype)


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
