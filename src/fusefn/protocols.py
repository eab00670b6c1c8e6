"""The written rules: one ``typing.Protocol`` per kind of fusefn component.

Every component is a frozen record (configuration only) whose behaviour is one of
the protocols below. fusefn never recognises a component by probing attributes or
signatures: a value is a transform, a reducer, a gradient transformation, an
augmentation or a model because it has these methods, with these signatures.

Randomness follows one rule everywhere: a random callable takes one keyword-only
``rng`` argument, an :class:`fusefn.Rng`, and derives what it needs with
``rng.child(...)``. Integers are accepted only at the edges (``fit(seed=)``, the
CLI's and the recipes' ``--seed``) and are turned into an ``Rng`` once, there.

>>> import numpy as np
>>> from fusefn import chain, on_keys
>>> isinstance(chain(on_keys(np.sqrt, keys="data.x")), Transform)
True
>>> from fusefn.metrics import Accuracy
>>> isinstance(Accuracy(pred="model.pred", target="data.gt.label"), Reducer)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from fusefn.core import Rng

__all__ = ["Transform", "Reducer", "GradientTransformation", "Augmentation", "ModelSpec", "Backbone", "Head"]


@runtime_checkable
class Transform(Protocol):
    """A pure ``batch_dict -> batch_dict`` function: returns a new dict, never mutates its input.

    Ops of the data pipelines, ``chain(...)`` of them and ``on_keys(...)`` are transforms.
    """

    def __call__(self, batch: Mapping, /) -> Mapping: ...


@runtime_checkable
class Reducer(Protocol):
    """Pure state over a stream of batches: ``init() -> s``, ``update(s, batch) -> s``, ``compute(s)``.

    ``merge(a, b)`` combines the states of two disjoint streams so that
    ``merge(update(init(), x), update(init(), y)) == update(update(init(), x), y)``
    (in what ``compute`` returns): this is what shards metrics across ranks and batches.
    """

    def init(self) -> Any: ...

    def update(self, state: Any, batch: Any, /) -> Any: ...

    def merge(self, a: Any, b: Any, /) -> Any: ...

    def compute(self, state: Any, /) -> Any: ...


@runtime_checkable
class GradientTransformation(Protocol):
    """optax's pair: ``init(params) -> state``; ``update(grads, state, params, *, lr_scale) -> (params, state)``.

    An optimizer, a clipping rule or a schedule scaling; ``chain(...)`` of them is one too.
    """

    def init(self, params: Mapping, /) -> Any: ...

    def update(self, grads: Mapping, state: Any, params: Mapping, /, lr_scale: Any = None) -> tuple: ...


@runtime_checkable
class Augmentation(Protocol):
    """A random batch transform split into ``sample(...) -> params`` and a pure ``apply(batch, params)``.

    ``sample`` runs eagerly on the host and is the only place randomness enters; ``apply`` has no
    randomness and is what a compiled step runs. ``__call__(batch, *, rng)`` is
    ``apply(batch, sample_like(batch, rng=rng))``.
    """

    def sample(self, batch_size: int, *, rng: Rng, device: Any = None, shapes: Any = None) -> Any: ...

    def sample_like(self, batch: Mapping, *, rng: Rng) -> Any: ...

    def apply(self, batch: Mapping, params: Any, /) -> Mapping: ...

    def __call__(self, batch: Mapping, *, rng: Rng) -> Mapping: ...


@runtime_checkable
class ModelSpec(Protocol):
    """A model record: ``init(*, rng) -> (params, buffers)`` and a pure ``apply``.

    ``apply(params, buffers, batch, *, train, rng) -> (batch with the model's keys, new buffers)``;
    ``rng`` seeds dropout in training. ``fusefn.models.init`` / ``fusefn.models.apply`` call these.
    """

    def init(self, *, rng: Rng, device: Any = None) -> tuple: ...

    def apply(
        self,
        params: Mapping,
        buffers: Mapping,
        batch: Mapping,
        *,
        train: bool = False,
        rng: Rng | torch.Tensor | None = None,
    ) -> tuple: ...


@runtime_checkable
class Backbone(Protocol):
    """A feature extractor inside a model record: reads one ``N×C×…`` tensor, writes named feature maps.

    ``outputs()`` names the maps and their channel counts (``"features"`` always; written to
    ``model.backbone_<name>``); ``build()`` returns the ``nn.Module`` whose ``forward(x, rng)``
    returns them. ``weights`` is a local state-dict file of the backbone alone (or ``None``),
    loaded by ``init``; keys starting with a prefix in ``weights_skip`` are ignored.
    """

    in_channels: int
    input_ndim: int
    weights: str | None
    weights_skip: tuple

    def outputs(self) -> dict: ...

    def check_input(self, shape: tuple, /) -> str | None: ...

    def describe(self) -> str: ...

    def build(self) -> Any: ...


@runtime_checkable
class Head(Protocol):
    """A head inside a model record: reads ``features`` (and ``tabular_inputs``), writes ``model.<name>.*``.

    ``in_channels=None`` takes the channel count the backbone declares for ``features``;
    ``spatial_dims`` is the dimensionality it needs (``None``: any). ``build(in_channels)``
    returns the ``nn.Module`` whose ``forward(x, tabular, size, rng)`` returns ``{suffix: tensor}``.
    """

    name: str
    features: str
    in_channels: int | None
    spatial_dims: int | None
    tabular_inputs: tuple
    tabular_features: int

    def writes(self) -> tuple: ...

    def describe(self) -> str: ...

    def build(self, in_channels: int, /) -> Any: ...
