"""How a step is compiled: the modes, one graph or a named error, dynamic batch axis, layouts, precision.

:func:`compile_options` turns a step's ``compile`` setting into ``torch.compile``'s arguments.
Every mode but ``"partial"`` asks for one graph (``fullgraph=True``): a graph break is a
:class:`GraphBreakError` naming the op, never a silent eager fallback. The batch axis of the
inputs is marked dynamic, so the smaller last batch of an epoch reuses the graph.

>>> compile_options(True, "step")
{'mode': None, 'fullgraph': True, 'name': 'default'}
>>> compile_options("partial", "step")["fullgraph"]
False
>>> compile_options("fast", "step")
Traceback (most recent call last):
...
fusefn.errors.ConfigError: step: compile must be a bool or one of ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs', 'partial'), got 'fast'
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch

from fusefn.errors import ConfigError, FusefnError

__all__ = ["GraphBreakError", "compile_options", "PRECISIONS", "COMPILE_MODES", "MEMORY_FORMATS"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "partial")
MEMORY_FORMATS = ("contiguous", "channels_last")


class GraphBreakError(FusefnError):
    """The step does not trace into one graph (``torch.compile(fullgraph=True)``); names the op and the fallback."""


@functools.cache
def _bf16_cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _resolved_precision(precision: str, device_type: str) -> str:
    """``auto``: bf16 autocast on a CUDA device that has it, fp32 elsewhere (CPU bf16 kernels are slow)."""
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" and _bf16_cuda() else "fp32"


def compile_options(compile, where: str) -> dict | None:
    """``torch.compile``'s ``mode``/``fullgraph`` for a step's ``compile`` setting (``None``: eager).

    ``True`` is ``"default"``; every mode but ``"partial"`` demands one graph (``fullgraph=True``),
    so a graph break is an error, never a silent slow path. ``"partial"`` lets torch split the
    step at what it cannot trace and run that part eagerly.
    """
    if compile is False or compile is None:
        return None
    if compile is True:
        compile = "default"
    if not isinstance(compile, str) or compile not in COMPILE_MODES:
        raise ConfigError(f"{where}: compile must be a bool or one of {COMPILE_MODES}, got {compile!r}")
    mode = None if compile in ("default", "partial") else compile
    return {"mode": mode, "fullgraph": compile != "partial", "name": compile}


def _compiled(fn, options: dict, backend):
    kw = {"fullgraph": options["fullgraph"]}
    if backend is not None:
        kw["backend"] = backend  # a test's counting backend takes no inductor mode
    elif options["mode"] is not None:
        kw["mode"] = options["mode"]
    return torch.compile(fn, **kw)


def _check_mode_device(options: dict | None, device: torch.device, where: str) -> None:
    if options is None:
        return
    if options["name"] == "reduce-overhead" and device.type != "cuda":
        raise ConfigError(
            f"{where}: compile='reduce-overhead' records CUDA graphs, which need a CUDA device; the params are on "
            f"{device.type}: use compile=True (or 'max-autotune-no-cudagraphs')"
        )


def _graph_break(e: Exception, where: str) -> GraphBreakError:
    """The dynamo error told in one paragraph: what broke the graph, where in the user's code, what to do."""
    text = str(e).strip()
    reason = text.splitlines()[0] if text else type(e).__name__
    frames = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("File ")]
    at = f" at {frames[-1]}" if frames else ""
    return GraphBreakError(
        f"{where} does not compile into one graph (torch.compile(fullgraph=True)): {reason}{at}. Make that op "
        "traceable, or use compile='partial' (StepSettings(compile='partial'): graph breaks allowed, those parts "
        "run eagerly) or compile=False"
    )


def _call_compiled(fn, where: str, *args):
    try:
        return fn(*args)
    except torch._dynamo.exc.Unsupported as e:
        raise _graph_break(e, where) from e
    except torch._dynamo.exc.UserError as e:
        if "graph break" in str(e).lower() or "fullgraph" in str(e).lower():
            raise _graph_break(e, where) from e
        raise


def _mark_batch_dynamic(tree, n: int) -> None:
    """Mark the batch axis of every tensor of ``tree`` dynamic, so a smaller last batch reuses the graph.

    ``maybe_mark_dynamic``: where the model pins the batch size (a reshape to a constant) torch
    specialises instead of failing. Sizes 0 and 1 are always specialised by torch, so a batch of
    one sample compiles once more.
    """
    if n < 2:
        return
    for t in _tensors(tree):
        if t.ndim and t.shape[0] == n:
            torch._dynamo.maybe_mark_dynamic(t, 0)


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, Mapping):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)


def _formatted(tree, memory_format: str):
    """``channels_last`` (4-d) / ``channels_last_3d`` (5-d) copies of the floating tensors of ``tree``."""
    if memory_format == "contiguous":
        return tree
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and tree.ndim in (4, 5):
            fmt = torch.channels_last if tree.ndim == 4 else torch.channels_last_3d
            return tree if tree.is_contiguous(memory_format=fmt) else tree.contiguous(memory_format=fmt)
        return tree
    if isinstance(tree, Mapping):
        return {k: _formatted(v, memory_format) for k, v in tree.items()}
    return tree


def _batch_size(batch: Mapping) -> int:
    for t in _tensors(batch):
        if t.ndim:
            return int(t.shape[0])
    return 0


def _first_call_on(device: torch.device, cudnn_benchmark: bool) -> None:
    # shapes are fixed per graph (the last batch aside), so the algorithm cuDNN times once is reused every step
    if device.type == "cuda" and cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


class _LrScale:
    """The learning-rate scale as a tensor, remade only when its value changes.

    A tensor keeps a compiled step from recompiling when the scale changes; making one
    every step would also copy host to device every step (a synchronous copy on CUDA).
    """

    def __init__(self):
        self.value, self.tensor = None, None

    def __call__(self, state, as_tensor: bool):
        if not as_tensor:
            return float(state.lr_scale)
        value, device = float(state.lr_scale), _device_of(state.params)
        if value != self.value or self.tensor.device != device:
            self.value, self.tensor = value, torch.tensor(value, dtype=torch.float32, device=device)
        return self.tensor


def _device_of(params: Mapping) -> torch.device:
    for v in params.values():
        return v.device
    return torch.device("cpu")
