"""A volume's geometry travels through the cache and the loader: affine 4×4 float64, the original grid."""

import numpy as np
import polars as pl
import pytest
import torch

from fusefn import keys, nd
from fusefn.data import Dataset, DataSource, H5Cache, collate, loader, ops, uncollate
from fusefn.data.write import write_nifti

pytest.importorskip("nibabel")


def test_affine_and_original_grid_are_cached_and_collated(tmp_path):
    affines = {}
    for i in range(3):
        a = np.diag([0.7 + 0.1 * i, 0.8, 2.5, 1.0])
        a[:3, 3] = [i, -2.0 * i, 10.0]
        affines[f"case{i}"] = a
        write_nifti(tmp_path / f"case{i}.nii.gz", np.full((4, 5, 6), i, np.int16), a)
    src = DataSource.from_frame(pl.DataFrame({"sample_id": list(affines)}))
    cache = H5Cache(
        root=tmp_path / "cache", pipeline=ops.ReadNifti(path=str(tmp_path / "{sample_id}.nii.gz")), progress=False
    )
    ds = Dataset(source=src, cache=cache).build()
    assert ds.report.computed == 3
    ds = Dataset(source=src, cache=cache).build()  # read back from the store
    assert ds.report.reused == 3
    s = ds[1]
    np.testing.assert_allclose(nd.get(s, keys.AFFINE), affines["case1"], atol=1e-6)
    assert nd.get(s, keys.AFFINE).dtype == np.float64 and nd.get(s, keys.ORIGINAL_SHAPE) == (4, 5, 6)
    batch = next(iter(loader(ds, batch_size=3)))
    aff = nd.get(batch, keys.AFFINE)
    assert aff.shape == (3, 4, 4) and aff.dtype == torch.float64
    np.testing.assert_allclose(aff.numpy(), np.stack(list(affines.values())), atol=1e-6)
    assert nd.get(batch, keys.ORIGINAL_AFFINE).shape == (3, 4, 4)
    assert nd.get(batch, keys.ORIGINAL_SHAPE) == [(4, 5, 6)] * 3
    back = uncollate(collate([ds[0], ds[2]]))
    assert nd.get(back[1], keys.ORIGINAL_SHAPE) == (4, 5, 6)
    np.testing.assert_allclose(nd.get(back[1], keys.AFFINE).numpy(), affines["case2"], atol=1e-6)
