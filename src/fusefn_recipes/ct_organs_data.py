"""The files of the ``ct_organs`` recipe: CT-like phantoms written as a scanner would, and the folders it reads.

:func:`ct_phantom` draws one case — a body in air, a spine, two organs (label 1 "liver", 2 "kidney") and a
lesion inside the liver (label 3), in Hounsfield units with noise and a blurred edge — on its own grid: 0.7–0.9 mm
pixels, 2–3 mm slices, acquired axially, axially with the rows and columns reversed, coronally, sagittally or
tilted. The phantom is defined in world millimetres, so every grid sees the same anatomy, and the label map is
that anatomy sampled at the voxel centres. :func:`write_example` writes cases as an image DICOM series
(``dicom/<case>/``) and a NIfTI label map (``labels/<case>.nii.gz``) on the series' grid; :func:`find_cases`
reads such a folder, or a Medical Segmentation Decathlon task folder (``imagesTr/``, ``labelsTr/``,
``dataset.json``), into one table of cases.

>>> from fusefn import Rng
>>> c = ct_phantom(0, rng=Rng(0), size=(64, 64, 48))
>>> c["hu"].dtype, c["hu"].shape == c["labels"].shape, sorted(set(c["labels"].ravel().tolist()))
(dtype('int16'), True, [0, 1, 2, 3])
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import polars as pl

from fusefn import Rng
from fusefn.recipe import RecipeInputError

__all__ = ["CLASSES", "ORIENTATIONS", "ct_phantom", "ras_affine", "write_example", "write_msd_example", "find_cases"]

CLASSES = {1: "liver", 2: "kidney", 3: "lesion"}
# ImageOrientationPatient (row cosine, column cosine; DICOM's LPS) of the acquisitions drawn
ORIENTATIONS = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "axial-flipped": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    "axial-tilted": (1.0, 0.0, 0.0, 0.0, float(np.cos(np.deg2rad(12))), float(-np.sin(np.deg2rad(12)))),
}
_HU = {"air": -1000.0, "body": 20.0, "spine": 650.0, "liver": 110.0, "kidney": 210.0, "lesion": 35.0}


def _grid(g: np.random.Generator, size: tuple) -> dict:
    """The acquisition: orientation, spacing (slice, row, column) and a field of view ``size`` mm (LPS x, y, z)."""
    name = list(ORIENTATIONS)[int(g.integers(len(ORIENTATIONS)))]
    iop = np.asarray(ORIENTATIONS[name])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    spacing = np.array([g.uniform(2.0, 3.0), *([g.uniform(0.7, 0.9)] * 2)])
    directions = np.stack([normal, col, row], axis=1)  # voxel axes (slice, row, column) -> LPS
    extent = np.abs(directions.T) @ np.asarray(size, float)  # the box's extent along each voxel axis
    shape = tuple(int(np.ceil(e / s)) for e, s in zip(extent, spacing))
    centre = g.uniform(-5, 5, 3)
    origin = centre - directions @ (spacing * (np.asarray(shape) - 1) / 2)
    return {"name": name, "iop": iop, "spacing": spacing, "shape": shape, "origin": origin, "dirs": directions}


def _lps_affine(grid: dict) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = grid["dirs"] * grid["spacing"]
    a[:3, 3] = grid["origin"]
    return a


def ras_affine(grid: dict) -> np.ndarray:
    """The voxel (slice, row, column) to world matrix in RAS+ mm: what ``ReadDicomSeries`` reads off the series."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ _lps_affine(grid)


def _rotation(g: np.random.Generator, degrees: float) -> np.ndarray:
    axis = g.standard_normal(3)
    k = np.cross(np.eye(3), axis / np.linalg.norm(axis))
    angle = np.deg2rad(g.uniform(-degrees, degrees))
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _inside(points: np.ndarray, centre, semi, rot) -> np.ndarray:
    """Which ``points`` (…×3, mm) lie in the ellipsoid of ``centre``, semi-axes ``semi`` and rotation ``rot``."""
    local = (points - centre) @ rot
    return ((local / semi) ** 2).sum(-1) <= 1.0


def ct_phantom(index: int, *, rng: Rng, size: tuple = (80.0, 80.0, 64.0), noise: float = 20.0) -> dict:
    """Case ``index``: ``hu`` (slices×rows×columns int16, Hounsfield units), ``labels`` (uint8) and its ``grid``.

    A pure function of ``rng.child("ct_organs", index)``. ``size`` is the field of view in mm (x, y, z).
    """
    from scipy import ndimage

    g = rng.child("ct_organs", index).numpy()
    grid = _grid(g, size)
    k, r, c = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in grid["shape"]), indexing="ij")
    vox = np.stack([k, r, c], -1) * grid["spacing"]
    world = vox @ grid["dirs"].T + grid["origin"]  # LPS mm
    x, y = world[..., 0], world[..., 1]
    s = np.asarray(size, float) / 80.0  # anatomy scaled with the field of view
    body = (x / (34 * s[0])) ** 2 + (y / (27 * s[1])) ** 2 <= 1
    spine = (x / (6 * s[0])) ** 2 + ((y - 17 * s[1]) / (6 * s[1])) ** 2 <= 1
    liver_c = np.array([-11, -2, 0]) * s + g.uniform(-3, 3, 3)
    liver_semi = np.array([15, 13, 17]) * s * g.uniform(0.85, 1.15, 3)
    liver_rot = _rotation(g, 25)
    kidney_c = np.array([17, 9, -2]) * s + g.uniform(-2, 2, 3)
    kidney_semi = np.array([6, 5, 11]) * s * g.uniform(0.85, 1.15, 3)
    kidney_rot = _rotation(g, 20)
    radius = g.uniform(4.5, 7.0)
    offset = g.standard_normal(3)
    offset *= g.uniform(0, 0.45) / np.linalg.norm(offset)
    lesion_c = liver_c + liver_rot @ (offset * liver_semi)  # inside the liver, away from its edge
    labels = np.zeros(grid["shape"], np.uint8)
    labels[_inside(world, liver_c, liver_semi, liver_rot)] = 1
    labels[_inside(world, kidney_c, kidney_semi, kidney_rot)] = 2
    labels[(labels == 1) & (np.linalg.norm(world - lesion_c, axis=-1) <= radius)] = 3
    hu = np.full(grid["shape"], _HU["air"])
    hu[body] = _HU["body"]
    hu[body & spine] = _HU["spine"]
    for value, name in CLASSES.items():
        hu[labels == value] = _HU[name] + g.uniform(-10, 10)
    # a scanner's point spread (about a millimetre) and its noise
    hu = ndimage.gaussian_filter(hu, sigma=0.9 / grid["spacing"])
    hu += ndimage.gaussian_filter(g.standard_normal(hu.shape), 0.7) * noise * 2.0
    return {"hu": np.clip(np.round(hu), -1024, 3071).astype(np.int16), "labels": labels, "grid": grid}


def write_example(folder, n: int, *, rng: Rng, size: tuple = (80.0, 80.0, 64.0)) -> list[str]:
    """Write cases ``ct_000 .. ct_<n-1>``: ``dicom/<case>/`` (the image series) and ``labels/<case>.nii.gz``.

    The series stores ``HU + 1024`` with RescaleIntercept −1024; the label map lies on the series' grid
    (voxel axes slice, row, column). Returns the case ids. Also writes ``ct_organs.json`` (the classes).
    """
    from fusefn.data.write import write_nifti
    from fusefn_recipes.phantoms import write_dicom_series

    folder = pathlib.Path(folder)
    ids = []
    for i in range(n):
        case = f"ct_{i:03d}"
        c = ct_phantom(i, rng=rng, size=size)
        grid = c["grid"]
        write_dicom_series(
            folder / "dicom" / case,
            (c["hu"].astype(np.int32) + 1024).astype(np.int16),
            spacing=tuple(grid["spacing"]),
            origin=tuple(grid["origin"]),
            orientation=tuple(grid["iop"]),
            intercept=-1024.0,
        )
        write_nifti(folder / "labels" / f"{case}.nii.gz", c["labels"], ras_affine(grid), dtype=np.uint8)
        ids.append(case)
    labels = {"0": "background", **{str(k): v for k, v in CLASSES.items()}}
    _write_json(folder / "ct_organs.json", {"name": "ct_organs phantoms", "labels": labels, "cases": ids})
    return ids


def write_msd_example(folder, n: int, *, rng: Rng, size: tuple = (80.0, 80.0, 64.0)) -> list[str]:
    """The same phantoms in a Medical Segmentation Decathlon task's layout (NIfTI images, ``dataset.json``)."""
    from fusefn.data.write import write_nifti

    folder = pathlib.Path(folder)
    training = []
    for i in range(n):
        case = f"ct_{i:03d}"
        c = ct_phantom(i, rng=rng, size=size)
        a = ras_affine(c["grid"])
        write_nifti(folder / "imagesTr" / f"{case}.nii.gz", c["hu"], a, dtype=np.int16)
        write_nifti(folder / "labelsTr" / f"{case}.nii.gz", c["labels"], a, dtype=np.uint8)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    meta = {
        "name": "CTPhantoms",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(k): v for k, v in CLASSES.items()}},
        "numTraining": n,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    _write_json(folder / "dataset.json", meta)
    return [t["image"].split("/")[-1][: -len(".nii.gz")] for t in training]


def _write_json(path: pathlib.Path, obj) -> None:
    from fusefn._atomic import write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, json.dumps(obj, indent=1).encode())


def _case_id(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def find_cases(folder) -> tuple[pl.DataFrame, dict[int, str], str]:
    """The cases of ``folder``: a frame (``sample_id``, ``image``, ``label``), the classes ``{value: name}``, the kind.

    ``kind`` is ``"dicom"`` for a :func:`write_example` folder (``image`` a series folder) or ``"msd"`` for
    a Decathlon task (``dataset.json`` with its ``training`` list and ``labels``; ``image`` a NIfTI file).
    """
    folder = pathlib.Path(folder)
    if (folder / "dataset.json").is_file():
        try:
            meta = json.loads((folder / "dataset.json").read_text())
            rows = [(folder / t["image"], folder / t["label"]) for t in meta["training"]]
            names = {int(k): str(v) for k, v in meta["labels"].items() if int(k) != 0}
        except (ValueError, KeyError, TypeError) as e:
            raise RecipeInputError(
                f"--data {folder}: dataset.json is not a Decathlon task description "
                f"(needs 'training' [{{image, label}}] and 'labels'): {e!r}"
            ) from None
        kind = "msd"
    elif (folder / "ct_organs.json").is_file():
        meta = json.loads((folder / "ct_organs.json").read_text())
        rows = [(folder / "dicom" / c, folder / "labels" / f"{c}.nii.gz") for c in meta["cases"]]
        names = {int(k): str(v) for k, v in meta["labels"].items() if int(k) != 0}
        kind = "dicom"
    else:
        raise RecipeInputError(
            f"--data {folder}: neither a Decathlon task folder (dataset.json, imagesTr/, labelsTr/) "
            "nor a ct_organs example (ct_organs.json; write one with `make-example`)"
        )
    missing = [str(p) for pair in rows for p in pair if not p.exists()]
    if missing:
        raise RecipeInputError(f"--data {folder}: {len(missing)} files listed but absent, e.g. {missing[:3]}")
    if not rows:
        raise RecipeInputError(f"--data {folder}: no training cases listed")
    frame = pl.DataFrame(
        {
            "sample_id": [_case_id(str(label)) for _, label in rows],
            "image": [str(i) for i, _ in rows],
            "label": [str(lab) for _, lab in rows],
        }
    )
    return frame.sort("sample_id"), names, kind
