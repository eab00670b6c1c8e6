"""Heads: records that turn backbone features into ``model.<name>.logits`` and ``model.<name>.probs``.

A head reads the batch key ``features`` (default ``model.backbone_features``);
``in_channels=None`` takes the channel count the backbone declares for that key.
Probabilities are a softmax over classes, or a sigmoid when ``multi_label`` or when
there is a single logit (binary).

>>> ClassifierHead(name="head_0", num_classes=2).writes()
('model.head_0.logits', 'model.head_0.probs')
>>> SegmentationHead3D(name="seg", num_classes=3).spatial_dims
3
"""

from __future__ import annotations

import itertools

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from fusefn import keys
from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError
from fusefn.models._convert import as_tuple
from fusefn.models._layers import ConvBNAct, SeededDropout, conv

__all__ = ["ClassifierHead", "RegressionHead", "SegmentationHead", "SegmentationHead3D"]


def _check_name(instance, attribute, value):
    if not isinstance(value, str) or not value or "." in value:
        raise ConfigError(f"{type(instance).__name__}.name must be a non-empty string without dots, got {value!r}")


def _activate(logits: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)


@record
class _Head:
    name: str = attrs.field(validator=_check_name)
    features: str = attrs.field(default="model.backbone_features", validator=v.key)
    in_channels: int | None = attrs.field(default=None, validator=v.optional(v.positive_int))

    spatial_dims = None  # None: any number of spatial dims (pooled heads)
    tabular_inputs = ()
    tabular_features = 0

    def writes(self) -> tuple[str, ...]:
        return (keys.logits(self.name), keys.probs(self.name))

    def describe(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in attrs.fields(type(self)) if f.name != "name"]
        return f"{type(self).__name__}({', '.join(parts)})"


class _PooledModule(nn.Module):
    def __init__(self, cfg, cin: int, num_out: int):
        super().__init__()
        self.max_pool = cfg.pooling == "max"
        dims = (cin + cfg.tabular_features, *cfg.layers)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.drops = nn.ModuleList(SeededDropout(cfg.dropout, f"{cfg.name}.{i}") for i in range(len(dims)))
        self.out = nn.Linear(dims[-1], num_out)

    def features(self, x, tabular, rng):
        if x.ndim > 2:
            x = x.flatten(2)
            x = x.amax(2) if self.max_pool else x.mean(2)
        if tabular:
            x = torch.cat([x, *(t.reshape(t.shape[0], -1).to(x.dtype) for t in tabular)], 1)
        for lin, drop in zip(self.hidden, self.drops):
            x = torch.relu(lin(drop(x, rng)))
        return self.out(self.drops[-1](x, rng))


class _ClassifierModule(_PooledModule):
    def __init__(self, cfg: ClassifierHead, cin: int):
        super().__init__(cfg, cin, cfg.num_classes)
        self.sigmoid = cfg.multi_label or cfg.num_classes == 1

    def forward(self, x, tabular=(), size=None, rng=None):
        logits = self.features(x, tabular, rng)
        return {"logits": logits, "probs": _activate(logits, self.sigmoid)}


class _RegressionModule(_PooledModule):
    def __init__(self, cfg: RegressionHead, cin: int):
        super().__init__(cfg, cin, cfg.num_outputs)

    def forward(self, x, tabular=(), size=None, rng=None):
        pred = self.features(x, tabular, rng)
        return {"logits": pred, "pred": pred}


@record
class _PooledHead(_Head):
    pooling: str = attrs.field(default="avg", validator=v.in_(("avg", "max")))
    layers: tuple = attrs.field(default=(), converter=tuple, validator=v.deep_iterable(v.positive_int))
    dropout: float = attrs.field(default=0.0, validator=v.and_(v.ge(0), v.lt(1)))
    tabular_inputs: tuple = attrs.field(default=(), converter=as_tuple, validator=v.keys)
    tabular_features: int = attrs.field(default=0, validator=v.non_negative_int)

    def __attrs_post_init__(self):
        cls = type(self).__name__
        if bool(self.tabular_inputs) != (self.tabular_features > 0):
            raise ConfigError(
                f"{cls}.tabular_features must be > 0 exactly when tabular_inputs is given "
                f"(tabular_inputs={self.tabular_inputs!r}, tabular_features={self.tabular_features!r})"
            )


@record
class ClassifierHead(_PooledHead):
    """Global max/avg pooling, optional tabular features concatenated on the channel axis, dense layers.

    ``layers`` are hidden widths (Linear-ReLU each), ``dropout`` precedes every linear layer,
    ``tabular_inputs`` are batch keys of ``N×k`` tensors whose widths sum to ``tabular_features``.
    Works on ``N×C×…`` maps of any dimensionality and on ``N×C`` vectors (MLP features).
    """

    num_classes: int = attrs.field(default=2, validator=v.positive_int)
    multi_label: bool = False

    def build(self, in_channels: int) -> nn.Module:
        return _ClassifierModule(self, in_channels)


@record
class RegressionHead(_PooledHead):
    """Like :class:`ClassifierHead` without an activation; writes ``model.<name>.pred`` (= logits)."""

    num_outputs: int = attrs.field(default=1, validator=v.positive_int)

    def writes(self):
        return (keys.logits(self.name), f"model.{self.name}.pred")

    def build(self, in_channels: int) -> nn.Module:
        return _RegressionModule(self, in_channels)


class _SegmentationModule(nn.Module):
    def __init__(self, cfg: SegmentationHead, cin: int):
        super().__init__()
        nd = cfg.spatial_dims
        self.hidden = nn.ModuleList()
        for c in cfg.layers:
            self.hidden.append(ConvBNAct(nd, cin, c, 3, padding=1))
            cin = c
        self.out = conv(nd, cin, cfg.num_classes, 1)
        self.mode = "bilinear" if nd == 2 else "trilinear"
        self.sigmoid = cfg.multi_label or cfg.num_classes == 1

    def forward(self, x, tabular=(), size=None, rng=None):
        for block in self.hidden:
            x = block(x)
        logits = self.out(x)
        if size is not None and tuple(logits.shape[2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode=self.mode, align_corners=False)
        return {"logits": logits, "probs": _activate(logits, self.sigmoid)}


@record
class SegmentationHead(_Head):
    """Dense per-pixel classifier: optional 3×3 conv layers, a 1×1 conv, upsampling to the input size.

    Writes logits and probs of shape ``N×num_classes×H×W`` (``×D×H×W`` in 3D).
    """

    num_classes: int = attrs.field(default=2, validator=v.positive_int)
    layers: tuple = attrs.field(default=(), converter=tuple, validator=v.deep_iterable(v.positive_int))
    spatial_dims: int = attrs.field(default=2, validator=v.in_((2, 3)))
    multi_label: bool = False

    def build(self, in_channels: int) -> nn.Module:
        return _SegmentationModule(self, in_channels)


@record
class SegmentationHead3D(SegmentationHead):
    """:class:`SegmentationHead` for volumes."""

    spatial_dims: int = attrs.field(default=3, validator=v.in_((2, 3)))
