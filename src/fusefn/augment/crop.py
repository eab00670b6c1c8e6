"""Random crop (exact pixel copy) and random crop-and-resize (one resampling) to a fixed size.

>>> import torch
>>> x = torch.arange(36.0).reshape(1, 1, 6, 6)
>>> from fusefn import Rng
>>> out = RandomCrop(image_keys="img", size=(4, 4), p=0.0)({"img": x}, rng=Rng(0))
>>> torch.equal(out["img"], x[..., 1:5, 1:5])  # p=0: centre crop
True
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError, SampleError

from ._common import (
    Augmentation,
    as_tuple,
    check_image,
    check_mask,
    gate,
    get_key,
    keys_tuple,
    range_validator,
    to_device,
    uniform,
)
from ._resample import grid_from_inverse, resample_keys

__all__ = ["RandomCrop", "RandomResizedCrop"]


def _size_tuple(value) -> tuple:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return tuple(value)


def _check_size(instance, attribute, value):
    dims = instance.dims
    if len(value) == 1:
        value = value * dims
    if len(value) != dims or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(f"{type(instance).__name__}.size must be {dims} positive ints, got {value!r}")


def _out_size(size: tuple, dims: int) -> tuple:
    return size * dims if len(size) == 1 else size


def _resized(shapes: Mapping | None, keys: tuple, size: tuple):
    if shapes is None:
        return None
    return {k: (tuple(v[:1]) + tuple(size) if k in keys else v) for k, v in shapes.items()}


def _offsets(u: torch.Tensor, apply: torch.Tensor, spatial: tuple, size: tuple) -> torch.Tensor:
    """Integer crop starts ``N×d``: uniform over valid starts when active, centred otherwise."""
    room = torch.tensor([s - c for s, c in zip(spatial, size)], device=u.device, dtype=torch.float64)
    random = torch.floor(u * (room + 1)).clamp_max(room)
    centre = torch.floor(room / 2)
    return torch.where(apply[:, None], random, centre).to(torch.int64)


@record
class RandomCrop(Augmentation):
    """Crop every sample to ``size`` at a random position (centred where the sample is not drawn).

    Images and masks are cut at the same place; point/box keys (as in
    :class:`~fusefn.augment.Affine`) are shifted by the crop start.
    """

    _gated = False  # every sample is cropped; the gate picks a random or the centre position

    dims: int = attrs.field(default=2, validator=v.in_((2, 3)))
    image_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    mask_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    point_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    box_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    size: tuple = attrs.field(default=(1,), converter=_size_tuple, validator=_check_size)
    p: float = attrs.field(default=1.0, validator=v.unit_interval)

    def __attrs_post_init__(self):
        if not self.image_keys and not self.mask_keys:
            raise ConfigError(f"{type(self).__name__} needs at least one image or mask key")

    def all_keys(self) -> tuple:
        return self.image_keys + self.mask_keys + self.point_keys + self.box_keys

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> dict:
        """``apply``/``index`` and ``position``: ``N×d`` uniform [0, 1) fractions of the free room."""
        params = gate(generator, batch_size, self.p)
        params["position"] = torch.stack([uniform(generator, batch_size, (0.0, 1.0)) for _ in range(self.dims)], 1)
        return to_device(params, device)

    def out_shapes(self, shapes: Mapping) -> Mapping:
        return _resized(shapes, self.image_keys + self.mask_keys, _out_size(self.size, self.dims))

    def like_keys(self) -> tuple:
        return self.image_keys + self.mask_keys

    def _apply(self, batch: Mapping, params: Mapping, owned: frozenset):
        op, d = type(self).__name__, self.dims
        size = _out_size(self.size, d)
        tensors = {k: get_key(batch, k, op) for k in self.image_keys + self.mask_keys}
        ref_key = (self.image_keys + self.mask_keys)[0]
        ref = tensors[ref_key]
        for k, x in tensors.items():
            check_image(x, op=op, key=k, dims=d, floating=k in self.image_keys)
            check_mask(x, ref, op=op, key=k, image_key=ref_key)
        spatial = tuple(ref.shape[2:])
        if any(c > s for c, s in zip(size, spatial)):
            raise SampleError(f"crop size {size} is larger than the image {spatial}", op=op, key=ref_key)
        start = _offsets(params["position"], params["apply"], spatial, size)
        updates = {}
        for k, x in tensors.items():
            y = x
            for axis in range(d):
                idx = start[:, axis, None] + torch.arange(size[axis], device=x.device)  # N×size
                view = [x.shape[0]] + [1] * (d + 1)
                view[2 + axis] = size[axis]
                target = list(y.shape)
                target[2 + axis] = size[axis]
                y = y.gather(2 + axis, idx.view(view).expand(target))
            updates[k] = y
        shift = start.to(torch.float64)
        for k in self.point_keys:
            pts = get_key(batch, k, op)
            updates[k] = (pts.to(torch.float64) - shift[:, None, :]).to(pts.dtype)
        for k in self.box_keys:
            boxes = get_key(batch, k, op)
            updates[k] = (boxes.to(torch.float64) - shift.repeat(1, 2)[:, None, :]).to(boxes.dtype)
        return nd.assoc_many(batch, updates), owned | frozenset(updates)


@record
class RandomResizedCrop(Augmentation):
    """Crop a random box whose side is a fraction ``scale`` of the image, resized to ``size``.

    Images are resampled bilinearly, masks by nearest neighbour, point/box keys mapped to
    the output grid; a sample that is not drawn (probability ``1 − p``) is resized whole.
    """

    _gated = False  # every sample is cropped and resized

    dims: int = attrs.field(default=2, validator=v.in_((2, 3)))
    image_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    mask_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    point_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    box_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    size: tuple = attrs.field(default=(1,), converter=_size_tuple, validator=_check_size)
    scale: tuple = attrs.field(
        default=(0.5, 1.0), converter=as_tuple, validator=range_validator(lower=0.0, allow_none=False)
    )
    p: float = attrs.field(default=1.0, validator=v.unit_interval)

    def __attrs_post_init__(self):
        if not self.image_keys and not self.mask_keys:
            raise ConfigError(f"{type(self).__name__} needs at least one image or mask key")
        if self.scale[0] <= 0 or self.scale[1] > 1:
            raise ConfigError(f"{type(self).__name__}.scale must lie in (0, 1], got {self.scale!r}")

    def all_keys(self) -> tuple:
        return self.image_keys + self.mask_keys + self.point_keys + self.box_keys

    def like_keys(self) -> tuple:
        return self.image_keys + self.mask_keys

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> dict:
        """``apply``/``index``, ``fraction`` (N, side fraction) and ``position`` (N×d in [0, 1))."""
        params = gate(generator, batch_size, self.p)
        frac = uniform(generator, batch_size, self.scale)
        params["fraction"] = torch.where(params["apply"], frac, torch.ones_like(frac))
        params["position"] = torch.stack([uniform(generator, batch_size, (0.0, 1.0)) for _ in range(self.dims)], 1)
        # every sample is resampled (the output size changes), so every sample is "active"
        params["index"] = torch.arange(batch_size, device=generator.device)
        return to_device(params, device)

    def out_shapes(self, shapes: Mapping) -> Mapping:
        return _resized(shapes, self.image_keys + self.mask_keys, _out_size(self.size, self.dims))

    def _box(self, params: Mapping, spatial: tuple):
        """Crop start and extent in input pixels (edges, not centres), ``N×d`` each."""
        s = torch.tensor(spatial, dtype=torch.float64, device=params["fraction"].device)
        extent = params["fraction"][:, None] * s
        return params["position"] * (s - extent), extent

    def _grid(self, params: Mapping, spatial: tuple, dtype) -> torch.Tensor:
        d, out = self.dims, _out_size(self.size, self.dims)
        s = torch.tensor(spatial, dtype=torch.float64, device=params["fraction"].device)
        lo, extent = self._box(params, spatial)
        n = extent.shape[0]
        inverse = torch.zeros(n, d + 1, d + 1, dtype=torch.float64, device=extent.device)
        for k in range(d):
            inverse[:, k, k] = extent[:, k] / out[k]
        # source (centred) = (extent/size)·u_out + lo + extent/2 − S/2
        inverse[:, :d, d] = lo + extent / 2 - s / 2
        inverse[:, d, d] = 1.0
        return grid_from_inverse(inverse, out, dtype, in_spatial=spatial)

    def _apply(self, batch: Mapping, params: Mapping, owned: frozenset):
        op, out_size = type(self).__name__, _out_size(self.size, self.dims)
        out, owned = resample_keys(
            batch,
            owned,
            op=op,
            dims=self.dims,
            image_keys=self.image_keys,
            mask_keys=self.mask_keys,
            index=params["index"],
            grid_fn=lambda spatial, dtype, sl: self._grid(params, spatial, dtype),
            padding="border",
            out_spatial=out_size,
        )
        if not (self.point_keys or self.box_keys):
            return out, owned
        spatial = tuple(get_key(batch, (self.image_keys + self.mask_keys)[0], op).shape[2:])
        lo, extent = self._box(params, spatial)
        factor = torch.tensor(out_size, dtype=torch.float64, device=lo.device) / extent  # N×d

        def to_output(p, reps):
            # pixel centre i of the output sits at lo + (i + 0.5)·extent/size − 0.5 in the input
            f, o = factor.repeat(1, reps)[:, None, :], lo.repeat(1, reps)[:, None, :]
            return ((p.to(torch.float64) + 0.5 - o) * f - 0.5).to(p.dtype)

        updates = {k: to_output(get_key(batch, k, op), 1) for k in self.point_keys}
        updates.update({k: to_output(get_key(batch, k, op), 2) for k in self.box_keys})
        return nd.assoc_many(out, updates), owned | frozenset(updates)
