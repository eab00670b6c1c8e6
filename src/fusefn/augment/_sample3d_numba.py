"""The numba kernel behind :mod:`fusefn.augment._sample3d` (imported only where numba is installed).

Arrays come flat with explicit element strides and are indexed with unsigned offsets: numba then
emits no negative-index wraparound per access, which otherwise costs more than the arithmetic.
"""

from __future__ import annotations

import numba
import numpy as np

f32 = np.float32
u64 = np.uint64


@numba.njit(inline="always", cache=True)
def source_index(coord, size, padding):
    """ATen's ``grid_sampler_compute_source_index`` for ``align_corners=False``, in float32."""
    c = ((coord + f32(1)) * f32(size) - f32(1)) / f32(2)
    if padding != 0:
        if padding == 2:  # reflect about -1/2 and size - 1/2
            lo = f32(-1) / f32(2)
            span = f32(2 * size) / f32(2)
            c = abs(c - lo)
            extra = np.fmod(c, span)
            flips = np.int64(np.floor(c / span))
            c = extra + lo if flips % 2 == 0 else span - extra + lo
        # clip to [0, size - 1]; a NaN ends at size - 1, as std::min/std::max leave it
        c = c if not (c < f32(0)) else f32(0)
        top = f32(size - 1)
        c = c if c < top else top
    # ATen's safe_downgrade_to_int_range: its int bounds compare as ±2**31 in float32
    if not (c >= f32(-2147483648.0) and c <= f32(2147483648.0)):  # beyond them, or not finite
        c = f32(-100)
    return c


@numba.njit(inline="always", cache=True)
def _inside(px, py, pz, t, cw, width, height, depth):
    """Whether all eight trilinear corners of the row's point at ``cw`` lie inside the volume, before any clipping.

    The point is the affine grid value the sampling loop forms (``p + cw·θ``, the same float32 sums).
    There the border clip and the range check of :func:`source_index` change nothing.
    """
    ix = source_index(px + cw * t[0, 2], width, 0)
    iy = source_index(py + cw * t[1, 2], height, 0)
    iz = source_index(pz + cw * t[2, 2], depth, 0)
    return f32(0) <= ix < f32(width - 1) and f32(0) <= iy < f32(height - 1) and f32(0) <= iz < f32(depth - 1)


@numba.njit(inline="always", cache=True)
def _sample(
    src, shape, src_rows, out, out_spatial, out_rows, grid, grid_strides, affine, theta, coords, mode, padding, lo, hi
):
    """Output slices ``lo:hi`` of the flattened (sample, depth) pairs: ATen's 3D nearest or trilinear rule.

    Sample ``j`` reads row ``src_rows[j]`` of ``src`` and writes row ``out_rows[j]`` of ``out``
    (both contiguous ``N×C×D×H×W``, flat; ``shape`` is ``C, D, H, W``). The sampling points come
    either from ``grid``, a flat view of the grid's memory with element strides ``(N, D, H, W,
    coordinate)``, or, when ``affine``, from the affine map ``theta[j]`` (``3×4`` float32,
    rows x, y, z in normalised units, columns depth, height, width, bias) at the centred output
    coordinates ``coords`` (one row per output axis): ``((bias + c_d·θ_d) + c_h·θ_h) + c_w·θ_w``, in
    float32 and in the order :func:`fusefn.augment._resample.grid_from_inverse` sums a grid value.
    The weights are ATen's products and the corners are summed in its order, so the values are its.
    """
    n_c, depth, height, width = shape
    out_d, out_h, out_w = out_spatial
    sy, sz = width, width * height
    sc = sz * depth
    osc = out_d * out_h * out_w
    gn, gd, gh, gw, gk = grid_strides
    for jd in range(lo, hi):
        j = jd // out_d
        d = jd - j * out_d
        p0 = src_rows[j] * n_c * sc
        t = theta[j if affine else 0]
        for h in range(out_h):
            o = ((out_rows[j] * n_c * out_d + d) * out_h + h) * out_w
            g = j * gn + d * gd + h * gh
            wa, wb = out_w, -1
            if affine:
                px = (t[0, 3] + coords[0, d] * t[0, 0]) + coords[1, h] * t[0, 1]
                py = (t[1, 3] + coords[0, d] * t[1, 0]) + coords[1, h] * t[1, 1]
                pz = (t[2, 3] + coords[0, d] * t[2, 0]) + coords[1, h] * t[2, 1]
                if mode == 0 and padding != 2:
                    # along a row each source index is monotone in w (every float32 step is), so the points
                    # whose eight corners are all inside form one run [wa, wb], found from its ends. Not with
                    # reflection: there an inside point comes out of the fold rounded, not unchanged
                    wa = 0
                    while wa < out_w and not _inside(px, py, pz, t, coords[2, wa], width, height, depth):
                        wa += 1
                    wb = out_w - 1
                    while wb > wa and not _inside(px, py, pz, t, coords[2, wb], width, height, depth):
                        wb -= 1
            for w in range(out_w):
                if affine:
                    cw = coords[2, w]
                    gx, gy, gz = px + cw * t[0, 2], py + cw * t[1, 2], pz + cw * t[2, 2]
                else:
                    gx, gy, gz = grid[u64(g)], grid[u64(g + gk)], grid[u64(g + 2 * gk)]
                    g += gw
                if wa <= w <= wb:
                    # inside: the clips and range checks of source_index are identities, the corners need no test
                    ix = ((gx + f32(1)) * f32(width) - f32(1)) / f32(2)
                    iy = ((gy + f32(1)) * f32(height) - f32(1)) / f32(2)
                    iz = ((gz + f32(1)) * f32(depth) - f32(1)) / f32(2)
                    fx, fy, fz = np.floor(ix), np.floor(iy), np.floor(iz)
                    ex, wx = (fx + f32(1)) - ix, ix - fx
                    ey, wy = (fy + f32(1)) - iy, iy - fy
                    ez, wz = (fz + f32(1)) - iz, iz - fz
                    q = p0 + (np.int64(fz) * height + np.int64(fy)) * width + np.int64(fx)
                    for c in range(n_c):
                        acc = f32(0)
                        acc += src[u64(q)] * (ex * ey * ez)
                        acc += src[u64(q + 1)] * (wx * ey * ez)
                        acc += src[u64(q + sy)] * (ex * wy * ez)
                        acc += src[u64(q + sy + 1)] * (wx * wy * ez)
                        acc += src[u64(q + sz)] * (ex * ey * wz)
                        acc += src[u64(q + sz + 1)] * (wx * ey * wz)
                        acc += src[u64(q + sz + sy)] * (ex * wy * wz)
                        acc += src[u64(q + sz + sy + 1)] * (wx * wy * wz)
                        out[u64(o + c * osc + w)] = acc
                        q += sc
                    continue
                ix = source_index(gx, width, padding)
                iy = source_index(gy, height, padding)
                iz = source_index(gz, depth, padding)
                if mode == 1:
                    x0, y0, z0 = np.int64(np.rint(ix)), np.int64(np.rint(iy)), np.int64(np.rint(iz))
                    if 0 <= x0 < width and 0 <= y0 < height and 0 <= z0 < depth:
                        p = p0 + (z0 * height + y0) * width + x0
                        for c in range(n_c):
                            out[u64(o + c * osc + w)] = src[u64(p + c * sc)]
                    else:
                        for c in range(n_c):
                            out[u64(o + c * osc + w)] = 0
                    continue
                fx, fy, fz = np.floor(ix), np.floor(iy), np.floor(iz)
                x0, y0, z0 = np.int64(fx), np.int64(fy), np.int64(fz)
                # distances to the far and near corner on each axis, and the weights as ATen's products
                ex, wx = (fx + f32(1)) - ix, ix - fx
                ey, wy = (fy + f32(1)) - iy, iy - fy
                ez, wz = (fz + f32(1)) - iz, iz - fz
                tnw, tne, tsw, tse = ex * ey * ez, wx * ey * ez, ex * wy * ez, wx * wy * ez
                bnw, bne, bsw, bse = ex * ey * wz, wx * ey * wz, ex * wy * wz, wx * wy * wz
                xin0, xin1 = 0 <= x0 < width, 0 <= x0 + 1 < width
                yin0, yin1 = 0 <= y0 < height, 0 <= y0 + 1 < height
                zin0, zin1 = 0 <= z0 < depth, 0 <= z0 + 1 < depth
                p = p0 + (z0 * height + y0) * width + x0
                if xin0 and xin1 and yin0 and yin1 and zin0 and zin1:
                    for c in range(n_c):
                        q = p + c * sc
                        acc = f32(0)
                        acc += src[u64(q)] * tnw
                        acc += src[u64(q + 1)] * tne
                        acc += src[u64(q + sy)] * tsw
                        acc += src[u64(q + sy + 1)] * tse
                        acc += src[u64(q + sz)] * bnw
                        acc += src[u64(q + sz + 1)] * bne
                        acc += src[u64(q + sz + sy)] * bsw
                        acc += src[u64(q + sz + sy + 1)] * bse
                        out[u64(o + c * osc + w)] = acc
                    continue
                for c in range(n_c):
                    q = p + c * sc
                    acc = f32(0)
                    if zin0 and yin0 and xin0:
                        acc += src[u64(q)] * tnw
                    if zin0 and yin0 and xin1:
                        acc += src[u64(q + 1)] * tne
                    if zin0 and yin1 and xin0:
                        acc += src[u64(q + sy)] * tsw
                    if zin0 and yin1 and xin1:
                        acc += src[u64(q + sy + 1)] * tse
                    if zin1 and yin0 and xin0:
                        acc += src[u64(q + sz)] * bnw
                    if zin1 and yin0 and xin1:
                        acc += src[u64(q + sz + 1)] * bne
                    if zin1 and yin1 and xin0:
                        acc += src[u64(q + sz + sy)] * bsw
                    if zin1 and yin1 and xin1:
                        acc += src[u64(q + sz + sy + 1)] * bse
                    out[u64(o + c * osc + w)] = acc


# one compiled kernel per source of points and rule: inlined with constant flags, their branches leave the loop
@numba.njit(nogil=True, boundscheck=False, cache=True)
def grid_linear(src, shape, src_rows, out, out_spatial, out_rows, grid, grid_strides, theta, coords, padding, lo, hi):
    _sample(
        src, shape, src_rows, out, out_spatial, out_rows, grid, grid_strides, False, theta, coords, 0, padding, lo, hi
    )


@numba.njit(nogil=True, boundscheck=False, cache=True)
def grid_nearest(src, shape, src_rows, out, out_spatial, out_rows, grid, grid_strides, theta, coords, padding, lo, hi):
    _sample(
        src, shape, src_rows, out, out_spatial, out_rows, grid, grid_strides, False, theta, coords, 1, padding, lo, hi
    )


@numba.njit(nogil=True, boundscheck=False, cache=True)
def affine_linear(src, shape, src_rows, out, out_spatial, out_rows, grid, grid_strides, theta, coords, padding, lo, hi):
    _sample(
        src, shape, src_rows, out, out_spatial, out_rows, grid, grid_strides, True, theta, coords, 0, padding, lo, hi
    )


@numba.njit(nogil=True, boundscheck=False, cache=True)
def affine_nearest(
    src, shape, src_rows, out, out_spatial, out_rows, grid, grid_strides, theta, coords, padding, lo, hi
):
    _sample(
        src, shape, src_rows, out, out_spatial, out_rows, grid, grid_strides, True, theta, coords, 1, padding, lo, hi
    )


KERNELS = {(False, 0): grid_linear, (False, 1): grid_nearest, (True, 0): affine_linear, (True, 1): affine_nearest}
