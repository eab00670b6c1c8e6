"""Write a volume with its voxel-to-world matrix as NIfTI, whole or not at all.

The inverse of :class:`~fusefn.data.ops.ReadNifti`: what it writes reads back as the same
array on the same grid (the affine to float32 precision, as NIfTI stores it).

>>> import pathlib, tempfile
>>> from fusefn.data.ops import ReadNifti
>>> path = pathlib.Path(tempfile.mkdtemp()) / "pred.nii.gz"
>>> affine = np.array([[0.0, 0.0, -2.5, 10.0], [0.8, 0.0, 0.0, -5.0], [0.0, 0.8, 0.0, 3.0], [0, 0, 0, 1]])
>>> write_nifti(path, np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4), affine)
>>> back = ReadNifti(path=str(path))({"data": {"sample_id": "pred"}})["data"]["input"]
>>> back["img"].shape, bool((back["img"].ravel() == np.arange(24)).all()), np.allclose(back["affine"], affine)
((1, 2, 3, 4), True, True)
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from fusefn import _atomic
from fusefn._types import is_tensor
from fusefn.data.ops._base import require
from fusefn.errors import ConfigError

__all__ = ["write_nifti"]

_SCANNER = 1  # NIfTI xform code: scanner-anatomical coordinates


def _as_numpy(array) -> np.ndarray:
    if is_tensor(array):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _default_dtype(arr: np.ndarray) -> np.dtype:
    if arr.dtype.kind == "b":
        return np.dtype(np.uint8)
    if arr.dtype == np.float16:
        return np.dtype(np.float32)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize == 8:
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        for t in (np.int16, np.int32):
            if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
                return np.dtype(t)
    return arr.dtype


def write_nifti(path: str | os.PathLike, array, affine, *, dtype=None) -> None:
    """Write ``array`` on the grid ``affine`` to ``path`` (``.nii`` or ``.nii.gz``), atomically.

    Args:
        array: the volume, spatial (``X×Y×Z``) or with one leading channel (``1×X×Y×Z``, as the
            readers give it); NumPy or torch.
        affine: its 4×4 voxel-to-world matrix (mm, RAS+, :data:`fusefn.keys.AFFINE`), written as
            the sform and the qform, both with code 1 (scanner). The qform holds no shear: a sheared
            affine is stored exactly in the sform, which readers use first.
        dtype: the stored type; by default the array's, with bool as uint8, float16 as float32 and
            int64 as the smallest of int16/int32 that holds the values.

    The file is written beside ``path`` under a temporary name and renamed over it, so a reader
    never sees half a file.
    """
    nib = require("nibabel", "nifti", "write_nifti")
    arr = _as_numpy(array)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ConfigError(f"write_nifti: expected a spatial (X×Y×Z) or 1×X×Y×Z array, got shape {arr.shape}")
    affine = _as_numpy(affine).astype(np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ConfigError(f"write_nifti: affine must be an invertible 4×4 matrix, got {affine.tolist()}")
    out_type = np.dtype(dtype) if dtype is not None else _default_dtype(arr)
    img = nib.Nifti1Image(np.ascontiguousarray(arr.astype(out_type, copy=False)), affine, dtype=out_type)
    img.set_sform(affine, code=_SCANNER)
    img.set_qform(affine, code=_SCANNER)
    data = img.to_bytes()
    if os.fspath(path).endswith(".gz"):
        # level 1 as nibabel writes; mtime 0 so the same volume gives the same bytes
        data = gzip.compress(data, compresslevel=1, mtime=0)
    _atomic.write_bytes(path, data)
