"""Random Gaussian blur with a per-sample sigma, as separable grouped convolutions.

>>> import torch
>>> x = torch.zeros(1, 1, 9, 9)
>>> x[0, 0, 4, 4] = 1.0
>>> from fusefn import Rng
>>> y = GaussianBlur(image_keys="img", sigma=(1.0, 1.0))({"img": x}, rng=Rng(0))["img"]
>>> round(float(y.sum()), 4), bool(y[0, 0, 4, 4] < 1)
(1.0, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import torch
import torch.nn.functional as F

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record

from ._common import (
    Augmentation,
    as_tuple,
    check_image,
    gate,
    get_key,
    keys_tuple,
    put,
    range_validator,
    take,
    to_device,
    uniform,
)

__all__ = ["GaussianBlur"]


@record
class GaussianBlur(Augmentation):
    """Blur each active sample with a Gaussian of standard deviation drawn from ``sigma`` (pixels).

    The kernel length is fixed by the largest sigma (``2·ceil(truncate·high) + 1``), so
    shapes do not depend on the draw; borders are replicated.
    """

    dims: int = attrs.field(default=2, validator=v.in_((2, 3)))
    image_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.and_(v.min_len(1), v.keys))
    sigma: tuple = attrs.field(
        default=(0.5, 1.5), converter=as_tuple, validator=range_validator(lower=0.0, allow_none=False)
    )
    truncate: float = attrs.field(default=3.0, validator=v.gt(0))
    p: float = attrs.field(default=1.0, validator=v.unit_interval)

    def all_keys(self) -> tuple:
        return self.image_keys

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> dict:
        params = gate(generator, batch_size, self.p)
        params["sigma"] = uniform(generator, batch_size, self.sigma, dtype=torch.float32)
        return to_device(params, device)

    def _apply(self, batch: Mapping, params: Mapping, owned: frozenset):
        op = type(self).__name__
        xs = {k: get_key(batch, k, op) for k in self.image_keys}
        for k, x in xs.items():
            check_image(x, op=op, key=k, dims=self.dims)
        index = params["index"]
        if index.shape[0] == 0:
            return batch, owned
        radius = math.ceil(self.truncate * self.sigma[1])
        if radius == 0:
            return batch, owned
        updates = {}
        for k, x in xs.items():
            sub = take(x, index)
            n, c = sub.shape[:2]
            sigma = params["sigma"].index_select(0, index).to(x.dtype).clamp_min(1e-6)
            t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
            w = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
            w = (w / w.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n·c)×k
            y = sub.reshape(1, n * c, *sub.shape[2:])
            conv = F.conv2d if self.dims == 2 else F.conv3d
            for axis in range(self.dims):
                shape = [n * c, 1] + [1] * self.dims
                shape[2 + axis] = 2 * radius + 1
                pad = [0, 0] * self.dims
                pad[2 * (self.dims - 1 - axis)] = pad[2 * (self.dims - 1 - axis) + 1] = radius
                y = conv(F.pad(y, pad, mode="replicate"), w.view(shape), groups=n * c)
            updates[k] = put(x, index, y.reshape(sub.shape), k in owned)
        return nd.assoc_many(batch, updates), owned | frozenset(updates)
