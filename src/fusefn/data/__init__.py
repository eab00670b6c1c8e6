"""The I/O side of fusefn: sample tables, per-sample ops, the HDF5 sample cache, datasets, samplers, figures.

The path of a sample: a :class:`DataSource` row -> the *static* pipeline of
:mod:`fusefn.data.ops` (stored by :class:`H5Cache`) -> the *dynamic* pipeline ->
:func:`collate` into a batch_dict, batches chosen by a DataLoader (optionally
with :class:`BalancedBatchSampler`).

>>> import numpy as np, polars as pl, tempfile
>>> from fusefn import Rng, chain
>>> from fusefn.data import BalancedBatchSampler, DataSource, Dataset, H5Cache, loader, ops, split_folds
>>> np.save(f"{tempfile.gettempdir()}/img.npy", np.arange(64, dtype=np.uint8).reshape(8, 8))
>>> frame = pl.DataFrame({"sample_id": [f"s{i}" for i in range(8)], "label": [0, 0, 0, 0, 0, 0, 1, 1],
...                       "path": [f"{tempfile.gettempdir()}/img.npy"] * 8})
>>> source = DataSource.from_frame(split_folds(frame, n_folds=2, stratify="label", rng=Rng(0)))
>>> static = chain(
...     ops.ReadNpy(add_channel=True),                      # path from the row's "path" column
...     ops.Normalize(keys="data.input.img"),
...     ops.TableRow(table=frame, columns={"label": "data.gt.label"}),
... )
>>> cache = H5Cache(root=tempfile.mkdtemp(), pipeline=static, workers=0, progress=False)
>>> train = Dataset(source=source.fold(0), cache=cache, dynamic=ops.ToTensor(keys="data.input.img")).build()
>>> sampler = BalancedBatchSampler(train.values("data.gt.label"), batch_size=2, rng=Rng(0))
>>> batch = next(iter(loader(train, batch_sampler=sampler)))
>>> batch["data"]["input"]["img"].shape, sorted(batch["data"]["gt"]["label"].tolist())
(torch.Size([2, 1, 8, 8]), [0, 1])
"""

from fusefn.data import ops
from fusefn.data.cache import (
    BuildReport,
    DamagedSampleError,
    H5Cache,
    NotCachedError,
    Reader,
    StaleSampleError,
    StoreBusyError,
    clear_store,
    is_store,
    store_info,
    verify_store,
)
from fusefn.data.dataset import Dataset, TorchDatasetAdapter, collate, loader, uncollate, wrap_torch_dataset
from fusefn.data.ops.dicom_series import DicomSeriesError, read_dicom_series
from fusefn.data.order import EpochSampler, index_batches
from fusefn.data.pipeline import run_pipeline
from fusefn.data.samplers import BalancedBatchSampler
from fusefn.data.sources import DataSource, split_folds
from fusefn.data.tables import frame_to_batch, load_predictions, read_table
from fusefn.data.write import write_nifti

__all__ = [
    "BalancedBatchSampler",
    "BuildReport",
    "PatchDataset",
    "PatchSampler",
    "DataSource",
    "DicomSeriesError",
    "read_dicom_series",
    "write_nifti",
    "Dataset",
    "EpochSampler",
    "frame_to_batch",
    "load_predictions",
    "read_table",
    "H5Cache",
    "NotCachedError",
    "DamagedSampleError",
    "StaleSampleError",
    "StoreBusyError",
    "clear_store",
    "Reader",
    "TorchDatasetAdapter",
    "collate",
    "index_batches",
    "is_store",
    "store_info",
    "verify_store",
    "loader",
    "ops",
    "run_pipeline",
    "split_folds",
    "uncollate",
    "wrap_torch_dataset",
]


def __getattr__(name: str):
    # patches imports torch, which `import fusefn.data` does not otherwise load
    if name in ("PatchDataset", "PatchSampler"):
        from fusefn.data import patches

        return getattr(patches, name)
    # matplotlib loads only when figures are asked for
    if name == "visualize":
        import importlib

        return importlib.import_module("fusefn.data.visualize")
    raise AttributeError(f"module 'fusefn.data' has no attribute {name!r}")
