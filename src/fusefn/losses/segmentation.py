"""Segmentation losses: soft Dice and per-pixel cross-entropy of class maps against label maps of any size."""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch
import torch.nn.functional as F

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError
from fusefn.losses._common import RESIZE, TORCH_IGNORE, WEIGHT, class_targets, class_weights, poisoned

__all__ = ["SoftDice", "SegmentationCrossEntropy", "resize_target", "ipw_class_weights"]


@record
class SoftDice:
    """``1 - mean soft Dice`` over classes and samples, from logits (N, C, *spatial) and labels (N, *spatial).

    ``activation="sigmoid"`` treats each channel independently and expects a target of the
    same shape as ``pred`` (multi-label) or labels (single channel); ``None`` takes ``pred``
    as probabilities. Label maps of another size are resized to the prediction (``resize``).
    """

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=WEIGHT)
    activation: str | None = attrs.field(default="softmax", validator=v.in_(("softmax", "sigmoid", None)))
    smooth: float = 1.0
    include_background: bool = True
    resize: str = attrs.field(default="nearest", validator=RESIZE)

    def __call__(self, batch: Mapping) -> torch.Tensor:
        x, target = nd.get(batch, self.pred), nd.get(batch, self.target)
        ok = None
        if dice_labels(target, x):
            target, ok = class_targets(target, x.shape[1])
        if target.dim() == x.dim() - 1 and tuple(target.shape[1:]) != tuple(x.shape[2:]):
            target = resize_target(target, tuple(x.shape[2:]), self.resize)
        if self.activation == "softmax":
            probs = torch.softmax(x, dim=1)
        elif self.activation == "sigmoid":
            probs = torch.sigmoid(x)
        else:
            probs = x
        if target.shape == probs.shape:
            onehot = target.to(probs.dtype)
        elif probs.shape[1] == 1:
            onehot = target.to(probs.dtype).reshape(probs.shape)
        else:
            onehot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
        if not self.include_background and probs.shape[1] > 1:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dims = tuple(range(2, probs.dim()))
        inter = (probs * onehot).sum(dims)
        den = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (den + self.smooth)
        loss = 1 - dice.mean()
        return poisoned(loss, ok) * self.weight


def dice_labels(target: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether SoftDice reads ``target`` as class labels (one-hot encoded), not as per-channel values."""
    return target.dim() == x.dim() - 1 and x.shape[1] > 1


def resize_target(target: torch.Tensor, size: tuple, mode: str = "nearest") -> torch.Tensor:
    """Integer label maps (N, *spatial) resized to ``size``: ``"nearest"`` or ``"maxpool"`` (highest label wins)."""
    if tuple(target.shape[1:]) == tuple(size):
        return target.long()
    x = target[:, None].float()
    if mode == "nearest":
        out = F.interpolate(x, size=tuple(size), mode="nearest")
    elif mode == "maxpool":
        pool = F.adaptive_max_pool2d if len(size) == 2 else F.adaptive_max_pool3d
        out = pool(x, tuple(size))
    else:
        raise ConfigError(f"resize mode must be 'nearest' or 'maxpool', got {mode!r}")
    return out[:, 0].long()


def ipw_class_weights(target: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """Inverse class frequency in ``target``: ``total / (C * count_c)``, 0 for absent classes (fixed size C)."""
    classes = torch.arange(num_classes, device=target.device).view(1, num_classes, *([1] * (target.dim() - 1)))
    counts = (target.long().unsqueeze(1) == classes).sum(dim=[d for d in range(target.dim() + 1) if d != 1])
    counts = counts.to(dtype)
    total = counts.sum()
    return torch.where(counts > 0, total / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))


def _list_to_tuple(value):
    return tuple(value) if isinstance(value, list) else value


def _seg_weights(instance, attribute, value):
    # one of three kinds (None, "ipw", a tuple): no fusefn.validators combination says "one of"
    if value is not None and value != "ipw" and not isinstance(value, tuple):
        raise ConfigError(f"SegmentationCrossEntropy.class_weights must be None, 'ipw' or a tuple, got {value!r}")


@record
class SegmentationCrossEntropy:
    """Per-pixel cross-entropy of class maps (N, C, *spatial) against label maps, resized to the prediction.

    ``class_weights="ipw"`` weights each class by its inverse frequency in the batch's target
    (FuseMedML's segmentation loss); a tuple gives fixed weights.
    """

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=WEIGHT)
    class_weights: str | tuple | None = attrs.field(default=None, converter=_list_to_tuple, validator=_seg_weights)
    resize: str = attrs.field(default="nearest", validator=RESIZE)

    def __call__(self, batch: Mapping) -> torch.Tensor:
        logits, target = nd.get(batch, self.pred), nd.get(batch, self.target)
        if target.dim() == logits.dim():  # (N, 1, *spatial) label maps
            target = target[:, 0]
        target, ok = class_targets(target, logits.shape[1], TORCH_IGNORE)
        target = resize_target(target, tuple(logits.shape[2:]), self.resize)
        if self.class_weights == "ipw":
            w = ipw_class_weights(target, logits.shape[1], logits.dtype)
        else:
            w = class_weights(self.class_weights, logits)
        return poisoned(F.cross_entropy(logits, target, weight=w), ok) * self.weight
