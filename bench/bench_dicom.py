"""Reading a DICOM CT series (300 slices of 512×512 int16, one file each) into a float32 volume with its geometry (issue 14).

The series is written once with pydicom into the work folder (``--quick``: 60 slices of 256×256) and read from
the page cache by every system, alternating systems every repetition. Each timing covers finding the files,
reading every header, ordering the slices, reading the pixels and applying RescaleSlope/RescaleIntercept.

- fusefn: ``fusefn.data.ops.dicom_series.read_dicom_series(folder)`` (2 threads; headers first with only the
  tags it needs, then uncompressed pixels straight from the file at their offset).
- MONAI 1.6.1: ``LoadImage(reader="PydicomReader", image_only=True)(folder)``, its documented DICOM-series reader.
- SimpleITK (extra reference): ``ImageSeriesReader`` over ``GetGDCMSeriesFileNames(folder)``, float32 output,
  2 threads (GDCM in C++).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

SITK = "SimpleITK ImageSeriesReader"


def make_series(folder: pathlib.Path, slices: int, side: int) -> pathlib.Path:
    from fusefn_recipes.phantoms import write_dicom_series

    target = folder / f"ct_{slices}x{side}"
    if not (target / f"slice{slices - 1:04d}.dcm").exists():
        stored = np.random.default_rng(0).integers(0, 3000, (slices, side, side)).astype(np.int16)
        write_dicom_series(target, stored, spacing=(1.25, 0.7, 0.7), origin=(-180.0, -180.0, 40.0), intercept=-1024.0)
    return target


def sides(folder: pathlib.Path, threads: int) -> dict:
    runs, why = {}, {}
    mod, reason = C.optional_import("fusefn.data.ops.dicom_series", "read_dicom_series")
    if mod is None:
        why[C.FUSEFN] = reason
    else:
        runs[C.FUSEFN] = lambda: mod.read_dicom_series(folder, threads=2)[0]
    monai, reason = C.peer("monai.transforms", "LoadImage")
    if monai is None:
        why[C.MONAI] = reason
    else:
        load = monai.LoadImage(reader="PydicomReader", image_only=True)
        runs[C.MONAI] = lambda: np.asarray(load(str(folder)))
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)

        def read_sitk():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
            reader.SetOutputPixelType(sitk.sitkFloat32)
            return sitk.GetArrayFromImage(reader.Execute())

        runs[SITK] = read_sitk
    except ImportError as e:
        why[SITK] = str(e)
    return runs, why


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("dicom", args)
    rec = C.Recorder("dicom", args)
    slices, side = (60, 256) if args.quick else (300, 512)
    name = "read.dicom_series.ct"
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_series(pathlib.Path(args.workdir or tmp), slices, side)
        runs, why = sides(folder, args.threads)
        for system, reason in why.items():
            rec.skip(name, system, reason)
        values = {}
        for system, fn in runs.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values[system] = round(float(np.asarray(fn(), dtype=np.float64).sum()), 1)  # untimed: they agree
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = C.measure_interleaved(runs, repeats=args.repeats, warmup=args.warmup)
        settings = {
            C.FUSEFN: "read_dicom_series(folder), threads=2",
            C.MONAI: 'LoadImage(reader="PydicomReader", image_only=True)',
            SITK: "ImageSeriesReader, GetGDCMSeriesFileNames, sitkFloat32",
        }
        for system, t in times.items():
            if isinstance(t, Exception):
                rec.skip(name, system, f"failed: {type(t).__name__}: {t}")
                continue
            rec.add(
                name,
                system,
                t,
                figure="time",
                unit="s",
                n=slices,
                n_unit=f"slices of {side}×{side}",
                settings=settings[system],
                extra={"value": values[system]},
            )


if __name__ == "__main__":
    main()
