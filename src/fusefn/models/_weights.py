"""Loading a block's tensors from a local state-dict file, checked against the architecture."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import torch

from fusefn.errors import ConfigError

__all__ = ["load_weights"]


def load_weights(params, buffers, path, *, block: str, prefix: str, skip=()) -> tuple[dict, dict]:
    """New ``(params, buffers)`` where the tensors under ``prefix`` come from the local file ``path``.

    The file holds a state dict of the block alone (or ``{"state_dict": ...}``); keys
    starting with a prefix in ``skip`` are ignored. Raises ``ConfigError`` naming the
    block, the key and the expected vs found shape on any mismatch.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"model block {block}: weights file {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"model block {block}: cannot read weights file {str(p)!r}: {e}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"model block {block}: weights file {str(p)!r} holds a {type(state).__name__}, not a state dict"
        )
    state = {k: t for k, t in state.items() if not any(k.startswith(s) for s in skip)}
    new_params, new_buffers = dict(params), dict(buffers)
    expected = {k[len(prefix) :]: (d, k) for d in (new_params, new_buffers) for k in d if k.startswith(prefix)}
    problems = []
    for key, t in state.items():
        if key not in expected:
            problems.append(f"unexpected key {key!r} {tuple(getattr(t, 'shape', ()))}")
            continue
        d, full = expected[key]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(d[full].shape):
            problems.append(
                f"key {key!r}: expected shape {tuple(d[full].shape)}, found {tuple(getattr(t, 'shape', ()))}"
            )
            continue
        d[full] = t.to(d[full].dtype).clone()
    # an older file may lack the batch counter; everything else must be there
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    problems += [f"missing key {k!r} (expected shape {tuple(expected[k][0][expected[k][1]].shape)})" for k in missing]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; … {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ConfigError(f"model block {block}: weights file {str(p)!r} does not fit the architecture: {shown}")
    return new_params, new_buffers
