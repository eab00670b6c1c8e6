import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fusefn import Rng, chain, keys, nd, record
from fusefn.data import Dataset, H5Cache
from fusefn.data.ops.foreground import BACKGROUND, FOREGROUND, INDICES, ForegroundIndices
from fusefn.errors import ConfigError, SampleError


def vol(mask, sid="a", **inputs):
    return {"data": {"sample_id": sid, "gt": {"mask": mask}, "input": inputs}}


def leaves(sample):
    return nd.get(sample, INDICES)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, max_side=9), elements=st.integers(0, 2)))
def test_binary_split_matches_monai_fgbg_to_indices(mask):
    from monai.transforms import FgBgToIndices

    got = leaves(ForegroundIndices(max_per_class=None)(vol(mask[None])))
    fg, bg = FgBgToIndices()(mask[None])
    np.testing.assert_array_equal(got[FOREGROUND], np.asarray(fg))
    np.testing.assert_array_equal(got[BACKGROUND], np.asarray(bg))
    assert got[FOREGROUND].dtype == np.int32 and got[BACKGROUND].dtype == np.int32


def test_image_threshold_matches_monai():
    from monai.transforms import FgBgToIndices

    rng = np.random.default_rng(0)
    mask = (rng.random((1, 8, 9, 10)) > 0.8).astype(np.uint8)
    img = rng.normal(size=(1, 8, 9, 10)).astype(np.float32)
    got = leaves(ForegroundIndices(image_key=keys.IMAGE, image_threshold=0.3, max_per_class=None)(vol(mask, img=img)))
    fg, bg = FgBgToIndices(image_threshold=0.3)(mask, img)
    np.testing.assert_array_equal(got[FOREGROUND], np.asarray(fg))
    np.testing.assert_array_equal(got[BACKGROUND], np.asarray(bg))


def test_per_class_leaves_and_an_absent_class():
    mask = np.zeros((6, 6, 6), np.int64)
    mask[1, 2, 3] = 3
    mask[4:, :, 0] = 1
    got = leaves(ForegroundIndices(classes=(1, 2, 3))(vol(mask)))
    assert sorted(got) == ["1", "2", "3", "bg"]
    np.testing.assert_array_equal(got["1"], np.flatnonzero(mask == 1))
    assert got["2"].shape == (0,) and got["3"].tolist() == [1 * 36 + 2 * 6 + 3]
    np.testing.assert_array_equal(got["bg"], np.flatnonzero(mask == 0))


def test_subset_is_bounded_sorted_and_drawn_per_sample_id():
    mask = np.zeros((1, 20, 20, 20), np.uint8)
    mask[0, :5] = 1
    op = ForegroundIndices(max_per_class=100)
    a, a2, b = (leaves(op(vol(mask, sid))) for sid in ("a", "a", "b"))
    full = np.flatnonzero(mask[0] == 0)
    assert 90 < len(a["bg"]) <= 100 and 90 < len(a["fg"]) <= 100
    assert np.all(np.diff(a["bg"]) > 0) and np.isin(a["bg"], full).all()
    np.testing.assert_array_equal(a["bg"], a2["bg"])  # deterministic: a static op the cache can keep
    assert not np.array_equal(a["bg"], b["bg"])
    assert not np.array_equal(a["bg"], leaves(ForegroundIndices(max_per_class=100, rng=Rng(1))(vol(mask, "a")))["bg"])
    # the subset covers the whole class, not the start of the raster order
    assert a["bg"].max() > full[len(full) // 2]


@record
class _Make:
    def __call__(self, s):
        i = int(s["data"]["sample_id"])
        m = np.zeros((1, 5, 6, 7), np.uint8)
        m[0, : i + 1, 2, 3] = 2
        return nd.assoc(s, keys.MASK, m)


def test_leaves_of_different_lengths_survive_the_cache(tmp_path):
    static = chain(_Make(), ForegroundIndices(classes=(1, 2)))
    ds = Dataset(source=["0", "3"], cache=H5Cache(root=tmp_path, pipeline=static, workers=0, progress=False)).build()
    for i, sid in enumerate(ds.ids):
        want = leaves(static({"data": {"sample_id": sid}}))
        got = leaves(ds[i])
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == np.int32
            np.testing.assert_array_equal(got[k], want[k])
    assert len(leaves(ds[1])["2"]) == 4 and len(leaves(ds[1])["1"]) == 0


def test_errors_name_the_sample_op_and_key():
    with pytest.raises(SampleError) as e:
        ForegroundIndices()(vol(np.full((2, 2, 2), 0.5, np.float32), sid="case7"))
    assert e.value.sample_id == "case7" and e.value.op == "ForegroundIndices" and e.value.key == keys.MASK
    with pytest.raises(SampleError, match="not on the label's grid"):
        ForegroundIndices(image_key=keys.IMAGE)(vol(np.zeros((2, 2, 2)), img=np.zeros((3, 3, 3))))
    with pytest.raises(SampleError, match="data.gt.mask"):
        ForegroundIndices()({"data": {"sample_id": "x"}})
    with pytest.raises(ConfigError, match="ForegroundIndices.classes"):
        ForegroundIndices(classes=(0, 1))
    with pytest.raises(ConfigError, match="ForegroundIndices.max_per_class"):
        ForegroundIndices(max_per_class=0)
    # a float map of whole numbers is a label map
    assert leaves(ForegroundIndices()(vol(np.eye(3, dtype=np.float32)[None])))["fg"].tolist() == [0, 4, 8]
