"""Sampling grids built analytically and the one resampling pass shared by geometric ops.

A grid for ``grid_sample`` is built as ``base @ theta``: ``base`` holds the centred pixel
coordinates of the output (one row per pixel, plus a 1), ``theta`` the per-sample matrix
already scaled to normalised coordinates. That is one small matmul per batch, cheaper on
CPU than ``F.affine_grid`` (bench/RESULTS.md); with dyadic sizes and right-angle matrices every
grid value is exact, so flips and 90° rotations reproduce ``torch.flip``/``torch.rot90``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from fusefn import nd

from . import _sample3d
from ._common import (
    check_image,
    check_mask,
    chunk_slices,
    chunked,
    get_key,
    output_buffer,
    put,
    rows,
    take,
    write_rows,
)


def centred_base(spatial: tuple, *, device, dtype) -> torch.Tensor:
    """``(prod(spatial), d + 1)``: each output pixel's offset from the image centre per axis, then 1."""
    axes = [torch.arange(s, device=device, dtype=dtype) - (s - 1) / 2 for s in spatial]
    mesh = torch.meshgrid(*axes, indexing="ij")
    ones = torch.ones(spatial, device=device, dtype=dtype)
    return torch.stack([*mesh, ones], dim=-1).reshape(-1, len(spatial) + 1)


def grid_from_inverse(inverse: torch.Tensor, spatial: tuple, dtype, in_spatial: tuple | None = None) -> torch.Tensor:
    """Sampling grid ``(n, *spatial, d)`` of the centred backward maps ``inverse`` (``n×(d+1)×(d+1)``).

    Row ``k`` of the inverse gives the source coordinate on axis ``k`` (centred on the
    input of size ``in_spatial``, default ``spatial``); dividing by half the input size turns
    pixels into ``grid_sample``'s normalised units (align_corners=False, where the centre
    is 0). ``grid_sample`` wants the last axis first, hence the flip.
    """
    d = len(spatial)
    theta = normalised_theta(inverse, spatial if in_spatial is None else in_spatial, dtype)
    n = theta.shape[0]
    if d == 3 and chunked(theta):
        return _grid_channels_first(theta, spatial, dtype)
    # an affine grid is a sum of one term per axis: broadcasting d small outer terms writes the grid in one
    # pass, where a matmul over a (pixels × d+1) base reads and writes several times as much
    grid = theta[:, :, d].reshape((n,) + (1,) * d + (d,))
    for axis, size in enumerate(spatial):
        coords = torch.arange(size, device=theta.device, dtype=dtype) - (size - 1) / 2
        shape = [n] + [1] * d + [d]
        shape[1 + axis] = size
        grid = grid + (coords[None, :, None] * theta[:, None, :, axis]).reshape(shape)
    return grid


def normalised_theta(inverse: torch.Tensor, in_spatial: tuple, dtype) -> torch.Tensor:
    """``n×d×(d+1)``: the rows of the centred inverse maps in ``grid_sample``'s units, last axis (x) first."""
    d = len(in_spatial)
    scale = torch.tensor([2.0 / s for s in in_spatial], dtype=inverse.dtype, device=inverse.device)
    return (inverse[:, :d, :] * scale[None, :, None]).flip(1).to(dtype)


def _grid_channels_first(theta: torch.Tensor, spatial: tuple, dtype) -> torch.Tensor:
    """The 3D grid of :func:`grid_from_inverse`, bit for bit, written one coordinate plane at a time.

    Broadcasting into an interleaved ``(..., 3)`` grid runs a scalar loop over the last axis; each
    coordinate written on its own is a contiguous, vectorised pass (the sums keep the same order, so the
    values are the same). The 3D kernel reads the resulting strided grid as fast as an interleaved one.
    """
    n, d = theta.shape[0], len(spatial)
    coords = [torch.arange(s, device=theta.device, dtype=dtype) - (s - 1) / 2 for s in spatial]
    grid = torch.empty((n, d, *spatial), device=theta.device, dtype=dtype)
    for i in range(n):
        for c in range(d):
            row = theta[i, c]
            plane = (row[d] + coords[0] * row[0])[:, None] + (coords[1] * row[1])[None, :]  # D×H, small
            torch.add(plane[:, :, None], (coords[2] * row[2])[None, None, :], out=grid[i, c])
    return grid.movedim(1, -1)


def grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """``F.grid_sample`` (align_corners=False), faster for 3D on the CPU, with the same values.

    float32 volumes in eager mode go to the compiled kernel of :mod:`~fusefn.augment._sample3d`.
    Otherwise PyTorch's 3D CPU kernel runs, parallel over the batch only, so one volume would use
    one thread: cutting the output into depth slabs makes each slab a batch entry over the same
    (expanded, not copied) input, on every thread.
    """
    if _sample3d.eligible(x, grid, mode, padding):
        return _sample3d.grid_sample_3d(x, grid, mode, padding)
    k = torch.get_num_threads()
    n, c = x.shape[:2]
    if x.ndim != 5 or n != 1 or k < 2 or x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.grid_sample(x, grid, mode, padding, align_corners=False)
    depth = grid.shape[1]
    while k > 1 and depth % k:
        k -= 1
    if k < 2:
        return F.grid_sample(x, grid, mode, padding, align_corners=False)
    slabs = grid.reshape(k, depth // k, *grid.shape[2:])
    y = F.grid_sample(x.expand(k, *x.shape[1:]), slabs, mode, padding, align_corners=False)
    return y.transpose(0, 1).reshape(1, c, depth, *y.shape[3:])


# the in-plane path works on blocks of about 1 MiB of slices: buffers that size are recycled by glibc, where
# volume-sized temporaries are page-faulted in again (the 3D kernel itself measured faster on whole volumes)
BLOCK_BYTES = 1 << 20


def depth_blocks(depth: int, plane_bytes: int) -> list:
    """``[(z0, count)]`` covering ``range(depth)`` in blocks of about ``BLOCK_BYTES`` (a multiple of the threads)."""
    k = max(1, torch.get_num_threads())
    per = max(1, BLOCK_BYTES // max(1, plane_bytes))
    per = max(k, per - per % k)
    return [(z0, min(per, depth - z0)) for z0 in range(0, depth, per)]


def resample_keys(
    batch: Mapping,
    owned: frozenset,
    *,
    op: str,
    dims: int,
    image_keys: tuple,
    mask_keys: tuple,
    index: torch.Tensor,
    grid_fn: Callable[[tuple, torch.dtype, slice], torch.Tensor],
    padding: str,
    out_spatial: tuple | None = None,
    inverse: torch.Tensor | None = None,
):
    """Resample the active samples of every image (bilinear) and mask (nearest) key with one grid.

    ``grid_fn(spatial, dtype, positions)`` returns the grid of the active samples
    ``index[positions]`` for the input size ``spatial``. In eager mode on CPU the work runs
    in chunks of a few samples, each read, resampled and written back while in cache.
    With ``out_spatial`` (a crop-and-resize) every sample must be active, since the
    output shape changes. ``inverse`` (the active samples' centred inverse maps, when the grid is
    :func:`grid_from_inverse`'s) lets 3D volumes on the CPU skip the grid: the compiled kernel of
    :mod:`~fusefn.augment._sample3d` forms each grid value where it reads it, the same values.
    """
    images = {k: get_key(batch, k, op) for k in image_keys}
    masks = {k: get_key(batch, k, op) for k in mask_keys}
    for k, x in images.items():
        check_image(x, op=op, key=k, dims=dims)
    ref_key = image_keys[0] if image_keys else mask_keys[0]
    ref = images[ref_key] if image_keys else masks[ref_key]
    for k, m in masks.items():
        check_image(m, op=op, key=k, dims=dims, floating=False)
        check_mask(m, ref, op=op, key=k, image_key=ref_key)
    for k, x in images.items():
        if x.shape[0] != ref.shape[0] or x.shape[2:] != ref.shape[2:]:
            check_mask(x, ref, op=op, key=k, image_key=ref_key)
    if index.shape[0] == 0:
        return batch, owned
    spatial = tuple(ref.shape[2:])
    fdtype = {k: (m.dtype if m.is_floating_point() else torch.float32) for k, m in masks.items()}
    if inverse is not None and out_spatial is None and _affine_kernel_takes(images, masks, padding):
        theta = normalised_theta(inverse, spatial, torch.float32)
        outs = {}
        for k, x in {**images, **masks}.items():
            mode = "bilinear" if k in images else "nearest"
            outs[k] = _sample3d.affine_3d(x, output_buffer(x, index, k in owned), index, theta, mode, padding)
        return nd.assoc_many(batch, outs), owned | frozenset(outs)
    if out_spatial is not None or not chunked(ref):
        return _resample_whole(batch, owned, images, masks, fdtype, index, grid_fn, spatial, padding, out_spatial)
    outs = {k: output_buffer(x, index, k in owned) for k, x in {**images, **masks}.items()}
    for sl in chunk_slices(index.shape[0], ref):
        idx = index[sl]
        grids: dict = {}
        for k, x in images.items():
            if x.dtype not in grids:
                grids[x.dtype] = grid_fn(spatial, x.dtype, sl)
            # read straight from the input's rows (a view when consecutive), write into the output's rows
            write_rows(outs[k], idx, grid_sample(rows(x, idx), grids[x.dtype], "bilinear", padding))
        for k, m in masks.items():
            if fdtype[k] not in grids:
                grids[fdtype[k]] = grid_fn(spatial, fdtype[k], sl)
            y = grid_sample(rows(m, idx).to(fdtype[k]), grids[fdtype[k]], "nearest", padding)
            write_rows(outs[k], idx, y.to(m.dtype))
    return nd.assoc_many(batch, outs), owned | frozenset(outs)


def _affine_kernel_takes(images: Mapping, masks: Mapping, padding: str) -> bool:
    return all(_sample3d.affine_eligible(x, "bilinear", padding) for x in images.values()) and all(
        _sample3d.affine_eligible(m, "nearest", padding) for m in masks.values()
    )


def _resample_whole(batch, owned, images, masks, fdtype, index, grid_fn, spatial, padding, out_spatial):
    grids: dict = {}

    def grid_for(dtype):
        if dtype not in grids:
            grids[dtype] = grid_fn(spatial, dtype, slice(None))
        return grids[dtype]

    updates = {}
    for k, x in images.items():
        y = F.grid_sample(take(x, index), grid_for(x.dtype), "bilinear", padding, align_corners=False)
        updates[k] = y if out_spatial is not None else put(x, index, y, k in owned)
    for k, m in masks.items():
        sub = take(m, index).to(fdtype[k])
        y = F.grid_sample(sub, grid_for(fdtype[k]), "nearest", padding, align_corners=False).to(m.dtype)
        updates[k] = y if out_spatial is not None else put(m, index, y, k in owned)
    return nd.assoc_many(batch, updates), owned | frozenset(updates)


# ------------------------------------------------------------------ in-plane 3D maps on the 2D kernel


def planar(inverse: torch.Tensor) -> torch.Tensor:
    """Which 3D centred inverse maps (``n×4×4``) act within each depth slice: a bool per sample.

    Such a map reads output slice ``z`` from the one source slice ``±z + t`` (depth untouched but for a
    flip and a whole-slice shift) and moves pixels only in-plane. Trilinear sampling then puts all its
    weight on that slice, so it equals bilinear sampling of the slice: the 2D kernel, vectorised and
    about three times as fast on CPU as PyTorch's scalar 3D one, with one small grid for every slice.
    """
    a, t = inverse[:, :3, :3], inverse[:, 0, 3]
    mixed = (a[:, 0, 1:] != 0).any(1) | (a[:, 1:, 0] != 0).any(1)
    return ~mixed & (a[:, 0, 0].abs() == 1) & (t == torch.round(t))


def _source_slices(inverse: torch.Tensor, depth: int, padding: str) -> tuple:
    """``(source slice per output slice, which output slices read inside the volume)`` for a planar map."""
    sign, shift = int(inverse[0, 0]), int(inverse[0, 3])
    z = torch.arange(depth)
    src = sign * z + (shift + (depth - 1) * (1 - sign) // 2)  # centred: s − c = sign·(z − c) + shift
    inside = (src >= 0) & (src < depth)
    if padding == "border":
        src = src.clamp(0, depth - 1)
    elif padding == "reflection":
        # grid_sample mirrors at the outer slice edges (−½ and depth − ½): whole slices fold back exactly
        m = src.remainder(2 * depth)
        src = torch.where(m < depth, m, 2 * depth - 1 - m)
    return src, inside if padding == "zeros" else torch.ones_like(inside)


def _sample_planes(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """``x`` (``1×P×H×W``, planes as channels) sampled at one 2D ``grid``, the planes spread over the threads."""
    k, planes = torch.get_num_threads(), x.shape[1]
    while k > 1 and planes % k:
        k -= 1
    if k < 2:
        return F.grid_sample(x, grid, mode, padding, align_corners=False)
    y = F.grid_sample(x.reshape(k, planes // k, *x.shape[2:]), grid.expand(k, *grid.shape[1:]), mode, padding, False)
    return y.reshape(1, planes, *y.shape[2:])


def resample_planar(x: torch.Tensor, out: torch.Tensor, j: int, inverse: torch.Tensor, mode: str, padding: str):
    """Write into ``out[j]`` sample ``j`` of the 3D ``x`` under the planar centred inverse map ``inverse`` (4×4).

    Equal to the trilinear (or nearest) 3D resampling up to the rounding of the depth weight, which
    the 3D path computes from normalised coordinates and this one knows to be exactly 0. Works in
    blocks of slices (small, reused buffers) unless ``out`` is ``x`` itself.
    """
    c, depth, h, w = x.shape[1:]
    src, inside = _source_slices(inverse, depth, padding)
    keep = torch.nonzero(inside).flatten()
    dst = out[j]
    if keep.shape[0] == 0:
        dst.zero_()
        return out
    lo, n = int(keep[0]), keep.shape[0]
    fdtype = x.dtype if x.is_floating_point() else torch.float32
    grid = grid_from_inverse(inverse[1:, 1:].unsqueeze(0), (h, w), fdtype)  # the in-plane 3×3 map
    aliased = out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    blocks = [(0, n)] if aliased else depth_blocks(n, c * h * w * 4)
    ys = []
    for b0, count in blocks:
        s = src[lo + b0 : lo + b0 + count]
        s0 = int(s[0])
        consecutive = bool((s == torch.arange(s0, s0 + count)).all())
        sub = x[j].narrow(1, s0, count) if consecutive else x[j].index_select(1, s)
        y = _sample_planes(sub.reshape(1, c * count, h, w).to(fdtype), grid, mode, padding).view(c, count, h, w)
        if aliased:  # sample j is read whole above before any of it is written
            ys.append((b0, count, y))
        else:
            dst.narrow(1, lo + b0, count).copy_(y)
    if n < depth:
        dst[:, :lo].zero_()
        dst[:, lo + n :].zero_()
    for b0, count, y in ys:
        dst.narrow(1, lo + b0, count).copy_(y)
    return out
