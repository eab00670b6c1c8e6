"""Resampling a CT and its mask to 1.5 mm isotropic: fusefn ``Resample`` vs MONAI ``Spacingd`` vs SimpleITK (issue 14).

A 512 × 512 × 300 int16 CT (0.7 × 0.7 × 2.5 mm, a smooth body with noise, RAS axes) and its uint8 label map,
in memory, are resampled to 1.5 mm isotropic: the image linearly, the mask by nearest neighbour. ``--quick``
uses 256 × 256 × 150 at the same spacing. Each timing covers both arrays.

- fusefn: ``Resample(spacing=(1.5, 1.5, 1.5), keys=img, label_keys=mask)`` on numpy arrays with their affine
  (the separable path: torch's upsampling kernel for the image, one gather for the mask).
- MONAI 1.6.1: ``Spacingd(keys=(img, mask), pixdim=1.5, mode=("bilinear", "nearest"))`` on ``MetaTensor``s
  (its defaults otherwise).
- SimpleITK: ``ResampleImageFilter`` with ``sitkLinear`` (float32 output) and ``sitkNearestNeighbor`` onto
  the grid fusefn computes, from ``sitk.Image``s built beforehand; ``SetGlobalDefaultNumberOfThreads(threads)``.

The three run interleaved (same load). The rows also record how far fusefn is from SimpleITK on the same grid
(largest absolute difference of the image, share of equal mask voxels).
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

NAME = "geometry.resample.ct"
SIMPLEITK = "SimpleITK"
TARGET = (1.5, 1.5, 1.5)


def volume(quick: bool):
    import torch
    import torch.nn.functional as F

    shape, spacing = ((256, 256, 150) if quick else (512, 512, 300)), (0.7, 0.7, 2.5)
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, 1, *(s // 16 for s in shape), generator=g)
    body = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0, 0]
    ct = (body * 400 + torch.randn(shape, generator=g) * 30).clamp(-1024, 3000).to(torch.int16).numpy()
    mask = (body > 0.5).to(torch.uint8).numpy() + (body > 1.2).to(torch.uint8).numpy()
    affine = np.diag([*spacing, 1.0])
    return ct[None], mask[None], affine


def fusefn_side(ct, mask, affine):
    grid, why = C.optional_import("fusefn.data.ops.grid", "Resample")
    if grid is None:
        return None, why
    op = grid.Resample(spacing=TARGET, keys="data.input.img", label_keys="data.gt.mask")
    sample = {"data": {"sample_id": "ct", "input": {"img": ct, "affine": affine}, "gt": {"mask": mask}}}
    out = {}

    def run():
        out["sample"] = op(sample)

    return (run, out), None


def monai_side(ct, mask, affine):
    import torch

    transforms, why = C.peer("monai.transforms", "Spacingd")
    if transforms is None:
        return None, why
    from monai.data import MetaTensor

    op = transforms.Spacingd(keys=("img", "mask"), pixdim=TARGET, mode=("bilinear", "nearest"))
    aff = torch.from_numpy(affine)
    data = {"img": MetaTensor(torch.from_numpy(ct), affine=aff), "mask": MetaTensor(torch.from_numpy(mask), affine=aff)}
    out = {}

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["d"] = op(dict(data))

    return (run, out), None


def sitk_side(ct, mask, affine, target, target_shape, threads):
    sitk, why = C.optional_import("SimpleITK")
    if sitk is None:
        return None, why
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)

    def image(a):
        im = sitk.GetImageFromArray(np.ascontiguousarray(a[0].transpose(2, 1, 0)))
        im.SetSpacing(np.diag(affine)[:3].tolist())  # RAS diagonal; LPS world flips x, y alike for both grids
        return im

    img, lab = image(ct), image(mask)
    out = {}

    def resample(im, interp, pixel):
        r = sitk.ResampleImageFilter()
        r.SetOutputSpacing(np.diag(target)[:3].tolist())
        r.SetOutputOrigin(target[:3, 3].tolist())
        r.SetSize([int(s) for s in target_shape])
        r.SetInterpolator(interp)
        r.SetOutputPixelType(pixel)
        return r.Execute(im)

    def run():
        out["img"] = resample(img, sitk.sitkLinear, sitk.sitkFloat32)
        out["mask"] = resample(lab, sitk.sitkNearestNeighbor, sitk.sitkUInt8)

    def arrays():
        return tuple(sitk.GetArrayFromImage(out[k]).transpose(2, 1, 0) for k in ("img", "mask"))

    return (run, out, arrays), None


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("resample", args)
    rec = C.Recorder("resample", args)
    if args.device.startswith("cuda"):
        print("  SimpleITK resamples on the host: no CUDA rows")
        return
    from fusefn import affine as geo

    ct, mask, affine = volume(args.quick)
    target, target_shape = geo.resampled_affine(affine, ct.shape[1:], TARGET)
    voxels = int(np.prod(ct.shape))
    print(f"  {ct.shape[1:]} at {geo.spacing(affine)} mm -> {target_shape} at {TARGET} mm")
    fns, extras, settings = {}, {}, {}
    sides = {
        C.FUSEFN: (C.attempt(fusefn_side, ct, mask, affine), "Resample(spacing=1.5 mm, keys=img, label_keys=mask)"),
        C.MONAI: (C.attempt(monai_side, ct, mask, affine), "Spacingd(pixdim=1.5, mode=(bilinear, nearest))"),
        SIMPLEITK: (
            C.attempt(sitk_side, ct, mask, affine, target, target_shape, args.threads),
            "ResampleImageFilter sitkLinear (float32) + sitkNearestNeighbor, same grid as fusefn",
        ),
    }
    for system, ((side, why), how) in sides.items():
        if side is None:
            rec.skip(NAME, system, why)
            continue
        fns[system], extras[system], settings[system] = side[0], side, how
    times = C.measure_interleaved(fns, repeats=args.repeats, warmup=args.warmup)
    agreement = {}
    if C.FUSEFN in fns and SIMPLEITK in fns and not isinstance(times[SIMPLEITK], Exception):
        mine = extras[C.FUSEFN][1]["sample"]["data"]
        theirs_img, theirs_mask = extras[SIMPLEITK][2]()
        agreement = {
            "max_abs_diff_vs_sitk": float(np.abs(mine["input"]["img"][0] - theirs_img).max()),
            "mask_equal_vs_sitk": float((mine["gt"]["mask"][0] == theirs_mask).mean()),
        }
        print("  fusefn vs SimpleITK:", agreement)
    for system, t in times.items():
        if isinstance(t, Exception):
            rec.skip(NAME, system, f"failed: {type(t).__name__}: {str(t)[:300]}")
            continue
        rec.add(
            NAME,
            system,
            t,
            figure="time",
            unit="s",
            n=voxels,
            n_unit="voxels",
            settings=settings[system],
            extra=agreement if system == C.FUSEFN else None,
        )
    med = {k: float(np.median(v)) for k, v in times.items() if not isinstance(v, Exception)}
    for peer in (C.MONAI, SIMPLEITK):
        if C.FUSEFN in med and peer in med:
            print(f"  {peer} / fusefn: {med[peer] / med[C.FUSEFN]:.2f}x")


if __name__ == "__main__":
    main()
