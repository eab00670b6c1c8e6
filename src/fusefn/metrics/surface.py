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

Speed: every class is computed on the bounding box of prediction ∪ reference (found on 8-byte
words, no boolean copy of the volume), each surface once, and the distances with KD-trees over
surface voxel coordinates (exact; on these sparse point sets faster than a distance transform of
the box); voxels on both surfaces are at distance 0 and are not searched for, and voxels beyond
the other mask's box are searched among that mask's outermost voxels only (see ``_directed``).

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
    "box_distances",
    "class_masks",
    "hd95",
    "nsd",
    "surface_distances",
    "union_box",
]


def _tight_box(a: np.ndarray) -> list[tuple[int, int]] | None:
    """``(first, last + 1)`` of the non-zero entries of ``a`` along each axis; None if there are none."""
    if a.ndim >= 2 and a.flags.c_contiguous and a.size and (a.shape[-1] * a.itemsize) % 8 == 0:
        # the leading axes reduce over 8-byte words (a word is non-zero iff one of its elements is): one
        # OR-pass over the slab kept so far, no boolean copy of the array
        words = a.view(np.uint64)
        out = []
        for _ in range(a.ndim - 1):
            idx = np.flatnonzero(np.bitwise_or.reduce(words.reshape(words.shape[0], -1), axis=1))
            if idx.size == 0:
                return None
            out.append((int(idx[0]), int(idx[-1]) + 1))
            words = np.bitwise_or.reduce(words[out[-1][0] : out[-1][1]], axis=0)
        last = np.flatnonzero(words.view(np.uint8).reshape(a.shape[-1], a.itemsize).any(axis=1))
        return [*out, (int(last[0]), int(last[-1]) + 1)]
    out = []
    for ax in range(a.ndim):
        proj = a.any(axis=tuple(x for x in range(a.ndim) if x != ax)) if a.ndim > 1 else a
        idx = np.flatnonzero(proj)
        if idx.size == 0:
            return None
        out.append((int(idx[0]), int(idx[-1]) + 1))
        # later axes are reduced over the slab kept so far only
        a = a[(slice(None),) * ax + (slice(*out[-1]),)]
    return out


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every true (non-zero) voxel of ``mask``, grown by ``margin`` (clipped);
    None if there is none.

    >>> m = np.zeros((4, 5), bool); m[1, 2] = m[2, 3] = True
    >>> bounding_box(m, margin=0)
    (slice(1, 3, None), slice(2, 4, None))
    """
    mask = np.asarray(mask)
    if mask.ndim > 1 and mask.flags.f_contiguous and not mask.flags.c_contiguous:  # NIfTI's column-major arrays
        box = bounding_box(mask.T, margin)
        return None if box is None else box[::-1]
    tight = _tight_box(mask)
    if tight is None:
        return None
    return tuple(slice(max(lo - margin, 0), min(hi + margin, n)) for (lo, hi), n in zip(tight, mask.shape))


def union_box(*arrays: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The box of the non-zero voxels of any of ``arrays`` (one shape), grown by ``margin``; None if there is none.

    The hull of each array's own box: no array of their union is made.

    >>> a = np.zeros((4, 5), bool); a[1, 1] = True
    >>> b = np.zeros((4, 5), np.uint8); b[2, 3] = 7
    >>> union_box(a, b)
    (slice(1, 3, None), slice(1, 4, None))
    """
    boxes = [b for b in (bounding_box(a, margin=0) for a in arrays) if b is not None]
    if not boxes:
        return None
    return tuple(
        slice(max(min(b[ax].start for b in boxes) - margin, 0), min(max(b[ax].stop for b in boxes) + margin, n))
        for ax, n in enumerate(arrays[0].shape)
    )


def border(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a boolean mask: those a 1-connectivity erosion removes (outside = background).

    Equal to ``mask ^ scipy.ndimage.binary_erosion(mask)``, what MONAI's ``get_mask_edges`` computes.

    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> int(border(m).sum())
    8
    """
    mask = np.asarray(mask, dtype=bool)
    inner = np.array(mask, order="C")  # eroded in place: no padded copy
    every = (slice(None),) * mask.ndim
    for ax in range(mask.ndim):
        head, tail = every[:ax], every[ax + 1 :]
        inner[(*head, slice(1, None), *tail)] &= mask[(*head, slice(None, -1), *tail)]
        inner[(*head, slice(None, -1), *tail)] &= mask[(*head, slice(1, None), *tail)]
        inner[(*head, 0, *tail)] = False
        inner[(*head, -1, *tail)] = False
    inner ^= mask  # the eroded voxels all lie in the mask: the rest of it is its surface
    return inner


def _extreme(pts: np.ndarray, ax: int, sign: int, shape: tuple[int, ...]) -> np.ndarray:
    """Which of the voxels ``pts`` (K, ndim) is the last of its line along ``ax`` in direction ``sign`` (booleans)."""
    others = [a for a in range(pts.shape[1]) if a != ax]
    line = (
        np.ravel_multi_index(tuple(pts[:, others].T), tuple(shape[a] for a in others))
        if others
        else np.zeros(len(pts), np.int64)
    )
    order = np.lexsort((pts[:, ax] * sign, line))
    line = line[order]
    last = np.ones(len(pts), bool)
    last[:-1] = line[1:] != line[:-1]
    keep = np.zeros(len(pts), bool)
    keep[order[last]] = True
    return keep


def _directed(src, on_dst: np.ndarray, dst, shape: tuple[int, ...], scale: np.ndarray, workers: int) -> np.ndarray:
    """Distances in mm from surface voxels ``src`` to the nearest of ``dst`` (flat indices into ``shape``).

    ``on_dst``: the ``src`` voxels on both surfaces, at distance 0 and not searched for.

    A voxel ``q`` beyond the box of the other mask ``M`` along axis ``a`` (say above it) is outside
    ``M``, so its nearest surface voxel is its nearest voxel of ``M`` (from an interior voxel a step
    towards ``q`` comes closer), and that voxel is the top one of its line along ``a`` (any voxel of
    ``M`` above it in that line would be closer). So such voxels are searched among those line ends
    only, one set per side of the box (ends along every axis it lies beyond): the same nearest
    voxel, found among far fewer (a false positive far from the reference costs a fraction).
    """
    from scipy.spatial import cKDTree

    out = np.zeros(src.size)
    far = ~on_dst
    if not far.any():
        return out
    q = np.stack(np.unravel_index(src[far], shape), axis=1)
    d = np.stack(np.unravel_index(dst, shape), axis=1)
    side = (q > d.max(axis=0)).astype(np.int64) - (q < d.min(axis=0))  # per axis: beyond above, within, below
    code = (side + 1) @ (3 ** np.arange(len(shape)))
    found = np.empty(len(q))
    ends: dict = {}
    for c in np.unique(code):
        sel = code == c
        keep = np.ones(len(d), bool)
        for ax, s in enumerate((c // 3 ** np.arange(len(shape))) % 3 - 1):
            if s:
                if (ax, s) not in ends:
                    ends[ax, s] = _extreme(d, ax, int(s), shape)
                keep &= ends[ax, s]
        # sliding-midpoint splits and uncompacted nodes query far points several times faster on these
        # grid-aligned surfaces
        tree = cKDTree(d[keep] * scale, leafsize=32, balanced_tree=False, compact_nodes=False)
        found[sel] = tree.query(q[sel] * scale, k=1, workers=workers)[0]
    out[far] = found
    return out


def box_distances(pred: np.ndarray, ref: np.ndarray, scale, *, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`surface_distances` of two boolean masks of one shape (e.g. both cropped to a box holding both).

    ``scale``: mm per voxel axis. Unchecked: what :func:`surface_distances` and
    :func:`~fusefn.metrics.segmentation.case_scores` call once they hold the box.

    >>> a = np.zeros((4, 4), bool); a[1:3, 1:3] = True
    >>> [d.tolist() for d in box_distances(a, np.roll(a, 1, axis=1), (1.0, 2.0))]
    [[2.0, 0.0, 2.0, 0.0], [0.0, 2.0, 0.0, 2.0]]
    """
    scale = np.asarray(scale, dtype=np.float64)
    bp, br = border(pred), border(ref)
    fp, fr = np.flatnonzero(bp), np.flatnonzero(br)
    if not fp.size or not fr.size:
        return np.full(fp.size, np.inf), np.full(fr.size, np.inf)
    # voxels on both surfaces are at distance 0: a look-up in the other border, no search
    p_on_r, r_on_p = br.reshape(-1)[fp], bp.reshape(-1)[fr]
    return (
        _directed(fp, p_on_r, fr, bp.shape, scale, workers),
        _directed(fr, r_on_p, fp, bp.shape, scale, workers),
    )


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None, *, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``(pred → ref, ref → pred)``: the distance in mm from each surface voxel of one mask to the other's surface.

    Both empty: two empty arrays. One empty: the non-empty surface's voxels all at ``inf`` (and
    an empty array for the empty one's), as MONAI's ``get_surface_distance``. ``workers``: threads
    of the nearest-surface searches (``-1``: every core).
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {ref.shape}")
    scale = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if scale.shape != (pred.ndim,):
        raise ValueError(f"spacing {tuple(scale)} does not give one value per axis of a {pred.ndim}D mask")
    # the erosion is local and outside counts as background: the box of both masks gives the same surfaces
    box = union_box(pred, ref)
    if box is None:
        return np.zeros(0), np.zeros(0)
    return box_distances(pred[box], ref[box], scale, workers=workers)


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
