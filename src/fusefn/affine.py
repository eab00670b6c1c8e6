"""Voxel-to-world geometry: the affine of a volume, what grid ops do to it, and resampling between grids.

The convention (:data:`fusefn.keys.AFFINE`): a ``(n+1)×(n+1)`` float64 matrix (4×4 for a volume) maps the
voxel index ``(i, j, k, 1)`` of the array's trailing spatial axes, in order, to world millimetres in nibabel's
RAS+ frame: +x towards the patient's Right, +y Anterior, +z Superior (DICOM's LPS+ flips x and y). A voxel's
index is its **centre**; the voxel is the box of half a spacing either side of it. Axis codes name the
direction an axis *runs towards* (``"RAS"`` for the identity, as ``nibabel.aff2axcodes``).

Spacing and orientation are derived from the affine, never stored beside it. Every grid op of
:mod:`fusefn.data.ops.grid` and :mod:`fusefn.data.ops.geometry` keeps the affine exact, so the grid a volume was
read on (its affine and shape) is all that :func:`to_original_grid` needs to map a prediction back: there is no
per-op inverse stack to keep (unlike MONAI's ``applied_operations``), and ops written later invert for free.

>>> import numpy as np
>>> a = np.diag([-0.7, -0.7, 2.5, 1.0])          # LPS voxel axes, 0.7 × 0.7 × 2.5 mm
>>> spacing(a), axcodes(a)
((0.7, 0.7, 2.5), 'LPS')
>>> x = np.arange(24.0).reshape(1, 2, 3, 4)
>>> perm, flips, ras = orientation_transform(a, (2, 3, 4), "RAS")
>>> y = resample_to_grid(x, a, ras, (2, 3, 4))   # a permutation/flip: exact indexing
>>> bool((y == x[:, ::-1, ::-1, :]).all()), axcodes(ras)
(True, 'RAS')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fusefn._grid_kernels import SNAP_TOL, _blur, _cubic, _exact, _general, _linear, _nearest
from fusefn._types import is_tensor

__all__ = [
    "spacing",
    "axcodes",
    "orientation_transform",
    "apply_orientation",
    "voxel_to_world",
    "world_to_voxel",
    "crop_affine",
    "scale_affine",
    "resampled_affine",
    "grid_gap_mm",
    "same_grid",
    "resample_to_grid",
    "to_original_grid",
    "MODES",
    "SNAP_TOL",
]

MODES = ("linear", "nearest", "cubic")
"""Interpolation modes of :func:`resample_to_grid`."""


_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # (negative, positive) end of world x, y, z


def _check(affine) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"an affine is a square (n+1)×(n+1) matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("the affine has non-finite entries")
    return a


def spacing(affine) -> tuple[float, ...]:
    """The voxel size in mm along each voxel axis: the norms of the affine's columns.

    >>> spacing([[0, 0, -2.0, 0], [0, 0.5, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    (3.0, 0.5, 2.0)
    """
    a = _check(affine)
    n = a.shape[0] - 1
    return tuple(float(s) for s in np.linalg.norm(a[:n, :n], axis=0))


def _axis_map(a: np.ndarray) -> tuple[list[int], list[int]]:
    """For each voxel axis, the world axis it runs closest to and the sign (+1 towards R/A/S)."""
    n = a.shape[0] - 1
    cos = a[:n, :n] / np.maximum(np.linalg.norm(a[:n, :n], axis=0), 1e-12)
    if abs(np.linalg.det(cos)) < 1e-6:
        raise ValueError("the affine is singular: its voxel axes do not span the world")
    world = [-1] * n
    free = abs(cos).copy()
    # greedy on the largest direction cosine, as nibabel's io_orientation does for non-oblique grids
    for _ in range(n):
        w, ax = np.unravel_index(np.argmax(free), free.shape)
        world[ax] = int(w)
        free[w, :] = -1
        free[:, ax] = -1
    signs = [1 if cos[world[ax], ax] >= 0 else -1 for ax in range(n)]
    return world, signs


def axcodes(affine) -> str:
    """Which world direction each voxel axis runs towards: e.g. ``"RAS"``, ``"LPS"`` (DICOM's), ``"IPL"``.

    >>> axcodes(np.diag([-1.0, -1.0, 1.0, 1.0]))
    'LPS'
    """
    world, signs = _axis_map(_check(affine))
    return "".join(_LABELS[w][s > 0] for w, s in zip(world, signs))


def _parse_codes(codes: str, n: int) -> tuple[list[int], list[int]]:
    codes = codes.upper()
    world, signs = [], []
    for c in codes:
        hits = [(w, s) for w, pair in enumerate(_LABELS) for s, lab in zip((-1, 1), pair) if lab == c]
        if not hits:
            raise ValueError(f"axis code {c!r} is not one of R, L, A, P, S, I")
        world.append(hits[0][0])
        signs.append(hits[0][1])
    if len(codes) != n or sorted(world) != list(range(n)):
        raise ValueError(f"axcodes {codes!r} must name each of the {n} world axes once (one of R/L, A/P, S/I each)")
    return world, signs


def orientation_transform(affine, shape: Sequence[int], codes: str) -> tuple[tuple, tuple, np.ndarray]:
    """How to reorder and flip a volume's axes so they run towards ``codes``, and the affine after it.

    Returns ``(perm, flips, new_affine)``: the spatial output is ``x.transpose(perm)`` (spatial axes only)
    followed by reversing every output axis ``j`` with ``flips[j]``; ``new_affine`` maps the new indices to the
    same world points, so the operation is exact and reversible.

    >>> perm, flips, new = orientation_transform(np.diag([-1.0, -1.0, 1.0, 1.0]), (4, 5, 6), "RAS")
    >>> perm, flips, new[:3, 3].tolist()
    ((0, 1, 2), (True, True, False), [-3.0, -4.0, 0.0])
    """
    a = _check(affine)
    n = a.shape[0] - 1
    if len(shape) != n:
        raise ValueError(f"shape {tuple(shape)} has {len(shape)} axes, the affine {n}")
    src_world, src_signs = _axis_map(a)
    dst_world, dst_signs = _parse_codes(codes, n)
    perm = tuple(src_world.index(w) for w in dst_world)
    flips = tuple(src_signs[p] != s for p, s in zip(perm, dst_signs))
    t = np.zeros((n + 1, n + 1))
    t[n, n] = 1.0
    for j, (p, f) in enumerate(zip(perm, flips)):
        t[p, j] = -1.0 if f else 1.0
        t[p, n] = shape[p] - 1 if f else 0.0
    return perm, flips, a @ t


def apply_orientation(array, perm: Sequence[int], flips: Sequence[bool]):
    """The spatial axes of ``array`` (the trailing ``len(perm)``) transposed by ``perm`` then flipped; a copy."""
    n = len(perm)
    lead = array.ndim - n
    order = (*range(lead), *(lead + p for p in perm))
    axes = [lead + j for j, f in enumerate(flips) if f]
    if is_tensor(array):
        out = array.permute(order)
        return (out.flip(axes) if axes else out).contiguous()
    out = np.transpose(array, order)
    return np.ascontiguousarray(np.flip(out, axes) if axes else out)


def voxel_to_world(affine, points) -> np.ndarray:
    """World mm of voxel indices ``points`` (``…×n``, float; a voxel's index is its centre)."""
    a = _check(affine)
    p = np.asarray(points, dtype=np.float64)
    return p @ a[:-1, :-1].T + a[:-1, -1]


def world_to_voxel(affine, points) -> np.ndarray:
    """Continuous voxel indices of world points ``points`` (``…×n``, mm); round them for the voxel they fall in."""
    inv = np.linalg.inv(_check(affine))
    p = np.asarray(points, dtype=np.float64)
    return p @ inv[:-1, :-1].T + inv[:-1, -1]


def _translate(start) -> np.ndarray:
    n = len(start)
    t = np.eye(n + 1)
    t[:n, n] = np.asarray(start, dtype=np.float64)
    return t


def crop_affine(affine, start: Sequence[float]) -> np.ndarray:
    """The affine of the array cut out at voxel ``start`` (negative: padded by that much before).

    >>> crop_affine(np.eye(4), (2, 0, -1))[:3, 3].tolist()
    [2.0, 0.0, -1.0]
    """
    a = _check(affine)
    if len(start) != a.shape[0] - 1:
        raise ValueError(f"start {tuple(start)} must have {a.shape[0] - 1} values")
    return a @ _translate(start)


def scale_affine(affine, shape: Sequence[int], new_shape: Sequence[int], *, align_corners: bool = False) -> np.ndarray:
    """The affine after resizing ``shape`` to ``new_shape`` the way ``torch.nn.functional.interpolate`` does.

    ``align_corners=False`` (what :class:`~fusefn.data.ops.Resize` uses) keeps the field of view: the outer
    faces of the first and last voxels stay in place. ``True`` keeps the first and last voxel centres.

    >>> spacing(scale_affine(np.eye(4), (10, 10, 10), (5, 20, 10)))
    (2.0, 0.5, 1.0)
    """
    a = _check(affine)
    n = a.shape[0] - 1
    if len(shape) != n or len(new_shape) != n:
        raise ValueError(f"shapes {tuple(shape)} -> {tuple(new_shape)} must have {n} axes")
    t = np.eye(n + 1)
    for ax, (s, m) in enumerate(zip(shape, new_shape)):
        if align_corners:
            r = (s - 1) / (m - 1) if m > 1 else 0.0
            t[ax, ax], t[ax, n] = r, 0.0
        else:
            r = s / m
            t[ax, ax], t[ax, n] = r, 0.5 * r - 0.5
    return a @ t


def resampled_affine(affine, shape: Sequence[int], new_spacing: Sequence[float | None]) -> tuple[np.ndarray, tuple]:
    """The grid of ``new_spacing`` mm over the same field of view: ``(new_affine, new_shape)``.

    The rule: the axes keep their directions, each gets ``max(1, round(n · old / new))`` voxels, and the outer
    face of the first voxel stays where it was, so the field of view (``n · spacing`` from that face) is kept to
    within a voxel. It is the grid ``torch.nn.functional.interpolate(align_corners=False)`` and TorchIO's
    ``Resample`` produce, and it makes halving the resolution pool voxel pairs (the new centres sit between the
    old ones). MONAI's ``Spacingd`` keeps the first voxel *centre* instead (its grid is shifted by
    ``(new - old) / 2`` mm along each axis). ``None`` keeps an axis as it is.

    >>> a, shape = resampled_affine(np.diag([0.7, 0.7, 2.5, 1.0]), (512, 512, 300), (1.4, None, 1.25))
    >>> shape, spacing(a), a[:3, 3].round(3).tolist()
    ((256, 512, 600), (1.4, 0.7, 1.25), [0.35, 0.0, -0.625])
    """
    a = _check(affine)
    n = a.shape[0] - 1
    if len(shape) != n or len(new_spacing) != n:
        raise ValueError(f"shape {tuple(shape)} and spacing {tuple(new_spacing)} must have {n} values")
    old = spacing(a)
    new, out = a.copy(), []
    for ax, (s, o, m) in enumerate(zip(shape, old, new_spacing)):
        if m is None:
            out.append(int(s))
            continue
        if not m > 0:
            raise ValueError(f"spacing must be > 0 mm, got {m!r}")
        unit = a[:n, ax] / o
        new[:n, ax] = unit * m  # unit direction times the new size: the spacing reads back exactly
        new[:n, n] += unit * (m - o) / 2  # the first centre moves so that the first face stays
        out.append(max(1, math.floor(s * o / m + 0.5)))
    return new, tuple(out)


def grid_gap_mm(a, b, shape: Sequence[int]) -> float:
    """How far apart (mm) affines ``a`` and ``b`` put the same voxel centre, the largest over a grid of ``shape``.

    The difference of two affine maps is affine, so its norm peaks at a corner of the grid: the corners
    bound it everywhere inside. Axes missing from ``shape`` count as one voxel; extra ones are ignored.

    >>> round(grid_gap_mm(np.eye(4), np.diag([1.0, 1.0, 1.001, 1.0]), (10, 10, 10)), 6)
    0.009
    """
    a, b = _check(a), _check(b)
    n = a.shape[0] - 1
    sizes = [*[int(s) for s in tuple(shape)[:n]], *[1] * max(0, n - len(tuple(shape)))]
    corners = np.array(np.meshgrid(*[[0, max(s - 1, 0)] for s in sizes], indexing="ij")).reshape(n, -1)
    d = a - b
    return float(np.linalg.norm(d[:n, :n] @ corners + d[:n, n : n + 1], axis=0).max())


def same_grid(a, b, tol_mm: float = 1e-3, *, shape: Sequence[int] | None = None) -> bool:
    """Whether affines ``a`` and ``b`` put every voxel centre at the same world point, to ``tol_mm``.

    With ``shape``, the centres of that grid are compared (:func:`grid_gap_mm`); without it, each
    column and the origin are compared.

    >>> same_grid(np.eye(4), np.diag([1.0, 1.0, 1.0 + 1e-5, 1.0]), shape=(10, 10, 10))
    True
    """
    a, b = _check(a), _check(b)
    if a.shape != b.shape:
        return False
    if shape is None:
        return bool(np.abs((a - b)[: a.shape[0] - 1]).max() <= tol_mm)
    return grid_gap_mm(a, b, shape) <= tol_mm


# --------------------------------------------------------------------------- resampling


_TORCH_DTYPES = {
    np.dtype(t) for t in ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
}


def _as_torch(x):
    """``(tensor, dtype to give back or None for a tensor)``; other byte orders and dtypes torch lacks (uint16,
    as NIfTI files often hold) go through int64, which holds their values."""
    import torch

    if is_tensor(x):
        return x, None
    x = np.asarray(x)
    dtype = x.dtype
    if dtype.newbyteorder("=") not in _TORCH_DTYPES or not dtype.isnative:
        x = x.astype(np.float64 if dtype.kind == "f" else np.int64)
    return torch.from_numpy(np.ascontiguousarray(x)), dtype


def _signed_permutation(m: np.ndarray, n: int):
    """``(src_axis, coeff)`` per target axis when the voxel map is axis-aligned, else None."""
    lin = m[:n, :n]
    nz = np.abs(lin) > 1e-9 * max(1.0, float(np.abs(lin).max()))
    if not (nz.sum(axis=0) == 1).all() or not (nz.sum(axis=1) == 1).all():
        return None
    src = [int(np.flatnonzero(nz[:, j])[0]) for j in range(n)]
    return src, [float(lin[src[j], j]) for j in range(n)]


def resample_to_grid(
    array,
    affine,
    target_affine,
    target_shape: Sequence[int],
    *,
    mode: str = "linear",
    antialias: bool = False,
    fill=0.0,
):
    """``array`` (``…×spatial``, numpy or torch) sampled at every voxel centre of the target grid; same kind back.

    Each target centre goes through ``target_affine`` to world and through ``inv(affine)`` to a continuous source
    index, where the source is interpolated. The source is a box of voxels: a point up to half a voxel beyond
    the outer centres takes the edge value (as ITK does); farther out it gets ``fill``.

    - When the map is a permutation/flip plus an integer shift (same spacing; within :data:`SNAP_TOL` voxels),
      the result is exact indexing, whatever the mode: orient, crop, pad and their inverse lose nothing.
    - When it is axis-aligned (a diagonal up to permutation, the usual case after an orient), ``linear`` runs
      one 1D pass per axis (separable) and ``nearest`` one gather; otherwise the general map is sampled with
      ``torch.nn.functional.grid_sample`` (``align_corners=True``), in slabs.
    - ``nearest`` only copies source values (labels stay labels, dtype kept); ``linear`` and ``cubic`` give
      floating point (integers become float32). ``cubic`` is the cubic B-spline of ``scipy.ndimage``
      (prefiltered, on the CPU).
    - ``antialias`` (linear/cubic only) blurs the source along each axis that shrinks by a factor ``f > 1`` with
      a Gaussian of ``sigma = (f - 1) / 2`` source voxels (scikit-image's rule, which MONAI's ``Resize`` uses).

    >>> x = np.arange(4.0).reshape(1, 4)
    >>> resample_to_grid(x, np.diag([1.0, 1.0]), np.diag([0.5, 1.0]), (8,)).round(2).tolist()
    [[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]]
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    a, b = _check(affine), _check(target_affine)
    n = a.shape[0] - 1
    target_shape = tuple(int(s) for s in target_shape)
    if b.shape != a.shape or len(target_shape) != n or array.ndim < n:
        raise ValueError(
            f"array of shape {tuple(array.shape)}, affines {a.shape} and {b.shape} and target shape "
            f"{target_shape} do not describe the same number of spatial axes"
        )
    m = np.linalg.solve(a, b)  # target index -> source index
    shape = tuple(int(s) for s in array.shape[-n:])
    axes = _signed_permutation(m, n)
    if axes is not None:
        src, coef = axes
        off = m[:n, n]
        if all(abs(abs(c) - 1) < SNAP_TOL / max(1, s) for c, s in zip(coef, target_shape)) and all(
            abs(o - round(o)) < SNAP_TOL for o in off
        ):
            return _exact(array, src, [round(c) for c in coef], [round(o) for o in off], shape, target_shape, fill)
    t, dtype = _as_torch(array)
    lead = t.shape[:-n]
    flat = t.reshape(-1, *shape)
    if mode == "cubic":
        out = _cubic(flat, m, shape, target_shape, antialias, fill)
    elif axes is None:
        flat = flat if mode == "nearest" or flat.is_floating_point() else flat.float()
        out = _general(
            _blur(flat, m, n) if antialias and mode == "linear" else flat, m, shape, target_shape, mode, fill
        )
    elif mode == "nearest":
        out = _nearest(flat, axes[0], axes[1], m[:n, n], shape, target_shape, fill)
    else:
        src, coef = axes
        flips = [c < 0 for c in coef]
        if src != list(range(n)) or any(flips):
            # one exact reorder first, so the map left is a diagonal with positive steps
            flat = apply_orientation(flat, src, flips)
            t_ = np.eye(n + 1)
            t_[:, :n] = 0
            for k, (sk, f) in enumerate(zip(src, flips)):
                t_[sk, k] = -1.0 if f else 1.0
                t_[sk, n] = shape[sk] - 1 if f else 0.0
            m = np.linalg.solve(t_, m)
            shape = tuple(shape[sk] for sk in src)
        flat = flat if flat.is_floating_point() else flat.float()
        if antialias:
            flat = _blur(flat, m, n)
        out = _linear(flat, np.diag(m)[:n].copy(), m[:n, n].copy(), shape, target_shape, fill)
    out = out.reshape(*lead, *target_shape)
    if dtype is None:
        return out
    out = out.numpy()
    return out.astype(dtype.newbyteorder("=")) if mode == "nearest" and out.dtype != dtype else out


def to_original_grid(array, affine, original_affine, original_shape: Sequence[int], *, mode: str = "linear"):
    """``array`` (on the grid of ``affine``) mapped back onto the grid it was read on; the inverse of any chain of
    grid ops.

    Every grid op keeps the affine exact, so the original affine and shape are all the inverse needs: the ops
    need no inverse of their own and store nothing per sample beyond the two keys the reader writes
    (:data:`fusefn.keys.ORIGINAL_AFFINE`, :data:`fusefn.keys.ORIGINAL_SHAPE`). Use ``mode="nearest"`` for label
    maps, ``"linear"`` for probabilities. Where only orient/crop/pad ops ran, the result is exact.

    >>> x = np.arange(12).reshape(1, 3, 4)
    >>> a = np.diag([1.0, 1.0, 1.0])
    >>> cropped = x[:, 1:, 1:3]
    >>> to_original_grid(cropped, crop_affine(a, (1, 1)), a, (3, 4), mode="nearest")[0].tolist()
    [[0, 0, 0, 0], [0, 5, 6, 0], [0, 9, 10, 0]]
    """
    return resample_to_grid(array, affine, original_affine, original_shape, mode=mode)
