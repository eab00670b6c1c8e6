"""The kernels behind :func:`fusefn.affine.resample_to_grid`: exact indexing, nearest gathers, separable linear
passes, ``grid_sample`` in slabs for oblique maps, and scipy's cubic B-spline (private: call the public function)."""

from __future__ import annotations

import math

import numpy as np

from fusefn._types import is_tensor

SNAP_TOL = 1e-4
"""Voxels: a voxel map closer than this to a permutation/flip plus integer shift is applied as exact indexing."""


def _exact(array, src, coef, off, shape, target_shape, fill):
    """Target index j on axis k reads source index ``coef[k] * j + off[src[k]]`` on axis ``src[k]``: slicing only."""
    n = len(shape)
    lead = array.ndim - n
    order = (*range(lead), *(lead + s for s in src))
    tensor = is_tensor(array)
    view = array.permute(order) if tensor else np.transpose(array, order)
    sl, inner, empty = [], [], False
    for k, (c, tn) in enumerate(zip(coef, target_shape)):
        sn, o = shape[src[k]], off[src[k]]
        # target j is inside the source when 0 <= c*j + o <= sn - 1
        lo, hi = (-o, sn - 1 - o) if c > 0 else (o - (sn - 1), o)
        j0, j1 = max(0, lo), min(tn - 1, hi)
        empty = empty or j1 < j0
        a0, a1 = sorted((c * j0 + o, c * j1 + o))
        sl.append(slice(a0, a1 + 1))
        inner.append(slice(j0, j1 + 1))
    flips = [lead + k for k, c in enumerate(coef) if c < 0]
    full = (*array.shape[:lead], *target_shape)
    if tensor:
        import torch

        blank = torch.full(full, fill, dtype=array.dtype, device=array.device)
    else:
        blank = np.full(full, fill, dtype=array.dtype)
    if empty:
        return blank
    piece = view[(Ellipsis, *sl)]
    if flips:
        piece = piece.flip(flips) if tensor else np.flip(piece, flips)
    if tuple(piece.shape) == full:
        return piece.contiguous() if tensor else np.ascontiguousarray(piece)
    blank[(Ellipsis, *inner)] = piece
    return blank


def _coords(c: float, o: float, tn: int, sn: int):
    """Source positions of the ``tn`` target centres on one axis, and which lie outside the source box."""
    import torch

    pos = torch.arange(tn, dtype=torch.float64) * c + o
    outside = (pos < -0.5 - 1e-6) | (pos > sn - 0.5 + 1e-6)
    return pos.clamp(0, sn - 1), outside


def _outside_fill(out, outside, fill):
    """Set ``fill`` on every target slice (per axis) whose centres lie beyond the source's box."""
    import torch

    for k, o in enumerate(outside):
        if o.any():
            out.index_fill_(k + 1, torch.nonzero(o).flatten().to(out.device), fill)
    return out


def _nearest(x, src, coef, off, shape, target_shape, fill):
    """Axis-aligned map, nearest: one gather, so every output value is a source value."""
    import torch

    n = len(shape)
    grids, outside = [None] * n, []
    for k in range(n):
        pos, out_k = _coords(coef[k], off[src[k]], target_shape[k], shape[src[k]])
        view = [1] * n
        view[k] = -1
        # floor(p + 0.5): halves round up, the same way on every axis; source axis src[k] indexed along target k
        grids[src[k]] = torch.floor(pos + 0.5).long().to(x.device).view(*view)
        outside.append(out_k)
    return _outside_fill(x[(slice(None), *grids)], outside, fill)


_UPSAMPLE = {1: "upsample_linear1d", 2: "upsample_bilinear2d", 3: "upsample_trilinear3d"}


def _linear(x, r, o, shape, target_shape, fill):
    """Diagonal map ``src = r·j + o`` with ``r > 0``: torch's upsampling kernel when it fits, else 1D passes.

    ``torch.nn.functional.interpolate`` (``align_corners=False``, given scales) samples at
    ``src = r·(j + 0.5) - 0.5``: the face-keeping grids of :func:`fusefn.affine.resampled_affine` and their inverses are
    exactly that. A whole-voxel offset before the source (a crop being undone) is an edge padding.
    """
    import torch
    import torch.nn.functional as F

    n = len(shape)
    d = o - (r - 1) / 2
    outside = [_coords(r[k], o[k], target_shape[k], shape[k])[1] for k in range(n)]
    if n in _UPSAMPLE and all(abs(dk - round(dk)) < SNAP_TOL and round(dk) <= 0 for dk in d):
        pad = [-round(dk) for dk in d]
        if any(pad):
            flat = [p for k in reversed(range(n)) for p in (pad[k], 0)]
            x = F.pad(x[None], flat, mode="replicate")[0]
        op = getattr(torch.ops.aten, _UPSAMPLE[n])
        out = op(x[None], list(target_shape), False, *(1 / float(rk) for rk in r))[0]
        return _outside_fill(out, outside, fill)
    out = x
    for k in sorted(range(n), key=lambda k: -r[k]):  # shrink first: later passes touch fewer voxels
        pos, _ = _coords(r[k], o[k], target_shape[k], shape[k])
        i0 = torch.floor(pos).long().clamp(max=shape[k] - 1)
        i1 = (i0 + 1).clamp(max=shape[k] - 1)
        w = (pos - i0).to(out.dtype).to(out.device).view(-1, *([1] * (n - 1)), 1)
        front = out.movedim(k + 1, 0)  # gathering whole slabs along the first axis is a block copy
        front = torch.lerp(front[i0.to(out.device)], front[i1.to(out.device)], w.view(-1, *([1] * (front.ndim - 1))))
        out = front.movedim(0, k + 1)
    return _outside_fill(out.contiguous(), outside, fill)


def _target_points(m, target_shape, lo: int, hi: int):
    """Source indices (float64, ``…×n``) of target voxels ``lo:hi`` along the first axis."""
    import torch

    n = len(target_shape)
    rng = [torch.arange(lo, hi, dtype=torch.float64)] + [torch.arange(s, dtype=torch.float64) for s in target_shape[1:]]
    grid = torch.stack(torch.meshgrid(*rng, indexing="ij"), dim=-1)
    mt = torch.from_numpy(m)
    return grid @ mt[:n, :n].T + mt[:n, n]


def _slabs(target_shape, budget: int = 1 << 22):
    step = max(1, budget // max(1, math.prod(target_shape[1:])))
    return [(lo, min(lo + step, target_shape[0])) for lo in range(0, target_shape[0], step)]


def _general(x, m, shape, target_shape, mode, fill):
    """Any affine map, through grid_sample one slab of target voxels at a time (bounded memory)."""
    import torch
    import torch.nn.functional as F

    n = len(shape)
    if n not in (2, 3):
        raise ValueError(f"an oblique map is supported for 2 or 3 spatial axes, got {n}")
    sizes = torch.tensor(shape, dtype=torch.float64)
    src = x if x.is_floating_point() else x.float()
    out = torch.empty((x.shape[0], *target_shape), dtype=x.dtype, device=x.device)
    for lo, hi in _slabs(target_shape):
        p = _target_points(m, target_shape, lo, hi)
        outside = ((p < -0.5 - 1e-6) | (p > sizes - 0.5 + 1e-6)).any(dim=-1)
        p = torch.minimum(p.clamp(min=0), sizes - 1)
        # align_corners=True: -1 and 1 are the first and last centres; grid_sample's last coordinate is x (W)
        g = (2 * p / (sizes - 1).clamp(min=1) - 1).flip(-1).to(src.dtype).to(x.device)
        part = F.grid_sample(
            src[None], g[None], mode="bilinear" if mode == "linear" else "nearest", align_corners=True
        )[0]
        if mode == "nearest" and not x.is_floating_point():
            part = part.round().to(x.dtype)
        part[:, outside.to(x.device)] = fill
        out[:, lo:hi] = part.to(out.dtype)
    return out


def _blur(x, m, n):
    """Gaussian pre-filter along each source axis that the map shrinks (antialiasing)."""
    from scipy import ndimage

    factors = np.linalg.norm(m[:n, :n], axis=1)  # source voxels per target voxel along each source axis
    if not (factors > 1).any():
        return x
    arr = x.detach().cpu().numpy().copy()
    for s, f in enumerate(factors):
        if f > 1:
            ndimage.gaussian_filter1d(arr, sigma=(f - 1) / 2, axis=s + 1, mode="nearest", output=arr)
    return x.new_tensor(arr)


def _cubic(x, m, shape, target_shape, antialias, fill):
    import torch
    from scipy import ndimage

    n = len(shape)
    src = x.float() if not x.is_floating_point() else x
    if antialias:
        src = _blur(src, m, n)
    arr = src.detach().cpu().numpy()
    sizes = np.array(shape, dtype=np.float64)
    out = np.empty((arr.shape[0], *target_shape), dtype=arr.dtype)
    coeffs = [ndimage.spline_filter(c, order=3, mode="nearest", output=np.float64) for c in arr]
    for lo, hi in _slabs(target_shape):
        p = _target_points(m, target_shape, lo, hi).numpy()
        outside = ((p < -0.5 - 1e-6) | (p > sizes - 0.5 + 1e-6)).any(axis=-1)
        p = np.minimum(np.maximum(p, 0), sizes - 1)
        pts = np.moveaxis(p, -1, 0)
        for c, co in enumerate(coeffs):
            v = ndimage.map_coordinates(co, pts, order=3, mode="nearest", prefilter=False)
            v[outside] = fill
            out[c, lo:hi] = v
    return torch.from_numpy(out).to(x.device)
