"""Every public op of fusefn.data.ops is a Transform: ``sample -> sample`` (static ops may give a list)."""

import inspect

import numpy as np
import polars as pl
import pytest

from fusefn import Rng, keys
from fusefn.data import ops
from fusefn.protocols import Transform

IMG = keys.IMAGE


def _sample():
    return {
        "data": {
            "sample_id": "a",
            "input": {"img": np.arange(64.0, dtype=np.float32).reshape(1, 8, 8)},
            "gt": {"label": 1},
        }
    }


def _npy(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 4), np.float32))
    np.savez(tmp_path / "a.npz", images=np.ones((2, 4, 4), np.float32))
    return tmp_path


EXAMPLES = {
    "AsType": lambda d: ops.AsType(keys=IMG, dtype="float64"),
    "CenterCrop": lambda d: ops.CenterCrop(keys=IMG, shape=(4, 4)),
    "Clip": lambda d: ops.Clip(keys=IMG, low=0.0, high=10.0),
    # the grid ops need a C×D×H×W volume with an affine: tests/data/ops/test_grid.py checks them as transforms
    "CropForeground": None,
    "DivisiblePad": None,
    "Flip": None,
    "Orient": None,
    "Resample": None,
    "ResampleLike": None,
    "ToOriginalGrid": None,
    "FillHoles": None,  # label-map ops: test_label_map_ops_are_transforms below
    "ForegroundIndices": lambda d: ops.ForegroundIndices(label_key=IMG),
    "KeepLargestComponent": None,
    "RemoveSmallComponents": None,
    "MapValues": lambda d: ops.MapValues(mapping={1: 0}),
    "Normalize": lambda d: ops.Normalize(keys=IMG),
    "OneHot": lambda d: ops.OneHot(num_classes=2),
    "PadTo": lambda d: ops.PadTo(keys=IMG, shape=(10, 10)),
    "Patches": lambda d: ops.Patches(keys=IMG, shape=(4, 4)),
    "RandomCrop": lambda d: ops.RandomCrop(keys=IMG, shape=(4, 4), rng=Rng(1)),
    "RandomLabel": lambda d: ops.RandomLabel(num_classes=3, rng=Rng(1)),
    "ReadDicom": None,  # needs a DICOM file: tests/data/ops/test_read.py
    "ReadDicomSeries": None,  # needs a DICOM folder: tests/data/ops/test_dicom_series.py
    "ReadImage": None,  # needs an image file: tests/data/ops/test_read.py
    "ReadNifti": None,  # needs a NIfTI file: tests/data/ops/test_read.py
    "ReadNpy": lambda d: ops.ReadNpy(path=str(d / "{sample_id}.npy"), key="data.input.raw"),
    "ReadNpz": lambda d: ops.ReadNpz(array="images", path=str(d / "{sample_id}.npz"), key="data.input.raw"),
    "Resize": lambda d: ops.Resize(keys=IMG, shape=(4, 4)),
    "Table": None,  # a column store the TableRow op reads, not an op
    "TableRow": lambda d: ops.TableRow(table=pl.DataFrame({"sample_id": ["a"], "age": [3]})),
    "ToLabel": lambda d: ops.ToLabel(num_classes=2),
    "ToNumpy": lambda d: ops.ToNumpy(keys=IMG),
    "ToTensor": lambda d: ops.ToTensor(keys=IMG),
    "Window": lambda d: ops.Window(keys=IMG, center=30.0, width=20.0),
    "ZScore": lambda d: ops.ZScore(keys=IMG),
}


def test_every_public_op_is_listed():
    assert {n for n in ops.__all__ if inspect.isclass(getattr(ops, n))} == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(n for n, make in EXAMPLES.items() if make is not None))
def test_public_ops_are_transforms(name, tmp_path):
    op = EXAMPLES[name](_npy(tmp_path))
    assert isinstance(op, Transform)
    sample = _sample()
    out = op(sample)
    for s in out if isinstance(out, list) else [out]:
        assert isinstance(s, dict) and s["data"]["sample_id"].startswith("a")
    assert sample["data"]["input"]["img"].shape == (1, 8, 8)  # the input is not modified


@pytest.mark.parametrize(
    "op",
    [
        ops.FillHoles(key="data.gt.mask"),
        ops.KeepLargestComponent(key="data.gt.mask"),
        ops.RemoveSmallComponents(key="data.gt.mask", min_size=2),
    ],
    ids=type,
)
def test_label_map_ops_are_transforms(op):
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, 1:4, 1:4] = 1
    mask[0, 6, 6] = 1
    sample = {"data": {"sample_id": "a", "gt": {"mask": mask}}}
    out = op(sample)
    assert isinstance(op, Transform) and out["data"]["sample_id"] == "a"
    assert out["data"]["gt"]["mask"].shape == (1, 8, 8) and mask[0, 6, 6] == 1  # the input is not modified


@pytest.mark.parametrize("name", ["ReadDicom", "ReadDicomSeries", "ReadImage", "ReadNifti"])
def test_readers_without_a_file_here_are_transforms_too(name):
    assert isinstance(getattr(ops, name)(), Transform)


def test_random_ops_take_one_rng_and_keep_their_streams():
    from fusefn.core import derive_seed

    sample = _sample()
    label = ops.RandomLabel(num_classes=5, rng=Rng(3))(sample)["data"]["gt"]["label"]
    # the stream of the former seed=3: a NumPy generator seeded with derive_seed(3, sample_id)
    assert label == int(np.random.default_rng(derive_seed(3, "a")).integers(0, 5))
    for op in (ops.RandomLabel, ops.RandomCrop):
        params = inspect.signature(op).parameters
        assert "rng" in params and "seed" not in params
