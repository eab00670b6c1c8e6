"""Surface-distance metrics of segmentations in millimetres: HD95, ASSD, normalised surface Dice, per class.

Definitions follow MONAI 1.6.1 (``HausdorffDistanceMetric``, ``SurfaceDistanceMetric(symmetric=True)``,
``SurfaceDiceMetric`` with ``use_subvoxels=False``) so values agree with it:

* the **surface** of a mask is its voxels that a binary erosion (6-neighbourhood in 3D, 4 in 2D,
  outside the array counted as background) removes;
* the **surface distances** are, for each surface voxel of one mask, the Euclidean distance in mm
  (voxel index × spacing) to the nearest surface voxel of the other, in both directions;
* **HD95**: the larger of the two directed 95th percentiles (linear interpolation, in float32 as MONAI);
  **ASSD**: the mean of both directions' distances pooled; **NSD** at τ mm: the fraction of all
  surface voxels (both masks) within τ of the other surface. Distances are rounded to float32
  before the τ test, as MONAI does, so a distance equal to τ up to rounding counts as within.

Empty masks, as MONAI: both empty → HD95, ASSD and NSD are NaN; one empty → ASSD is ``inf`` and
NSD 0; HD95 is ``inf`` too (MONAI's percentile interpolates between infinities there and says NaN). :func:`fusefn.analyze.segmentation.evaluate_segmentations` documents how a report
treats these.

Speed: every class is computed on the bounding box of prediction ∪ reference (+1 voxel), each
surface once, and the distances with one KD-tree per surface over its voxel coordinates (exact;
on these sparse point sets faster than a distance transform of the box); voxels on both surfaces
are at distance 0 and are not queried.

>>> import numpy as np
>>> ref = np.zeros((8, 8), bool); ref[2:5, 2:5] = True
>>> pred = np.zeros((8, 8), bool); pred[2:5, 3:6] = True
>>> d = surface_distances(pred, ref, spacing=(1.0, 0.5))
>>> round(hd95(d), 4), round(assd(d), 4), round(nsd(d, 0.4), 4)
(0.5, 0.25, 0.5)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from fusefn import validators as v
from fusefn.affine import spacing as affine_spacing
from fusefn.core import record
from fusefn.errors import ConfigError, SampleError
from fusefn.metrics._base import MetricBase, key_field, key_name, read, sample_ids, undefined, validate_key

__all__ = [
    "ASSD",
    "SurfaceDice",
    "assd",
    "border",
    "bounding_box",
    "class_masks",
    "hd95",
    "nsd",
    "surface_distances",
]


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every true voxel of ``mask``, grown by ``margin`` (clipped); None if empty.

    >>> m = np.zeros((4, 5), bool); m[1, 2] = m[2, 3] = True
    >>> bounding_box(m, margin=0)
    (slice(1, 3, None), slice(2, 4, None))
    """
    if mask.ndim > 1 and mask.flags.f_contiguous and not mask.flags.c_contiguous:  # NIfTI's column-major arrays
        box = bounding_box(mask.T, margin)
        return None if box is None else box[::-1]
    box = []
    for ax in range(mask.ndim):
        if ax == 0 and mask.flags.c_contiguous:  # the leading axis of a C-ordered array reduces without a copy
            proj = mask.reshape(mask.shape[0], -1).any(axis=1)
        else:
            proj = mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax))
        idx = np.flatnonzero(proj)
        if idx.size == 0:
            return None
        sl = slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[ax]))
        box.append(sl)
        # later axes are reduced over the slab kept so far only
        mask = mask[(slice(None),) * ax + (slice(max(int(idx[0]), 0), int(idx[-1]) + 1),)]
    return tuple(box)


def border(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a boolean mask: those a 1-connectivity erosion removes (outside = background).

    Equal to ``mask ^ scipy.ndimage.binary_erosion(mask)``, what MONAI's ``get_mask_edges`` computes.

    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> int(border(m).sum())
    8
    """
    mask = np.asarray(mask, dtype=bool)
    pad = np.pad(mask, 1)
    inner = mask.copy()
    center = (slice(1, -1),) * mask.ndim
    for ax in range(mask.ndim):
        for shift in (slice(0, -2), slice(2, None)):
            sl = list(center)
            sl[ax] = shift
            inner &= pad[tuple(sl)]
    return mask & ~inner


def _surface_points(mask: np.ndarray) -> np.ndarray:
    """Voxel indices (K, ndim) of the surface of ``mask``, found on the mask's own bounding box."""
    b = bounding_box(mask, margin=0)
    if b is None:
        return np.zeros((0, mask.ndim), dtype=np.int64)
    return np.argwhere(border(mask[b])) + np.array([x.start for x in b])


def _directed(src: np.ndarray, on_dst: np.ndarray, scale: np.ndarray, tree) -> np.ndarray:
    """Distances from the surface points ``src`` to the surface in ``tree``; ``on_dst``: points on both (0)."""
    out = np.zeros(len(src))
    far = ~on_dst
    if far.any():
        out[far] = tree.query(src[far] * scale, k=1)[0]
    return out


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None):
    """``(pred → ref, ref → pred)``: the distance in mm from each surface voxel of one mask to the other's surface.

    Both empty: two empty arrays. One empty: the non-empty surface's voxels all at ``inf`` (and
    an empty array for the empty one's), as MONAI's ``get_surface_distance``.
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {ref.shape}")
    scale = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if scale.shape != (pred.ndim,):
        raise ValueError(f"spacing {tuple(scale)} does not give one value per axis of a {pred.ndim}D mask")
    # each surface on its own box (the erosion is local): no array the size of both boxes is made
    pp, pr = _surface_points(pred), _surface_points(ref)
    if not len(pp) or not len(pr):
        return np.full(len(pp), np.inf), np.full(len(pr), np.inf)
    from scipy.spatial import cKDTree

    # voxels on both surfaces are at distance 0: only the others are queried (flat indices are sorted)
    fp, fr = np.ravel_multi_index(pp.T, pred.shape), np.ravel_multi_index(pr.T, pred.shape)
    p_on_r, r_on_p = np.isin(fp, fr, assume_unique=True), np.isin(fr, fp, assume_unique=True)
    # one tree per surface, each queried once; sliding-midpoint splits and uncompacted nodes query far
    # points (a false positive far from the reference) several times faster on these grid-aligned surfaces
    opts = {"leafsize": 32, "balanced_tree": False, "compact_nodes": False}
    tree_r, tree_p = cKDTree(pr * scale, **opts), cKDTree(pp * scale, **opts)
    return _directed(pp, p_on_r, scale, tree_r), _directed(pr, r_on_p, scale, tree_p)


def _quantile32(d: np.ndarray, q: float) -> float:
    """``torch.quantile(d.float(), q)`` (linear interpolation, float32 arithmetic), as MONAI takes its percentile.

    float32 because MONAI's distances and its interpolation are: the rank ``q (n - 1)`` rounded to
    float32 moves the result by up to ~1e-6 relative, which an exact float64 percentile would not match.
    """
    if np.isinf(d).any():  # a surface facing an empty mask
        return float("inf")
    d = np.sort(d.astype(np.float32))
    rank = np.float32(q) * np.float32(d.size - 1)
    lo = int(rank)
    hi = min(lo + 1, d.size - 1) if rank > lo else lo
    w = np.float32(rank - np.float32(lo))
    a, b = d[lo], d[hi]
    # torch's lerp: from the nearer end, so weight 1 gives ``b`` exactly
    return float(a + w * (b - a) if w < 0.5 else b - (b - a) * (np.float32(1) - w))


def hd95(distances, percentile: float = 95.0) -> float:
    """The symmetric ``percentile``-th Hausdorff distance from :func:`surface_distances`' pair (NaN if both empty)."""
    vals = [_quantile32(d, percentile / 100) for d in distances if d.size]
    return float(max(vals)) if vals else float("nan")


def assd(distances) -> float:
    """Average symmetric surface distance: the mean of both directions' distances pooled (NaN if both empty)."""
    n = sum(d.size for d in distances)
    return float(sum(d.sum() for d in distances) / n) if n else float("nan")


def nsd(distances, tolerance: float) -> float:
    """Normalised surface Dice: the fraction of both surfaces' voxels within ``tolerance`` mm of the other surface."""
    n = sum(d.size for d in distances)
    if not n:
        return float("nan")
    tol = np.float32(tolerance)
    return float(sum(int((d.astype(np.float32) <= tol).sum()) for d in distances) / n)


def class_masks(labels: np.ndarray, groups: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """One boolean mask per label group (a group's labels are merged into one mask)."""
    labels = np.asarray(labels)
    hi = max(max(g) for g in groups)
    if labels.dtype.kind in "ub" or (labels.dtype.kind == "i" and labels.min(initial=0) >= 0):
        # one lookup table per group: a pass of small integers instead of one comparison per label
        top = max(hi, int(labels.max(initial=0))) + 1
        out = []
        for g in groups:
            lut = np.zeros(top, dtype=bool)
            lut[list(g)] = True
            out.append(lut[labels])
        return out
    return [np.isin(labels, g) for g in groups]


# ---------------------------------------------------------------------------- reducers


def _classes(value):
    if value is None:
        return None
    return tuple(v if isinstance(v, int) else tuple(int(x) for x in v) for v in value)


def _label_group(instance, attribute, value):
    """One label (an int >= 0) or a non-empty tuple of them, scored as one mask."""
    group = (value,) if isinstance(value, int) else value
    if not group or any(x < 0 for x in group):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} has a bad entry {value!r}")


check_classes = v.and_(v.min_len(1), v.deep_iterable(_label_group))


def _spacing(value):
    return None if value is None else tuple(float(s) for s in value)


class PerVolume(MetricBase):
    """A per-volume, per-class value (state ``(V, K)``) averaged over volumes; NaN and ``inf`` are left out.

    A subclass defines ``_volume(pred_mask, target_mask, geometry) -> float`` (geometry: what
    ``_geometry`` gives per volume, the spacing by default) and names its state column ``_column``.
    """

    __slots__ = ()
    _column = "value"

    def names(self) -> list[str]:
        if self.class_names:
            if len(self.class_names) != len(self.classes):
                raise ConfigError(f"class_names has {len(self.class_names)} names for {len(self.classes)} classes")
            return list(self.class_names)
        return ["+".join(map(str, (c,) if isinstance(c, int) else c)) for c in self.classes]

    def groups(self) -> list[tuple[int, ...]]:
        return [(c,) if isinstance(c, int) else c for c in self.classes]

    def init(self) -> np.ndarray:
        return np.zeros((0, len(self.classes)))

    def _geometry(self, batch: Mapping, n: int) -> list:
        if self.affine is None:
            return [self.spacing] * n
        aff = read(batch, self.affine)
        if aff.ndim == 2:
            aff = np.broadcast_to(aff, (n, *aff.shape))
        if aff.shape[0] != n:
            raise SampleError(f"{aff.shape[0]} affines for {n} volumes", key=key_name(self.affine))
        return [affine_spacing(a) for a in aff]

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        pk = key_name(self.pred)
        pred, target = read(batch, self.pred), read(batch, self.target)
        if pred.shape != target.shape or pred.dtype.kind not in "iub" or target.dtype.kind not in "iub":
            raise SampleError(f"needs integer label maps of equal shape, got {pred.shape} and {target.shape}", key=pk)
        ids = sample_ids(batch, pred.shape[0])
        rows = []
        for i, (p, t, sp) in enumerate(zip(pred, target, self._geometry(batch, pred.shape[0]))):
            try:
                rows.append(
                    [
                        self._volume(pm, tm, sp)
                        for pm, tm in zip(class_masks(p, self.groups()), class_masks(t, self.groups()))
                    ]
                )
            except ValueError as e:
                raise SampleError(str(e), sample_id=ids[i] if ids else None, key=pk) from None
        return {self._column: np.array(rows, dtype=np.float64).reshape(-1, len(self.classes))}

    def accumulate(self, state: np.ndarray, cols: Mapping) -> np.ndarray:
        return np.concatenate([state, cols[self._column]])

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b])

    def compute(self, state: np.ndarray) -> dict:
        out = {}
        for name, col in zip(self.names(), state.T):
            ok = np.isfinite(col)
            out[name] = (
                float(col[ok].mean())
                if ok.any()
                else undefined(f"{type(self).__name__} of {name!r}: no volume has a finite value (empty masks)")
            )
        vals = [x for x in out.values() if not np.isnan(x)]
        out["mean"] = float(np.mean(vals)) if vals else float("nan")
        return out

    def resampled(self, cols: Mapping, counts: np.ndarray) -> dict:
        w = counts.astype(np.float64)
        out = {}
        for name, col in zip(self.names(), cols[self._column].T):
            ok = np.isfinite(col)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = (w @ np.where(ok, col, 0.0)) / (w @ ok)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["mean"] = np.nanmean(np.stack(list(out.values())), axis=0)
        return out


_FIELDS = """
    Args:
        pred, target: integer label maps (N, *spatial) of equal shape.
        classes: labels to score; an entry may be a tuple of labels scored as one mask.
        class_names: names of ``classes`` in the result.
        spacing: voxel spacing in mm, one value per spatial axis (default 1).
        affine: key of the volumes' 4×4 affines (N, 4, 4) or one shared (4, 4); spacing = the
            column norms of its linear part. Overrides ``spacing``.

    Volumes where the value is NaN or ``inf`` (an empty mask) are left out of the average.
"""


@record
class _SurfaceRecord(PerVolume):
    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    classes: tuple = attrs.field(converter=_classes, validator=check_classes)
    class_names: tuple | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    spacing: tuple | None = attrs.field(default=None, converter=_spacing)
    affine: str | None = attrs.field(default=None, validator=v.optional(v.key))


@record
class ASSD(_SurfaceRecord):
    __doc__ = (
        "Average symmetric surface distance (mm) per class, per volume then averaged (MONAI's "
        "``SurfaceDistanceMetric(symmetric=True)``).\n" + _FIELDS
    )
    _column = "assd"

    def _volume(self, p, t, sp):
        return assd(surface_distances(p, t, sp))


@record
class SurfaceDice(_SurfaceRecord):
    __doc__ = (
        "Normalised surface Dice at ``tolerance`` mm per class, per volume then averaged (MONAI's "
        "``SurfaceDiceMetric``).\n" + _FIELDS + "        tolerance: τ in mm.\n"
    )
    tolerance: float = attrs.field(default=1.0, validator=v.ge(0))
    _column = "nsd"

    def _volume(self, p, t, sp):
        return nsd(surface_distances(p, t, sp), self.tolerance)
