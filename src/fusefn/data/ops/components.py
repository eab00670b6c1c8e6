"""Post-processing of a label map by connected components, per class: keep the largest, fill holes, drop small ones.

Each op reads the integer label map at ``key`` (a NumPy array or a tensor, handed back as it came;
0 is background), treats every class in ``classes`` (default: every non-zero value present) on its
own, and writes the map back. Components are found by :func:`scipy.ndimage.label`; ``connectivity``
is scipy's rank (1: neighbours share a face, the 6-neighbourhood in 3D; up to the number of spatial
axes: share a corner, the 26-neighbourhood). ``spatial_dims`` says how many trailing axes are
spatial (default: all); leading axes (a channel, a batch) are treated one map at a time.

>>> import numpy as np
>>> m = np.zeros((1, 7), np.uint8)
>>> m[0, [0, 1, 2, 4, 6]] = 1
>>> s = {"data": {"gt": {"mask": m}}}
>>> KeepLargestComponent(key="data.gt.mask")(s)["data"]["gt"]["mask"].tolist()
[[1, 1, 1, 0, 0, 0, 0]]
>>> RemoveSmallComponents(key="data.gt.mask", min_size=2)(s)["data"]["gt"]["mask"].tolist()
[[1, 1, 1, 0, 0, 0, 0]]
>>> ring = np.pad(np.zeros((1, 1), np.uint8), 1, constant_values=2)
>>> FillHoles(key="data.gt.mask")({"data": {"gt": {"mask": ring}}})["data"]["gt"]["mask"].tolist()
[[2, 2, 2], [2, 2, 2], [2, 2, 2]]
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np
from scipy import ndimage

from fusefn import keys, nd
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.core import record
from fusefn.data.ops._base import fail, get
from fusefn.errors import ConfigError

__all__ = ["KeepLargestComponent", "FillHoles", "RemoveSmallComponents"]

_UNITS = ("voxels", "mm3")


def _classes(value):
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(c) for c in value)


def _check_classes(instance, attribute, value):
    if value is not None and (not value or any(c <= 0 for c in value)):
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must be None or positive class values "
            f"(0 is background), got {value!r}"
        )


_CLASSES = dict(default=None, converter=_classes, validator=_check_classes)
_CONNECTIVITY = dict(default=None, validator=v.optional(v.positive_int))
_SPATIAL = dict(default=None, validator=v.optional(v.positive_int))


def _label_map(op, sample: Mapping):
    """``(array, was_tensor)`` of the integer map at ``op.key``, or an error naming sample/op/key."""
    value = get(sample, op, op.key)
    was_tensor = is_tensor(value)
    arr = value.detach().cpu().numpy() if was_tensor else np.asarray(value)
    if arr.dtype.kind not in "biu":
        raise fail(sample, op, op.key, f"a label map holds integers, got dtype {arr.dtype}")
    n = op.spatial_dims or arr.ndim
    if arr.ndim < n or n < 1:
        raise fail(sample, op, op.key, f"{n} spatial axes asked of a label map of shape {arr.shape}")
    conn = op.connectivity if op.connectivity is not None else op._default_connectivity(n)
    if conn > n:
        raise fail(sample, op, op.key, f"connectivity {conn} exceeds the {n} spatial axes of shape {arr.shape}")
    return arr, was_tensor, n, ndimage.generate_binary_structure(n, conn)


def _back(sample, key: str, out: np.ndarray, was_tensor: bool) -> dict:
    if was_tensor:
        import torch

        out = torch.from_numpy(out)
    return nd.assoc(sample, key, out)


def _each_map(arr: np.ndarray, n: int):
    """Views of the spatial maps of ``arr`` (its last ``n`` axes), one per index of the leading axes."""
    for idx in np.ndindex(*arr.shape[: arr.ndim - n]):
        yield arr[idx]


def _present(arr: np.ndarray, classes) -> list[int]:
    if classes is not None:
        return list(classes)
    return [int(c) for c in np.unique(arr) if c != 0]


def _components(mask: np.ndarray, structure) -> tuple[np.ndarray, np.ndarray]:
    """Component labels of ``mask`` and their voxel counts (index 0: outside the mask)."""
    lab, n = ndimage.label(mask, structure=structure)
    return lab, np.bincount(lab.ravel(), minlength=n + 1)


def _bbox(mask: np.ndarray):
    """The bounding box of ``mask`` as slices (labelling inside it is all that is needed), or None if empty."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    return found[0] if found else None


def _det(m: np.ndarray) -> float:
    """The determinant, by the triple product in 2D/3D so axis-aligned spacings multiply exactly (no LU round-off)."""
    if m.shape == (3, 3):
        return float(np.dot(m[:, 0], np.cross(m[:, 1], m[:, 2])))
    if m.shape == (2, 2):
        return float(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])
    return float(np.linalg.det(m))


@record
class KeepLargestComponent:
    """Keep only the largest connected component of each class; the class's other voxels become background.

    A tie keeps the component met first in C order. ``connectivity`` defaults to the number of
    spatial axes (corners connect: 26-neighbourhood in 3D, MONAI's and cc3d's default).
    """

    key: str = attrs.field(default=keys.MASK, validator=v.key)
    classes: tuple | None = attrs.field(**_CLASSES)
    connectivity: int | None = attrs.field(**_CONNECTIVITY)
    spatial_dims: int | None = attrs.field(**_SPATIAL)

    @staticmethod
    def _default_connectivity(n: int) -> int:
        return n

    def __call__(self, sample: Mapping) -> dict:
        arr, was_tensor, n, structure = _label_map(self, sample)
        out = arr.copy()
        for m in _each_map(out, n):
            for c in _present(m, self.classes):
                box = _bbox(m == c)
                if box is None:
                    continue
                sub = m[box]
                lab, counts = _components(sub == c, structure)
                if len(counts) <= 2:
                    continue
                keep = int(np.argmax(counts[1:])) + 1
                sub[(lab != keep) & (lab > 0)] = 0
        return _back(sample, self.key, out, was_tensor)


@record
class FillHoles:
    """Fill the holes of each class: background voxels it encloses become that class.

    A voxel is enclosed by class ``c`` when no path of non-``c`` voxels joins it to the map's border;
    ``connectivity`` is that path's (default 1: through faces, so a diagonal gap does not open a
    hole; the complement of a corner-connected class, as in digital topology). Only background
    voxels are filled: another class inside the hole (a tumour in a kidney) is kept, unlike MONAI's
    ``FillHoles``, which overwrites it. A voxel enclosed by several classes (nested shells) takes
    the last of them in ``classes`` (default order: ascending values): list the inner class last.
    """

    key: str = attrs.field(default=keys.MASK, validator=v.key)
    classes: tuple | None = attrs.field(**_CLASSES)
    connectivity: int | None = attrs.field(**_CONNECTIVITY)
    spatial_dims: int | None = attrs.field(**_SPATIAL)

    @staticmethod
    def _default_connectivity(n: int) -> int:
        return 1

    def __call__(self, sample: Mapping) -> dict:
        arr, was_tensor, n, structure = _label_map(self, sample)
        out = arr.copy()
        for src, m in zip(_each_map(arr, n), _each_map(out, n)):
            for c in _present(src, self.classes):
                # inside the class's bounding box is enough: everything outside it joins the border
                box = _bbox(src == c)
                if box is None:
                    continue
                filled = ndimage.binary_fill_holes(src[box] == c, structure=structure)
                m[box][filled & (src[box] == 0)] = c
        return _back(sample, self.key, out, was_tensor)


@record
class RemoveSmallComponents:
    """Set to background each connected component of a class smaller than ``min_size``.

    ``unit="voxels"`` counts voxels; ``unit="mm3"`` compares the component's volume, its voxel count
    times one voxel's volume (``|det|`` of the 3×3 block of the affine at ``affine_key``, which must
    then be present: a threshold never changes meaning silently). ``connectivity`` defaults to the
    number of spatial axes, as in :class:`KeepLargestComponent`.
    """

    key: str = attrs.field(default=keys.MASK, validator=v.key)
    min_size: float = attrs.field(default=1, validator=v.and_(v.number, v.ge(0)))
    unit: str = attrs.field(default="voxels", validator=v.in_(_UNITS))
    classes: tuple | None = attrs.field(**_CLASSES)
    connectivity: int | None = attrs.field(**_CONNECTIVITY)
    spatial_dims: int | None = attrs.field(**_SPATIAL)
    affine_key: str = attrs.field(default=keys.AFFINE, validator=v.key)

    @staticmethod
    def _default_connectivity(n: int) -> int:
        return n

    def _voxel_volume(self, sample: Mapping, n: int) -> float:
        if self.unit == "voxels":
            return 1.0
        a = get(sample, self, self.affine_key)
        a = a.detach().cpu().numpy() if is_tensor(a) else np.asarray(a, dtype=float)
        if a.shape != (n + 1, n + 1) or not np.isfinite(a).all():
            raise fail(sample, self, self.affine_key, f"expected a finite {n + 1}×{n + 1} affine, got shape {a.shape}")
        vol = abs(_det(a[:n, :n]))
        if vol == 0:
            raise fail(sample, self, self.affine_key, "the affine is singular (a voxel of zero volume)")
        return vol

    def __call__(self, sample: Mapping) -> dict:
        arr, was_tensor, n, structure = _label_map(self, sample)
        voxel = self._voxel_volume(sample, n)
        out = arr.copy()
        for m in _each_map(out, n):
            for c in _present(m, self.classes):
                box = _bbox(m == c)
                if box is None:
                    continue
                sub = m[box]
                lab, counts = _components(sub == c, structure)
                small = counts * voxel < self.min_size
                small[0] = False
                sub[small[lab]] = 0
        return _back(sample, self.key, out, was_tensor)
