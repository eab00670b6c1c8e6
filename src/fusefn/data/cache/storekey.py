"""The name of a pipeline's store: its configuration and the code that computes it, hashed.

Changing an op's settings *or* editing its code (a function body, a helper it calls from
the user's modules or its own package, a plain constant it reads) gives a new store,
so a cache never serves samples computed by other code.

>>> def double(s):
...     return {**s, "x": 2}
>>> def triple(s):
...     return {**s, "x": 3}
>>> triple.__qualname__ = double.__qualname__  # same name, new body
>>> store_key(double) != store_key(triple), len(store_key(double))
(True, 32)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
import types
from collections.abc import Mapping

import attrs
import numpy as np

from fusefn.core import fingerprint

__all__ = ["store_key"]


def _code_digest(obj, h, seen: set) -> None:
    """Feed ``h`` the bytecode of every function and op class reachable from ``obj``."""
    if id(obj) in seen or obj is None or isinstance(obj, (bool, int, float, str, bytes, np.ndarray)):
        return
    seen.add(id(obj))
    if isinstance(obj, types.FunctionType):
        _feed_code(obj.__code__, h)
        for cell in obj.__closure__ or ():
            with contextlib.suppress(ValueError):
                _code_digest(cell.cell_contents, h, seen)
        _code_digest(obj.__defaults__, h, seen)
        # what the function uses from the code around it: editing a helper it calls (in its module, in the
        # user's other modules, or elsewhere in its own package) or a constant it reads changes what it computes
        names = sorted(_names(obj.__code__))
        for name in names:
            ref = obj.__globals__.get(name)
            if _is_constant(ref):
                h.update(f"{name}={_constant_repr(ref)}".encode())
            elif isinstance(ref, types.ModuleType) and _followed(ref, obj):
                for attr in names:  # `helpers.scale(x)`: the attribute names are among the code's names
                    sub = getattr(ref, attr, None)
                    if _is_constant(sub):
                        h.update(f"{name}.{attr}={_constant_repr(sub)}".encode())
                    else:
                        _follow(sub, obj, h, seen)
            else:
                _follow(ref, obj, h, seen)
    elif isinstance(obj, type):
        _feed_methods(obj, h, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _code_digest(v, h, seen)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _code_digest(v, h, seen)
    elif attrs.has(type(obj)) or (callable(obj) and not isinstance(obj, types.BuiltinFunctionType)):
        _feed_methods(type(obj), h, seen)
        if attrs.has(type(obj)):
            for f in attrs.fields(type(obj)):
                _code_digest(getattr(obj, f.name), h, seen)


def _follow(ref, user, h, seen: set) -> None:
    ref = getattr(ref, "__wrapped__", ref)  # functools.cache / wraps decorate the real function
    if isinstance(ref, (types.FunctionType, type)) and _followed(ref, user):
        _code_digest(ref, h, seen)


def _followed(ref, user) -> bool:
    """Whether the code of ``ref`` (function, class or module) counts in the store key of code using it:
    the user's own code, and anything in the same top-level package; not the standard library or the
    installed third-party packages (numpy, torch: their version is not the pipeline's business)."""
    module = getattr(ref, "__module__", None) if not isinstance(ref, types.ModuleType) else ref.__name__
    if module is None:
        return False
    if module == user.__module__ or module.partition(".")[0] == str(user.__module__).partition(".")[0]:
        return True
    path = getattr(sys.modules.get(module), "__file__", None)
    return path is not None and not os.path.realpath(path).startswith(_library_dirs())


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    import sysconfig

    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs |= {os.path.realpath(p) for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)}
    return tuple(sorted(d + os.sep for d in dirs))


_CONSTANT_TYPES = (bool, int, float, complex, str, bytes, type(None))


def _is_constant(v) -> bool:
    if isinstance(v, _CONSTANT_TYPES):
        return True
    if isinstance(v, (tuple, frozenset)):
        return all(_is_constant(x) for x in v)
    return False


def _constant_repr(v) -> str:
    if isinstance(v, frozenset):  # its repr order follows the process's hash seed
        return repr(sorted(map(_constant_repr, v)))
    if isinstance(v, tuple):
        return "(" + ",".join(map(_constant_repr, v)) + ")"
    return repr(v)


def _feed_methods(cls: type, h, seen: set) -> None:
    """Feed ``h`` the methods of ``cls`` and its bases (and, through them, their module's helpers)."""
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "attr", "attrs") or ("class", id(klass)) in seen:
            continue
        seen.add(("class", id(klass)))
        for name, member in sorted(vars(klass).items()):
            # attrs-generated methods are skipped: the fields they encode are in the fingerprint, and
            # __hash__ embeds a per-process salt that would give every process its own store
            if isinstance(member, types.FunctionType) and not member.__code__.co_filename.startswith("<attrs"):
                h.update(name.encode())
                _code_digest(member, h, seen)


def _names(code) -> set[str]:
    """Global names used by ``code`` and the code objects nested in it (comprehensions, lambdas)."""
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


def _feed_code(code, h) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _feed_code(c, h)
        elif isinstance(c, frozenset):  # its repr order follows the process's hash seed
            h.update(repr(sorted(map(repr, c))).encode())
        else:
            h.update(repr(c).encode())


def store_key(pipeline) -> str:
    """The name of ``pipeline``'s store: its :func:`~fusefn.core.fingerprint` (configuration) combined
    with the bytecode of its functions and op classes, of the helpers they call from the user's modules or
    their own package, and the plain constants those read: editing any of them gets a new store.

    Not covered: file contents behind paths, module-level arrays or dicts, installed library versions.
    """
    h = hashlib.sha256(fingerprint(pipeline).encode())
    _code_digest(pipeline, h, set())
    return h.hexdigest()[:32]
