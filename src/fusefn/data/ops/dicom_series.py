"""A DICOM series (one file per slice) as one volume with its voxel-to-world matrix.

Slices are ordered by their position along the slice normal (the cross product of the two
directions of ImageOrientationPatient), never by file name or InstanceNumber. The affine comes
from ImageOrientationPatient, ImagePositionPatient and PixelSpacing, converted from DICOM's
LPS to RAS+ (nibabel's convention, :data:`fusefn.keys.AFFINE`); its voxel axes are the
array's (slice, row, column), and the slice step is the mean step between the sorted
positions, so a tilted gantry gives the sheared affine the positions describe.

Headers are read first (only the tags needed, the pixels left on disk), the series is checked,
then the pixels are read: uncompressed little-endian ones straight from the file at their
offset, compressed ones through pydicom's decoders.

>>> import pathlib, tempfile
>>> from fusefn_recipes.phantoms import write_dicom_series
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_dicom_series(folder, np.arange(24, dtype=np.int16).reshape(3, 2, 4), spacing=(2.5, 0.5, 0.7))
>>> vol, affine, info = read_dicom_series(folder)
>>> vol.shape, vol[0, 2, 1, 3], np.round(np.linalg.norm(affine[:3, :3], axis=0), 3).tolist(), info["n_slices"]
((1, 3, 2, 4), np.float32(23.0), [2.5, 0.5, 0.7], 3)
"""

from __future__ import annotations

import concurrent.futures
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from fusefn import keys, nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.data.ops._base import fail, require, sample_id
from fusefn.data.ops.read import _PATH, _stored_range, geometry_updates, resolve_path
from fusefn.errors import FusefnError, SampleError

__all__ = ["DicomSeriesError", "ReadDicomSeries", "read_dicom_series", "slice_affine"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM's patient axes point Left, Posterior, Superior; RAS+ flips the first two."""

GAP_FACTOR = 1.5
"""A step between sorted slice positions over this many times the median step means slices are missing."""
OFF_GRID = 0.05
"""A slice further than this fraction of the slice spacing from the regular grid makes the series irregular."""
ORIENTATION_TOLERANCE = 1e-3
"""How much (direction cosines) the ImageOrientationPatient of two slices may differ and still be one orientation."""

_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian
_HEADER_TAGS = [
    "SOPClassUID",
    "Modality",
    "SeriesInstanceUID",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "SpacingBetweenSlices",
    "SliceThickness",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "PixelData",
]
_DEFER = 4096  # bytes: larger values (the pixels) stay on disk, only their offset is read


class DicomSeriesError(FusefnError, ValueError):
    """A folder that is not one readable series (several series, missing slices, mixed slices, non-images)."""


def _numbers(ds, keyword: str) -> list[float] | None:
    """The values of a decimal-string element, ``None`` when absent or empty.

    Parsed from the raw bytes when pydicom has not converted them yet: its conversion checks each
    value against the standard and costs more than the rest of a header's read.
    """
    el = ds.get_item(keyword)
    if el is None:
        return None
    value = el.value
    if isinstance(value, bytes):
        vals = [float(x) for x in value.decode("latin-1").strip(" \0").split("\\") if x.strip(" \0")]
    elif value is None or value == "":
        vals = []
    elif isinstance(value, (str, int, float)):
        vals = [float(value)]
    else:
        vals = [float(x) for x in value]
    return vals or None


def _orientation(ds) -> tuple[np.ndarray, np.ndarray]:
    iop = np.asarray(_numbers(ds, "ImageOrientationPatient") or [], dtype=np.float64)
    if iop.shape != (6,):
        raise ValueError(f"ImageOrientationPatient has {iop.size} values, not 6")
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise ValueError(f"ImageOrientationPatient {iop.tolist()} is not two orthogonal unit directions")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _lps_affine(row: np.ndarray, col: np.ndarray, pixel_spacing, step: np.ndarray, origin) -> np.ndarray:
    """Voxel (slice, row, column) -> LPS: slice ``k`` row ``r`` column ``c`` lies at ``origin + k*step + r*dr*col + c*dc*row``."""
    dr, dc = (float(x) for x in pixel_spacing)  # PixelSpacing is (between rows, between columns)
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = step, col * dr, row * dc, np.asarray(origin, dtype=np.float64)
    return a


def slice_affine(ds) -> np.ndarray:
    """The RAS+ affine of one slice as a one-slice volume (voxel axes slice, row, column).

    The slice axis is the plane's normal, SpacingBetweenSlices (else SliceThickness, else 1 mm) long.
    A ValueError names the missing tag.
    """
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if _numbers(ds, tag) is None:
            raise ValueError(f"no {tag}: the slice has no position in the patient")
    return LPS_TO_RAS @ _slice_lps(ds, *_orientation(ds))


def _slice_lps(ds, row, col) -> np.ndarray:
    thick = (_numbers(ds, "SpacingBetweenSlices") or _numbers(ds, "SliceThickness") or [1.0])[0]
    origin = _numbers(ds, "ImagePositionPatient")
    return _lps_affine(row, col, _numbers(ds, "PixelSpacing"), np.cross(row, col) * thick, origin)


def _list_files(files_or_folder) -> tuple[str, list[str]]:
    if isinstance(files_or_folder, (str, os.PathLike)):
        where = os.fspath(files_or_folder)
        if os.path.isdir(where):
            with os.scandir(where) as it:
                # hidden files (.DS_Store, editor backups) are never slices
                files = sorted(e.path for e in it if e.is_file() and not e.name.startswith("."))
            if not files:
                raise DicomSeriesError(f"{where}: no files in the folder")
            return where, files
        if os.path.isfile(where):
            return where, [where]
        raise DicomSeriesError(f"{where}: no such folder or file")
    files = [os.fspath(f) for f in files_or_folder]
    if not files:
        raise DicomSeriesError("no files given")
    return os.path.dirname(files[0]) or ".", files


def _header(pydicom, path: str):
    try:
        return pydicom.dcmread(path, defer_size=_DEFER, specific_tags=_HEADER_TAGS)
    except pydicom.errors.InvalidDicomError as exc:
        # files without the 128-byte preamble exist (older writers); anything else parsed by force holds none of these
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER, specific_tags=_HEADER_TAGS, force=True)
        except Exception:
            return exc
        return ds if "SOPClassUID" in ds or "Rows" in ds else exc
    except Exception as exc:
        return exc


def _map(fn, items, threads: int):
    if threads <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def _names(paths, n: int = 5) -> str:
    shown = ", ".join(os.path.basename(p) for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def _choose_series(where: str, files: list[str], headers: list, series_uid: str | None) -> list[int]:
    """The indices of the files of the one series to read; an error for non-DICOM files, non-images, several series."""
    broken = [(f, h) for f, h in zip(files, headers) if isinstance(h, Exception)]
    if broken:
        _, h = broken[0]
        raise DicomSeriesError(
            f"{where}: {len(broken)} file(s) are not readable DICOM ({_names([b[0] for b in broken])}); "
            f"first: {type(h).__name__}: {h}"
        )
    uids = [str(h.get("SeriesInstanceUID", "")) for h in headers]
    if series_uid is not None:
        chosen = [i for i, u in enumerate(uids) if u == series_uid]
        if not chosen:
            raise DicomSeriesError(f"{where}: no series {series_uid!r}; series here: {_series_list(uids)}")
    else:
        chosen = list(range(len(files)))
    images = [i for i in chosen if "PixelData" in headers[i] and "Rows" in headers[i]]
    if len(images) < len(chosen):
        odd = [files[i] for i in chosen if i not in set(images)]
        kinds = Counter(str(headers[i].get("SOPClassUID", "?")) for i in chosen if i not in set(images))
        raise DicomSeriesError(
            f"{where}: {len(odd)} DICOM object(s) are not images (no pixel data: {_names(odd)}; "
            f"SOP classes {dict(kinds)}); keep only the series' slices in the folder or pass the files"
        )
    if series_uid is None and len({uids[i] for i in images}) > 1:
        raise DicomSeriesError(
            f"{where}: {len(set(uids))} series in one folder ({_series_list(uids)}); "
            "choose one with series_uid= or give each its own folder"
        )
    return images


def _series_list(uids: list[str]) -> str:
    return "; ".join(f"{u or '<no SeriesInstanceUID>'}: {n} file(s)" for u, n in Counter(uids).most_common())


def _same(where: str, what: str, values: list, files: list[str]) -> None:
    counts = Counter(values)
    if len(counts) > 1:
        groups = "; ".join(
            f"{val}: {n} ({_names([f for f, x in zip(files, values) if x == val], 2)})" for val, n in counts.items()
        )
        raise DicomSeriesError(f"{where}: mixed {what} in one series: {groups}")


def _geometry(where: str, files: list[str], headers: list) -> tuple[np.ndarray, np.ndarray]:
    """The order of the slices and the LPS affine of the sorted volume; errors for anything not one regular grid."""
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        lacking = [f for f, h in zip(files, headers) if _numbers(h, tag) is None]
        if lacking:
            raise DicomSeriesError(
                f"{where}: {len(lacking)} slice(s) have no {tag} ({_names(lacking)}), so they have no place in a "
                "volume; read single images with ReadDicom"
            )
    try:
        dirs = [_orientation(h) for h in headers]
    except ValueError as exc:
        raise DicomSeriesError(f"{where}: {exc}") from None
    _same(where, "image sizes (Rows, Columns)", [(int(h.Rows), int(h.Columns)) for h in headers], files)
    frames = [int(h.get("NumberOfFrames") or 1) for h in headers]
    if max(frames) > 1:
        multi = [f for f, n in zip(files, frames) if n > 1]
        raise DicomSeriesError(f"{where}: multi-frame objects ({_names(multi)}) are not slices of a series")
    iops = np.array([np.concatenate(d) for d in dirs])
    off = np.abs(iops - iops[0]).max(axis=1)
    if off.max() > ORIENTATION_TOLERANCE:
        groups = Counter(tuple(np.round(x, 3).tolist()) for x in iops)
        raise DicomSeriesError(
            f"{where}: mixed orientations (ImageOrientationPatient) in one series: "
            + "; ".join(f"{list(k)}: {n} slice(s)" for k, n in groups.items())
        )
    spacings = np.array([_numbers(h, "PixelSpacing")[:2] for h in headers])
    if np.abs(spacings - spacings[0]).max() > 1e-4 * max(spacings[0].max(), 1.0):
        _same(where, "PixelSpacing", [tuple(np.round(s, 4).tolist()) for s in spacings], files)
    row, col = dirs[0]
    normal = np.cross(row, col)
    pos = np.array([_numbers(h, "ImagePositionPatient")[:3] for h in headers])
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    along, pos = along[order], pos[order]
    n = len(order)
    if n == 1:
        return order, LPS_TO_RAS @ _slice_lps(headers[0], row, col)
    steps = np.diff(along)
    median = float(np.median(steps))
    dup = np.flatnonzero(steps <= 1e-3 * max(median, 1e-3))
    if dup.size:
        i = int(dup[0])
        raise DicomSeriesError(
            f"{where}: {dup.size} pair(s) of slices share a position along the normal (e.g. "
            f"{_names([files[order[i]], files[order[i + 1]]])} at {along[i]:.4g} mm): several acquisitions, "
            "echoes or time points in one series are not one volume"
        )
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        detail = "; ".join(
            f"{steps[i]:.4g} mm between {along[i]:.4g} and {along[i + 1]:.4g} mm "
            f"(~{round(steps[i] / median) - 1} missing)"
            for i in gaps[:3]
        )
        raise DicomSeriesError(
            f"{where}: missing slices: {gaps.size} gap(s) over {GAP_FACTOR}× the median slice spacing "
            f"{median:.4g} mm: {detail}"
        )
    step = (pos[-1] - pos[0]) / (n - 1)
    drift = np.linalg.norm(pos - (pos[0] + np.arange(n)[:, None] * step), axis=1)
    if drift.max() > OFF_GRID * np.linalg.norm(step):
        k = int(drift.argmax())
        raise DicomSeriesError(
            f"{where}: irregular slice positions: {os.path.basename(files[order[k]])} lies {drift[k]:.4g} mm off the "
            f"regular grid of step {np.linalg.norm(step):.4g} mm (tolerance {OFF_GRID:.0%} of it)"
        )
    return order, LPS_TO_RAS @ _lps_affine(row, col, spacings[0], step, pos[0])


def _check_decodable(where: str, headers: list) -> None:
    syntaxes = {str(h.file_meta.TransferSyntaxUID) for h in headers if hasattr(h, "file_meta")} - _NATIVE_LE
    for uid in syntaxes:
        try:
            from pydicom.pixels import get_decoder
        except ImportError:  # pydicom 2: decoding errors are caught per slice
            return
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise DicomSeriesError(f"{where}: no decoder exists for transfer syntax {uid}") from None
        if not decoder.is_available:
            import pydicom.uid

            name = pydicom.uid.UID(uid).name
            missing = (
                "; ".join(f"{k}: {', '.join(vs)}" for k, vs in decoder.missing_dependencies.items())
                if isinstance(decoder.missing_dependencies, dict)
                else ", ".join(decoder.missing_dependencies)
            )
            raise DicomSeriesError(
                f"{where}: the pixels are compressed ({name}) and no decoder for it is installed: "
                f"pip install 'fusefn[dicom-compressed]' (pydicom's plugins need: {missing})"
            )


def _native_dtype(h) -> np.dtype | None:
    """The stored dtype when the pixels can be read raw from the file, else ``None`` (pydicom decodes them)."""
    if str(h.file_meta.TransferSyntaxUID) not in _NATIVE_LE or int(h.get("SamplesPerPixel", 1)) != 1:
        return None
    alloc, signed = int(h.BitsAllocated), int(h.get("PixelRepresentation", 0)) == 1
    if alloc not in (8, 16, 32):
        return None
    return np.dtype(f"<{'i' if signed else 'u'}{alloc // 8}")


def _raw_pixels(h, path: str) -> np.ndarray:
    dtype = _native_dtype(h)
    rows, cols = int(h.Rows), int(h.Columns)
    if dtype is None:
        arr = np.asarray(h.pixel_array)
    else:
        try:
            el = h.get_item("PixelData", keep_deferred=True)  # pydicom 3: the offset, not the pixels
        except TypeError:
            el = h.get_item("PixelData")
        offset = getattr(el, "value_tell", None)
        if offset is None:  # already read into memory (a small image)
            arr = np.frombuffer(h.PixelData, dtype=dtype, count=rows * cols)
        else:
            arr = np.fromfile(path, dtype=dtype, count=rows * cols, offset=offset)
        if arr.size < rows * cols:
            raise ValueError(f"pixel data holds {arr.size} values, not Rows×Columns = {rows * cols}")
        stored, alloc = int(h.get("BitsStored") or h.BitsAllocated), int(h.BitsAllocated)
        if stored < alloc:  # bits above BitsStored are not part of the value
            shift = alloc - stored
            arr = (arr << shift) >> shift if dtype.kind == "i" else arr & ((1 << stored) - 1)
    return arr.reshape(rows, cols)


def read_dicom_series(
    files_or_folder: str | os.PathLike | Sequence,
    *,
    series_uid: str | None = None,
    rescale: bool = True,
    threads: int = 2,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a DICOM series: the volume ``1×D×H×W`` float32, its 4×4 RAS+ affine and what was read.

    Args:
        files_or_folder: a folder (every file in it but hidden ones is a slice) or the slices' files.
        series_uid: the SeriesInstanceUID to read when the folder holds several series.
        rescale: apply each slice's RescaleSlope/RescaleIntercept (e.g. to Hounsfield units).
        threads: threads reading the files (2: reading overlaps parsing).

    Returns:
        ``(volume, affine, info)``: voxel axes (slice, row, column), slices sorted along the
        normal; ``info`` holds ``series_uid``, ``files`` (in slice order), ``n_slices``,
        ``slice_spacing`` and ``pixel_spacing`` (mm) and ``modality``.

    Raises:
        DicomSeriesError: naming the folder and the reason — files that are not DICOM, DICOM
        objects without pixels, several series (listed with their slice counts), mixed sizes,
        orientations or pixel spacings, slices at one position, missing slices (a step over
        :data:`GAP_FACTOR` times the median), slices off the regular grid, compressed pixels
        with no decoder installed (the ``dicom-compressed`` extra).
    """
    pydicom = require("pydicom", "dicom", "read_dicom_series")
    where, files = _list_files(files_or_folder)
    headers = _map(lambda f: _header(pydicom, f), files, threads)
    chosen = _choose_series(where, files, headers, series_uid)
    files, headers = [files[i] for i in chosen], [headers[i] for i in chosen]
    _same(where, "SamplesPerPixel", [int(h.get("SamplesPerPixel", 1)) for h in headers], files)
    photometric = {str(h.get("PhotometricInterpretation", "MONOCHROME2")) for h in headers}
    if not photometric <= {"MONOCHROME1", "MONOCHROME2"}:
        raise DicomSeriesError(
            f"{where}: photometric interpretation {sorted(photometric)}: a series is read as grayscale only"
        )
    order, affine = _geometry(where, files, headers)
    _check_decodable(where, headers)
    files, headers = [files[i] for i in order], [headers[i] for i in order]
    out = np.empty((1, len(files), int(headers[0].Rows), int(headers[0].Columns)), dtype=np.float32)

    def read_slice(k: int) -> None:
        h = headers[k]
        try:
            raw = _raw_pixels(h, files[k])
        except Exception as exc:
            raise DicomSeriesError(
                f"{where}: cannot read the pixels of {files[k]}: {type(exc).__name__}: {exc}"
            ) from exc
        dst = out[0, k]
        dst[...] = raw
        lo, hi = _stored_range(h)
        if rescale:
            slope = (_numbers(h, "RescaleSlope") or [1.0])[0]
            intercept = (_numbers(h, "RescaleIntercept") or [0.0])[0]
            if slope != 1:
                dst *= np.float32(slope)
            if intercept:
                dst += np.float32(intercept)
            lo, hi = lo * slope + intercept, hi * slope + intercept
        if str(h.get("PhotometricInterpretation")) == "MONOCHROME1":  # higher is brighter, as in ReadDicom
            np.subtract(lo + hi, dst, out=dst)

    _map(read_slice, list(range(len(files))), threads)
    info = {
        "series_uid": str(headers[0].get("SeriesInstanceUID", "")),
        "files": tuple(files),
        "n_slices": len(files),
        "slice_spacing": float(np.linalg.norm(affine[:3, 0])),
        "pixel_spacing": tuple(_numbers(headers[0], "PixelSpacing")[:2]),
        "modality": str(headers[0].get("Modality", "")),
    }
    return out, affine, info


def _template(op, sample: Mapping, value: str | None) -> str | None:
    if value is None:
        return None
    fields = {"sample_id": sample_id(sample), **nd.flatten(nd.get(sample, keys.SOURCE, {}))}
    try:
        return value.format(**fields)
    except (KeyError, IndexError) as exc:
        raise fail(
            sample, op, op.key, f"series_uid template {value!r} names {exc}, not sample_id or a data.source column"
        ) from None


@record
class ReadDicomSeries:
    """Read the DICOM series in a folder into ``key`` (``1×D×H×W`` float32) with its voxel-to-world matrix.

    The folder comes from ``path`` (a template formatted with ``sample_id`` and the
    ``data.source`` columns) or the value at ``path_key``; see :func:`read_dicom_series` for
    the order of the slices, the affine and the errors (each here names the sample, the op and
    the key). The affine goes to ``affine_key``, and with the spatial shape to the ``original_*``
    keys, as :class:`~fusefn.data.ops.ReadNifti` writes them.

    Args:
        series_uid: the series to read when a folder holds several: a UID, or a template like
            ``path`` (``"{series_uid}"`` reads a source column).
        rescale: apply RescaleSlope/RescaleIntercept per slice.
        threads: threads reading the files of one series.
    """

    key: str = keys.IMAGE
    path: str | None = None
    path_key: str = _PATH
    series_uid: str | None = None
    rescale: bool = True
    affine_key: str | None = keys.AFFINE
    original_affine_key: str | None = keys.ORIGINAL_AFFINE
    original_shape_key: str | None = keys.ORIGINAL_SHAPE
    threads: int = attrs.field(default=2, validator=v.positive_int)

    def __call__(self, sample: Mapping) -> dict:
        require("pydicom", "dicom", "ReadDicomSeries")
        folder = resolve_path(self, sample, folder=True)
        uid = _template(self, sample, self.series_uid)
        try:
            arr, affine, _ = read_dicom_series(folder, series_uid=uid, rescale=self.rescale, threads=self.threads)
        except SampleError:
            raise
        except FusefnError as exc:
            raise fail(sample, self, self.key, str(exc)) from exc
        except Exception as exc:
            raise fail(
                sample, self, self.key, f"cannot read the DICOM series in {folder}: {type(exc).__name__}: {exc}"
            ) from exc
        return nd.assoc_many(sample, {self.key: arr, **geometry_updates(self, sample, arr, affine, folder)})
