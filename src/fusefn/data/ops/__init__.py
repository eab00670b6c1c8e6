"""Per-sample pure ops: ``sample_dict -> sample_dict`` (static ops may also return ``None`` or a list).

Every op is a :class:`fusefn.protocols.Transform`. Each op is a frozen record whose fields name the keys it reads and writes; an
error names the sample id, the op and the key. Compose them with
:func:`fusefn.chain`; ops that read files belong in the *static* (cached)
pipeline, cheap per-epoch ops in the *dynamic* one.

>>> import numpy as np
>>> from fusefn import Rng, chain
>>> from fusefn.data import ops
>>> prep = chain(ops.RandomLabel(num_classes=3, rng=Rng(1)), ops.Normalize(keys="data.input.img"))
>>> s = prep({"data": {"sample_id": "x", "input": {"img": np.arange(4.0)}}})
>>> s["data"]["input"]["img"].tolist(), 0 <= s["data"]["gt"]["label"] < 3
([0.0, 0.3333333333333333, 0.6666666666666666, 1.0], True)
"""

from fusefn.data.ops.cast import AsType, ToNumpy, ToTensor
from fusefn.data.ops.components import FillHoles, KeepLargestComponent, RemoveSmallComponents
from fusefn.data.ops.dicom_series import ReadDicomSeries
from fusefn.data.ops.foreground import ForegroundIndices
from fusefn.data.ops.geometry import CenterCrop, PadTo, Patches, RandomCrop, Resize
from fusefn.data.ops.grid import CropForeground, DivisiblePad, Flip, Orient, Resample, ResampleLike, ToOriginalGrid
from fusefn.data.ops.intensity import Clip, Normalize, Window, ZScore
from fusefn.data.ops.label import MapValues, OneHot, RandomLabel, ToLabel
from fusefn.data.ops.read import ReadDicom, ReadImage, ReadNifti, ReadNpy, ReadNpz
from fusefn.data.ops.table import Table, TableRow

__all__ = [
    "AsType",
    "CenterCrop",
    "Clip",
    "CropForeground",
    "DivisiblePad",
    "FillHoles",
    "Flip",
    "ForegroundIndices",
    "KeepLargestComponent",
    "MapValues",
    "Normalize",
    "OneHot",
    "Orient",
    "PadTo",
    "Patches",
    "RandomCrop",
    "RandomLabel",
    "ReadDicom",
    "ReadDicomSeries",
    "ReadImage",
    "ReadNifti",
    "ReadNpy",
    "ReadNpz",
    "RemoveSmallComponents",
    "Resample",
    "ResampleLike",
    "Resize",
    "Table",
    "TableRow",
    "ToLabel",
    "ToNumpy",
    "ToOriginalGrid",
    "ToTensor",
    "Window",
    "ZScore",
]
