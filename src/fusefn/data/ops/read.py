"""Readers: one file (or one row of an array file) into a key of the sample dict.

Every reader finds its file either from ``path``, a template formatted with
``sample_id`` and the columns of the sample's source row (``data.source.*``), or
from the value at ``path_key`` (by default ``data.source.path``, the column that
:meth:`DataSource.from_glob` writes). Arrays come out channel-first.

>>> import numpy as np, pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> np.save(d / "s0.npy", np.ones((4, 4), np.float32))
>>> read = ReadNpy(path=str(d / "{sample_id}.npy"), key="data.input.img", add_channel=True)
>>> read({"data": {"sample_id": "s0"}})["data"]["input"]["img"].shape
(1, 4, 4)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import keys, nd
from fusefn import validators as v
from fusefn.affine import grid_gap_mm
from fusefn.core import record
from fusefn.data.ops._base import fail, get, require, sample_id
from fusefn.errors import ConfigError

__all__ = ["ReadNpy", "ReadNpz", "ReadImage", "ReadDicom", "ReadNifti", "resolve_path", "nifti_affine"]

_PATH = f"{keys.SOURCE}.path"

AFFINE_TOLERANCE_MM = 1e-3
"""How far (mm) two grids may place the same voxel and still count as one grid: float32 storage of a
NIfTI sform/qform moves a corner of a 512³ volume by about 1e-4 mm, a real misregistration by far more."""


def resolve_path(op, sample: Mapping, *, folder: bool = False) -> str:
    """The file (``folder``: the folder) ``op`` reads for ``sample``; an error naming the sample if it does not exist."""
    if op.path is not None:
        fields = {"sample_id": sample_id(sample), **nd.flatten(nd.get(sample, keys.SOURCE, {}))}
        try:
            path = op.path.format(**fields)
        except (KeyError, IndexError) as exc:
            raise fail(
                sample, op, op.key, f"path template {op.path!r} names {exc}, not sample_id or a data.source column"
            ) from None
    else:
        path = get(sample, op, op.path_key)
    path = os.fspath(path)
    if folder and not os.path.isdir(path):
        raise fail(sample, op, op.key, f"folder not found: {path}")
    if not folder and not os.path.isfile(path):
        raise fail(sample, op, op.key, f"file not found: {path}")
    return path


def geometry_updates(
    op, sample: Mapping, arr: np.ndarray, affine: np.ndarray, where: str, check: str | None = None
) -> dict:
    """The geometry keys a volume reader writes beside ``arr`` (channel first): its affine and the original grid.

    With ``check`` (a mask read after its image: ``ReadNifti.check_affine_key``), nothing is written:
    the affine is compared with the one at that key instead, and a gap over ``op.affine_tolerance``
    mm is an error naming both grids.
    """
    affine = np.asarray(affine, dtype=np.float64)
    spatial = tuple(int(n) for n in arr.shape[1:])
    if check is not None:
        other = np.asarray(get(sample, op, check), dtype=np.float64)
        if other.shape != (4, 4):
            raise fail(sample, op, check, f"expected a 4×4 affine, got shape {other.shape}")
        gap = grid_gap_mm(affine, other, spatial)
        if not gap <= op.affine_tolerance:
            raise fail(
                sample,
                op,
                op.key,
                f"the grid of {where} is not the grid at {check!r}: the same voxel lies {gap:.4g} mm apart "
                f"(tolerance {op.affine_tolerance:g} mm); affine of {where}:\n{np.round(affine, 4)}\n"
                f"affine at {check!r}:\n{np.round(other, 4)}",
            )
        return {}
    out = {}
    if op.affine_key is not None:
        out[op.affine_key] = affine
    if op.original_affine_key is not None:
        out[op.original_affine_key] = affine.copy()
    if op.original_shape_key is not None:
        out[op.original_shape_key] = spatial
    return out


def _layout(arr: np.ndarray, add_channel: bool, channels_last: bool) -> np.ndarray:
    if channels_last:
        arr = np.moveaxis(arr, -1, 0)
    if add_channel:
        arr = arr[None]
    return np.ascontiguousarray(arr)


@record
class ReadNpy:
    """Read a ``.npy`` file into ``key``.

    Args:
        add_channel: put a leading channel axis of size 1 (``H×W -> 1×H×W``).
        channels_last: move the last axis to the front (``H×W×C -> C×H×W``).
    """

    key: str = keys.IMAGE
    path: str | None = None
    path_key: str = _PATH
    add_channel: bool = False
    channels_last: bool = False

    def __call__(self, sample: Mapping) -> dict:
        path = resolve_path(self, sample)
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise fail(sample, self, self.key, f"cannot read {path}: {exc}") from exc
        if not isinstance(arr, np.ndarray):
            raise fail(sample, self, self.key, f"{path} is an .npz archive; use ReadNpz")
        return nd.assoc(sample, self.key, _layout(arr, self.add_channel, self.channels_last))


_NPZ_KEPT = 8
"""How many decompressed ``.npz`` members a ReadNpz keeps (one per file version it read last)."""


def _npz_member(path: str, member: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        if member not in z.files:
            raise KeyError(f"no array {member!r} in {path}; arrays: {', '.join(z.files)}")
        return z[member]


@record
class ReadNpz:
    """Read array ``array`` of an ``.npz`` file (row ``index_key`` of it when given) into ``key``.

    The MedMNIST layout (``train_images``, ``train_labels``, ``val_*``, ``test_*``) is read with
    ``ReadNpz(array="train_images", index_key="data.source.index", add_channel=True)`` over
    :meth:`DataSource.from_medmnist`. Each op keeps the arrays it read last in memory (an ``.npz``
    member is decompressed whole on every access); the memo is not part of the configuration, is
    not pickled, so every process (DataLoader worker) fills its own, and a changed file is read again.
    """

    array: str
    key: str = keys.IMAGE
    path: str | None = None
    path_key: str = _PATH
    index_key: str | None = None
    add_channel: bool = False
    channels_last: bool = False

    def __call__(self, sample: Mapping) -> dict:
        path = resolve_path(self, sample)
        try:
            arr = self._member(path)
        except Exception as exc:
            raise fail(sample, self, self.key, f"cannot read {path}: {exc}") from exc
        if self.index_key is not None:
            index = get(sample, self, self.index_key)
            if not isinstance(index, (int, np.integer)) or not 0 <= index < len(arr):
                raise fail(sample, self, self.index_key, f"index {index!r} outside [0, {len(arr)}) of {self.array!r}")
            arr = arr[int(index)]
        return nd.assoc(sample, self.key, _layout(np.array(arr), self.add_channel, self.channels_last))

    @functools.cached_property
    def _memo(self) -> dict:
        return {}

    def _member(self, path: str) -> np.ndarray:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        memo = self._memo
        arr = memo.get(key)
        if arr is None:
            arr = memo[key] = _npz_member(path, self.array)
            while len(memo) > _NPZ_KEPT:
                memo.pop(next(iter(memo)))
        return arr


@record
class ReadImage:
    """Read a PNG/JPEG/TIFF/BMP with Pillow into a ``C×H×W`` uint8 array at ``key``.

    Args:
        mode: Pillow mode to convert to (``"L"`` gray, ``"RGB"``); ``None`` keeps the file's.
    """

    key: str = keys.IMAGE
    path: str | None = None
    path_key: str = _PATH
    mode: str | None = None

    def __call__(self, sample: Mapping) -> dict:
        from PIL import Image

        path = resolve_path(self, sample)
        try:
            with Image.open(path) as im:
                im.load()
                if self.mode is not None:
                    im = im.convert(self.mode)
                arr = np.asarray(im)
        except Exception as exc:
            raise fail(sample, self, self.key, f"cannot read image {path}: {exc}") from exc
        arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
        return nd.assoc(sample, self.key, np.ascontiguousarray(arr))


def _window_ok(instance, attribute, value) -> None:
    # one of three forms (None, "file", a pair): no fusefn.validators combination says "one of"
    if value is None or value == "file":
        return
    if not (isinstance(value, tuple) and len(value) == 2 and value[1] > 0):
        raise ConfigError(f"{type(instance).__name__}.window must be None, 'file' or (center, width>0), got {value!r}")


def _first(v) -> float:
    # DICOM multi-valued fields (several windows) come as sequences: the first is the default view
    try:
        return float(v[0])
    except TypeError:
        return float(v)


def _decoded(ds) -> tuple[np.ndarray, str]:
    """The pixels and the photometric interpretation they came out in."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2: a handler that converts colour says so in the dataset, read after decoding
        arr = ds.pixel_array
        return arr, str(ds.PhotometricInterpretation)
    # decoding plugins differ in whether they convert YCbCr themselves; the decoder says which it did
    arr, meta = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, as_rgb=False)
    return arr, str(meta["photometric_interpretation"])


def _colour_helpers():
    try:
        from pydicom.pixels import apply_color_lut, convert_color_space
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space
    return apply_color_lut, convert_color_space


def _stored_range(ds) -> tuple[int, int]:
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@record
class ReadDicom:
    """Read a DICOM file's pixels as float32 into ``key``.

    Grayscale comes out ``1×H×W`` (``F×H×W`` for ``F`` frames). Colour comes out channel-first
    like :class:`ReadImage`, ``3×H×W`` RGB, and multi-frame colour as the volume ``3×F×H×W``
    (``C×D×H×W``, as the geometry ops take it). YBR_FULL and YBR_FULL_422 are converted to RGB and
    PALETTE COLOR is looked up through its palette (values on the palette's scale, up to 65535 for
    16-bit entries); other colour spaces raise.

    MONOCHROME1 ("minimum is white") is inverted so that higher is always brighter: ``lo + hi - x``,
    with ``[lo, hi]`` the range BitsStored/PixelRepresentation can store (through the rescale when
    it is applied), so the same stored value gives the same output in every file of a series.

    Args:
        rescale: apply RescaleSlope/RescaleIntercept (e.g. to Hounsfield units); grayscale only.
        window: ``(center, width)`` of the output values (after rescale and inversion) to clip to
            and map to [0, 1]; ``"file"`` uses the file's WindowCenter/WindowWidth, which for
            MONOCHROME1 are mirrored the same way as the pixels; ``None`` keeps the values.
        affine_key: where to put the 4×4 voxel-to-world matrix (mm, RAS+) of the slice (``None``: nowhere),
            from ImagePositionPatient, ImageOrientationPatient and PixelSpacing (an error when one is
            missing). Its voxel axes are (slice, row, column): the affine of the image as a one-slice
            volume, ``img[:, None]``; the slice axis is the plane's normal, SpacingBetweenSlices or
            SliceThickness long (1 mm when neither is given). Series of slices: :class:`ReadDicomSeries`.
    """

    key: str = keys.IMAGE
    path: str | None = None
    path_key: str = _PATH
    rescale: bool = True
    window: tuple | str | None = attrs.field(default=None, validator=_window_ok)
    affine_key: str | None = None

    def __call__(self, sample: Mapping) -> dict:
        pydicom = require("pydicom", "dicom", "ReadDicom")
        path = resolve_path(self, sample)
        try:
            ds = pydicom.dcmread(path)
            arr, photometric = _decoded(ds)
            apply_color_lut, convert_color_space = _colour_helpers()
            if photometric in ("YBR_FULL", "YBR_FULL_422"):
                arr, photometric = convert_color_space(arr, photometric, "RGB"), "RGB"
            elif photometric == "PALETTE COLOR":
                arr, photometric = apply_color_lut(arr, ds), "RGB"
        except Exception as exc:
            raise fail(sample, self, self.key, f"cannot read DICOM {path}: {type(exc).__name__}: {exc}") from exc
        if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
            raise fail(
                sample,
                self,
                self.key,
                f"{path}: photometric interpretation {photometric!r} is not supported "
                "(MONOCHROME1/2, RGB, YBR_FULL, YBR_FULL_422, PALETTE COLOR are)",
            )
        arr = arr.astype(np.float32)
        gray = photometric != "RGB"
        lo, hi = _stored_range(ds)
        # the modality LUT is defined for grayscale only; colour samples are never rescaled
        if self.rescale and gray:
            slope, intercept = float(getattr(ds, "RescaleSlope", 1.0)), float(getattr(ds, "RescaleIntercept", 0.0))
            arr = arr * slope + intercept
            lo, hi = lo * slope + intercept, hi * slope + intercept
        inverted = photometric == "MONOCHROME1"
        if inverted:
            arr = (lo + hi) - arr
        window = self.window
        if window == "file":
            if "WindowCenter" not in ds or "WindowWidth" not in ds:
                raise fail(sample, self, self.key, f"{path} has no WindowCenter/WindowWidth")
            center = _first(ds.WindowCenter)
            # the file's window is over its own values, before the inversion above
            window = ((lo + hi) - center if inverted else center, _first(ds.WindowWidth))
        if window is not None:
            lo_w = window[0] - window[1] / 2
            arr = np.clip((arr - lo_w) / window[1], 0.0, 1.0).astype(np.float32)
        if gray:
            arr = arr[None] if arr.ndim == 2 else arr
        else:
            arr = np.moveaxis(arr, -1, 0)
        out = {self.key: np.ascontiguousarray(arr, dtype=np.float32)}
        if self.affine_key is not None:
            from fusefn.data.ops.dicom_series import slice_affine

            try:
                out[self.affine_key] = slice_affine(ds)
            except ValueError as exc:
                raise fail(sample, self, self.affine_key, f"{path}: {exc}") from exc
        return nd.assoc_many(sample, out)


_NIFTI_CODES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}


def nifti_affine(img, path: str) -> tuple[np.ndarray, str]:
    """The voxel-to-world matrix of a NIfTI image by nibabel's rule, and which of its two it is (``"sform"``/``"qform"``).

    nibabel (``img.affine``, ``header.get_best_affine()``) takes the sform when its code is set
    and the qform otherwise; when both are set and place a voxel more than
    :data:`AFFINE_TOLERANCE_MM` apart, a warning names the file and says the sform is used.
    Neither set (both codes 0) leaves only the voxel sizes, no position or orientation: a
    :class:`ValueError`.
    """
    import warnings

    hdr = img.header
    sform, s_code = hdr.get_sform(coded=True)
    qform, q_code = hdr.get_qform(coded=True)
    s_code, q_code = int(s_code or 0), int(q_code or 0)
    if s_code == 0 and q_code == 0:
        raise ValueError(
            f"{path}: neither sform nor qform is set (both codes 0), so where the voxels lie is unknown; "
            "set one (e.g. nibabel's img.set_sform(affine, code=1)) or write it with fusefn.data.write_nifti"
        )
    used = "sform" if s_code > 0 else "qform"
    affine = np.asarray(sform if used == "sform" else qform, dtype=np.float64)
    if s_code > 0 and q_code > 0:
        gap = grid_gap_mm(sform, qform, img.shape)
        if gap > AFFINE_TOLERANCE_MM:
            warnings.warn(
                f"{path}: sform ({_NIFTI_CODES.get(s_code, s_code)}) and qform ({_NIFTI_CODES.get(q_code, q_code)}) "
                f"place the same voxel up to {gap:.4g} mm apart; using the sform (nibabel's rule)",
                stacklevel=3,
            )
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{path}: the {used} is not an invertible voxel-to-world matrix:\n{affine}")
    return affine, used


@record
class ReadNifti:
    """Read a NIfTI volume (``1×X×Y×Z`` float32, scaling applied) and the voxel-to-world matrix it lies on.

    The affine (4×4 float64, mm, RAS+, voxel axes the array's ``X, Y, Z`` in order: nibabel's
    ``img.affine``) goes to ``affine_key``, and with its spatial shape to the ``original_*`` keys so
    predictions can be put back on this grid. It is the sform when its code is set, else the
    qform (see :func:`nifti_affine`); a file with neither is an error. A 4D file (``X×Y×Z×T``)
    comes out ``T×X×Y×Z``, one channel per volume.

    Reading a label map onto the image's grid, ``check_affine_key=keys.AFFINE`` compares its affine
    with the image's instead of writing one: grids further than ``affine_tolerance`` mm apart (at
    any voxel) are an error naming both.

    Args:
        affine_key, original_affine_key, original_shape_key: where the geometry goes (``None``: nowhere).
        check_affine_key: compare with the affine at this key instead of writing any geometry.
        affine_tolerance: how far apart (mm) two grids may place a voxel and still be one grid.

    >>> import nibabel as nib, pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([0.8, 0.8, 2.5, 1.0])), d / "ct.nii.gz")
    >>> s = ReadNifti(path=str(d / "{sample_id}.nii.gz"))({"data": {"sample_id": "ct"}})["data"]["input"]
    >>> s["img"].shape, s["affine"].diagonal().tolist(), s["original_shape"]
    ((1, 4, 5, 6), [0.8..., 0.8..., 2.5, 1.0], (4, 5, 6))
    """

    key: str = keys.IMAGE
    path: str | None = None
    path_key: str = _PATH
    add_channel: bool = True
    affine_key: str | None = keys.AFFINE
    original_affine_key: str | None = keys.ORIGINAL_AFFINE
    original_shape_key: str | None = keys.ORIGINAL_SHAPE
    check_affine_key: str | None = None
    affine_tolerance: float = attrs.field(default=AFFINE_TOLERANCE_MM, validator=v.ge(0))

    def __call__(self, sample: Mapping) -> dict:
        nib = require("nibabel", "nifti", "ReadNifti")
        path = resolve_path(self, sample)
        try:
            img = nib.load(path)
        except Exception as exc:
            raise fail(sample, self, self.key, f"cannot read NIfTI {path}: {type(exc).__name__}: {exc}") from exc
        try:
            affine, _ = nifti_affine(img, path)
        except ValueError as exc:
            raise fail(sample, self, self.key, str(exc)) from exc
        try:
            arr = np.asarray(img.get_fdata(dtype=np.float32))
        except Exception as exc:
            raise fail(sample, self, self.key, f"cannot read NIfTI {path}: {type(exc).__name__}: {exc}") from exc
        if arr.ndim == 4 and self.add_channel:
            arr = np.moveaxis(arr, -1, 0)
        elif self.add_channel:
            arr = arr[None]
        arr = np.ascontiguousarray(arr)
        geometry = geometry_updates(
            self, sample, arr if self.add_channel else arr[None], affine, path, check=self.check_affine_key
        )
        return nd.assoc_many(sample, {self.key: arr, **geometry})
