"""Random elastic deformation: a smooth displacement field from a coarse grid of random control points.

>>> import torch
>>> aug = Elastic(image_keys="img", displacement=0.0)
>>> x = torch.rand(2, 1, 8, 8)
>>> from fusefn import Rng
>>> torch.allclose(aug({"img": x}, rng=Rng(0))["img"], x, atol=1e-6)
True
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch
import torch.nn.functional as F

from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError

from ._common import Augmentation, gate, keys_tuple, to_device
from ._resample import resample_keys

__all__ = ["Elastic"]


@record
class Elastic(Augmentation):
    """Displace every pixel by a smooth random field; images bilinear, masks nearest.

    Each displacement component at ``control_points`` evenly spaced points per axis is
    drawn from N(0, ``displacement``²) pixels, then interpolated to full resolution
    (bicubic in 2D, trilinear in 3D).

    Args:
        dims: 2 or 3 spatial dimensions.
        image_keys, mask_keys: as in :class:`~fusefn.augment.Affine`.
        displacement: standard deviation of the control-point displacements, in pixels.
        control_points: control points per axis (≥ 2); fewer means smoother.
        p: probability that a sample is deformed.
        padding: ``grid_sample`` padding mode.
    """

    _active_fields = ("field",)

    dims: int = attrs.field(default=2, validator=v.in_((2, 3)))
    image_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    mask_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    displacement: float = attrs.field(default=4.0, validator=v.ge(0))
    control_points: int = attrs.field(default=4, validator=v.and_(v.positive_int, v.ge(2)))
    p: float = attrs.field(default=1.0, validator=v.unit_interval)
    padding: str = attrs.field(default="border", validator=v.in_(("zeros", "border", "reflection")))

    def __attrs_post_init__(self):
        if not self.image_keys and not self.mask_keys:
            raise ConfigError(f"{type(self).__name__} needs at least one image or mask key")

    def all_keys(self) -> tuple:
        return self.image_keys + self.mask_keys

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> dict:
        """``apply``/``index`` and ``field``: ``n_active×d×g×…×g`` control displacements in pixels."""
        params = gate(generator, batch_size, self.p)
        n, g = int(params["index"].shape[0]), self.control_points
        field = torch.randn((n, self.dims) + (g,) * self.dims, generator=generator, device=generator.device)
        params["field"] = field.mul_(float(self.displacement))
        return to_device(params, device)

    def positions(self, field: torch.Tensor, spatial: tuple, dtype) -> torch.Tensor:
        """``(n, d, *spatial)``: the source pixel of every output pixel per axis, centred (channels first).

        ``field`` holds the control displacements (``n×d×g×…×g``) of the samples concerned.
        """
        pos = _upsample(field.to(dtype), spatial)
        for k, size in enumerate(spatial):
            shape = [1] * len(spatial)
            shape[k] = size
            pos[:, k] += (torch.arange(size, device=pos.device, dtype=dtype) - (size - 1) / 2).view(shape)
        return pos

    def _grid(self, field: torch.Tensor, spatial: tuple, dtype) -> torch.Tensor:
        pos = self.positions(field, spatial, dtype)
        for k, size in enumerate(spatial):
            pos[:, k] *= 2.0 / size
        grid = pos.flip(1).movedim(1, -1)  # normalised, last axis first
        # the 3D kernel reads a strided grid as fast; the vectorised 2D one wants the coordinates interleaved
        return grid.contiguous() if self.dims == 2 else grid

    def _apply(self, batch: Mapping, params: Mapping, owned: frozenset):
        return resample_keys(
            batch,
            owned,
            op=type(self).__name__,
            dims=self.dims,
            image_keys=self.image_keys,
            mask_keys=self.mask_keys,
            index=params["index"],
            grid_fn=lambda spatial, dtype, sl: self._grid(params["field"][sl], spatial, dtype),
            padding=self.padding,
        )


def _upsample(field: torch.Tensor, spatial: tuple) -> torch.Tensor:
    """The control field at full resolution: bicubic in 2D, trilinear in 3D (both align_corners=True).

    Trilinear interpolation is a product of 1D ones, so in 3D it is three small matrix
    products (one interpolation matrix per axis), an order of magnitude cheaper on CPU than
    ``F.interpolate`` and equal to it up to rounding.
    """
    if field.ndim != 5:
        return F.interpolate(field, size=spatial, mode="bicubic", align_corners=True)
    mz, my, mx = (_linear_weights(field.shape[2 + k], s, field) for k, s in enumerate(spatial))
    n, c, g = field.shape[:3]
    out = torch.matmul(my, torch.matmul(field, mx.T))  # n×c×g×H×W, each product contiguous as it comes
    return torch.matmul(mz, out.reshape(n, c, g, -1)).view(n, c, *spatial)


def _linear_weights(g: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """``size×g``: row ``i`` weighs the ``g`` control points for pixel ``i`` (align_corners=True)."""
    pos = torch.linspace(0.0, g - 1.0, size, dtype=torch.float64, device=like.device)
    lo = pos.floor().clamp(max=g - 2)
    w = (pos - lo)[:, None]
    cols = torch.arange(g, dtype=torch.float64, device=like.device)[None, :]
    m = (cols == lo[:, None]) * (1 - w) + (cols == lo[:, None] + 1) * w
    return m.to(like.dtype)
