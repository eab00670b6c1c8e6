"""Backbones: records that describe a feature extractor and build its ``nn.Module`` skeleton.

A backbone reads one tensor (``N×C×H×W``, ``N×C×D×H×W``, or ``N×F`` for the MLP) and
produces named feature maps: ``"features"`` always (written to
``model.backbone_features``), and for :class:`UNet` also ``"encoder"`` (the bottleneck,
written to ``model.backbone_encoder``) so a classifier head can share the backbone
with a segmentation head. No backbone downloads anything: ``weights`` is a local path
to a state dict for the backbone alone, checked against the architecture at ``init``.

>>> ResNet18(in_channels=1).outputs()
{'features': 512}
>>> InceptionResNetV2(in_channels=1, logical_units_num=14).outputs()
{'features': 384}
>>> UNet(in_channels=1, channels=(8, 16, 32)).outputs()
{'features': 8, 'encoder': 32}
"""

from __future__ import annotations

import itertools
import pathlib

import attrs
import torch
from torch import nn

from fusefn import validators as v
from fusefn.core import record
from fusefn.models._convert import as_tuple
from fusefn.models._layers import ConvBNAct, SeededDropout, batch_norm, conv, conv_transpose, max_pool

__all__ = [
    "SmallCNN",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet18_3D",
    "InceptionResNetV2",
    "MLP",
    "UNet",
]


_CHANNELS = v.and_(v.min_len(1), v.deep_iterable(v.positive_int))
_SPATIAL_DIMS = v.in_((2, 3))


def _path_or_none(value):
    return None if value is None else str(value)


@record
class _Backbone:
    in_channels: int = attrs.field(default=1, validator=v.positive_int)
    weights: str | None = attrs.field(default=None, converter=_path_or_none)
    weights_skip: tuple = attrs.field(default=(), converter=as_tuple)

    spatial_dims = 2

    @property
    def input_ndim(self) -> int:
        return self.spatial_dims + 2

    def outputs(self) -> dict[str, int]:  # pragma: no cover - every backbone overrides
        raise NotImplementedError

    def check_input(self, shape: tuple) -> str | None:
        """A reason the input shape cannot go through, or None."""
        return None

    def describe(self) -> str:
        skip = {"weights", "weights_skip"}
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in attrs.fields(type(self)) if f.name not in skip]
        if self.weights:
            parts.append(f"weights={pathlib.Path(self.weights).name!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


# --------------------------------------------------------------------------- SmallCNN


class _SmallCNNModule(nn.Module):
    def __init__(self, cfg: SmallCNN):
        super().__init__()
        cin = cfg.in_channels
        self.blocks = nn.ModuleList()
        for c in cfg.channels:
            self.blocks.append(ConvBNAct(cfg.spatial_dims, cin, c, 3, padding=1))
            cin = c
        self.pool = max_pool(cfg.spatial_dims, 2)

    def forward(self, x, rng=None):
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < last:
                x = self.pool(x)
        return {"features": x}


@record
class SmallCNN(_Backbone):
    """Conv3×3-BN-ReLU blocks with 2× max-pooling between them; quick to train on CPU.

    An 8×8 digit with the default ``channels=(16, 32)`` gives 32×4×4 features.
    """

    channels: tuple = attrs.field(default=(16, 32), converter=tuple, validator=_CHANNELS)
    spatial_dims: int = attrs.field(default=2, validator=_SPATIAL_DIMS)

    def outputs(self):
        return {"features": self.channels[-1]}

    def check_input(self, shape):
        need = 2 ** (len(self.channels) - 1)
        if any(s < need for s in shape[2:]):
            return f"spatial size must be at least {need}"
        return None

    def build(self):
        return _SmallCNNModule(self)


# ----------------------------------------------------------------------------- ResNet


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, nd, cin, planes, stride):
        super().__init__()
        self.conv1 = conv(nd, cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = batch_norm(nd, planes)
        self.conv2 = conv(nd, planes, planes, 3, padding=1, bias=False)
        self.bn2 = batch_norm(nd, planes)
        self.downsample = _shortcut(nd, cin, planes, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, nd, cin, planes, stride):
        super().__init__()
        cout = planes * 4
        self.conv1 = conv(nd, cin, planes, 1, bias=False)
        self.bn1 = batch_norm(nd, planes)
        self.conv2 = conv(nd, planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = batch_norm(nd, planes)
        self.conv3 = conv(nd, planes, cout, 1, bias=False)
        self.bn3 = batch_norm(nd, cout)
        self.downsample = _shortcut(nd, cin, cout, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


def _shortcut(nd, cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(conv(nd, cin, cout, 1, stride=stride, bias=False), batch_norm(nd, cout))


_RESNET_LAYOUT = {18: (_BasicBlock, (2, 2, 2, 2)), 34: (_BasicBlock, (3, 4, 6, 3)), 50: (_Bottleneck, (3, 4, 6, 3))}


class _ResNetModule(nn.Module):
    # parameter names follow the usual ResNet layout (conv1, bn1, layer1.0.conv1, …) so a
    # state dict saved from a standard ResNet of the same shape loads with weights_skip=("fc.",)
    def __init__(self, cfg: ResNet):
        super().__init__()
        nd, w = cfg.spatial_dims, cfg.width
        block, counts = _RESNET_LAYOUT[cfg.depth]
        self.conv1 = conv(nd, cfg.in_channels, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = batch_norm(nd, w)
        self.maxpool = max_pool(nd, 3, stride=2, padding=1)
        cin = w
        for i, n in enumerate(counts):
            planes = w * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(nd, cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x, rng=None):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return {"features": x}


@record
class ResNet(_Backbone):
    """ResNet-18/34/50 in 2D or 3D; ``width`` scales every stage (64 is the standard net)."""

    depth: int = attrs.field(default=18, validator=v.in_((18, 34, 50)))
    spatial_dims: int = attrs.field(default=2, validator=_SPATIAL_DIMS)
    width: int = attrs.field(default=64, validator=v.positive_int)

    def outputs(self):
        block, _ = _RESNET_LAYOUT[self.depth]
        return {"features": self.width * 8 * block.expansion}

    def build(self):
        return _ResNetModule(self)


def ResNet18(**kwargs) -> ResNet:
    """2D ResNet-18 (512 feature channels)."""
    return ResNet(depth=18, **kwargs)


def ResNet34(**kwargs) -> ResNet:
    """2D ResNet-34 (512 feature channels)."""
    return ResNet(depth=34, **kwargs)


def ResNet50(**kwargs) -> ResNet:
    """2D ResNet-50 (2048 feature channels)."""
    return ResNet(depth=50, **kwargs)


def ResNet18_3D(**kwargs) -> ResNet:
    """3D ResNet-18 for volumes ``N×C×D×H×W`` (512 feature channels)."""
    return ResNet(depth=18, spatial_dims=3, **kwargs)


# ------------------------------------------------------------------ Inception-ResNet-v2

_BN = {"eps": 1e-3}


def _bc(cin, cout, k, stride=1, padding=0):
    return ConvBNAct(2, cin, cout, k, stride=stride, padding=padding, bn_kwargs=_BN)


class _Mixed5b(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = _bc(192, 96, 1)
        self.branch1 = nn.Sequential(_bc(192, 48, 1), _bc(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(_bc(192, 64, 1), _bc(64, 96, 3, padding=1), _bc(96, 96, 3, padding=1))
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), _bc(192, 64, 1))

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class _Block35(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.branch0 = _bc(320, 32, 1)
        self.branch1 = nn.Sequential(_bc(320, 32, 1), _bc(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(_bc(320, 32, 1), _bc(32, 48, 3, padding=1), _bc(48, 64, 3, padding=1))
        self.conv2d = nn.Conv2d(128, 320, 1)

    def forward(self, x):
        out = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)
        return torch.relu(self.conv2d(out) * self.scale + x)


class _Mixed6a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = _bc(320, 384, 3, stride=2)
        self.branch1 = nn.Sequential(_bc(320, 256, 1), _bc(256, 256, 3, padding=1), _bc(256, 384, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class _Block17(nn.Module):
    # cut=384 stops after the branch concatenation, cut=1088 before the final ReLU:
    # FuseMedML's intra-block truncation of the last unit
    def __init__(self, scale, cut=None):
        super().__init__()
        self.scale, self.cut = scale, cut
        self.branch0 = _bc(1088, 192, 1)
        self.branch1 = nn.Sequential(
            _bc(1088, 128, 1), _bc(128, 160, (1, 7), padding=(0, 3)), _bc(160, 192, (7, 1), padding=(3, 0))
        )
        if cut != 384:
            self.conv2d = nn.Conv2d(384, 1088, 1)

    def forward(self, x):
        out = torch.cat([self.branch0(x), self.branch1(x)], 1)
        if self.cut == 384:
            return out
        out = self.conv2d(out) * self.scale + x
        return out if self.cut == 1088 else torch.relu(out)


class _Mixed7a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(_bc(1088, 256, 1), _bc(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(_bc(1088, 256, 1), _bc(256, 288, 3, stride=2))
        self.branch2 = nn.Sequential(_bc(1088, 256, 1), _bc(256, 288, 3, padding=1), _bc(288, 320, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class _Block8(nn.Module):
    def __init__(self, scale, relu=True):
        super().__init__()
        self.scale, self.relu = scale, relu
        self.branch0 = _bc(2080, 192, 1)
        self.branch1 = nn.Sequential(
            _bc(2080, 192, 1), _bc(192, 224, (1, 3), padding=(0, 1)), _bc(224, 256, (3, 1), padding=(1, 0))
        )
        self.conv2d = nn.Conv2d(448, 2080, 1)

    def forward(self, x):
        out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1)) * self.scale + x
        return torch.relu(out) if self.relu else out


class _InceptionModule(nn.Module):
    def __init__(self, cfg: InceptionResNetV2):
        super().__init__()
        u = cfg.logical_units_num
        self.conv2d_1a = _bc(cfg.in_channels, 32, 3, stride=2)
        self.conv2d_2a = _bc(32, 32, 3)
        self.conv2d_2b = _bc(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = _bc(64, 80, 1)
        self.conv2d_4a = _bc(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = _Mixed5b()
        tail: list[tuple[str, nn.Module]] = []
        if u >= 1:
            tail.append(("repeat", nn.Sequential(*[_Block35(0.17) for _ in range(min(u, 10))])))
        if u >= 11:
            tail.append(("mixed_6a", _Mixed6a()))
        if u >= 12:
            n = min(u - 11, 20)
            cut = cfg.intra_block_cut_level if u < 32 else None
            blocks = [_Block17(0.10, cut if i == n - 1 else None) for i in range(n)]
            tail.append(("repeat_1", nn.Sequential(*blocks)))
        if u >= 32:
            tail.append(("mixed_7a", _Mixed7a()))
        if u >= 33:
            tail.append(("repeat_2", nn.Sequential(*[_Block8(0.20) for _ in range(min(u - 32, 9))])))
        if u >= 42:
            tail.append(("block8", _Block8(1.0, relu=False)))
        if u >= 43:
            tail.append(("conv2d_7b", _bc(2080, 1536, 1)))
        for name, m in tail:
            setattr(self, name, m)
        self.tail = [name for name, _ in tail]

    def forward(self, x, rng=None):
        for name in (
            "conv2d_1a",
            "conv2d_2a",
            "conv2d_2b",
            "maxpool_3a",
            "conv2d_3b",
            "conv2d_4a",
            "maxpool_5a",
            "mixed_5b",
            *self.tail,
        ):
            x = getattr(self, name)(x)
        return {"features": x}


@record
class InceptionResNetV2(_Backbone):
    """Inception-ResNet-v2 (2D), truncated after ``logical_units_num`` units as in FuseMedML.

    Units 1–10 are the 35×35 blocks, 11 the first reduction, 12–31 the 17×17 blocks (the
    last one cut inside at ``intra_block_cut_level`` channels), 32 the second reduction,
    33–41 the 8×8 blocks, 42 the final block and 43 the 1536-channel projection.
    14 units give 384 channels; 43 is the full network. Inputs need at least 27×27 pixels,
    43×43 once unit 11 is used, 75×75 from unit 32.
    """

    in_channels: int = attrs.field(default=3, validator=v.positive_int)
    logical_units_num: int = attrs.field(default=43, validator=v.and_(v.non_negative_int, v.le(43)))
    intra_block_cut_level: int = attrs.field(default=384, validator=v.in_((384, 1088)))

    def outputs(self):
        u = self.logical_units_num
        if u >= 43:
            c = 1536
        elif u >= 32:
            c = 2080
        elif u >= 12:
            c = self.intra_block_cut_level
        elif u == 11:
            c = 1088
        else:
            c = 320
        return {"features": c}

    def _out_size(self, s: int) -> int:
        s = (s - 3) // 2 + 1  # conv2d_1a
        s = (s - 2 - 3) // 2 + 1  # conv2d_2a, maxpool_3a
        s = (s - 2 - 3) // 2 + 1  # conv2d_4a, maxpool_5a
        for reduction in (11, 32):
            if self.logical_units_num >= reduction:
                s = (s - 3) // 2 + 1 if s >= 3 else 0
        return s

    def check_input(self, shape):
        if any(s < 1 or self._out_size(s) < 1 for s in shape[2:]):
            need = next(s for s in range(1, 1000) if self._out_size(s) >= 1)
            return f"spatial size must be at least {need} for {self.logical_units_num} units"
        return None

    def build(self):
        return _InceptionModule(self)


# -------------------------------------------------------------------------------- MLP


class _MLPModule(nn.Module):
    def __init__(self, cfg: MLP):
        super().__init__()
        dims = (cfg.in_channels, *cfg.layers)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.drops = nn.ModuleList(SeededDropout(cfg.dropout, f"mlp.{i}") for i in range(len(cfg.layers)))

    def forward(self, x, rng=None):
        for lin, drop in zip(self.linears, self.drops):
            x = drop(torch.relu(lin(x)), rng)
        return {"features": x}


@record
class MLP(_Backbone):
    """Linear-ReLU(-dropout) stack for tabular inputs ``N×in_channels``."""

    layers: tuple = attrs.field(default=(64, 64), converter=tuple, validator=_CHANNELS)
    dropout: float = attrs.field(default=0.0, validator=v.and_(v.ge(0), v.lt(1)))

    @property
    def input_ndim(self) -> int:
        return 2

    def outputs(self):
        return {"features": self.layers[-1]}

    def build(self):
        return _MLPModule(self)


# ------------------------------------------------------------------------------- UNet


class _DoubleConv(nn.Sequential):
    def __init__(self, nd, cin, cout):
        super().__init__(ConvBNAct(nd, cin, cout, 3, padding=1), ConvBNAct(nd, cout, cout, 3, padding=1))


class _UNetModule(nn.Module):
    def __init__(self, cfg: UNet):
        super().__init__()
        nd, ch = cfg.spatial_dims, cfg.channels
        self.down = nn.ModuleList()
        cin = cfg.in_channels
        for c in ch:
            self.down.append(_DoubleConv(nd, cin, c))
            cin = c
        self.pool = max_pool(nd, 2)
        self.up = nn.ModuleList(conv_transpose(nd, ch[i + 1], ch[i], 2, stride=2) for i in range(len(ch) - 1))
        self.dec = nn.ModuleList(_DoubleConv(nd, 2 * ch[i], ch[i]) for i in range(len(ch) - 1))

    def forward(self, x, rng=None):
        skips = []
        last = len(self.down) - 1
        for i, block in enumerate(self.down):
            x = block(x)
            if i < last:
                skips.append(x)
                x = self.pool(x)
        encoder = x
        for i in range(last - 1, -1, -1):
            x = self.up[i](x)
            x = self.dec[i](torch.cat([skips[i], x], 1))
        return {"features": x, "encoder": encoder}


@record
class UNet(_Backbone):
    """U-Net encoder-decoder (2D or 3D); ``channels`` per level, 2× down/up-sampling between levels.

    Outputs ``features`` (decoder, full resolution, ``channels[0]``) for a segmentation
    head and ``encoder`` (bottleneck, ``channels[-1]``) for a classification head.
    Every spatial size must be divisible by ``2 ** (len(channels) - 1)``.
    """

    channels: tuple = attrs.field(default=(16, 32, 64, 128), converter=tuple, validator=_CHANNELS)
    spatial_dims: int = attrs.field(default=2, validator=_SPATIAL_DIMS)

    def outputs(self):
        return {"features": self.channels[0], "encoder": self.channels[-1]}

    def check_input(self, shape):
        m = 2 ** (len(self.channels) - 1)
        if any(s % m for s in shape[2:]):
            return f"every spatial size must be divisible by {m}"
        return None

    def build(self):
        return _UNetModule(self)
