import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusefn import Rng
from fusefn.data import ops
from fusefn.errors import ConfigError, SampleError


def s(**arrays):
    return {"data": {"sample_id": "a", "input": arrays}}


def test_resize_matches_interpolate_2d_and_3d():
    x = np.random.default_rng(0).random((2, 6, 8)).astype(np.float32)
    got = ops.Resize(keys="data.input.img", shape=(3, 5))(s(img=x))["data"]["input"]["img"]
    want = F.interpolate(torch.from_numpy(x)[None], size=(3, 5), mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    v = torch.rand(1, 4, 6, 8)
    got = ops.Resize(keys="data.input.img", shape=(2, 3, 4))(s(img=v))["data"]["input"]["img"]
    assert isinstance(got, torch.Tensor) and got.shape == (1, 2, 3, 4)
    torch.testing.assert_close(got, F.interpolate(v[None], size=(2, 3, 4), mode="trilinear")[0])


def test_resize_nearest_keeps_mask_values_and_dtype():
    m = np.array([[[0, 0, 2, 2]] * 4], np.int64)
    out = ops.Resize(keys="data.input.m", shape=(2, 2), mode="nearest")(s(m=m))["data"]["input"]["m"]
    assert out.dtype == np.int64 and set(np.unique(out)) <= {0, 2}


def test_crops_align_image_and_mask():
    x = np.arange(2 * 10 * 10).reshape(2, 10, 10)
    sample = s(img=x, mask=x.copy())
    c = ops.CenterCrop(keys=("data.input.img", "data.input.mask"), shape=(4, 6))(sample)
    np.testing.assert_array_equal(c["data"]["input"]["img"], x[:, 3:7, 2:8])
    r1 = ops.RandomCrop(keys=("data.input.img", "data.input.mask"), shape=(4, 4), rng=Rng(3))(sample)
    r2 = ops.RandomCrop(keys=("data.input.img", "data.input.mask"), shape=(4, 4), rng=Rng(3))(sample)
    np.testing.assert_array_equal(r1["data"]["input"]["img"], r2["data"]["input"]["img"])  # seeded by sample id
    np.testing.assert_array_equal(r1["data"]["input"]["img"], r1["data"]["input"]["mask"])
    with pytest.raises(SampleError, match="smaller than the crop"):
        ops.CenterCrop(keys="data.input.img", shape=(20, 20))(sample)
    with pytest.raises(SampleError, match="different spatial shapes"):
        ops.CenterCrop(keys=("data.input.img", "data.input.m"), shape=(2, 2))(s(img=x, m=x[:, :5]))


def test_pad_to_numpy_and_torch():
    x = np.ones((1, 3, 4))
    out = ops.PadTo(keys="data.input.img", shape=(5, 4), value=-1)(s(img=x))["data"]["input"]["img"]
    assert out.shape == (1, 5, 4) and out[0, 0, 0] == -1 and out[0, 1, 0] == 1
    t = ops.PadTo(keys="data.input.img", shape=(5, 4), value=-1)(s(img=torch.ones(1, 3, 4)))["data"]["input"]["img"]
    np.testing.assert_array_equal(t.numpy(), out)


def test_patches_split_one_sample_into_many():
    x = np.arange(16).reshape(1, 4, 4)
    outs = ops.Patches(keys="data.input.img", shape=(2, 2))(s(img=x))
    assert [o["data"]["sample_id"] for o in outs] == ["a#0", "a#1", "a#2", "a#3"]
    np.testing.assert_array_equal(outs[3]["data"]["input"]["img"], x[:, 2:, 2:])
    assert outs[3]["data"]["patch"]["origin"] == (2, 2)


def test_bad_shapes_rejected():
    with pytest.raises(ConfigError, match="Resize.shape"):
        ops.Resize(keys="data.input.img", shape=(0, 3))
    with pytest.raises(ConfigError, match="Resize.keys.*empty"):
        ops.Resize(keys=(), shape=(3, 3))
    with pytest.raises(SampleError, match="fewer than 3 spatial axes"):
        ops.Resize(keys="data.input.img", shape=(2, 2, 2))(s(img=np.zeros((4, 4))))


def test_3d_crops_and_pad_match_slicing():
    x = np.arange(1 * 6 * 8 * 10, dtype=np.float32).reshape(1, 6, 8, 10)
    keys = ("data.input.img", "data.input.mask")
    sample = s(img=x, mask=torch.from_numpy(x.copy()))
    c = ops.CenterCrop(keys=keys, shape=(2, 4, 6))(sample)["data"]["input"]
    np.testing.assert_array_equal(c["img"], x[:, 2:4, 2:6, 2:8])
    np.testing.assert_array_equal(c["mask"].numpy(), c["img"])
    r = ops.RandomCrop(keys=keys, shape=(3, 3, 3), rng=Rng(1))(sample)["data"]["input"]
    assert r["img"].shape == (1, 3, 3, 3)
    np.testing.assert_array_equal(r["mask"].numpy(), r["img"])  # one window for every key
    (z, y, w) = np.argwhere(x[0] == r["img"][0, 0, 0, 0])[0]
    np.testing.assert_array_equal(r["img"], x[:, z : z + 3, y : y + 3, w : w + 3])
    p = ops.PadTo(keys="data.input.img", shape=(8, 8, 11), value=-1, center=False)(s(img=x))["data"]["input"]["img"]
    assert p.shape == (1, 8, 8, 11)
    np.testing.assert_array_equal(p[:, :6, :8, :10], x)
    assert (p[:, 6:] == -1).all() and (p[..., 10:] == -1).all()
    pc = ops.PadTo(keys="data.input.img", shape=(8, 8, 12), value=0)(s(img=x))["data"]["input"]["img"]
    np.testing.assert_array_equal(pc[:, 1:7, :, 1:11], x)


# --------------------------------------------------------------------------- the affine follows the grid


def _vol(affine=None):
    x = np.arange(1 * 8 * 10 * 6, dtype=np.float32).reshape(1, 8, 10, 6)
    data = {"sample_id": "v", "input": {"img": x, "mask": (x % 7 == 0).astype(np.uint8)}}
    if affine is not None:
        data["input"]["affine"] = affine
    return {"data": data}


_A = np.array([[0.0, 0.0, -2.5, 30.0], [0.0, -0.7, 0.0, 12.0], [1.1, 0.0, 0.0, -40.0], [0.0, 0.0, 0.0, 1.0]])


def _same_world_values(before, after):
    """Every voxel of ``after`` holds the value ``before`` has at the same world point."""
    from fusefn import affine as geo

    x, a = before["data"]["input"]["img"], before["data"]["input"]["affine"]
    y, b = after["data"]["input"]["img"], after["data"]["input"]["affine"]
    idx = np.argwhere(np.ones(y.shape[1:], bool))
    src = np.rint(geo.world_to_voxel(a, geo.voxel_to_world(b, idx))).astype(int)
    inside = ((src >= 0) & (src < np.array(x.shape[1:]))).all(axis=1)
    np.testing.assert_array_equal(y[0][tuple(idx[inside].T)], x[0][tuple(src[inside].T)])
    return inside


@pytest.mark.parametrize(
    "op",
    [
        ops.CenterCrop(keys=("data.input.img", "data.input.mask"), shape=(4, 5, 3)),
        ops.RandomCrop(keys=("data.input.img", "data.input.mask"), shape=(4, 5, 3), rng=Rng(2)),
        ops.PadTo(keys=("data.input.img", "data.input.mask"), shape=(11, 10, 9), value=-1),
        ops.PadTo(keys="data.input.img", shape=(11, 13, 9), center=False),
    ],
)
def test_crop_and_pad_update_the_affine(op):
    before = _vol(_A)
    after = op(before)
    inside = _same_world_values(before, after)
    assert inside.any()
    if isinstance(op, ops.PadTo):
        assert not inside.all()  # the padding lies outside the original grid
    assert "affine" not in op(_vol())["data"]["input"]  # a sample without geometry gets none


def test_patches_carry_their_own_affine():
    before = _vol(_A)
    for patch in ops.Patches(keys="data.input.img", shape=(4, 5, 3))(before):
        assert _same_world_values(before, patch).all()
        origin = patch["data"]["patch"]["origin"]
        from fusefn import affine as geo

        np.testing.assert_allclose(patch["data"]["input"]["affine"], geo.crop_affine(_A, origin))


def test_resize_keeps_the_field_of_view():
    from fusefn import affine as geo

    before = _vol(_A)
    after = ops.Resize(keys="data.input.img", shape=(4, 20, 3))(before)
    b = after["data"]["input"]["affine"]
    np.testing.assert_allclose(geo.spacing(b), np.array(geo.spacing(_A)) * [2.0, 0.5, 2.0])
    # the outer corner of the first voxel stays; the grid still covers the same box
    np.testing.assert_allclose(geo.voxel_to_world(b, [-0.5] * 3), geo.voxel_to_world(_A, [-0.5] * 3))
    np.testing.assert_allclose(geo.voxel_to_world(b, [3.5, 19.5, 2.5]), geo.voxel_to_world(_A, [7.5, 9.5, 5.5]))
    with pytest.raises(SampleError, match="op Resize, key 'data.input.affine'.*2 spatial axes"):
        ops.Resize(keys="data.input.img", shape=(4, 4))(before)
