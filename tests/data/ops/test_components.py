"""Connected-component post-processing: hand-made volumes, MONAI and cc3d as oracles, errors that name sample/op/key."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from fusefn.core import fingerprint, from_config, to_config
from fusefn.data.ops.components import FillHoles, KeepLargestComponent, RemoveSmallComponents
from fusefn.errors import ConfigError, SampleError

cc3d = pytest.importorskip("cc3d")
monai_t = pytest.importorskip("monai.transforms")  # FillHoles

KEY = "data.gt.mask"


def s(mask, sid="case0", affine=None):
    d = {"data": {"sample_id": sid, "gt": {"mask": mask}}}
    if affine is not None:
        d["data"]["input"] = {"affine": affine}
    return d


def m(out):
    return out["data"]["gt"]["mask"]


def blobs(seed: int, shape=(14, 15, 13), classes=3, smooth=1.2, level=0.6):
    """A random label map of blobby regions of ``classes`` classes (0 background)."""
    rng = np.random.default_rng(seed)
    fields = ndimage.gaussian_filter(rng.normal(size=(classes + 1, *shape)), (0, smooth, smooth, smooth))
    lab = fields.argmax(0).astype(np.uint8)
    lab[fields.max(0) < np.quantile(fields.max(0), 1 - level)] = 0
    return lab


# ------------------------------------------------------------------ hand-made volumes


def test_keep_largest_per_class_on_a_hand_made_volume():
    v = np.zeros((6, 6, 6), np.uint8)
    v[0:2, 0:2, 0:2] = 1  # 8 voxels: kept
    v[4, 4, 4] = 1  # 1 voxel: dropped
    v[0, 5, 5] = 2  # class 2: one voxel alone, the largest of its class
    v[3, 0, 0] = 3
    v[3:5, 2, 2] = 3  # 2 voxels: kept; the single one dropped
    out = m(KeepLargestComponent(key=KEY)(s(v)))
    want = v.copy()
    want[4, 4, 4] = 0
    want[3, 0, 0] = 0
    np.testing.assert_array_equal(out, want)
    # only the classes asked for
    only1 = m(KeepLargestComponent(key=KEY, classes=1)(s(v)))
    assert only1[3, 0, 0] == 3 and only1[4, 4, 4] == 0


def test_connectivity_decides_what_touches():
    v = np.zeros((3, 3, 3), np.uint8)
    v[0, 0, 0] = v[1, 1, 1] = 1  # corner-connected only
    v[2, 2, 2] = 1
    full = m(KeepLargestComponent(key=KEY)(s(v)))  # default: corners connect
    np.testing.assert_array_equal(full, v)
    faces = m(KeepLargestComponent(key=KEY, connectivity=1)(s(v)))
    assert faces.sum() == 1 and faces[0, 0, 0] == 1  # three singletons: the first in C order is kept


def test_fill_holes_keeps_other_classes_inside():
    v = np.zeros((7, 7, 7), np.uint8)
    v[1:6, 1:6, 1:6] = 1
    v[2:5, 2:5, 2:5] = 0  # a hole
    v[3, 3, 3] = 2  # a tumour inside it
    out = m(FillHoles(key=KEY)(s(v)))
    want = np.zeros_like(v)
    want[1:6, 1:6, 1:6] = 1
    want[3, 3, 3] = 2
    np.testing.assert_array_equal(out, want)
    # a cavity open to the border is not a hole
    v2 = v.copy()
    v2[3, 3, 0:2] = 0
    assert m(FillHoles(key=KEY)(s(v2)))[3, 3, 0:2].tolist() == [0, 0]
    assert m(FillHoles(key=KEY, classes=2)(s(v))).sum() == v.sum()  # class 2 encloses nothing


def test_fill_holes_nested_shells_last_class_wins():
    v = np.zeros((9, 9), np.uint8)
    v[0:9, 0:9] = 1
    v[1:8, 1:8] = 0
    v[2:7, 2:7] = 2
    v[3:6, 3:6] = 0
    out = m(FillHoles(key=KEY)(s(v)))
    assert out[4, 4] == 2 and out[1, 1] == 1
    assert m(FillHoles(key=KEY, classes=(2, 1))(s(v)))[4, 4] == 1


def test_remove_small_in_voxels_and_in_mm3():
    v = np.zeros((8, 8, 8), np.uint8)
    v[0:2, 0:2, 0:2] = 1  # 8 voxels
    v[5:7, 5, 5] = 1  # 2 voxels
    v[0, 7, 7] = 2  # 1 voxel
    out = m(RemoveSmallComponents(key=KEY, min_size=2)(s(v)))
    assert out[5, 5, 5] == 1 and out[0, 7, 7] == 0 and out.sum() == 8 + 2
    out = m(RemoveSmallComponents(key=KEY, min_size=3)(s(v)))
    assert out.sum() == 8
    # 2 × 1.5 × 1 mm voxels: 3 mm³ each; the 2-voxel component is 6 mm³
    affine = np.diag([2.0, -1.5, 1.0, 1.0])
    out = m(RemoveSmallComponents(key=KEY, min_size=6, unit="mm3")(s(v, affine=affine)))
    assert out[5, 5, 5] == 1 and out[0, 7, 7] == 0
    out = m(RemoveSmallComponents(key=KEY, min_size=6.1, unit="mm3")(s(v, affine=torch.from_numpy(affine))))
    assert out[5, 5, 5] == 0 and out.sum() == 8


def test_tensors_stay_tensors_and_leading_axes_are_separate_maps():
    v = np.zeros((2, 5, 5), np.uint8)
    v[0, 0, 0] = v[0, 2:4, 2:4] = 1
    v[1, 0, 4] = 1  # a map of its own: its one component is its largest
    out = KeepLargestComponent(key=KEY, spatial_dims=2)(s(torch.from_numpy(v)))
    assert isinstance(m(out), torch.Tensor)
    assert m(out)[0, 0, 0] == 0 and m(out)[1, 0, 4] == 1
    both3d = m(KeepLargestComponent(key=KEY)(s(v)))  # as one 3D map the two slices touch nothing: 4 voxels win
    assert both3d[1, 0, 4] == 0


def test_input_is_not_modified():
    v = blobs(0)
    before = v.copy()
    for op in (KeepLargestComponent(key=KEY), FillHoles(key=KEY), RemoveSmallComponents(key=KEY, min_size=5)):
        op(s(v))
    np.testing.assert_array_equal(v, before)


# ------------------------------------------------------------------ oracles


@given(seed=st.integers(0, 10_000), conn=st.sampled_from([(1, 6), (2, 18), (3, 26)]))
@settings(max_examples=25, deadline=None)
def test_keep_largest_equals_cc3d(seed, conn):
    # MONAI's KeepLargestConnectedComponent needs scikit-image on CPU (not installed): cc3d is the oracle
    v = blobs(seed)
    ours = m(KeepLargestComponent(key=KEY, connectivity=conn[0])(s(v)))
    for c in range(1, 4):
        lab, n = cc3d.connected_components(v == c, connectivity=conn[1], return_N=True)
        sizes = np.bincount(lab.ravel())[1:]
        if n > 1 and (sizes == sizes.max()).sum() > 1:  # a tie: either is right; the kept size is what matters
            assert (ours == c).sum() == sizes.max()
        else:
            want = cc3d.largest_k(v == c, k=1, connectivity=conn[1]) > 0
            np.testing.assert_array_equal(ours == c, want)


@given(seed=st.integers(0, 10_000), conn=st.sampled_from([1, 3]))
@settings(max_examples=25, deadline=None)
def test_fill_holes_equals_monai_where_holes_hold_background(seed, conn):
    # one class (so MONAI's overwriting of other classes cannot differ), riddled with background blobs
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(14, 15, 13)), 0.8)
    v = (field < np.quantile(field, 0.8)).astype(np.uint8)
    ours = m(FillHoles(key=KEY, connectivity=conn)(s(v)))
    theirs = monai_t.FillHoles(connectivity=conn)(torch.from_numpy(v[None]))[0].numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, ndimage.binary_fill_holes(v, ndimage.generate_binary_structure(3, conn)))


@given(seed=st.integers(0, 10_000), size=st.integers(1, 40), conn=st.sampled_from([(1, 6), (2, 18), (3, 26)]))
@settings(max_examples=25, deadline=None)
def test_remove_small_equals_cc3d_dust(seed, size, conn):
    v = blobs(seed, classes=4, smooth=0.8)
    ours = m(RemoveSmallComponents(key=KEY, min_size=size, connectivity=conn[0])(s(v)))
    theirs = cc3d.dust(v, threshold=size, connectivity=conn[1], in_place=False)
    np.testing.assert_array_equal(ours, theirs)


def test_keep_largest_equals_cc3d_largest_per_class():
    v = blobs(3, classes=2, smooth=0.8)
    ours = m(KeepLargestComponent(key=KEY)(s(v)))
    for c in (1, 2):
        want = cc3d.largest_k(v == c, k=1, connectivity=26) > 0
        np.testing.assert_array_equal(ours == c, want)


# ------------------------------------------------------------------ errors and config


def test_bad_maps_name_sample_op_and_key():
    with pytest.raises(SampleError, match=r"sample 'case7', op FillHoles, key 'data.gt.mask': .*dtype float32"):
        FillHoles(key=KEY)(s(np.zeros((3, 3), np.float32), sid="case7"))
    with pytest.raises(SampleError, match=r"op KeepLargestComponent, key 'data.gt.mask'.*connectivity 3 exceeds"):
        KeepLargestComponent(key=KEY, connectivity=3)(s(np.zeros((3, 3), np.uint8)))
    with pytest.raises(SampleError, match=r"op RemoveSmallComponents, key 'data.input.affine'"):
        RemoveSmallComponents(key=KEY, min_size=3, unit="mm3")(s(np.zeros((3, 3, 3), np.uint8)))
    with pytest.raises(SampleError, match="singular"):
        RemoveSmallComponents(key=KEY, min_size=3, unit="mm3")(
            s(np.zeros((3, 3, 3), np.uint8), affine=np.zeros((4, 4)))
        )
    with pytest.raises(SampleError, match="data.gt.mask"):
        FillHoles(key=KEY)({"data": {"sample_id": "x"}})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: KeepLargestComponent(key=KEY, classes=(0, 1)), "KeepLargestComponent.classes"),
        (lambda: FillHoles(key=KEY, connectivity=0), "FillHoles.connectivity"),
        (lambda: RemoveSmallComponents(key=KEY, min_size=-1), "RemoveSmallComponents.min_size"),
        (lambda: RemoveSmallComponents(key=KEY, unit="ml"), "RemoveSmallComponents.unit"),
    ],
)
def test_bad_config_names_the_field(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_records_round_trip_through_config():
    op = RemoveSmallComponents(key=KEY, min_size=30.0, unit="mm3", classes=(1, 2), connectivity=1)
    back = from_config(to_config(op))
    assert back == op and fingerprint(back) == fingerprint(op)
