"""Geometry ops over the trailing spatial axes (2D ``C×H×W`` or 3D ``C×D×H×W``): resize, crop, pad, patches.

``shape`` names the spatial size; its length (2 or 3) says how many trailing
axes are spatial, so the same op serves 2D images and 3D volumes. Keys listed
together (an image and its mask) get the same crop window. When the sample has
a voxel-to-world matrix at ``affine_key`` (:data:`fusefn.keys.AFFINE`, a volume
read with its geometry), the op updates it to the new grid; samples without one
(2D images) are left without one. The grid ops of :mod:`fusefn.data.ops.grid`
(orient, resample to a spacing, crop to the foreground) work in millimetres.

>>> import numpy as np
>>> s = {"data": {"sample_id": "a", "input": {"img": np.zeros((1, 6, 8), np.float32)}}}
>>> Resize(keys="data.input.img", shape=(3, 4))(s)["data"]["input"]["img"].shape
(1, 3, 4)
>>> PadTo(keys="data.input.img", shape=(8, 8))(s)["data"]["input"]["img"].shape
(1, 8, 8)
>>> [p["data"]["sample_id"] for p in Patches(keys="data.input.img", shape=(6, 4))(s)]
['a#0', 'a#1']
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import affine as geo
from fusefn import keys, nd
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.core import Rng, record
from fusefn.data.ops._base import KEYS, back, fail, get, map_keys, sample_id, to_torch
from fusefn.errors import ConfigError

__all__ = ["Resize", "CenterCrop", "RandomCrop", "PadTo", "Patches"]


def _shape(instance, attribute, value) -> None:
    # 1 to 3 axes: fusefn.validators has no upper bound on a length
    if not (isinstance(value, tuple) and len(value) in (1, 2, 3) and all(isinstance(v, int) and v > 0 for v in value)):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be 1 to 3 positive ints, got {value!r}")


_SHAPE = dict(converter=tuple, validator=_shape)


def _spatial(x, n: int, op, sample, key) -> tuple:
    if x.ndim < n:
        raise fail(sample, op, key, f"array of shape {tuple(x.shape)} has fewer than {n} spatial axes")
    return tuple(x.shape[-n:])


def _with_affine(op, sample, out, size: tuple, change):
    """``out`` with the affine of ``sample`` (when it has one) replaced by ``change(affine)``; ``size``: the old grid."""
    value = nd.get(sample, op.affine_key, None)
    if value is None:
        return out
    a = np.asarray(value.detach().cpu() if is_tensor(value) else value, dtype=np.float64)
    if a.shape != (len(size) + 1, len(size) + 1):
        raise fail(
            sample, op, op.affine_key, f"affine of shape {a.shape} does not describe {len(size)} spatial axes {size}"
        )
    return nd.assoc(out, op.affine_key, change(a))


_AFFINE_KEY = dict(default=keys.AFFINE, validator=v.key)

_MODES = {"linear": {1: "linear", 2: "bilinear", 3: "trilinear"}, "nearest": "nearest", "area": "area"}


@record
class Resize:
    """Resample the spatial axes to ``shape``; ``mode="nearest"`` keeps label values (masks).

    The affine (when the sample has one) becomes that of the same field of view on ``shape`` voxels, which is
    where ``linear`` samples; torch's ``nearest`` picks ``floor(j · n / m)``, up to half a source voxel from
    that grid's centres. For volumes, :class:`fusefn.data.ops.grid.Resample` works in millimetres.
    """

    keys: tuple = attrs.field(**KEYS)
    shape: tuple = attrs.field(**_SHAPE)
    mode: str = attrs.field(default="linear", validator=v.in_(tuple(_MODES)))
    affine_key: str = attrs.field(**_AFFINE_KEY)

    def _kernel(self, x, key):
        import torch.nn.functional as F

        t, was_np = to_torch(x)
        n = len(self.shape)
        lead = t.shape[:-n]
        dtype = t.dtype
        flat = t.reshape(1, -1, *t.shape[-n:]).float() if not t.is_floating_point() else t.reshape(1, -1, *t.shape[-n:])
        mode = _MODES[self.mode][n] if self.mode == "linear" else _MODES[self.mode]
        kw = {"align_corners": False} if self.mode == "linear" else {}
        out = F.interpolate(flat, size=self.shape, mode=mode, **kw).reshape(*lead, *self.shape)
        if not dtype.is_floating_point and self.mode == "nearest":
            out = out.to(dtype)
        return back(out.contiguous(), was_np)

    def __call__(self, sample: Mapping) -> dict:
        sizes = {}

        def kernel(x, key):
            sizes[key] = _spatial(x, len(self.shape), self, sample, key)
            return self._kernel(x, key)

        out = map_keys(self, sample, self.keys, kernel)
        size = sizes[self.keys[0]]
        # interpolate(align_corners=False) keeps the outer faces of the grid; "area" averages the same boxes
        return _with_affine(self, sample, out, size, lambda a: geo.scale_affine(a, size, self.shape))


def _crop(x, start, shape):
    out = x[(Ellipsis, *(slice(s, s + w) for s, w in zip(start, shape)))]
    return out.contiguous() if is_tensor(out) else np.ascontiguousarray(out)


def _common_spatial(op, sample, n: int) -> tuple:
    shapes = {k: _spatial(get(sample, op, k), n, op, sample, k) for k in op.keys}
    if len(set(shapes.values())) > 1:
        raise fail(sample, op, None, f"keys have different spatial shapes: {shapes}")
    size = next(iter(shapes.values()))
    if any(s < w for s, w in zip(size, op.shape)):
        raise fail(sample, op, op.keys[0], f"spatial shape {size} is smaller than the crop {op.shape}")
    return size


@record
class CenterCrop:
    """Crop the central ``shape`` window (same window for every key)."""

    keys: tuple = attrs.field(**KEYS)
    shape: tuple = attrs.field(**_SHAPE)
    affine_key: str = attrs.field(**_AFFINE_KEY)

    def __call__(self, sample: Mapping) -> dict:
        size = _common_spatial(self, sample, len(self.shape))
        start = [(s - w) // 2 for s, w in zip(size, self.shape)]
        out = map_keys(self, sample, self.keys, lambda x, k: _crop(x, start, self.shape))
        return _with_affine(self, sample, out, size, lambda a: geo.crop_affine(a, start))


@record
class RandomCrop:
    """Crop a ``shape`` window at an offset drawn from ``rng.child(sample_id)``.

    Deterministic per sample, so it is a valid *static* op (cached); the same
    window is used for every key (image and mask stay aligned).
    """

    keys: tuple = attrs.field(**KEYS)
    shape: tuple = attrs.field(**_SHAPE)
    rng: Rng = attrs.field(factory=lambda: Rng(0), validator=v.instance_of(Rng))
    affine_key: str = attrs.field(**_AFFINE_KEY)

    def __call__(self, sample: Mapping) -> dict:
        size = _common_spatial(self, sample, len(self.shape))
        draw = self.rng.child(str(sample_id(sample))).numpy()
        start = [int(draw.integers(0, s - w + 1)) for s, w in zip(size, self.shape)]
        out = map_keys(self, sample, self.keys, lambda x, k: _crop(x, start, self.shape))
        return _with_affine(self, sample, out, size, lambda a: geo.crop_affine(a, start))


@record
class PadTo:
    """Pad the spatial axes up to at least ``shape`` with ``value`` (centered, or at the end)."""

    keys: tuple = attrs.field(**KEYS)
    shape: tuple = attrs.field(**_SHAPE)
    value: float = 0.0
    center: bool = True
    affine_key: str = attrs.field(**_AFFINE_KEY)

    def _before(self, size) -> list:
        return [max(0, w - s) // 2 if self.center else 0 for s, w in zip(size, self.shape)]

    def _kernel(self, x, key, sample):
        size = _spatial(x, len(self.shape), self, sample, key)
        extra = [max(0, w - s) for s, w in zip(size, self.shape)]
        before = self._before(size)
        width = [(0, 0)] * (x.ndim - len(size)) + [(b, e - b) for b, e in zip(before, extra)]
        if is_tensor(x):
            import torch.nn.functional as F

            flat = [p for pair in reversed(width) for p in pair]
            return F.pad(x, flat, value=self.value)
        return np.pad(x, width, constant_values=self.value)

    def __call__(self, sample: Mapping) -> dict:
        out = map_keys(self, sample, self.keys, lambda x, k: self._kernel(x, k, sample))
        if nd.get(sample, self.affine_key, None) is None:
            return out
        size = _common_spatial(attrs.evolve(self, shape=tuple(1 for _ in self.shape)), sample, len(self.shape))
        before = self._before(size)
        return _with_affine(self, sample, out, size, lambda a: geo.crop_affine(a, [-b for b in before]))


@record
class Patches:
    """One sample -> several: tile the spatial axes into ``shape`` patches every ``stride``.

    Each patch is a new sample with id ``"<sample_id>#<k>"`` and its corner at
    ``data.patch.origin``; a static op returning a list is how a Dataset yields
    more samples than its source has rows.
    """

    keys: tuple = attrs.field(**KEYS)
    shape: tuple = attrs.field(**_SHAPE)
    stride: tuple | None = None
    affine_key: str = attrs.field(**_AFFINE_KEY)

    def __attrs_post_init__(self):
        if self.stride is not None and (len(self.stride) != len(self.shape) or min(self.stride) < 1):
            raise ConfigError(f"Patches.stride must have {len(self.shape)} positive ints, got {self.stride!r}")

    def __call__(self, sample: Mapping) -> list:
        size = _common_spatial(self, sample, len(self.shape))
        stride = self.stride or self.shape
        starts = [range(0, s - w + 1, st) for s, w, st in zip(size, self.shape, stride)]
        sid = sample_id(sample)
        out = []
        for k, start in enumerate(itertools.product(*starts)):
            patch = map_keys(self, sample, self.keys, lambda x, key, start=start: _crop(x, start, self.shape))
            patch = _with_affine(self, sample, patch, size, lambda a, start=start: geo.crop_affine(a, start))
            out.append(nd.assoc_many(patch, {keys.SAMPLE_ID: f"{sid}#{k}", keys.PATCH_ORIGIN: tuple(start)}))
        return out
