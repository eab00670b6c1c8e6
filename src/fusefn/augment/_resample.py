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

from ._common import check_image, check_mask, chunk_slices, chunked, get_key, output_buffer, put, take


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
    in_spatial = spatial if in_spatial is None else in_spatial
    scale = torch.tensor([2.0 / s for s in in_spatial], dtype=inverse.dtype, device=inverse.device)
    theta = (inverse[:, :d, :] * scale[None, :, None]).flip(1).to(dtype)  # (n, d, d+1), rows x, y, z
    n = theta.shape[0]
    # an affine grid is a sum of one term per axis: broadcasting d small outer terms writes the grid in one
    # pass, where a matmul over a (pixels × d+1) base reads and writes several times as much
    grid = theta[:, :, d].reshape((n,) + (1,) * d + (d,))
    for axis, size in enumerate(spatial):
        coords = torch.arange(size, device=theta.device, dtype=dtype) - (size - 1) / 2
        shape = [n] + [1] * d + [d]
        shape[1 + axis] = size
        grid = grid + (coords[None, :, None] * theta[:, None, :, axis]).reshape(shape)
    return grid


def grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """``F.grid_sample`` (align_corners=False) that also spreads one 3D volume over the CPU threads.

    PyTorch's 3D CPU kernel is parallel over the batch only, so one volume would use one
    thread. Cutting the output into depth slabs makes each slab a batch entry over the same
    (expanded, not copied) input: the same values, on every thread.
    """
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
):
    """Resample the active samples of every image (bilinear) and mask (nearest) key with one grid.

    ``grid_fn(spatial, dtype, positions)`` returns the grid of the active samples
    ``index[positions]`` for the input size ``spatial``. In eager mode on CPU the work runs
    in chunks of a few samples, each read, resampled and written back while in cache.
    With ``out_spatial`` (a crop-and-resize) every sample must be active, since the
    output shape changes.
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
    if out_spatial is not None or not chunked(ref):
        return _resample_whole(batch, owned, images, masks, fdtype, index, grid_fn, spatial, padding, out_spatial)
    outs = {k: output_buffer(x, index, k in owned) for k, x in {**images, **masks}.items()}
    for sl in chunk_slices(index.shape[0], ref):
        idx = index[sl]
        grids: dict = {}
        for k, x in images.items():
            if x.dtype not in grids:
                grids[x.dtype] = grid_fn(spatial, x.dtype, sl)
            y = grid_sample(x.index_select(0, idx), grids[x.dtype], "bilinear", padding)
            outs[k].index_copy_(0, idx, y)
        for k, m in masks.items():
            if fdtype[k] not in grids:
                grids[fdtype[k]] = grid_fn(spatial, fdtype[k], sl)
            sub = m.index_select(0, idx).to(fdtype[k])
            y = grid_sample(sub, grids[fdtype[k]], "nearest", padding)
            outs[k].index_copy_(0, idx, y.to(m.dtype))
    return nd.assoc_many(batch, outs), owned | frozenset(outs)


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
