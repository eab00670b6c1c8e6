"""Wrapper: any ``nn.Module`` (torchvision, timm, your own) as a batch_dict model.

The record names an importable class or factory and its keyword arguments, never a
module instance, so it saves as config. The module receives the tensors at
``inputs`` as positional arguments; its output (a tensor or a tuple of tensors) is
written to ``outputs`` in order.

>>> import torch
>>> from fusefn import Rng
>>> from fusefn.models import init, apply
>>> w = Wrapper(module=torch.nn.Linear, kwargs={"in_features": 3, "out_features": 2},
...             inputs=("data.x",), outputs=("model.head_0.logits",), activation="softmax")
>>> params, buffers = init(w, rng=Rng(0))
>>> out, _ = apply(w, params, buffers, {"data": {"x": torch.ones(4, 3)}})
>>> sorted(out["model"]["head_0"])
['logits', 'probs']
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch
from torch import nn

from fusefn import keys, nd
from fusefn import validators as v
from fusefn.core import Rng, record
from fusefn.errors import ConfigError
from fusefn.models._convert import as_tuple
from fusefn.models._record import ModelRecord
from fusefn.models._skeleton import prepare, skeleton_field
from fusefn.models.model import read_input

__all__ = ["Wrapper"]


def _freeze(value):
    # the record must stay hashable (its skeleton is cached by it) and saveable as config
    if isinstance(value, Mapping):
        raise ConfigError(f"Wrapper.kwargs values must be plain values or sequences, got a mapping {value!r}")
    if isinstance(value, list):
        return tuple(_freeze(x) for x in value)
    return value


def _kwargs(value) -> tuple:
    if isinstance(value, Mapping):
        return tuple((str(k), _freeze(x)) for k, x in value.items())
    return tuple((k, _freeze(x)) for k, x in value)


class _WrapperModule(nn.Module):
    def __init__(self, cfg: Wrapper):
        super().__init__()
        self.net = cfg.module(**dict(cfg.kwargs))
        if not isinstance(self.net, nn.Module):
            raise ConfigError(f"Wrapper.module {cfg.module!r} returned a {type(self.net).__name__}, not an nn.Module")
        self.inputs, self.outputs = tuple(cfg.inputs), tuple(cfg.outputs)
        self.activation = cfg.activation

    def forward(self, batch, rng=None):
        y = self.net(*(read_input(batch, k, "wrapped module") for k in self.inputs))
        ys = (y,) if isinstance(y, torch.Tensor) else tuple(y)
        if len(ys) != len(self.outputs):
            raise ConfigError(f"Wrapper: the module returned {len(ys)} outputs for outputs={self.outputs!r}")
        new = dict(zip(self.outputs, ys))
        if self.activation is not None:
            for k, t in zip(self.outputs, ys):
                if k.endswith(".logits"):
                    p = torch.softmax(t, 1) if self.activation == "softmax" else torch.sigmoid(t)
                    new[k[: -len("logits")] + "probs"] = p
        return nd.assoc_many(batch, new)


@record(cache_hash=True)
class Wrapper(ModelRecord):
    """An ``nn.Module`` built by ``module(**kwargs)``, reading ``inputs`` and writing ``outputs``.

    ``activation`` ("softmax" or "sigmoid") also writes ``….probs`` next to every output
    key ending in ``.logits``. Parameters are named ``net.<module's own names>``;
    ``weights`` is a local state-dict file of the module (keys without ``net.``), loaded by
    ``init`` (keys starting with a prefix in ``weights_skip`` are ignored). The
    module's own initialisation runs under a global-generator state forked from ``init``'s
    ``rng``, so ``init`` stays deterministic and the global generator is left as it was.
    """

    module: object = attrs.field(
        validator=v.wrap(attrs.validators.is_callable(), "must be an nn.Module class or factory function")
    )
    kwargs: tuple = attrs.field(default=(), converter=_kwargs)
    inputs: tuple = attrs.field(default=(keys.IMAGE,), converter=as_tuple, validator=[v.min_len(1), v.keys])
    outputs: tuple = attrs.field(default=("model.output",), converter=as_tuple, validator=[v.min_len(1), v.keys])
    activation: str | None = attrs.field(default=None, validator=v.in_((None, "softmax", "sigmoid")))
    weights: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))
    weights_skip: tuple = attrs.field(default=(), converter=as_tuple)
    _skeletons = skeleton_field()

    ties_weights = True  # an arbitrary module may share one parameter between two names

    def __attrs_post_init__(self):
        prepare(self)

    def head_names(self) -> tuple[str, ...]:
        return ()

    def writes(self) -> tuple[str, ...]:
        extra = tuple(k[: -len("logits")] + "probs" for k in self.outputs if k.endswith(".logits"))
        return self.outputs + (extra if self.activation else ())

    def weight_files(self):
        return [("wrapped module", "net.", self.weights, self.weights_skip)] if self.weights else []

    def blocks(self):
        name = getattr(self.module, "__qualname__", repr(self.module))
        args = ", ".join(f"{k}={x!r}" for k, x in self.kwargs)
        return [("wrapped module", "net.", f"{name}({args})", self.writes())]

    def _real(self, rng: Rng) -> nn.Module:
        # arbitrary modules initialise from the global generator; fork it so the
        # caller's stream is untouched and the result depends on rng alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.seed)
            return _WrapperModule(self)

    def build(self) -> nn.Module:
        return _WrapperModule(self)

    def build_skeleton(self) -> nn.Module:
        # not on meta: a wrapped module may keep plain tensors that its forward needs
        return self._real(Rng(0))

    def fresh_tensors(self, *, rng: Rng) -> tuple[dict, dict]:
        m = self._real(rng.child("models.init"))
        params = {k: p.detach() for k, p in m.named_parameters()}
        buffers = {k: b.detach() for k, b in m.named_buffers()}
        return params, buffers
