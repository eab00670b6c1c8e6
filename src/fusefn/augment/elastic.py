"""Random elastic deformation: a smooth displacement field from a coarse grid of random control points.

>>> import torch
>>> aug = Elastic(image_keys="img", displacement=0.0)
>>> x = torch.rand(2, 1, 8, 8)
>>> torch.allclose(aug({"img": x}, torch.Generator().manual_seed(0))["img"], x, atol=1e-6)
True
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch
import torch.nn.functional as F

from fusefn.core import record
from fusefn.errors import ConfigError

from ._common import Augmentation, batch_info, check_dims, check_keys, check_prob, gate, keys_tuple, to_device
from ._resample import centred_base, resample_keys

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

    dims: int = attrs.field(default=2, validator=check_dims)
    image_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=check_keys)
    mask_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=check_keys)
    displacement: float = 4.0
    control_points: int = 4
    p: float = attrs.field(default=1.0, validator=check_prob)
    padding: str = "border"

    def __attrs_post_init__(self):
        name = type(self).__name__
        if not self.image_keys and not self.mask_keys:
            raise ConfigError(f"{name} needs at least one image or mask key")
        if not isinstance(self.displacement, (int, float)) or self.displacement < 0:
            raise ConfigError(f"{name}.displacement must be a number >= 0, got {self.displacement!r}")
        if not isinstance(self.control_points, int) or self.control_points < 2:
            raise ConfigError(f"{name}.control_points must be an int >= 2, got {self.control_points!r}")
        if self.padding not in ("zeros", "border", "reflection"):
            raise ConfigError(f"{name}.padding must be zeros, border or reflection, got {self.padding!r}")

    def all_keys(self) -> tuple:
        return self.image_keys + self.mask_keys

    def sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> dict:
        """``apply``/``index`` and ``field``: ``n_active×d×g×…×g`` control displacements in pixels."""
        params = gate(generator, batch_size, self.p)
        n, g = int(params["index"].shape[0]), self.control_points
        field = torch.randn((n, self.dims) + (g,) * self.dims, generator=generator, device=generator.device)
        params["field"] = field.mul_(float(self.displacement))
        return to_device(params, device)

    def sample_like(self, batch: Mapping, generator: torch.Generator) -> dict:
        n, device, _ = batch_info(batch, self.all_keys(), type(self).__name__)
        return self.sample(generator, n, device=device)

    def _grid(self, field: torch.Tensor, spatial: tuple, dtype) -> torch.Tensor:
        d = self.dims
        mode = "bicubic" if d == 2 else "trilinear"
        dense = F.interpolate(field.to(dtype), size=spatial, mode=mode, align_corners=True)  # n×d×spatial
        base = centred_base(spatial, device=field.device, dtype=dtype)[:, :d].reshape(*spatial, d)
        scale = torch.tensor([2.0 / s for s in spatial], dtype=dtype, device=field.device)
        pos = (base + dense.movedim(1, -1)) * scale  # source pixel, centred, normalised; axis order
        return pos.flip(-1)

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
