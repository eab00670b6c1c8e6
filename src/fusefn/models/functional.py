"""Models as pure functions: ``init(model, rng=...) -> (params, buffers)`` and ``apply(...) -> (batch, buffers)``.

Both call the model's own methods (the :class:`~fusefn.protocols.ModelSpec` protocol), so
any record with ``init``/``apply`` is a model. fusefn's records (``Model``, ``Multistream``,
``Wrapper``, ``Ensemble``) build their ``nn.Module`` skeleton once, when the record is
constructed (on the ``meta`` device, so it holds no memory), in a train and an eval copy;
``apply`` runs it with the tensors it is given in place of the skeleton's
(``torch.func.functional_call`` under ``torch.compile``; outside it the same swap
through slots resolved once, so the functional form costs no more than calling the
module). Batch-norm statistics are buffers: in training ``apply`` updates copies and
returns them, so its inputs are never mutated and it runs under ``torch.func.grad``,
``torch.func.vmap`` (eval) and ``torch.compile(fullgraph=True)``. The skeleton is
shared, so one model record must not be applied from two threads at once.

>>> import torch
>>> from fusefn import Rng
>>> from fusefn.models import Model, SmallCNN, ClassifierHead
>>> model = Model(backbone=SmallCNN(in_channels=1, channels=(4, 8)), heads=(ClassifierHead(name="head_0", num_classes=3),))
>>> params, buffers = init(model, rng=Rng(0))
>>> batch = {"data": {"input": {"img": torch.zeros(2, 1, 8, 8)}}}
>>> out, new_buffers = apply(model, params, buffers, batch, train=True)
>>> out["model"]["head_0"]["probs"].shape
torch.Size([2, 3])
>>> int(new_buffers["backbone.blocks.0.bn.num_batches_tracked"]), int(buffers["backbone.blocks.0.bn.num_batches_tracked"])
(1, 0)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fusefn.core import Rng
from fusefn.errors import ConfigError
from fusefn.models._record import check_record
from fusefn.models._weights import load_weights
from fusefn.protocols import ModelSpec

__all__ = ["init", "apply", "skeleton", "param_count", "summary", "as_module", "load_weights"]


def skeleton(model, train: bool = False) -> nn.Module:
    """The cached parameter-free ``nn.Module`` that :func:`apply` runs for ``model``."""
    check_record(model, "skeleton")
    return model._skeletons.train if train else model._skeletons.eval


def init(model: ModelSpec, *, rng: Rng = Rng(0), device: torch.device | str | None = None) -> tuple[dict, dict]:
    """Fresh ``(params, buffers)`` for ``model``: ``model.init(rng=rng, device=device)``.

    For fusefn's records, two flat dicts ``name -> Tensor``, deterministic for ``rng`` (never
    the global generator); blocks with a ``weights`` file are then loaded from that local file.
    """
    if not isinstance(model, ModelSpec):
        raise ConfigError(
            f"init: not a model record (Model, Multistream, Wrapper, Ensemble, or a ModelSpec): {model!r}"
        )
    return model.init(rng=rng, device=device)


def apply(
    model: ModelSpec,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    batch: Mapping,
    *,
    train: bool = False,
    rng: Rng | torch.Tensor | None = None,
) -> tuple[dict, dict]:
    """Run ``model`` on ``batch``; returns ``(batch with the model's keys added, new buffers)``.

    ``model.apply(params, buffers, batch, train=train, rng=rng)``. Pure: ``params``, ``buffers``
    and ``batch`` are not modified. With ``train=True`` batch norm uses batch statistics and
    the returned buffers hold the updated running statistics; with ``train=False`` the
    buffers come back unchanged. ``rng`` seeds dropout in training (models with dropout
    require it then): an :class:`~fusefn.Rng` or its traced form ``rng.tensor()``.
    """
    return model.apply(params, buffers, batch, train=train, rng=rng)


def param_count(model_or_params) -> int:
    """Number of trainable scalars of a model record, or of a ``params`` dict."""
    if isinstance(model_or_params, Mapping):
        return sum(t.numel() for t in model_or_params.values())
    check_record(model_or_params, "param_count")
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
    check_record(model, "summary")
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
    check_record(model, "as_module")
    module = model.build_skeleton()
    for k, t in params.items():
        _set_tensor(module, k, t, True)
    for k, t in buffers.items():
        _set_tensor(module, k, t, False)
    return module.train(train)
