"""Regression losses on a regression head's output: mean squared error and Huber.

The target is cast to the prediction's dtype and, when it holds as many values, to its
shape: a head's (N, 1) output against a table's (N,) column is what recipes have.

>>> import torch
>>> batch = {"model": {"head_0": {"pred": torch.tensor([[1.0], [4.0]])}}, "data": {"gt": {"y": torch.tensor([0.0, 1.0])}}}
>>> float(MSE(pred="model.head_0.pred", target="data.gt.y")(batch))
5.0
>>> float(Huber(pred="model.head_0.pred", target="data.gt.y", delta=1.0)(batch))
1.5
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch
import torch.nn.functional as F

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.losses._common import WEIGHT, as_pred, reduce

__all__ = ["MSE", "Huber"]


@record
class MSE:
    """Mean squared error ``mean((pred - target)²)`` (``F.mse_loss``), times ``weight``.

    With ``sample_weight`` (a key of per-sample weights) the per-sample means are averaged with those weights.
    """

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=WEIGHT)
    sample_weight: str | None = None

    def __call__(self, batch: Mapping) -> torch.Tensor:
        pred = nd.get(batch, self.pred)
        target = as_pred(nd.get(batch, self.target), pred)
        if self.sample_weight is None:
            return F.mse_loss(pred, target) * self.weight
        return reduce(F.mse_loss(pred, target, reduction="none"), batch, self.sample_weight) * self.weight


@record
class Huber:
    """Huber loss (``F.huber_loss``): squared below ``delta``, linear above; robust to outlying targets.

    ``0.5 · e²`` for ``|e| <= delta``, ``delta · (|e| - delta / 2)`` above, ``e = pred - target``, in the
    target's units (``delta`` is how far an error counts as ordinary).
    """

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=WEIGHT)
    delta: float = attrs.field(default=1.0, validator=v.gt(0))
    sample_weight: str | None = None

    def __call__(self, batch: Mapping) -> torch.Tensor:
        pred = nd.get(batch, self.pred)
        target = as_pred(nd.get(batch, self.target), pred)
        if self.sample_weight is None:
            return F.huber_loss(pred, target, delta=self.delta) * self.weight
        per = F.huber_loss(pred, target, reduction="none", delta=self.delta)
        return reduce(per, batch, self.sample_weight) * self.weight
