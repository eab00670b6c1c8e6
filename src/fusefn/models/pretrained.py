"""Pretrained weights from a local file: a torchvision or timm state dict, its keys mapped, a report of what fit.

:func:`load_pretrained` reads a state dict (``torch.load(weights_only=True)``, so a file can never
run code; ``.safetensors`` when that package is installed), renames its keys with a
``key_map``, copies every tensor whose name and shape fit into new ``(params, buffers)``, and
returns a :class:`LoadReport` of what was loaded, what the model still lacks, what the file
held that the model has no place for, and what had another shape. Nothing is downloaded.

A key map is a ``{file key: model name}`` dict (keys it does not name keep their names), a
function ``file key -> model name``, or ``(regex, replacement)`` pairs applied in order with
``re.sub``; a ``None`` model name (or replacement) leaves the key out. :data:`RESNET_KEYS` maps a
torchvision or timm ResNet onto the backbone of a :class:`fusefn.models.Model` and drops its
ImageNet ``fc`` head.

>>> import torch, tempfile, pathlib
>>> params = {"backbone.conv.weight": torch.zeros(2, 3), "heads.h.out.weight": torch.zeros(1, 2)}
>>> path = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
>>> torch.save({"conv.weight": torch.ones(2, 3), "fc.weight": torch.ones(9, 2)}, path)
>>> new_p, _, report = load_pretrained(params, {}, path, key_map=[(r"^fc\\..*", None), (r"^", "backbone.")],
...                                     strict=False)
>>> new_p["backbone.conv.weight"].sum().item(), report.loaded, report.missing
(6.0, ('backbone.conv.weight',), ('heads.h.out.weight',))
"""

from __future__ import annotations

import importlib
import logging
import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence

import attrs
import torch

from fusefn.errors import ConfigError

__all__ = ["LoadReport", "load_pretrained", "read_state_dict", "map_keys", "RESNET_KEYS"]

_log = logging.getLogger("fusefn.models")

RESNET_KEYS = ((r"^fc\..*", None), (r"^", "backbone."))
"""torchvision's/timm's ResNet state dict -> a fusefn ``Model(backbone=ResNet(...))``: ``fc`` dropped."""

# wrappers a training script commonly puts around the state dict (timm, Lightning, our own block files)
_WRAPPERS = ("state_dict", "model", "module")


@attrs.frozen(kw_only=True)
class LoadReport:
    """What :func:`load_pretrained` did, by model name (``unexpected``: by file key, after ``skipped``).

    Fields:
        loaded: model names that got the file's tensor.
        missing: model names the file had nothing for (they keep their initial values).
        unexpected: file keys (as mapped) with no parameter or buffer of that name.
        shape_mismatch: ``(model name, model shape, file shape)`` of tensors left as they were.
        skipped: file keys the key map left out on purpose.
    """

    loaded: tuple = ()
    missing: tuple = ()
    unexpected: tuple = ()
    shape_mismatch: tuple = ()
    skipped: tuple = ()

    @property
    def ok(self) -> bool:
        """Whether everything fit: nothing missing, unexpected or of another shape."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        def few(items) -> str:
            items = [str(i) for i in items]
            return ", ".join(items[:6]) + (f", … ({len(items)} in all)" if len(items) > 6 else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.skipped:
            lines.append(f"skipped by the key map: {few(self.skipped)}")
        if self.missing:
            lines.append(f"missing from the file (kept as initialised): {few(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in the file (no such parameter): {few(self.unexpected)}")
        if self.shape_mismatch:
            shown = [f"{k} model {tuple(a)} file {tuple(b)}" for k, a, b in self.shape_mismatch]
            lines.append(f"shape mismatch (kept as initialised): {few(shown)}")
        return "; ".join(lines)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``{key: tensor}`` of a local file: never unpickles objects (``weights_only``); unwraps ``state_dict``."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"load_pretrained: weights file {str(p)!r} does not exist (nothing is downloaded)")
    if p.suffix == ".safetensors":
        try:
            st = importlib.import_module("safetensors.torch")
        except ImportError:
            raise ConfigError(
                f"load_pretrained: {p.name} needs the package 'safetensors': pip install safetensors"
            ) from None
        return dict(st.load_file(str(p), device="cpu"))
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickled object is refused here: loading must never run code
        raise ConfigError(f"load_pretrained: cannot read {str(p)!r} as a weights-only state dict: {e}") from None
    while isinstance(state, Mapping):
        inner = [state[w] for w in _WRAPPERS if isinstance(state.get(w), Mapping)]
        if not inner or any(isinstance(x, torch.Tensor) for x in state.values()):
            break
        state = inner[0]
    if not isinstance(state, Mapping):
        raise ConfigError(f"load_pretrained: {str(p)!r} holds a {type(state).__name__}, not a state dict")
    return {str(k): t for k, t in state.items() if isinstance(t, torch.Tensor)}


def map_keys(keys, key_map) -> dict[str, str | None]:
    """``{file key: model name or None}`` under ``key_map`` (see the module docstring).

    >>> map_keys(["module.fc.weight", "module.conv.weight"], [(r"^module\\.", ""), (r"^fc\\..*", None)])
    {'module.fc.weight': None, 'module.conv.weight': 'conv.weight'}
    """
    if key_map is None:
        return {k: k for k in keys}
    if isinstance(key_map, Mapping):
        return {k: key_map.get(k, k) for k in keys}
    if callable(key_map):
        return {k: key_map(k) for k in keys}
    if isinstance(key_map, Sequence) and not isinstance(key_map, str):
        pairs = [(re.compile(p), r) for p, r in key_map]
        out = {}
        for k in keys:
            name = k
            for pattern, repl in pairs:
                if pattern.search(name):
                    if repl is None:
                        name = None
                        break
                    name = pattern.sub(repl, name, count=1)
            out[k] = name
        return out
    raise ConfigError(
        f"load_pretrained: key_map must be a dict, a function or (regex, replacement) pairs, got {key_map!r}"
    )


def load_pretrained(
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    key_map: Mapping | Callable | Sequence | None = None,
    strict: bool = True,
    ignore_missing: Sequence[str] = (),
) -> tuple[dict, dict, LoadReport]:
    """New ``(params, buffers, report)`` with the tensors of ``source`` (a local file or a state dict) copied in.

    Args:
        params, buffers: the model's (``fusefn.models.init``); not modified.
        source: a ``.pt``/``.pth``/``.bin`` file (``torch.load(weights_only=True)``), a ``.safetensors``
            file, or a state dict.
        key_map: how file keys become model names (module docstring); e.g. :data:`RESNET_KEYS`.
        strict: a ConfigError listing the report when anything is missing, unexpected or of another shape
            (beyond ``ignore_missing``); ``False``: load what fits and log the report.
        ignore_missing: ``fnmatch`` patterns of model names the file is not expected to hold
            (e.g. ``"heads.*"``, the new task head): not an error under ``strict``.

    Tensors keep the model's dtype and device; a batch-norm ``num_batches_tracked`` absent
    from an older file is not counted as missing.
    """
    import fnmatch

    state = read_state_dict(source) if not isinstance(source, Mapping) else dict(source)
    where = str(source) if not isinstance(source, Mapping) else "the state dict"
    names = map_keys(list(state), key_map)
    new_p, new_b = dict(params), dict(buffers)
    loaded, unexpected, mismatch, skipped, done = [], [], [], [], set()
    for key, name in names.items():
        if name is None:
            skipped.append(key)
            continue
        target = new_p if name in new_p else new_b if name in new_b else None
        tensor = state[key]
        if target is None:
            unexpected.append(name)
            continue
        if tuple(tensor.shape) != tuple(target[name].shape):
            mismatch.append((name, tuple(target[name].shape), tuple(tensor.shape)))
            continue
        ref = target[name]
        target[name] = tensor.detach().to(device=ref.device, dtype=ref.dtype).clone()
        loaded.append(name)
        done.add(name)
    missing = [
        k
        for k in (*params, *buffers)
        if k not in done and not k.endswith("num_batches_tracked") and not any(mm[0] == k for mm in mismatch)
    ]
    report = LoadReport(
        loaded=tuple(loaded),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        shape_mismatch=tuple(mismatch),
        skipped=tuple(skipped),
    )
    hard_missing = [k for k in missing if not any(fnmatch.fnmatchcase(k, p) for p in ignore_missing)]
    if strict and (hard_missing or unexpected or mismatch):
        raise ConfigError(f"load_pretrained: {where} does not fit the model (strict=True): {report}")
    if not loaded:
        raise ConfigError(f"load_pretrained: nothing in {where} fits the model; check key_map: {report}")
    _log.log(logging.INFO if report.ok else logging.WARNING, "load_pretrained from %s: %s", where, report)
    return new_p, new_b, report
