"""Inputs of a segmentation evaluation: find the label maps of two folders, pair them by case id, read and check them.

A **case id** is a NIfTI file's name without ``.nii`` / ``.nii.gz`` (``case_007.nii.gz`` → ``case_007``), or
the name of a subfolder that holds exactly one NIfTI file (``case_007/seg.nii.gz`` → ``case_007``, the
KiTS layout). Other files are ignored. A pair must share the voxel grid: the same shape and the same
affine (to :data:`AFFINE_ATOL` in every entry).

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("a.nii.gz", "b.nii", "notes.txt"):
...     (d / name).touch()
>>> (d / "c").mkdir(); (d / "c" / "seg.nii.gz").touch()
>>> sorted(find_cases(d))
['a', 'b', 'c']
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np

from fusefn.errors import FusefnError, SampleError

__all__ = ["AFFINE_ATOL", "case_id", "check_labels", "check_pair", "find_cases", "match_cases", "read_label_map"]

AFFINE_ATOL = 1e-3
"""Largest difference of an affine entry (mm for the translation) between a prediction and its reference."""

_SUFFIXES = (".nii.gz", ".nii")


def case_id(path: str | os.PathLike) -> str | None:
    """The case id of a NIfTI file name (None for other files)."""
    name = pathlib.Path(path).name
    for s in _SUFFIXES:
        if name.endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return None


def find_cases(folder: str | os.PathLike) -> dict[str, pathlib.Path]:
    """``{case id: path}`` of the label maps in ``folder`` (see the module doc for the layout)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FusefnError(f"{folder} is not a folder of label maps")
    found: dict[str, list[pathlib.Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            inner = [p for p in sorted(entry.iterdir()) if p.is_file() and case_id(p)]
            if len(inner) == 1:
                found.setdefault(entry.name, []).append(inner[0])
            elif len(inner) > 1:
                raise FusefnError(
                    f"{entry} holds {len(inner)} NIfTI files ({', '.join(p.name for p in inner[:3])}); "
                    "a case folder must hold one label map"
                )
        elif entry.is_file() and (cid := case_id(entry)) is not None:
            found.setdefault(cid, []).append(entry)
    dup = {k: v for k, v in found.items() if len(v) > 1}
    if dup:
        k, v = next(iter(dup.items()))
        raise FusefnError(f"case {k!r} appears {len(v)} times in {folder}: {', '.join(str(p) for p in v)}")
    if not found:
        raise FusefnError(f"{folder} holds no label map (*.nii, *.nii.gz, or case folders holding one)")
    return {k: v[0] for k, v in found.items()}


def _listing(ids: list[str]) -> str:
    return ", ".join(repr(i) for i in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


def match_cases(
    pred: Mapping[str, pathlib.Path], ref: Mapping[str, pathlib.Path], *, allow_missing: bool = False
) -> tuple[list[str], dict[str, list[str]]]:
    """The case ids in both (sorted) and ``{"pred_only", "ref_only"}``; an error lists them unless ``allow_missing``."""
    both = sorted(set(pred) & set(ref))
    missing = {"pred_only": sorted(set(pred) - set(ref)), "ref_only": sorted(set(ref) - set(pred))}
    if (missing["pred_only"] or missing["ref_only"]) and not allow_missing:
        parts = []
        if missing["ref_only"]:
            parts.append(
                f"{len(missing['ref_only'])} reference case(s) have no prediction: {_listing(missing['ref_only'])}"
            )
        if missing["pred_only"]:
            parts.append(
                f"{len(missing['pred_only'])} prediction(s) have no reference: {_listing(missing['pred_only'])}"
            )
        raise FusefnError("; ".join(parts) + " (allow_missing / --allow-missing evaluates the cases in both)")
    if not both:
        raise FusefnError("no case id is in both folders: nothing to evaluate")
    return both, missing


def read_label_map(path: pathlib.Path, case: str, role: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, affine)`` of a NIfTI label map; whole-number floats become integers, anything else is an error."""
    from fusefn.data.ops._base import require

    nib = require("nibabel", "nifti", "segmentation evaluation")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # a corrupt or truncated file: name the case instead of nibabel's message alone
        raise SampleError(f"cannot read the {role} {path}: {e}", sample_id=case) from None
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or (data != np.round(data)).any():
            raise SampleError(f"the {role} {path} holds non-integer values: not a label map", sample_id=case)
        data = data.astype(np.int64)
    elif data.dtype.kind not in "iub":
        raise SampleError(f"the {role} {path} has dtype {data.dtype}: not a label map", sample_id=case)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    return data, np.asarray(img.affine, dtype=np.float64)


def _geometry(shape, affine) -> str:
    rows = "; ".join(" ".join(f"{x:.4g}" for x in row) for row in np.asarray(affine)[:3])
    return f"shape {tuple(shape)}, affine [{rows}]"


def check_pair(case: str, pred: np.ndarray, pred_affine, ref: np.ndarray, ref_affine) -> None:
    """Raise naming the case and both geometries unless the two label maps share shape and affine."""
    if pred.shape != ref.shape or not np.allclose(pred_affine, ref_affine, rtol=0, atol=AFFINE_ATOL):
        raise SampleError(
            f"the prediction ({_geometry(pred.shape, pred_affine)}) is not on the reference's grid "
            f"({_geometry(ref.shape, ref_affine)}); resample it onto the reference first",
            sample_id=case,
        )


def check_labels(case: str, labels: np.ndarray, allowed: frozenset[int], role: str) -> None:
    """Raise naming the case and the labels unless every value of ``labels`` is in ``allowed``."""
    lo, hi = int(labels.min(initial=0)), int(labels.max(initial=0))
    if lo >= 0 and hi < 1 << 16:
        # a lookup per voxel instead of a sort (np.unique) or an int64 copy (np.bincount) of the whole map
        ok = np.zeros(hi + 1, dtype=bool)
        ok[[x for x in allowed if 0 <= x <= hi]] = True
        bad = ~ok[labels]
        stray = sorted(set(np.unique(labels[bad]).tolist())) if bad.any() else []
    else:
        stray = sorted(set(np.unique(labels).tolist()) - allowed)
    if stray:
        raise SampleError(
            f"the {role} holds label(s) {stray[:10]} outside the declared set {sorted(allowed)}", sample_id=case
        )
