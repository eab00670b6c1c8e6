"""Classification losses: any ``F.*``-style loss on two keys, cross-entropy, binary / multi-label BCE, focal.

>>> import torch
>>> batch = {"p": torch.tensor([[2.0, -1.0], [0.0, 1.0]]), "t": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
>>> round(float(BCEWithLogits(pred="p", target="t", pos_weight=(1.0, 3.0))(batch)), 4)
0.5183
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError
from fusefn.losses._common import (
    WEIGHT,
    as_pred,
    class_labels,
    class_targets,
    class_weights,
    kwargs_tuple,
    poisoned,
    reduce,
)

__all__ = ["Loss", "CrossEntropy", "BCEWithLogits", "Focal", "label_pos_weights"]


@record
class Loss:
    """Any ``torch.nn.functional``-style loss ``fn(pred, target, **kwargs)`` on two keys, times ``weight``.

    With ``sample_weight`` (a key of per-sample weights), ``fn`` is called with
    ``reduction="none"`` and the per-sample means are averaged with those weights.

    >>> import torch
    >>> mse = Loss(fn=torch.nn.functional.mse_loss, pred="p", target="t", weight=2.0)
    >>> float(mse({"p": torch.tensor([1.0, 3.0]), "t": torch.tensor([0.0, 3.0])}))
    1.0
    """

    fn: Callable = attrs.field(validator=v.is_callable)
    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=WEIGHT)
    sample_weight: str | None = None
    kwargs: tuple = attrs.field(default=(), converter=kwargs_tuple)

    def __call__(self, batch: Mapping) -> torch.Tensor:
        pred, target = nd.get(batch, self.pred), nd.get(batch, self.target)
        kw = dict(self.kwargs)
        if self.sample_weight is None:
            return self.fn(pred, target, **kw) * self.weight
        per = self.fn(pred, target, reduction="none", **kw)
        return reduce(per, batch, self.sample_weight) * self.weight


@record
class CrossEntropy:
    """Softmax cross-entropy of logits (N, C, …) against integer labels (N, …)."""

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=WEIGHT)
    class_weights: tuple | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    label_smoothing: float = 0.0
    ignore_index: int = -100
    sample_weight: str | None = None

    def __call__(self, batch: Mapping) -> torch.Tensor:
        logits = nd.get(batch, self.pred)
        target, ok = class_targets(class_labels(nd.get(batch, self.target), logits), logits.shape[1], self.ignore_index)
        class_w = class_weights(self.class_weights, logits)
        per = F.cross_entropy(
            logits,
            target,
            weight=class_w,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="none" if self.sample_weight else "mean",
        )
        if not self.sample_weight:
            return poisoned(per, ok) * self.weight
        # torch's "mean" divided by the class weights of the counted elements; so do we, times the sample
        # weights, so that all-ones sample weights give exactly the unweighted loss
        sw = torch.as_tensor(nd.get(batch, self.sample_weight), device=per.device).to(per.dtype)
        sw = sw.reshape(-1, *([1] * (per.dim() - 1)))
        valid = (target != self.ignore_index).to(per.dtype)
        # ignored labels may be any value (255 in segmentation): index the class weights with a valid class there
        safe = torch.where(valid.bool(), target, 0)
        denom = sw * valid if class_w is None else sw * valid * class_w[safe]
        return poisoned((per * sw).sum() / denom.sum().clamp_min(torch.finfo(per.dtype).tiny), ok) * self.weight


def _pos_weight(value):
    if value is None or isinstance(value, (int, float)):
        return value
    return tuple(float(x) for x in value)


def _check_pos_weight(instance, attribute, value):
    values = () if value is None else (value,) if isinstance(value, (int, float)) else value
    if any(not np.isfinite(x) or x < 0 for x in values):
        raise ConfigError(f"BCEWithLogits.pos_weight must be finite numbers >= 0, got {value!r}")


@record
class BCEWithLogits:
    """Binary cross-entropy on logits, binary (N,) or multi-label (N, L); the target takes the logits' dtype and shape.

    Args:
        pos_weight: weight of the positive term: one number, or one per label (multi-label, e.g.
            :func:`label_pos_weights` of the training labels: negatives / positives), as
            ``F.binary_cross_entropy_with_logits(pos_weight=)``.
        mask: key of a 0/1 tensor shaped like the target, 1 where the label is known: the loss is the mean
            over known labels only (a missing label may hold anything there, NaN included). A batch
            without a known label gives 0.
        sample_weight: key of per-sample weights (N,).
    """

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=WEIGHT)
    pos_weight: float | tuple | None = attrs.field(default=None, converter=_pos_weight, validator=_check_pos_weight)
    sample_weight: str | None = None
    mask: str | None = attrs.field(default=None, validator=v.optional(v.key))

    def __call__(self, batch: Mapping) -> torch.Tensor:
        logits = nd.get(batch, self.pred)
        target = as_pred(nd.get(batch, self.target), logits)
        pw = None if self.pos_weight is None else torch.as_tensor(self.pos_weight, dtype=logits.dtype).to(logits.device)
        if self.mask is None:
            if self.sample_weight is None:
                return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw) * self.weight
            per = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
            return reduce(per, batch, self.sample_weight) * self.weight
        known = as_pred(nd.get(batch, self.mask), logits) > 0
        # a missing label's value never reaches the loss: NaN * 0 would still be NaN
        per = F.binary_cross_entropy_with_logits(
            logits, torch.where(known, target, torch.zeros_like(target)), pos_weight=pw, reduction="none"
        )
        w = known.to(per.dtype)
        if self.sample_weight is not None:
            sw = torch.as_tensor(nd.get(batch, self.sample_weight), device=per.device).to(per.dtype)
            w = w * sw.reshape(-1, *([1] * (per.dim() - 1)))
        return (per * w).sum() / w.sum().clamp_min(torch.finfo(per.dtype).tiny) * self.weight


def label_pos_weights(labels, mask=None) -> tuple[float, ...]:
    """Per-label ``negatives / positives`` of 0/1 labels (N, L) (known labels only with ``mask``): ``pos_weight``.

    A label with no positive gets 1.0 (nothing to up-weight).

    >>> label_pos_weights([[1, 0], [0, 0], [0, 1], [0, 1]])
    (3.0, 1.0)
    """
    y = np.asarray(labels, dtype=np.float64)
    y = y.reshape(len(y), -1)
    known = np.ones_like(y, dtype=bool) if mask is None else np.asarray(mask).reshape(y.shape) > 0
    pos = ((y > 0.5) & known).sum(0)
    neg = ((y <= 0.5) & known).sum(0)
    return tuple(float(n / p) if p else 1.0 for n, p in zip(neg, pos, strict=True))


def _alpha(value):
    if value is None or isinstance(value, (int, float)):
        return value
    return tuple(value)


@record
class Focal:
    """Focal loss (Lin et al.): cross-entropy down-weighted by ``(1 - p_t) ** gamma``.

    Multi-class when ``pred`` has a class axis the target lacks (softmax; ``alpha`` a
    per-class tuple); binary sigmoid focal when shapes match (``alpha`` a float for the
    positive class).
    """

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=WEIGHT)
    gamma: float = 2.0
    alpha: float | tuple | None = attrs.field(default=None, converter=_alpha)
    sample_weight: str | None = None

    def __call__(self, batch: Mapping) -> torch.Tensor:
        logits, target = nd.get(batch, self.pred), nd.get(batch, self.target)
        if logits.dim() == target.dim() + 1 and logits.shape[1] > 1 and logits.numel() != target.numel():
            labels, ok = class_targets(target, logits.shape[1])
            logp = F.log_softmax(logits, dim=1)
            logp_t = logp.gather(1, labels.unsqueeze(1)).squeeze(1)
            per = -((1 - logp_t.exp()) ** self.gamma) * logp_t
            if self.alpha is not None:
                alpha = torch.as_tensor(self.alpha, dtype=logits.dtype, device=logits.device)
                per = per * (alpha[labels] if alpha.dim() else alpha)
            per = poisoned(per, ok)
        else:
            t = as_pred(target, logits)
            ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
            p = torch.sigmoid(logits)
            p_t = p * t + (1 - p) * (1 - t)
            per = ce * (1 - p_t) ** self.gamma
            if self.alpha is not None:
                per = per * (self.alpha * t + (1 - self.alpha) * (1 - t))
        return reduce(per, batch, self.sample_weight) * self.weight
