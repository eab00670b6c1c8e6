"""Cutout: fill random boxes of each active sample with a constant, in one elementwise pass.

>>> import torch
>>> from fusefn import Rng
>>> out = Cutout(image_keys="img", size=(0.5, 0.5))({"img": torch.ones(2, 1, 8, 8)}, rng=Rng(0))
>>> out["img"].sum(dim=(1, 2, 3)).tolist()  # one 4×4 hole per sample
[48.0, 48.0]
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError

from ._common import (
    Augmentation,
    as_tuple,
    check_image,
    gate,
    get_key,
    keys_tuple,
    range_validator,
    to_device,
    uniform,
)

__all__ = ["Cutout"]


@record
class Cutout(Augmentation):
    """Set ``count`` random boxes per active sample to ``fill``; each box side is a fraction ``size`` of the image.

    Boxes lie wholly inside the image; all channels are filled.
    """

    dims: int = attrs.field(default=2, validator=v.in_((2, 3)))
    image_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.and_(v.min_len(1), v.keys))
    size: tuple = attrs.field(
        default=(0.1, 0.3), converter=as_tuple, validator=range_validator(lower=0.0, allow_none=False)
    )
    count: int = attrs.field(default=1, validator=v.positive_int)
    fill: float = 0.0
    p: float = attrs.field(default=1.0, validator=v.unit_interval)

    def __attrs_post_init__(self):
        if self.size[1] > 1:
            raise ConfigError(f"{type(self).__name__}.size must be fractions in [0, 1], got {self.size!r}")

    def all_keys(self) -> tuple:
        return self.image_keys

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> dict:
        """``apply``/``index``, ``fraction`` and ``position``: ``N×count×d`` each, in [0, 1]."""
        params = gate(generator, batch_size, self.p)
        shape = (batch_size, self.count, self.dims)
        n = batch_size * self.count * self.dims
        params["fraction"] = uniform(generator, n, self.size).view(shape)
        params["position"] = uniform(generator, n, (0.0, 1.0)).view(shape)
        return to_device(params, device)

    def _apply(self, batch: Mapping, params: Mapping, owned: frozenset):
        op, d = type(self).__name__, self.dims
        updates = {}
        for k in self.image_keys:
            x = get_key(batch, k, op)
            check_image(x, op=op, key=k, dims=d)
            spatial = x.shape[2:]
            s = torch.tensor(tuple(spatial), dtype=torch.float64, device=x.device)
            extent = torch.round(params["fraction"] * s)
            lo = torch.floor(params["position"] * (s - extent + 1)).clamp_max(s - extent)
            hi = lo + extent
            hole = params["apply"].view(-1, 1, *([1] * d))  # N×count×1…
            for axis in range(d):
                view = [1, 1] + [1] * d
                view[2 + axis] = spatial[axis]
                coord = torch.arange(spatial[axis], device=x.device, dtype=torch.float64).view(view)
                bshape = [x.shape[0], self.count] + [1] * d
                inside = (coord >= lo[..., axis].view(bshape)) & (coord < hi[..., axis].view(bshape))
                hole = hole & inside
            hole = hole.any(dim=1, keepdim=True)  # N×1×spatial, broadcast over channels
            fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device)
            updates[k] = x.masked_fill_(hole, fill) if k in owned else torch.where(hole, fill, x)
        return nd.assoc_many(batch, updates), owned | frozenset(updates)
