"""PyTorch's 3D ``grid_sample`` (``align_corners=False``) for float32 on the CPU, compiled by numba.

The same arithmetic as ATen's scalar 3D kernel, operation for operation in float32 (the same
unnormalisation, clipping and reflection, the eight corner weights as the same products,
summed in the same order), so the values are bit-identical. It takes a little over half of
ATen's time on one thread (compiled for this CPU, without ATen's per-voxel generality), forms
the points of an affine grid where it reads them instead of reading a grid from memory, and
splits the output slices of the whole batch over ``torch.get_num_threads()`` threads, where
ATen's kernel is parallel over the batch only.

Used by :func:`fusefn.augment._resample.grid_sample` in eager mode on the CPU; anything else
(float64, a tensor that needs gradients, a compiled graph, a GPU, numba missing) goes to
``F.grid_sample``. numba compiles each variant on first use (a second or two) and caches it on disk.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from ._common import split_over_threads

__all__ = ["affine_3d", "affine_eligible", "available", "eligible", "grid_sample_3d"]

_MODES = {"bilinear": 0, "nearest": 1}
_PADDINGS = {"zeros": 0, "border": 1, "reflection": 2}
# below this many output voxels a thread costs more than it saves
_MIN_PER_THREAD = 1 << 15


@functools.cache
def _kernel():
    """The module of compiled kernels, or ``None`` (with one warning) where numba cannot provide them."""
    try:
        from . import _sample3d_numba
    except Exception as e:  # pragma: no cover - numba is a dependency; a platform without its wheels falls back
        warnings.warn(
            f"fusefn: the compiled 3D resampling kernel is unavailable ({type(e).__name__}: {e}); "
            "3D augmentation uses PyTorch's slower grid_sample (the same values)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return _sample3d_numba


def available() -> bool:
    """Whether the compiled kernel can run here (numba importable)."""
    return _kernel() is not None


def eligible(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str) -> bool:
    """Whether :func:`grid_sample_3d` takes this call (else ``F.grid_sample`` does)."""
    return (
        _plain(x)
        and _plain(grid)
        and x.ndim == 5
        and min(x.shape[2:]) > 0  # F.grid_sample raises on an empty input: let it
        and x.dtype == torch.float32
        and grid.dtype == torch.float32
        and x.device.type == "cpu"
        and grid.device.type == "cpu"
        and mode in _MODES
        and padding in _PADDINGS
        and not (x.requires_grad or grid.requires_grad)
        and not torch.compiler.is_compiling()
        and grid.ndim == 5
        and grid.shape[0] == x.shape[0]
        and grid.shape[-1] == 3
        and available()
    )


def grid_sample_3d(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """``F.grid_sample(x, grid, mode, padding, align_corners=False)`` for ``N×C×D×H×W`` float32 on the CPU.

    Call :func:`eligible` first. ``grid`` may be a strided view (channel-first grids are read in place).

    >>> import torch, torch.nn.functional as F
    >>> x, grid = torch.rand(2, 1, 4, 5, 6), torch.rand(2, 3, 4, 5, 3) * 2.2 - 1.1
    >>> torch.equal(grid_sample_3d(x, grid, "bilinear", "zeros"), F.grid_sample(x, grid, align_corners=False))
    True
    """
    x, grid = x.detach().contiguous(), grid.detach()
    n = x.shape[0]
    out = torch.empty((*x.shape[:2], *grid.shape[1:4]), dtype=x.dtype)
    # a flat view of the grid's memory, read through its strides
    extent = 1 + sum((s - 1) * st for s, st in zip(grid.shape, grid.stride()))
    flat = torch.as_strided(grid, (extent,), (1,)).numpy()
    rows = torch.arange(n).numpy()
    args = (_flat(x), tuple(x.shape[1:]), rows, _flat(out), tuple(out.shape[2:]), rows, flat, tuple(grid.stride()))
    unused = (np.zeros((1, 3, 4), dtype=np.float32), np.zeros((3, 1), dtype=np.float32))
    _run(False, mode, (*args, *unused, _PADDINGS[padding]), n, out)
    return out


def affine_eligible(x: torch.Tensor, mode: str, padding: str) -> bool:
    """Whether :func:`affine_3d` takes ``x`` (float32 for bilinear; integer or float32 for nearest)."""
    kinds = (torch.float32,) if mode == "bilinear" else (torch.float32, *_LABEL_DTYPES)
    return (
        _plain(x)
        and x.ndim == 5
        and min(x.shape[2:]) > 0
        and x.dtype in kinds
        and x.device.type == "cpu"
        and mode in _MODES
        and padding in _PADDINGS
        and not x.requires_grad
        and not torch.compiler.is_compiling()
        and available()
    )


_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _plain(t: torch.Tensor) -> bool:
    """A real CPU tensor read as memory: no subclass or fake tensor, no trace that would bake the result in."""
    return type(t) is torch.Tensor and not torch.jit.is_tracing()


def affine_3d(
    x: torch.Tensor, out: torch.Tensor, index: torch.Tensor, theta: torch.Tensor, mode: str, padding: str
) -> torch.Tensor:
    """Write into ``out[index]`` samples ``x[index]`` resampled through the affine grids ``theta`` (``n×3×4``).

    The values of ``F.grid_sample`` on ``grid_from_inverse``'s grid (whose ``theta`` this is), with
    no grid in memory: each grid value is formed where it is read. Integer masks are sampled in
    their own dtype, so every label is copied exactly (a float32 round trip would round labels
    above 2**24). One call covers every sample,
    its slices split over the threads. ``out`` may be ``x`` itself or strided (then the samples go
    through a temporary). Call :func:`affine_eligible` first.
    """
    if index.shape[0] == 0:
        return out
    x = x.detach().contiguous()
    spatial = tuple(out.shape[2:])
    coords = torch.zeros((3, max(spatial)), dtype=torch.float32)
    for axis, size in enumerate(spatial):
        coords[axis, :size] = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    # the kernel writes a contiguous buffer that no input row is read from; else through a temporary
    direct = out.is_contiguous() and out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    dst = out if direct else torch.empty((index.shape[0], *out.shape[1:]), dtype=out.dtype)
    rows = index.to(torch.int64).contiguous()
    dst_rows = rows if direct else torch.arange(index.shape[0])
    unused = (np.zeros(1, dtype=np.float32), (0,) * 5)
    args = (_flat(x), tuple(x.shape[1:]), rows.numpy(), _flat(dst), spatial, dst_rows.numpy(), *unused)
    theta = theta.detach().to(torch.float32).contiguous().numpy()
    _run(True, mode, (*args, theta, coords.numpy(), _PADDINGS[padding]), index.shape[0], dst)
    if not direct:
        out.index_copy_(0, index, dst)
    return out


def _flat(t: torch.Tensor):
    return t.numpy().reshape(-1)


def _run(affine: bool, mode: str, args: tuple, samples: int, out: torch.Tensor) -> None:
    """The kernel with ``args`` over the ``samples × depth`` output slices, split over the threads.

    Python threads, not numba's: the kernel releases the GIL, and no second thread pool is started
    beside PyTorch's.
    """
    slices = samples * out.shape[2]
    per_slice = out.shape[1] * out.shape[3] * out.shape[4]
    kernel = _kernel().KERNELS[affine, _MODES[mode]]
    threads = min(torch.get_num_threads(), max(1, slices * per_slice // _MIN_PER_THREAD))
    split_over_threads(slices, lambda lo, hi: kernel(*args, lo, hi), threads=threads)
