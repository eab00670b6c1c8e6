"""Deterministic synthetic data for the recipes: 2D lesion phantoms and 3D blob volumes.

Every sample is a pure function of ``(rng, index)``: its random stream is
``rng.child(kind, index)``, so sample 17 is the same whether 20 or 2,000
samples are generated, in any order or process. Nothing touches a global RNG.

* :func:`lesion_phantom` — a textured 2D background with 0–3 elliptical lesions of
  varying contrast: image ``1×H×W`` float32 in [0, 1], mask ``1×H×W`` int64 (1 = lesion),
  label 1 when a lesion is present.
* :func:`volume_phantom` — a noisy, textured 3D volume; label 1 when it holds faint blobs
  (spheres or ellipsoids), 0 when it holds none; ``task="shape"`` asks instead whether one
  of several blobs is an elongated ellipsoid rather than a sphere (harder). It lies on a
  scanner-like grid, :func:`volume_affine` (anisotropic voxels, a tilt, an offset), and
  :func:`write_volume_phantom` writes it with its mask as NIfTI on that grid.

>>> from fusefn import Rng
>>> s = lesion_phantom(3, rng=Rng(0), size=32)
>>> s["image"].shape, s["mask"].shape, s["label"] in (0, 1)
((1, 32, 32), (1, 32, 32), True)
>>> bool((lesion_phantom(3, rng=Rng(0), size=32)["image"] == s["image"]).all())
True
>>> volume_phantom(1, rng=Rng(0), size=16)["image"].shape
(1, 16, 16, 16)
"""

from __future__ import annotations

import os

import numpy as np

from fusefn import Rng

__all__ = [
    "lesion_count",
    "volume_label",
    "lesion_phantom",
    "lesion_phantoms",
    "volume_phantom",
    "volume_phantoms",
    "clinical_features",
    "volume_affine",
    "write_volume_phantom",
    "write_dicom_series",
]


def _stream(rng: Rng, kind: str, index: int) -> np.random.Generator:
    return rng.child(kind, index).numpy()


def lesion_count(index: int, *, rng: Rng, p_lesion: float = 0.4, max_lesions: int = 3) -> int:
    """How many lesions phantom ``index`` holds (0 = label 0), without drawing the image."""
    g = _stream(rng, "lesion2d/count", index)
    has, n = g.random() < p_lesion, int(g.integers(1, max_lesions + 1))
    return n if has else 0


def volume_label(index: int, *, rng: Rng, p_positive: float = 0.5) -> int:
    """The label of volume ``index`` (1 = an elongated blob), without drawing the volume."""
    return int(_stream(rng, "volume3d/label", index).random() < p_positive)


def _smooth_noise(g: np.random.Generator, shape: tuple, cutoff: float) -> np.ndarray:
    """Gaussian-filtered white noise (done in Fourier space), scaled to unit std."""
    white = g.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    radius2 = sum(f**2 for f in freqs)
    smooth = np.real(np.fft.ifftn(np.fft.fftn(white) * np.exp(-radius2 / (2 * cutoff**2))))
    return smooth / (smooth.std() + 1e-12)


def lesion_phantom(
    index: int,
    *,
    rng: Rng,
    size: int = 64,
    p_lesion: float = 0.4,
    max_lesions: int = 3,
    contrast: tuple[float, float] = (0.18, 0.45),
    radius: tuple[float, float] = (0.05, 0.14),
    texture: float = 0.06,
    noise: float = 0.03,
) -> dict:
    """One 2D phantom: textured background plus 0..``max_lesions`` bright ellipses.

    Args:
        index, rng: the sample is a pure function of these two.
        size: image side in pixels.
        p_lesion: probability that the image holds at least one lesion (label 1).
        max_lesions: a positive image holds 1..max_lesions lesions, uniformly.
        contrast: range of the intensity a lesion adds over the background.
        radius: range of the ellipse semi-axes, as a fraction of ``size``.
        texture: std of the smooth background texture; ``noise``: std of pixel noise.

    Returns:
        ``{"image": float32 (1, size, size) in [0, 1], "mask": int64 (1, size, size),
        "label": int, "n_lesions": int, "contrast": float (max over lesions, 0 if none)}``.
    """
    g = _stream(rng, "lesion2d", index)
    img = 0.35 + texture * _smooth_noise(g, (size, size), cutoff=0.04)
    # a coarse tissue gradient so intensity alone does not give lesions away
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    tilt = g.uniform(-0.08, 0.08, size=2)
    img += tilt[0] * yy + tilt[1] * xx
    mask = np.zeros((size, size), dtype=bool)
    n = lesion_count(index, rng=rng, p_lesion=p_lesion, max_lesions=max_lesions)
    top = 0.0
    for _ in range(n):
        cy, cx = g.uniform(0.2, 0.8, size=2) * (size - 1)
        a, b = g.uniform(*radius, size=2) * size
        theta = g.uniform(0, np.pi)
        c = float(g.uniform(*contrast))
        dy = np.arange(size)[:, None] - cy
        dx = np.arange(size)[None, :] - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        w = -dx * np.sin(theta) + dy * np.cos(theta)
        r2 = (u / a) ** 2 + (w / b) ** 2
        inside = r2 <= 1.0
        # a soft rim (intensity falls off near the edge) as real lesions have
        img = img + c * np.clip(1.25 - r2, 0, 1) ** 0.5 * (r2 <= 1.25)
        mask |= inside
        top = max(top, c)
    img = img + noise * g.standard_normal((size, size))
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return {
        "image": img[None],
        "mask": mask.astype(np.int64)[None],
        "label": int(n > 0),
        "n_lesions": n,
        "contrast": top,
    }


def lesion_phantoms(n: int, *, rng: Rng, start: int = 0, **kwargs) -> dict:
    """Samples ``start .. start+n-1`` stacked: images (N,1,H,W), masks (N,1,H,W), labels (N,), ids."""
    samples = [lesion_phantom(start + i, rng=rng, **kwargs) for i in range(n)]
    return _stack(samples, start, "lesion")


def volume_phantom(
    index: int,
    *,
    rng: Rng,
    size: int = 32,
    task: str = "detect",
    p_positive: float = 0.5,
    max_blobs: int = 2,
    radius: tuple[float, float] = (0.1, 0.18),
    elongation: tuple[float, float] = (2.5, 3.5),
    contrast: tuple[float, float] | None = None,
    noise: float = 0.12,
) -> dict:
    """One 3D volume: noise and a smooth texture, plus bright blobs (spheres and ellipsoids).

    ``task="detect"``: label 1 volumes hold 1..``max_blobs`` faint blobs, each a sphere or an
    ellipsoid at a random orientation; label 0 volumes hold none (texture and noise only).
    ``task="shape"``: every volume holds 1..``max_blobs`` brighter blobs; label 1 volumes
    have one elongated ellipsoid (long axis ``elongation`` times the short ones) among
    spheres, label 0 volumes spheres only, with blob volumes matched so size does not decide.

    Returns:
        ``{"image": float32 (1, D, H, W), "mask": int64 (1, D, H, W), "label": int, "n_blobs": int}``.
    """
    if task not in ("detect", "shape"):
        raise ValueError(f"volume_phantom.task must be 'detect' or 'shape', got {task!r}")
    if contrast is None:
        contrast = (0.1, 0.3) if task == "detect" else (0.3, 0.5)
    g = _stream(rng, "volume3d", index)
    shape = (size, size, size)
    img = 0.25 + noise * g.standard_normal(shape) + 0.05 * _smooth_noise(g, shape, cutoff=0.06)
    label = volume_label(index, rng=rng, p_positive=p_positive)
    n = int(g.integers(1, max_blobs + 1)) if (label or task == "shape") else 0
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1).astype(np.float64)
    mask = np.zeros(shape, dtype=bool)
    for k in range(n):
        center = g.uniform(0.3, 0.7, size=3) * (size - 1)
        r = g.uniform(*radius) * size
        if task == "shape":
            e = g.uniform(*elongation) if (label == 1 and k == 0) else 1.0
        else:
            e = g.uniform(1.0, elongation[0])
        # same volume as a sphere of radius r: long axis r*e^(2/3), short axes r*e^(-1/3)
        axes = np.array([r * e ** (2 / 3), r * e ** (-1 / 3), r * e ** (-1 / 3)])
        q, _ = np.linalg.qr(g.standard_normal((3, 3)))  # a random orientation
        local = (grid - center) @ q
        r2 = ((local / axes) ** 2).sum(-1)
        img = img + g.uniform(*contrast) * (r2 <= 1.0)
        mask |= r2 <= 1.0
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return {
        "image": img[None],
        "mask": mask.astype(np.int64)[None],
        "label": label,
        "n_blobs": n,
        "affine": volume_affine(index, rng=rng, size=size),
    }


def volume_affine(index: int, *, rng: Rng, size: int = 32) -> np.ndarray:
    """The 4×4 voxel-to-world matrix (mm, RAS+) of volume ``index``: a scanner-like grid, drawn apart from the image.

    Slices 2.5–3.5 mm apart, 0.7–0.9 mm pixels, the axes tilted up to 10° from the scanner's, the
    volume's centre within 20 mm of the origin. Voxel axis 0 (slices) runs foot to head, 1 anterior
    to posterior, 2 right to left, as a transverse CT series reads.
    """
    g = _stream(rng, "volume3d/affine", index)
    spacing = np.array([g.uniform(2.5, 3.5), *([g.uniform(0.7, 0.9)] * 2)])
    base = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # columns: S, P, L in RAS
    axis = g.standard_normal(3)
    angle = np.deg2rad(g.uniform(0, 10))
    k = np.cross(np.eye(3), axis / np.linalg.norm(axis))  # Rodrigues: the rotation by angle about axis
    tilt = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    a = np.eye(4)
    a[:3, :3] = tilt @ base @ np.diag(spacing)
    a[:3, 3] = g.uniform(-20, 20, 3) - a[:3, :3] @ np.full(3, (size - 1) / 2)
    return a


def write_volume_phantom(folder, index: int, *, rng: Rng, size: int = 32, task: str = "detect") -> dict:
    """Write volume ``index`` and its mask as NIfTI on its grid: ``{"image": path, "mask": path, "label": int}``.

    The files are ``volume_<index>.nii.gz`` and ``volume_<index>_mask.nii.gz`` (float32 and uint8), read
    back by :class:`fusefn.data.ops.ReadNifti` as the same arrays and affine.
    """
    from fusefn.data.write import write_nifti

    v = volume_phantom(index, rng=rng, size=size, task=task)
    paths = {
        "image": os.path.join(os.fspath(folder), f"volume_{index:05d}.nii.gz"),
        "mask": os.path.join(os.fspath(folder), f"volume_{index:05d}_mask.nii.gz"),
    }
    write_nifti(paths["image"], v["image"], v["affine"])
    write_nifti(paths["mask"], v["mask"], v["affine"], dtype=np.uint8)
    return {**paths, "label": v["label"]}


def volume_phantoms(n: int, *, rng: Rng, start: int = 0, **kwargs) -> dict:
    """Volumes ``start .. start+n-1`` stacked: images (N,1,D,H,W), masks, labels (N,), ids."""
    samples = [volume_phantom(start + i, rng=rng, **kwargs) for i in range(n)]
    return _stack(samples, start, "volume")


def clinical_features(index: int, label: int, *, rng: Rng, signal: float = 1.0) -> dict:
    """Synthetic age (years) and sex (0/1) of one patient, carrying signal about ``label``.

    Positive patients are older on average (+``signal``×8 years) and more often sex 1,
    so a model with both image and tabular inputs beats either alone.
    """
    g = _stream(rng, "clinical", index)
    age = float(np.clip(g.normal(55.0 + 8.0 * signal * label, 10.0), 18, 95))
    p_sex = 0.5 + 0.2 * signal * (1 if label else -1)
    sex = int(g.random() < p_sex)
    return {"age": age, "sex": sex}


def _stack(samples: list[dict], start: int, prefix: str) -> dict:
    return {
        "ids": [f"{prefix}_{start + i:05d}" for i in range(len(samples))],
        "images": np.stack([s["image"] for s in samples]),
        "masks": np.stack([s["mask"] for s in samples]),
        "labels": np.asarray([s["label"] for s in samples], dtype=np.int64),
    }


def write_dicom_series(
    folder: str | os.PathLike,
    volume: np.ndarray,
    *,
    spacing: tuple = (1.0, 1.0, 1.0),
    origin: tuple = (0.0, 0.0, 0.0),
    orientation: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    slope: float = 1.0,
    intercept: float = 0.0,
) -> None:
    """Write ``volume`` (D×H×W int16, stored values) as a CT series, one file per slice (needs pydicom).

    ``spacing`` is (slice, row, column) in mm; slice ``k`` lies at ``origin + k*spacing[0]*normal``
    (LPS), rows along ``orientation[3:]``, columns along ``orientation[:3]``.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal, series = np.cross(row, col), generate_uid()
    for k, plane in enumerate(np.asarray(volume)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, k + 1
        ds.ImageOrientationPatient = [float(x) for x in orientation]
        ds.ImagePositionPatient = [float(x) for x in np.asarray(origin, float) + k * spacing[0] * normal]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(plane, dtype="<i2").tobytes()
        ds.save_as(os.path.join(folder, f"slice{k:04d}.dcm"), enforce_file_format=True)
