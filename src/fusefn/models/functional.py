"""Models as pure functions: ``init(model, seed) -> (params, buffers)`` and ``apply(...) -> (batch, buffers)``.

The ``nn.Module`` skeleton of a model record is built once, when the record is
constructed (on the ``meta`` device, so it holds no memory), in a train and an eval
copy; :func:`apply` runs it with the tensors it is given in place of the skeleton's
(``torch.func.functional_call`` under ``torch.compile``; outside it the same swap
through slots resolved once, so the functional form costs no more than calling the
module). Batch-norm statistics are buffers: in training ``apply`` updates copies and
returns them, so its inputs are never mutated and it runs under ``torch.func.grad``,
``torch.func.vmap`` (eval) and ``torch.compile(fullgraph=True)``. The skeleton is
shared, so one model record must not be applied from two threads at once.

>>> import torch
>>> from fusefn.models import Model, SmallCNN, ClassifierHead
>>> model = Model(backbone=SmallCNN(in_channels=1, channels=(4, 8)), heads=(ClassifierHead(name="head_0", num_classes=3),))
>>> params, buffers = init(model, seed=0)
>>> batch = {"data": {"input": {"img": torch.zeros(2, 1, 8, 8)}}}
>>> out, new_buffers = apply(model, params, buffers, batch, train=True)
>>> out["model"]["head_0"]["probs"].shape
torch.Size([2, 3])
>>> int(new_buffers["backbone.blocks.0.bn.num_batches_tracked"]), int(buffers["backbone.blocks.0.bn.num_batches_tracked"])
(1, 0)
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import torch
from torch import nn

from fusefn.core import Rng
from fusefn.errors import ConfigError, FusefnError, MissingKeyError
from fusefn.models._layers import init_tensors
from fusefn.models._skeleton import Skeletons, make_module, run

__all__ = ["init", "apply", "skeleton", "param_count", "summary", "as_module", "load_weights"]


def skeleton(model, train: bool = False) -> nn.Module:
    """The cached parameter-free ``nn.Module`` that :func:`apply` runs for ``model``."""
    _check_record(model)
    return model._skeletons.train if train else model._skeletons.eval


def _check_record(model):
    if not isinstance(getattr(model, "_skeletons", None), Skeletons):
        raise ConfigError(f"not a model record (Model, Multistream, Wrapper, Ensemble): {model!r}")


def init(model, seed: int, *, device: torch.device | str | None = None) -> tuple[dict, dict]:
    """Fresh ``(params, buffers)`` for ``model``, two flat dicts ``name -> Tensor``.

    Deterministic for ``seed`` (drawn from a ``torch.Generator`` derived from it, never the
    global generator); blocks with a ``weights`` file are then loaded from that local file.
    """
    _check_record(model)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"init: seed must be an int >= 0, got {seed!r}")
    if hasattr(model, "init_tensors"):
        params, buffers = model.init_tensors(seed)
    else:
        params, buffers = init_tensors(skeleton(model, False), Rng(seed).child("models.init").generator())
    for block, prefix, path, skip in getattr(model, "weight_files", list)():
        params, buffers = load_weights(params, buffers, path, block=block, prefix=prefix, skip=skip)
    if device is not None:
        params = {k: t.to(device) for k, t in params.items()}
        buffers = {k: t.to(device) for k, t in buffers.items()}
    return params, buffers


def apply(
    model,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    batch: Mapping,
    *,
    train: bool = False,
    rng: torch.Tensor | None = None,
) -> tuple[dict, dict]:
    """Run ``model`` on ``batch``; returns ``(batch with the model's keys added, new buffers)``.

    Pure: ``params``, ``buffers`` and ``batch`` are not modified. With ``train=True``
    batch norm uses batch statistics and the returned buffers hold the updated running
    statistics; with ``train=False`` the buffers come back unchanged. ``rng`` (an int64
    scalar tensor) seeds dropout in training; models with dropout require it then.
    """
    holder = getattr(model, "_skeletons", None)
    if not isinstance(holder, Skeletons):
        _check_record(model)
    module = holder.train if train else holder.eval
    if len(params) + len(buffers) != holder.n_tensors:
        _explain_mismatch(model, module, params, buffers)
    if train and buffers:
        # batch norm updates its running statistics in place: give it copies
        buffers = {k: t.clone() for k, t in buffers.items()}
    if holder.tie_weights or torch.compiler.is_compiling():
        # dynamo knows functional_call; tied weights need its alias handling
        out = torch.func.functional_call(module, (params, buffers), (batch, rng), tie_weights=holder.tie_weights)
    else:
        try:
            out = run(module, holder.train_slots if train else holder.eval_slots, params, buffers, (batch, rng))
        except KeyError as e:
            problem = None if isinstance(e, MissingKeyError) else _mismatch(model, module, params, buffers)
            if problem is not None:
                raise problem from None
            raise
    return out, buffers


def _mismatch(model, module, params, buffers) -> FusefnError | None:
    want_p, want_b = set(dict(module.named_parameters())), set(dict(module.named_buffers()))
    if set(params) == want_p and set(buffers) == want_b:
        return None
    missing = sorted((want_p | want_b) - (set(params) | set(buffers)))
    extra = sorted((set(params) | set(buffers)) - (want_p | want_b))
    misplaced = sorted((set(params) & want_b) | (set(buffers) & want_p))

    def show(names):
        return f"{names[:5]}{' …' if len(names) > 5 else ''}"

    return FusefnError(
        f"apply({type(model).__name__}): params/buffers do not fit the model: missing {show(missing)}, "
        f"unexpected {show(extra)}, in the wrong dict {show(misplaced)}"
    )


def _explain_mismatch(model, module, params, buffers):
    problem = _mismatch(model, module, params, buffers)
    raise problem or FusefnError(f"apply({type(model).__name__}): a name appears in both params and buffers")


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


def param_count(model_or_params) -> int:
    """Number of trainable scalars of a model record, or of a ``params`` dict."""
    if isinstance(model_or_params, Mapping):
        return sum(t.numel() for t in model_or_params.values())
    _check_record(model_or_params)
    return sum(p.numel() for p in skeleton(model_or_params).parameters())


def summary(model) -> str:
    """One line per block: name, configuration, parameter count, keys written.

    >>> from fusefn.models import Model, MLP, RegressionHead
    >>> print(summary(Model(inputs="data.input.tab", backbone=MLP(in_channels=4, layers=(8,)),
    ...                     heads=(RegressionHead(name="age"),))))  # doctest: +NORMALIZE_WHITESPACE
    backbone    MLP(in_channels=4, layers=(8,), dropout=0.0)  40 params -> model.backbone_features
    head 'age'  RegressionHead(features='model.backbone_features', in_channels=None, pooling='avg', layers=(), dropout=0.0, tabular_inputs=(), tabular_features=0, num_outputs=1)  9 params -> model.age.logits, model.age.pred
    total 49 params
    """
    _check_record(model)
    named = dict(skeleton(model).named_parameters())
    rows = []
    for block, prefix, desc, writes in model.blocks():
        n = sum(p.numel() for k, p in named.items() if k.startswith(prefix))
        rows.append((block, desc, f"{n:,} params" + (f" -> {', '.join(writes)}" if writes else "")))
    width = max(len(r[0]) for r in rows)
    lines = [f"{b.ljust(width)}  {d}  {c}" for b, d, c in rows]
    lines.append(f"total {sum(p.numel() for p in named.values()):,} params")
    return "\n".join(lines)


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor, param: bool):
    *path, leaf = name.split(".")
    for p in path:
        module = getattr(module, p)
    if param:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=value.requires_grad or value.is_floating_point())
    else:
        module._buffers[leaf] = value


def as_module(model, params: Mapping, buffers: Mapping, *, train: bool = False) -> nn.Module:
    """A stand-alone ``nn.Module`` (``forward(batch, rng=None) -> batch``) holding ``params``/``buffers``.

    It shares storage with the given tensors (training it in place mutates them): it is
    the stateful twin of :func:`apply`, for benchmarks and for code that wants a module.
    """
    _check_record(model)
    module = make_module(model)
    for k, t in params.items():
        _set_tensor(module, k, t, True)
    for k, t in buffers.items():
        _set_tensor(module, k, t, False)
    return module.train(train)
