"""Grid ops on volumes with their geometry: orient, resample, crop to the foreground, pad, flip, and back.

Each op moves the arrays at ``keys`` (images: interpolated with ``mode``) and ``label_keys`` (label maps:
nearest neighbour, values kept) onto a new voxel grid together, and writes that grid's voxel-to-world matrix
at ``affine_key`` (:data:`fusefn.keys.AFFINE`; the convention is in :mod:`fusefn.affine`). Arrays are
``C×D×H×W`` (numpy or torch; the kind comes back); every array of one op must share the grid of the affine.

Because every op keeps the affine exact, :class:`ToOriginalGrid` undoes any chain of them from the grid the
reader recorded (:data:`fusefn.keys.ORIGINAL_AFFINE`, :data:`fusefn.keys.ORIGINAL_SHAPE`).

>>> import numpy as np
>>> from fusefn import chain
>>> s = {"data": {"sample_id": "ct", "input": {"img": np.zeros((1, 40, 40, 12), np.float32),
...      "affine": np.diag([-0.8, -0.8, 2.5, 1.0])}}}
>>> out = chain(Orient(axcodes="RAS"), Resample(spacing=(1.6, 1.6, 2.0)))(s)
>>> out["data"]["input"]["img"].shape, out["data"]["input"]["affine"].diagonal().tolist()
((1, 20, 20, 15), [1.6, 1.6, 2.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import affine as geo
from fusefn import keys as K
from fusefn import nd
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.core import record
from fusefn.data.ops._base import fail, get, keys_tuple
from fusefn.errors import ConfigError, SampleError

__all__ = ["Orient", "Resample", "ResampleLike", "CropForeground", "DivisiblePad", "Flip", "ToOriginalGrid"]

_IMAGE_KEYS = dict(default=(K.IMAGE,), converter=keys_tuple, validator=v.keys)
_LABEL_KEYS = dict(default=(), converter=keys_tuple, validator=v.keys)
_AFFINE_KEY = dict(default=K.AFFINE, validator=v.key)
_MODE = dict(default="linear", validator=v.in_(geo.MODES))


def _some_keys(op) -> None:
    if not op.keys and not op.label_keys:
        raise ConfigError(f"{type(op).__name__}.keys and {type(op).__name__}.label_keys are both empty")


def _affine(op, sample, key: str) -> np.ndarray:
    value = get(sample, op, key)
    a = np.asarray(value.detach().cpu() if is_tensor(value) else value, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise fail(sample, op, key, f"a volume's affine is a finite 4×4 matrix, got shape {a.shape}")
    return a


def _volume_grid(op, sample) -> tuple[np.ndarray, tuple]:
    """The affine at ``op.affine_key`` and the spatial shape every array of ``op`` shares."""
    affine = _affine(op, sample, op.affine_key)
    shapes = {}
    for key in (*op.keys, *op.label_keys):
        x = get(sample, op, key)
        if getattr(x, "ndim", 0) < 4:
            raise fail(
                sample, op, key, f"array of shape {tuple(getattr(x, 'shape', ()))} is not a C×D×H×W volume "
                "(a 2D image has no place in a 3D grid op)",
            )  # fmt: skip
        shapes[key] = tuple(int(s) for s in x.shape[-3:])
    if len(set(shapes.values())) > 1:
        raise fail(sample, op, None, f"keys have different spatial shapes, so they cannot share one affine: {shapes}")
    return affine, next(iter(shapes.values()))


def _move(op, sample, affine, target_affine, target_shape, *, mode: str, fill=0.0, label_fill=0, antialias=False):
    """Every key of ``op`` resampled onto the target grid, and the target affine written."""
    updates = {}
    for key, m, f in [(k, mode, fill) for k in op.keys] + [(k, "nearest", label_fill) for k in op.label_keys]:
        x = get(sample, op, key)
        try:
            updates[key] = geo.resample_to_grid(
                x, affine, target_affine, target_shape, mode=m, fill=f, antialias=antialias and m != "nearest"
            )
        except SampleError:
            raise
        except Exception as exc:
            raise fail(sample, op, key, f"{type(exc).__name__}: {exc}") from exc
    updates[op.affine_key] = np.asarray(target_affine, dtype=np.float64)
    return nd.assoc_many(sample, updates)


def _axcodes(instance, attribute, value) -> None:
    try:
        geo._parse_codes(value, 3)
    except (ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{type(instance).__name__}.{attribute.name}: {exc}, got {value!r}") from None


@record
class Orient:
    """Reorder and flip the voxel axes so they run towards ``axcodes`` (``"RAS"``: nibabel's, ``"LPS"``: DICOM's).

    Exact (no interpolation); the world position of every voxel is kept.
    """

    axcodes: str = attrs.field(default="RAS", validator=_axcodes)
    keys: tuple = attrs.field(**_IMAGE_KEYS)
    label_keys: tuple = attrs.field(**_LABEL_KEYS)
    affine_key: str = attrs.field(**_AFFINE_KEY)

    def __attrs_post_init__(self):
        _some_keys(self)

    def __call__(self, sample: Mapping) -> dict:
        affine, shape = _volume_grid(self, sample)
        try:
            perm, _, target = geo.orientation_transform(affine, shape, self.axcodes)
        except ValueError as exc:
            raise fail(sample, self, self.affine_key, str(exc)) from None
        return _move(self, sample, affine, target, tuple(shape[p] for p in perm), mode="nearest")


def _spacing_triple(value) -> tuple:
    return (value,) * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else tuple(value)


def _spacing(instance, attribute, value) -> None:
    ok = isinstance(value, tuple) and len(value) == 3
    ok = ok and all(s is None or (isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0) for s in value)
    if not ok:
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must be 3 spacings in mm, each > 0 or None, got {value!r}"
        )


@record
class Resample:
    """Resample to ``spacing`` mm along each voxel axis (one number: isotropic; ``None`` keeps an axis), over the same
    field of view.

    The new grid is :func:`fusefn.affine.resampled_affine`'s: the outer face of the first voxel stays, each axis
    gets ``round(n · old / new)`` voxels. Images are interpolated with ``mode``; ``label_keys`` take the nearest
    source voxel. ``antialias`` blurs the images first along each axis that shrinks by ``f > 1``, with a Gaussian
    of ``sigma = (f - 1) / 2`` source voxels (scikit-image's rule; MONAI's ``Spacingd`` does not blur).
    Orient first: then the voxel axes are the world axes and the resampling is separable (fast, exact affine).
    """

    spacing: tuple = attrs.field(converter=_spacing_triple, validator=_spacing)
    keys: tuple = attrs.field(**_IMAGE_KEYS)
    label_keys: tuple = attrs.field(**_LABEL_KEYS)
    affine_key: str = attrs.field(**_AFFINE_KEY)
    mode: str = attrs.field(**_MODE)
    antialias: bool = False
    fill: float = 0.0

    def __attrs_post_init__(self):
        _some_keys(self)

    def __call__(self, sample: Mapping) -> dict:
        affine, shape = _volume_grid(self, sample)
        target, target_shape = geo.resampled_affine(affine, shape, self.spacing)
        return _move(
            self, sample, affine, target, target_shape, mode=self.mode, fill=self.fill, antialias=self.antialias
        )


@record
class ResampleLike:
    """Put ``keys``/``label_keys`` (on the grid of ``affine_key``) onto another array's grid, e.g. a mask onto its image.

    The target grid is ``like_affine_key`` with the spatial shape of the array at ``like_key``, or the shape
    stored at ``like_shape_key`` when that is given. ``affine_key`` is set to the target affine afterwards.
    """

    affine_key: str = attrs.field(validator=v.key)
    keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    label_keys: tuple = attrs.field(default=(K.MASK,), converter=keys_tuple, validator=v.keys)
    like_key: str = attrs.field(default=K.IMAGE, validator=v.key)
    like_affine_key: str = attrs.field(default=K.AFFINE, validator=v.key)
    like_shape_key: str | None = attrs.field(default=None, validator=v.optional(v.key))
    mode: str = attrs.field(**_MODE)
    fill: float = 0.0

    def __attrs_post_init__(self):
        _some_keys(self)

    def __call__(self, sample: Mapping) -> dict:
        affine, _ = _volume_grid(self, sample)
        target = _affine(self, sample, self.like_affine_key)
        if self.like_shape_key is not None:
            shape = tuple(int(s) for s in np.asarray(get(sample, self, self.like_shape_key)).reshape(-1))
        else:
            shape = tuple(int(s) for s in getattr(get(sample, self, self.like_key), "shape", ())[-3:])
        if len(shape) != 3:
            raise fail(sample, self, self.like_shape_key or self.like_key, f"not a 3D grid shape: {shape}")
        return _move(self, sample, affine, target, shape, mode=self.mode, fill=self.fill)


@record
class ToOriginalGrid:
    """Map ``keys`` (probabilities: ``mode``) and ``label_keys`` (masks: nearest) back onto the grid read from disk.

    The inverse of any chain of grid ops (:func:`fusefn.affine.to_original_grid`): the target is the affine at
    ``original_affine_key`` and the shape at ``original_shape_key``, which the readers write. Exact where only
    orient, crop, pad and flip ran; a resampled label map comes back by nearest neighbour.
    """

    keys: tuple = attrs.field(**_IMAGE_KEYS)
    label_keys: tuple = attrs.field(**_LABEL_KEYS)
    affine_key: str = attrs.field(**_AFFINE_KEY)
    original_affine_key: str = attrs.field(default=K.ORIGINAL_AFFINE, validator=v.key)
    original_shape_key: str = attrs.field(default=K.ORIGINAL_SHAPE, validator=v.key)
    mode: str = attrs.field(**_MODE)
    fill: float = 0.0

    def __attrs_post_init__(self):
        _some_keys(self)

    def __call__(self, sample: Mapping) -> dict:
        affine, _ = _volume_grid(self, sample)
        target = _affine(self, sample, self.original_affine_key)
        shape = tuple(int(s) for s in np.asarray(get(sample, self, self.original_shape_key)).reshape(-1)[-3:])
        if len(shape) != 3:
            raise fail(sample, self, self.original_shape_key, f"not a 3D grid shape: {shape}")
        return _move(self, sample, affine, target, shape, mode=self.mode, fill=self.fill)


def _triple(value) -> tuple:
    return (value,) * 3 if isinstance(value, int) and not isinstance(value, bool) else tuple(value)


def _non_negative_triple(instance, attribute, value) -> None:
    if len(value) != 3 or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in value):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be an int >= 0 or 3 of them, got {value!r}")


def _positive_triple(instance, attribute, value) -> None:
    if len(value) != 3 or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in value):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be an int >= 1 or 3 of them, got {value!r}")


@record
class CropForeground:
    """Crop every key to the bounding box of the foreground of ``source_key``, plus ``margin`` voxels.

    The foreground is where any channel of the source is ``> threshold``, or, with ``labels``, holds one of
    those values. The box is clipped to the volume; a source with no foreground leaves the sample as it is.
    """

    source_key: str = attrs.field(default=K.IMAGE, validator=v.key)
    threshold: float = 0.0
    labels: tuple | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    margin: tuple = attrs.field(default=0, converter=_triple, validator=_non_negative_triple)
    keys: tuple = attrs.field(**_IMAGE_KEYS)
    label_keys: tuple = attrs.field(**_LABEL_KEYS)
    affine_key: str = attrs.field(**_AFFINE_KEY)

    def __attrs_post_init__(self):
        _some_keys(self)
        if self.labels is not None and not self.labels:
            raise ConfigError("CropForeground.labels must name at least one label value, or be None")

    def box(self, sample: Mapping) -> tuple[tuple, tuple] | None:
        """``(start, stop)`` voxel corners of the crop, or None when the source has no foreground."""
        src = get(sample, self, self.source_key)
        arr = src.detach().cpu().numpy() if is_tensor(src) else np.asarray(src)
        if arr.ndim < 3:
            raise fail(sample, self, self.source_key, f"array of shape {arr.shape} is not a volume")
        arr = arr.reshape(-1, *arr.shape[-3:])
        fg = np.isin(arr, self.labels) if self.labels is not None else arr > self.threshold
        fg = fg.any(axis=0)
        if not fg.any():
            return None
        start, stop = [], []
        for ax in range(3):
            hit = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != ax)))
            start.append(max(0, int(hit[0]) - self.margin[ax]))
            stop.append(min(fg.shape[ax], int(hit[-1]) + 1 + self.margin[ax]))
        return tuple(start), tuple(stop)

    def __call__(self, sample: Mapping) -> dict:
        affine, shape = _volume_grid(self, sample)
        box = self.box(sample)
        if box is None:
            return dict(sample)
        start, stop = box
        if tuple(get(sample, self, self.source_key).shape[-3:]) != shape:
            raise fail(sample, self, self.source_key, "the source is not on the grid of the keys it crops")
        size = tuple(b - a for a, b in zip(start, stop))
        return _move(self, sample, affine, geo.crop_affine(affine, start), size, mode="nearest")


@record
class DivisiblePad:
    """Pad the spatial axes up to the next multiple of ``k`` (images with ``value``, labels with 0).

    ``center`` splits the padding between both ends (the extra voxel at the end), else it all goes at the end.
    """

    k: tuple = attrs.field(default=16, converter=_triple, validator=_positive_triple)
    value: float = 0.0
    center: bool = True
    keys: tuple = attrs.field(**_IMAGE_KEYS)
    label_keys: tuple = attrs.field(**_LABEL_KEYS)
    affine_key: str = attrs.field(**_AFFINE_KEY)

    def __attrs_post_init__(self):
        _some_keys(self)

    def __call__(self, sample: Mapping) -> dict:
        affine, shape = _volume_grid(self, sample)
        target_shape = tuple(-(-s // k) * k for s, k in zip(shape, self.k))
        before = tuple((t - s) // 2 if self.center else 0 for s, t in zip(shape, target_shape))
        target = geo.crop_affine(affine, tuple(-b for b in before))
        return _move(self, sample, affine, target, target_shape, mode="nearest", fill=self.value)


def _axes_tuple(value) -> tuple:
    return (value,) if isinstance(value, int) else tuple(value)


def _axes(instance, attribute, value) -> None:
    if not value or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < 3 for a in value):
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must be spatial axes among 0, 1, 2, got {value!r}"
        )


@record
class Flip:
    """Reverse the voxel order along spatial ``axes`` (0, 1, 2 = D, H, W); exact, the affine follows."""

    axes: tuple = attrs.field(default=(0,), converter=_axes_tuple, validator=_axes)
    keys: tuple = attrs.field(**_IMAGE_KEYS)
    label_keys: tuple = attrs.field(**_LABEL_KEYS)
    affine_key: str = attrs.field(**_AFFINE_KEY)

    def __attrs_post_init__(self):
        _some_keys(self)

    def __call__(self, sample: Mapping) -> dict:
        affine, shape = _volume_grid(self, sample)
        t = np.eye(4)
        for a in set(self.axes):
            t[a, a], t[a, 3] = -1.0, shape[a] - 1
        return _move(self, sample, affine, affine @ t, shape, mode="nearest")
