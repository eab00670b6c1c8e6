"""Composition: one backbone and many heads (:class:`Model`), one backbone per stream (:class:`Multistream`).

A model record says which batch keys it reads (``inputs``) and writes
(``model.backbone_*`` then each head's keys); its ``build()`` returns the
``nn.Module`` skeleton whose ``forward(batch, rng)`` returns the new batch.
Parameters never live in the record: see :meth:`init` / :meth:`apply` (the
:class:`~fusefn.protocols.ModelSpec` protocol). The backbone is a
:class:`~fusefn.protocols.Backbone`, every head a :class:`~fusefn.protocols.Head`.

>>> from fusefn.models import SmallCNN, ClassifierHead
>>> m = Model(backbone=SmallCNN(in_channels=1), heads=(ClassifierHead(name="head_0", num_classes=10),))
>>> m.writes()
('model.backbone_features', 'model.head_0.logits', 'model.head_0.probs')
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from fusefn import keys, nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError, MissingKeyError
from fusefn.models._convert import as_tuple
from fusefn.models._layers import ModelInputError
from fusefn.models._record import ModelRecord
from fusefn.models._skeleton import prepare, skeleton_field
from fusefn.protocols import Backbone, Head

__all__ = ["Model", "Multistream", "read_input"]


def read_input(batch, key: str, block: str) -> torch.Tensor:
    """``nd.get(batch, key)`` whose error also names the model block that wanted the key."""
    # a plain walk rather than nd.get: it runs inside torch.compile(fullgraph=True), where
    # try/except and sentinel objects would break the graph
    node = batch
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            try:
                nd.get(batch, key)
            except MissingKeyError as e:
                raise MissingKeyError(key, f"model block {block}: {e.message}") from None
    return node


def _shape(x) -> tuple:
    return tuple(x.shape)


def gather(batch, keys: tuple, block: str, ndim: int, channels: int, check=None) -> torch.Tensor:
    """Read ``keys``, check dims and channels, concatenate them on the channel axis."""
    xs = [read_input(batch, k, block) for k in keys]
    for k, x in zip(keys, xs):
        if x.ndim != ndim:
            layout = "N×F" if ndim == 2 else "N×C×" + "×".join("DHW"[3 - (ndim - 2) :])
            raise ModelInputError(
                f"model block {block}: input {k!r} has shape {_shape(x)} ({x.ndim} dims), expected {ndim} dims ({layout})"
            )
    for k, x in zip(keys, xs):
        if not x.is_floating_point():
            raise ModelInputError(f"model block {block}: input {k!r} has dtype {x.dtype}, expected a floating dtype")
    x = xs[0] if len(xs) == 1 else torch.cat(xs, 1)
    if x.shape[1] != channels:
        found = ", ".join(f"{k!r} {_shape(t)}" for k, t in zip(keys, xs))
        raise ModelInputError(
            f"model block {block}: expected {channels} channels on axis 1 of {', '.join(map(repr, keys))}, "
            f"found {x.shape[1]} ({found})"
        )
    if check is not None:
        problem = check(_shape(x))
        if problem is not None:
            raise ModelInputError(f"model block {block}: input {', '.join(map(repr, keys))} {_shape(x)}: {problem}")
    return x


def _check_heads(owner: str, heads: tuple, produced: dict[str, int], spatial_ndim: int):
    """Config-time checks: unique names, input sizes that match what the backbone produces."""
    names = [h.name for h in heads]
    for i, h in enumerate(heads):
        where = f"{owner}.heads[{i}] ({h.name})"
        if names.count(h.name) > 1:
            raise ConfigError(f"{where}: head name {h.name!r} is used twice")
        found = produced.get(h.features)
        if found is None and h.in_channels is None:
            raise ConfigError(
                f"{where} reads {h.features!r}, which the backbone does not produce "
                f"(it writes {', '.join(produced)}); give in_channels= for other keys"
            )
        if found is not None and h.in_channels is not None and h.in_channels != found:
            raise ConfigError(
                f"{where}: in_channels={h.in_channels} but the backbone writes {found} channels at {h.features!r}"
            )
        if h.spatial_dims is not None and h.spatial_dims != spatial_ndim:
            raise ConfigError(
                f"{where} is {h.spatial_dims}D but the backbone features have {spatial_ndim} spatial dims"
            )


class _HeadsModule(nn.Module):
    """Runs the heads of a record over a batch that already holds the backbone outputs."""

    def setup_heads(self, heads: tuple, produced: dict[str, int]):
        self.heads = nn.ModuleDict()
        self.head_specs = []
        for h in heads:
            cin = h.in_channels if h.in_channels is not None else produced[h.features]
            self.heads[h.name] = h.build(cin)
            self.head_specs.append((h.name, h.features, cin, tuple(h.tabular_inputs), h.tabular_features))

    def run_heads(self, batch, size, rng):
        for name, key, cin, tab_keys, tab_features in self.head_specs:
            block = f"head {name!r}"
            x = read_input(batch, key, block)
            if x.ndim < 2 or x.shape[1] != cin:
                raise ModelInputError(
                    f"model block {block}: input {key!r} has shape {_shape(x)}, expected {cin} channels on axis 1"
                )
            tab = tuple(read_input(batch, k, block) for k in tab_keys)
            if tab:
                width = sum(t[0].numel() for t in tab)
                if width != tab_features or any(t.shape[0] != x.shape[0] for t in tab):
                    found = ", ".join(f"{k!r} {_shape(t)}" for k, t in zip(tab_keys, tab))
                    raise ModelInputError(
                        f"model block {block}: tabular inputs must be N×k with k summing to {tab_features} "
                        f"and N={x.shape[0]}, found {found}"
                    )
            out = self.heads[name](x, tab, size, rng)
            batch = nd.assoc_many(batch, {f"model.{name}.{k}": t for k, t in out.items()})
        return batch


class _ModelModule(_HeadsModule):
    def __init__(self, cfg: Model):
        super().__init__()
        b = cfg.backbone
        self.inputs = tuple(cfg.inputs)
        self.in_ndim, self.in_channels, self.check = b.input_ndim, b.in_channels, b.check_input
        self.backbone = b.build()
        produced = cfg.produced()
        self.setup_heads(cfg.heads, produced)

    def forward(self, batch, rng=None):
        x = gather(batch, self.inputs, "backbone", self.in_ndim, self.in_channels, self.check)
        feats = self.backbone(x, rng)
        batch = nd.assoc_many(batch, {f"model.backbone_{k}": t for k, t in feats.items()})
        return self.run_heads(batch, tuple(x.shape[2:]), rng)


_HEADS = v.deep_iterable(v.instance_of(Head))


@record(cache_hash=True)
class Model(ModelRecord):
    """One backbone over ``inputs`` (concatenated on channels) followed by ``heads``.

    Writes ``model.backbone_features`` (and ``model.backbone_encoder`` for a U-Net), then
    ``model.<head>.logits`` / ``model.<head>.probs`` for each head, in order, so a head may
    read an earlier head's output (give it ``in_channels``).
    """

    inputs: tuple = attrs.field(default=(keys.IMAGE,), converter=as_tuple, validator=[v.min_len(1), v.keys])
    backbone: Backbone = attrs.field(validator=v.instance_of(Backbone))
    heads: tuple = attrs.field(default=(), converter=tuple, validator=_HEADS)
    _skeletons = skeleton_field()

    def __attrs_post_init__(self):
        _check_heads("Model", self.heads, self.produced(), self.backbone.input_ndim - 2)
        prepare(self)

    def produced(self) -> dict[str, int]:
        """Batch keys the backbone writes -> channel count."""
        return {f"model.backbone_{k}": c for k, c in self.backbone.outputs().items()}

    def writes(self) -> tuple[str, ...]:
        return (*self.produced(), *(k for h in self.heads for k in h.writes()))

    def blocks(self):
        out = [("backbone", "backbone.", self.backbone.describe(), tuple(self.produced()))]
        out += [(f"head {h.name!r}", f"heads.{h.name}.", h.describe(), h.writes()) for h in self.heads]
        return out

    def weight_files(self):
        b = self.backbone
        return [("backbone", "backbone.", b.weights, b.weights_skip)] if b.weights else []

    def build(self) -> nn.Module:
        return _ModelModule(self)


class _MultistreamModule(_HeadsModule):
    def __init__(self, cfg: Multistream):
        super().__init__()
        self.inputs = tuple(cfg.inputs)
        self.specs = [(b.input_ndim, b.in_channels, b.check_input) for b in cfg.stream_backbones()]
        self.streams = nn.ModuleList(b.build() for b in cfg.backbones)
        self.setup_heads(cfg.heads, cfg.produced())

    def forward(self, batch, rng=None):
        feats = []
        x = None
        for i, (key, (ndim, cin, check)) in enumerate(zip(self.inputs, self.specs)):
            x = gather(batch, (key,), f"stream {i}", ndim, cin, check)
            module = self.streams[i if len(self.streams) > 1 else 0]
            feats.append(module(x, rng)["features"])
        for i, f in enumerate(feats[1:], 1):
            if f.shape[2:] != feats[0].shape[2:]:
                raise ModelInputError(
                    f"model block stream {i}: features {_shape(f)} from {self.inputs[i]!r} cannot be joined with "
                    f"{_shape(feats[0])} from {self.inputs[0]!r}: spatial sizes differ"
                )
        batch = nd.assoc(batch, "model.backbone_features", torch.cat(feats, 1))
        return self.run_heads(batch, tuple(x.shape[2:]), rng)


@record(cache_hash=True)
class Multistream(ModelRecord):
    """One backbone per input stream (or one shared backbone), features joined on channels, then heads.

    ``backbones`` holds one record per entry of ``inputs``, or a single record whose
    weights all streams share. Each stream's ``features`` are concatenated into
    ``model.backbone_features``; the streams' feature maps must have the same spatial size.
    """

    inputs: tuple = attrs.field(converter=as_tuple, validator=[v.min_len(1), v.keys])
    backbones: tuple = attrs.field(
        converter=as_tuple, validator=[v.min_len(1), v.deep_iterable(v.instance_of(Backbone))]
    )
    heads: tuple = attrs.field(default=(), converter=tuple, validator=_HEADS)
    _skeletons = skeleton_field()

    def __attrs_post_init__(self):
        if len(self.backbones) not in (1, len(self.inputs)):
            raise ConfigError(
                f"Multistream.backbones has {len(self.backbones)} entries for {len(self.inputs)} inputs: "
                "give one per input or one shared"
            )
        nds = {b.input_ndim for b in self.backbones}
        if len(nds) > 1:
            raise ConfigError(f"Multistream.backbones mix input dims {sorted(nds)}")
        _check_heads("Multistream", self.heads, self.produced(), self.backbones[0].input_ndim - 2)
        prepare(self)

    def stream_backbones(self) -> tuple:
        return self.backbones if len(self.backbones) > 1 else self.backbones * len(self.inputs)

    def produced(self) -> dict[str, int]:
        return {"model.backbone_features": sum(b.outputs()["features"] for b in self.stream_backbones())}

    def writes(self) -> tuple[str, ...]:
        return (*self.produced(), *(k for h in self.heads for k in h.writes()))

    def blocks(self):
        shared = len(self.backbones) == 1 and len(self.inputs) > 1
        out = [
            (f"stream {i}" + (" (shared)" if shared else ""), f"streams.{i}.", b.describe(), ())
            for i, b in enumerate(self.backbones)
        ]
        out[-1] = (*out[-1][:3], tuple(self.produced()))
        out += [(f"head {h.name!r}", f"heads.{h.name}.", h.describe(), h.writes()) for h in self.heads]
        return out

    def weight_files(self):
        return [
            (f"stream {i}", f"streams.{i}.", b.weights, b.weights_skip)
            for i, b in enumerate(self.backbones)
            if b.weights
        ]

    def build(self) -> nn.Module:
        return _MultistreamModule(self)
