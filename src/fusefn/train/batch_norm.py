"""Batch-norm statistics recomputed with the weights a model ends an epoch with (what evaluation uses).

Why: a batch-norm layer evaluates with running estimates of its inputs' mean and variance,
an exponential average (momentum 0.1) that starts at mean 0 and variance 1. After ``t``
updates ``0.9 ** t`` of that start is still in it, and the rest averages statistics of
weights that have since moved. In a short run this is not small: 11 updates (one epoch of
300 images) leave 31 % of the initial variance 1 in a first layer whose true variance is
0.03 (images in [0, 1]), so evaluation sees its activations shrunk threefold, and the error
compounds through every later layer — the model that is right in training comes out
inverted in evaluation (``lesions2d``: validation AUC 0.20 at epoch 1 for 0.98 with batch
statistics). :func:`recompute_batch_norm` replaces the running estimates by the plain average
of the statistics of a few training batches under the current weights ("precise BN",
like ``torch.optim.swa_utils.update_bn``), and ``fit`` does it after every training epoch.

>>> import torch
>>> from fusefn import Rng
>>> from fusefn.models import ClassifierHead, Model, SmallCNN, apply, init
>>> from fusefn.train import TrainState
>>> model = Model(backbone=SmallCNN(in_channels=1, channels=(4,)), heads=(ClassifierHead(name="head_0", num_classes=2),))
>>> params, buffers = init(model, rng=Rng(0))
>>> batch = {"data": {"input": {"img": 0.1 * torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))}}}
>>> state = recompute_batch_norm(model, TrainState(params=params, buffers=buffers), [batch], rng=Rng(0))
>>> def probs(buffers, train):
...     return apply(model, params, buffers, batch, train=train)[0]["model"]["head_0"]["probs"]
>>> bool(torch.allclose(probs(state.buffers, False), probs(buffers, True), atol=1e-3)), has_batch_norm(model)
(True, True)
>>> bool(torch.allclose(probs(buffers, False), probs(buffers, True), atol=1e-3))  # the initial running statistics
False
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import torch
from torch import nn

from fusefn import keys, nd
from fusefn import validators as v
from fusefn.core import Rng, record
from fusefn.models._record import ModelRecord
from fusefn.models.functional import as_module
from fusefn.train.state import TrainState, tree_to

__all__ = ["BatchNormStats", "recompute_batch_norm", "has_batch_norm"]


@record
class BatchNormStats:
    """How ``fit`` recomputes batch-norm statistics after every training epoch (``fit(batch_norm=None)``: never).

    Fields:
        samples: at most this many training samples (whole batches, unaugmented, in a seeded
            order of their own and not through the training batch sampler, so label-balanced
            batches do not skew the statistics towards the minority class). Each costs a forward
            pass: 256 estimate a channel's mean and variance from 256 × H × W values, plenty for
            the 2D and 3D models here; raise it for small feature maps or very varied data.
    """

    samples: int = attrs.field(default=256, validator=v.positive_int)


DEFAULT_BATCH_NORM = BatchNormStats()


def _norm_layers(module: nn.Module) -> list:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batch_norm(model) -> bool:
    """Whether ``model`` (one of fusefn's model records) has batch-norm layers with running statistics."""
    if not isinstance(model, ModelRecord):
        return False
    return bool(_norm_layers(model._skeletons.train))


def recompute_batch_norm(
    model, state: TrainState, batches: Iterable, *, rng: Rng, max_samples: int | None = None, device=None
) -> TrainState:
    """``state`` with the running statistics of ``model``'s batch-norm layers recomputed on ``batches``.

    Each layer's running mean and variance become the average over the batches of the batch
    statistics under ``state.params`` (``momentum=None`` in torch's terms); ``rng`` drives
    dropout, which runs as in training. Stops once ``max_samples`` samples were seen. Under
    torchrun the ranks' averages are averaged. Parameters and the input state are not modified.
    """
    if not has_batch_norm(model):
        return state
    buffers = {k: t.clone() for k, t in state.buffers.items()}
    module = as_module(model, state.params, buffers, train=True)
    layers = _norm_layers(module)
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average of the batches' statistics
    seen = 0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_samples is not None and seen >= max_samples:
                break
            batch = tree_to(batch, device) if device is not None else batch
            module(batch, rng.child("batch_norm", i).tensor())
            seen += _count(batch)
    if seen == 0:
        return state
    new = dict(module.named_buffers())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        for m in layers:
            for t in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(t)
                t /= world
    # the count of updates keeps growing as before: an exponential average that continues from here
    out = {k: (new[k].detach() if "running_" in k else state.buffers[k]) for k in state.buffers}
    return state.replace(buffers=out)


def _count(batch) -> int:
    ids = nd.get(batch, keys.SAMPLE_ID, default=None)
    if ids is not None and hasattr(ids, "__len__"):
        return len(ids)
    for t in nd.flatten(batch).values():
        if isinstance(t, torch.Tensor) and t.ndim:
            return int(t.shape[0])
    return 1
