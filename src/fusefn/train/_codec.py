"""A state tree as a JSON document plus named tensors: what a checkpoint holds instead of pickled objects.

``torch.load(weights_only=True)`` refuses every Python object but containers, numbers,
strings and tensors, and that refusal is what keeps a crafted file from running code.
So a checkpoint's state goes through :func:`encode`: tensors stay tensors (under a name),
NumPy arrays become their raw bytes in a uint8 tensor, and everything else is JSON with
tagged objects for the types JSON lacks (tuples, non-string keys, non-finite floats, …).
:func:`decode` builds the same tree back, value for value and type for type, so a resumed
run is bit-identical; it creates nothing but those plain types.

>>> import numpy as np, torch
>>> tree = {"w": torch.ones(2), "h": ({"auc": float("nan")},), 3: np.arange(3), "s": np.float32(0.5)}
>>> doc, tensors = encode(tree, "state")
>>> sorted(tensors)
['state.3', 'state.w']
>>> back = decode(json.loads(json.dumps(doc)), tensors, "state")
>>> type(back["h"]), back[3].dtype, type(back["s"]), torch.equal(back["w"], tree["w"])
(<class 'tuple'>, dtype('int64'), <class 'numpy.float32'>, True)
"""

from __future__ import annotations

import base64
import collections
import json
import math
from typing import Any

import numpy as np
import torch

from fusefn.errors import FusefnError

__all__ = ["encode", "decode", "CodecError"]

# the keys of tagged objects; a plain dict using one of them as a key is written as pairs
_TAGS = (
    "__tensor__",
    "__ndarray__",
    "__np__",
    "__tuple__",
    "__dict__",
    "__odict__",
    "__set__",
    "__frozenset__",
    "__float__",
    "__bytes__",
    "__complex__",
    "__size__",
    "__dtype__",
    "__device__",
)


class CodecError(FusefnError):
    """A value cannot be stored without pickling it, or a stored document is malformed."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Encoder:
    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.names: dict[int, str] = {}  # id(tensor or array) -> its name: shared objects stay shared

    def _store(self, obj, where: str, tensor: torch.Tensor) -> str:
        name = where
        n = 1
        while name in self.tensors:  # two paths can spell the same string when names contain dots
            n += 1
            name = f"{where}#{n}"
        self.tensors[name] = tensor
        self.names[id(obj)] = name
        return name

    def __call__(self, obj: Any, where: str) -> Any:
        t = type(obj)
        if obj is None or t in (bool, int, str):
            return obj
        if t is float:
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, torch.Tensor):
            if id(obj) in self.names:
                return {"__tensor__": self.names[id(obj)]}
            return {"__tensor__": self._store(obj, where, obj)}
        if t is np.ndarray:
            return self._ndarray(obj, where)
        if isinstance(obj, np.generic) and obj.dtype.kind not in "OV":
            return {"__np__": obj.dtype.str, "bytes": _b64(obj.tobytes())}
        if t is tuple:
            return {"__tuple__": [self(x, f"{where}.{i}") for i, x in enumerate(obj)]}
        if t is list:
            return [self(x, f"{where}.{i}") for i, x in enumerate(obj)]
        if t is dict or t is collections.OrderedDict:
            return self._dict(obj, where, ordered=t is collections.OrderedDict)
        if t in (set, frozenset):
            tag = "__set__" if t is set else "__frozenset__"
            return {tag: [self(x, f"{where}.{i}") for i, x in enumerate(obj)]}
        if t is torch.Size:
            return {"__size__": list(obj)}
        if t is torch.dtype:
            return {"__dtype__": str(obj).removeprefix("torch.")}
        if t is torch.device:
            return {"__device__": str(obj)}
        if t is bytes:
            return {"__bytes__": _b64(obj)}
        if t is complex:
            return {"__complex__": [self(obj.real, where), self(obj.imag, where)]}
        raise CodecError(
            f"cannot store a {t.__module__}.{t.__qualname__} at {where} in a checkpoint: checkpoints hold tensors, "
            "NumPy arrays and numbers, strings, lists, tuples, sets and dicts of them, so they load without "
            "unpickling (running) code; turn it into one of those (e.g. a metric state into a dict of arrays)"
        )

    def _dict(self, obj: dict, where: str, ordered: bool) -> Any:
        plain = not ordered and all(type(k) is str and not k.startswith("__") for k in obj)
        if plain:
            return {k: self(x, f"{where}.{k}") for k, x in obj.items()}
        pairs = [[self(k, f"{where}.<key {k!r}>"), self(x, f"{where}.{k}")] for k, x in obj.items()]
        return {"__odict__" if ordered else "__dict__": pairs}

    def _ndarray(self, arr: np.ndarray, where: str) -> dict:
        if arr.dtype.kind == "O":
            items = [self(x, f"{where}[{i}]") for i, x in enumerate(arr.reshape(-1).tolist())]
            return {"__ndarray__": None, "dtype": "object", "shape": list(arr.shape), "items": items}
        if arr.dtype.kind == "V":
            raise CodecError(f"cannot store a structured NumPy array ({arr.dtype}) at {where} in a checkpoint")
        head = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
        if id(arr) in self.names:
            return {"__ndarray__": self.names[id(arr)], **head}
        raw = torch.from_numpy(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).copy())
        return {"__ndarray__": self._store(arr, where, raw), **head}


def encode(tree: Any, where: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """``(document, tensors)``: ``tree`` as JSON-able data whose tensors and arrays are named entries of ``tensors``.

    Raises CodecError naming the path (``where`` and below) of a value that only pickle could store.
    """
    enc = _Encoder()
    return enc(tree, where), enc.tensors


class _Decoder:
    def __init__(self, tensors: dict):
        self.tensors = tensors
        self.arrays: dict[str, np.ndarray] = {}

    def tensor(self, name, where: str) -> torch.Tensor:
        t = self.tensors.get(name) if isinstance(name, str) else None
        if not isinstance(t, torch.Tensor):
            raise CodecError(f"{where}: the document names tensor {name!r}, which the file does not hold")
        return t

    def __call__(self, doc: Any, where: str) -> Any:
        if doc is None or type(doc) in (bool, int, float, str):
            return doc
        if type(doc) is list:
            return [self(x, f"{where}.{i}") for i, x in enumerate(doc)]
        if type(doc) is not dict:
            raise CodecError(f"{where}: unexpected {type(doc).__name__} in a checkpoint document")
        tag = next((k for k in _TAGS if k in doc), None)
        if tag is None:
            return {k: self(x, f"{where}.{k}") for k, x in doc.items()}
        value = doc[tag]
        try:
            return self._tagged(tag, value, doc, where)
        except CodecError:
            raise
        except Exception as e:  # a malformed entry: say where, never a bare TypeError
            raise CodecError(f"{where}: malformed {tag} entry in a checkpoint document ({e})") from e

    def _tagged(self, tag: str, value, doc: dict, where: str) -> Any:
        if tag == "__tensor__":
            return self.tensor(value, where)
        if tag == "__ndarray__":
            return self._ndarray(value, doc, where)
        if tag == "__np__":
            dtype = _plain_dtype(value)
            return np.frombuffer(base64.b64decode(doc["bytes"]), dtype=dtype)[0].copy()
        if tag == "__tuple__":
            return tuple(self(x, f"{where}.{i}") for i, x in enumerate(value))
        if tag in ("__dict__", "__odict__"):
            out = {} if tag == "__dict__" else collections.OrderedDict()
            for k, x in value:
                key = self(k, where)
                out[key] = self(x, f"{where}.{key}")
            return out
        if tag in ("__set__", "__frozenset__"):
            items = (self(x, f"{where}.{i}") for i, x in enumerate(value))
            return set(items) if tag == "__set__" else frozenset(items)
        if tag == "__float__":
            return float(str(value))
        if tag == "__bytes__":
            return base64.b64decode(value)
        if tag == "__complex__":
            return complex(self(value[0], where), self(value[1], where))
        if tag == "__size__":
            return torch.Size([int(x) for x in value])
        if tag == "__dtype__":
            dtype = getattr(torch, str(value), None)
            if not isinstance(dtype, torch.dtype):
                raise CodecError(f"{where}: {value!r} is not a torch dtype")
            return dtype
        if tag == "__device__":
            return torch.device(str(value))
        raise CodecError(f"{where}: unknown tag {tag}")  # pragma: no cover  (every tag is handled above)

    def _ndarray(self, name, doc: dict, where: str) -> np.ndarray:
        shape = tuple(int(n) for n in doc["shape"])
        if doc["dtype"] == "object":
            items = [self(x, f"{where}[{i}]") for i, x in enumerate(doc["items"])]
            out = np.empty(len(items), dtype=object)
            for i, x in enumerate(items):  # element by element: a list item must stay one element
                out[i] = x
            return out.reshape(shape)
        if name in self.arrays:
            return self.arrays[name]
        raw = self.tensor(name, where)
        if raw.dtype != torch.uint8:
            raise CodecError(f"{where}: array bytes {name!r} are {raw.dtype}, not uint8")
        arr = raw.contiguous().numpy().view(_plain_dtype(doc["dtype"])).reshape(shape)
        self.arrays[name] = arr
        return arr


def _plain_dtype(text) -> np.dtype:
    dtype = np.dtype(str(text))
    if dtype.kind in "OV":
        raise CodecError(f"dtype {text!r} cannot be read from bytes")
    return dtype


def decode(doc: Any, tensors: dict, where: str = "state") -> Any:
    """The tree :func:`encode` described by ``doc``, its tensors taken from ``tensors``."""
    return _Decoder(tensors)(doc, where)


def dumps(doc: Any) -> str:
    """``doc`` as strict JSON text (non-finite floats are tagged by :func:`encode`, never NaN tokens)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)
