"""Affine: exact right-angle rotations and flips, identity, inverse, masks, 3D vs 2D, points and boxes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn.augment import Affine, chain, compose_affine_params
from fusefn.core import Rng
from fusefn.errors import ConfigError, MissingKeyError, SampleError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_right_angle_rotation_equals_rot90(size, k):
    x = torch.rand(3, 2, size, size, generator=gen(1))
    out = Affine(image_keys="img", rotate=(90 * k, 90 * k))({"img": x}, rng=Rng(0))
    assert torch.equal(out["img"], torch.rot90(x, k, dims=(-2, -1)))


@pytest.mark.parametrize("flip", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_flip_equals_torch_flip(flip):
    x = torch.rand(4, 1, 16, 8, generator=gen(1))
    out = Affine(image_keys="img", flip=flip)({"img": x}, rng=Rng(0))
    dims = [2 + i for i, f in enumerate(flip) if f]
    assert torch.equal(out["img"], torch.flip(x, dims=dims))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_3d_right_angle_rotation_equals_rot90(axis):
    x = torch.rand(2, 1, 8, 8, 8, generator=gen(2))
    rotate = [(0, 0)] * 3
    rotate[axis] = (90, 90)
    out = Affine(dims=3, image_keys="img", rotate=tuple(rotate))({"img": x}, rng=Rng(0))
    p, q = [2 + a for a in range(3) if a != axis]
    assert torch.equal(out["img"], torch.rot90(x, 1, dims=(p, q)))


def test_identity_params_return_input():
    x = torch.rand(3, 2, 16, 32, generator=gen(3))
    assert torch.equal(Affine(image_keys="img")({"img": x}, rng=Rng(0))["img"], x)
    odd = torch.rand(3, 1, 28, 17, generator=gen(3))
    torch.testing.assert_close(Affine(image_keys="img")({"img": odd}, rng=Rng(0))["img"], odd, atol=1e-5, rtol=0)


def test_inactive_samples_are_untouched_and_input_not_mutated():
    x = torch.rand(16, 1, 12, 12, generator=gen(4))
    before = x.clone()
    aug = Affine(image_keys="img", rotate=(-30, 30), p=0.5)
    params = aug.sample(16, rng=Rng(5))
    out = aug.apply({"img": x}, params)["img"]
    off = ~params["apply"]
    assert off.any() and params["apply"].any()
    assert torch.equal(out[off], x[off])
    assert not torch.equal(out[~off], x[~off])
    assert torch.equal(x, before)


def _blob(n, size, dims=2):
    axes = [torch.linspace(-1, 1, size)] * dims
    mesh = torch.meshgrid(*axes, indexing="ij")
    r2 = sum(m**2 for m in mesh)
    img = torch.exp(-r2 / 0.15)
    return img.expand(n, 1, *([size] * dims)).clone()


def test_affine_then_inverse_returns_input():
    x = _blob(6, 48)
    aug = Affine(image_keys="img", rotate=(-25, 25), scale=(0.9, 1.1), translate=(-3, 3), shear=(-5, 5))
    params = aug.sample(6, rng=Rng(6))
    inverse = dict(params, matrix=params["inverse"], inverse=params["matrix"])
    back = aug.apply(aug.apply({"img": x}, params), inverse)["img"]
    torch.testing.assert_close(back, x, atol=0.02, rtol=0)


def test_masks_keep_their_label_values():
    seg = torch.randint(0, 3, (4, 1, 20, 20), generator=gen(7)) * 3 + 1  # labels 1, 4, 7
    img = torch.rand(4, 1, 20, 20, generator=gen(7))
    aug = Affine(image_keys="img", mask_keys="seg", rotate=(-40, 40), scale=(0.8, 1.2), padding="border")
    out = aug({"img": img, "seg": seg}, rng=Rng(8))
    assert out["seg"].dtype == torch.int64
    assert set(out["seg"].unique().tolist()) <= {1, 4, 7}


def test_3d_rotation_about_one_axis_equals_2d_slice_by_slice():
    x = torch.rand(2, 1, 5, 16, 16, generator=gen(9))
    angle = 23.0
    vol = Affine(dims=3, image_keys="img", rotate=((angle, angle), (0, 0), (0, 0)))({"img": x}, rng=Rng(0))["img"]
    flat = Affine(dims=2, image_keys="img", rotate=(angle, angle))
    for d in range(x.shape[2]):
        sl = flat({"img": x[:, :, d]}, rng=Rng(0))["img"]
        torch.testing.assert_close(vol[:, :, d], sl, atol=1e-5, rtol=0)


def test_points_and_boxes_follow_the_image():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 3, 10] = 1.0
    pts = torch.tensor([[[3.0, 10.0]]])
    boxes = torch.tensor([[[2.0, 9.0, 4.0, 11.0]]])
    aug = Affine(image_keys="img", point_keys="pts", box_keys="box", rotate=(90, 90), translate=(1, 1))
    out = aug({"img": x, "pts": pts, "box": boxes}, rng=Rng(0))
    r, c = divmod(int(out["img"].flatten().argmax()), 16)
    assert out["pts"][0, 0].tolist() == [r, c]
    lo, hi = out["box"][0, 0, :2], out["box"][0, 0, 2:]
    assert bool((lo <= torch.tensor([r, c])).all() and (hi >= torch.tensor([r, c])).all())
    torch.testing.assert_close(hi - lo, torch.tensor([2.0, 2.0], dtype=torch.float32))


@settings(max_examples=25, deadline=None)
@given(
    a=st.floats(-180, 180),
    b=st.floats(-180, 180),
    s=st.floats(0.5, 2.0),
    t=st.floats(-5, 5),
)
def test_composed_params_equal_sequential_point_maps(a, b, s, t):
    first = Affine(image_keys="img", point_keys="pts", rotate=(a, a), scale=(s, s))
    second = Affine(image_keys="img", point_keys="pts", rotate=(b, b), translate=(t, t))
    x = torch.zeros(2, 1, 8, 8)
    pts = torch.rand(2, 5, 2, generator=gen(0), dtype=torch.float64) * 8
    p1, p2 = first.sample(2, rng=Rng(1)), second.sample(2, rng=Rng(2))
    seq = second.apply(first.apply({"img": x, "pts": pts}, p1), p2)["pts"]
    fused = first.apply({"img": x, "pts": pts}, compose_affine_params(p1, p2))["pts"]
    torch.testing.assert_close(fused, seq)
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    torch.testing.assert_close(p1["matrix"] @ p1["inverse"], eye)


def test_consecutive_affines_fuse_into_one_resampling():
    a = Affine(image_keys="img", rotate=(90, 90))
    b = Affine(image_keys="img", flip=(1.0, 0.0))
    pipe = chain(a, b)
    x = torch.rand(2, 1, 8, 8, generator=gen(1))
    params = pipe.sample(2, rng=Rng(0))
    assert len(params) == 1  # one stage, one resampling
    assert torch.equal(pipe.apply({"img": x}, params)["img"], torch.flip(torch.rot90(x, 1, dims=(2, 3)), dims=(2,)))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"Affine\.p"):
        Affine(image_keys="img", p=1.5)
    with pytest.raises(ConfigError, match=r"Affine\.scale.*low > high"):
        Affine(image_keys="img", scale=(1.2, 0.8))
    with pytest.raises(ConfigError, match=r"Affine\.rotate"):
        Affine(image_keys="img", rotate=(10, -10))
    with pytest.raises(ConfigError, match=r"Affine\.flip"):
        Affine(image_keys="img", flip=(0.5, 2.0))
    with pytest.raises(ConfigError, match="image or mask key"):
        Affine(point_keys="pts")
    listed = Affine(image_keys=["img"], rotate=[-10, 10], flip=[0.5, 0.5])
    assert listed == Affine(image_keys="img", rotate=(-10, 10), flip=(0.5, 0.5)) and hash(listed)


def test_call_errors_name_op_and_key():
    aug = Affine(image_keys="img", mask_keys="seg", rotate=(-10, 10))
    img = torch.rand(2, 1, 8, 8)
    with pytest.raises(MissingKeyError, match=r"Affine.*'seg'"):
        aug({"img": img}, rng=Rng(0))
    with pytest.raises(SampleError, match=r"Affine.*'img'.*2D"):
        aug({"img": torch.rand(2, 8, 8), "seg": torch.zeros(2, 8, 8)}, rng=Rng(0))
    with pytest.raises(SampleError, match=r"Affine.*'seg'.*does not match"):
        aug({"img": img, "seg": torch.zeros(2, 1, 8, 9)}, rng=Rng(0))


def test_rotation_direction_matches_rot90_for_any_angle():
    # a point at angle 0 moves by +angle towards axis 1, as rot90 does for 90°
    aug = Affine(image_keys="img", point_keys="pts", rotate=(30, 30))
    pts = torch.tensor([[[0.0, 3.5]]], dtype=torch.float64)  # row 0, centre column of 8×8
    out = aug({"img": torch.zeros(1, 1, 8, 8), "pts": pts}, rng=Rng(0))["pts"][0, 0]
    c = 3.5
    expect = [c - 3.5 * math.cos(math.radians(30)), c - 3.5 * math.sin(math.radians(30))]
    torch.testing.assert_close(out, torch.tensor(expect, dtype=torch.float64))


@settings(max_examples=20, deadline=None)
@given(h=st.integers(2, 12), w=st.integers(2, 12), axis=st.integers(0, 1))
def test_flip_twice_is_identity_and_four_quarter_turns_too(h, w, axis):
    x = torch.rand(2, 1, h, w, generator=gen(h * 13 + w))
    flip = tuple(1.0 if a == axis else 0.0 for a in range(2))
    twice = chain(Affine(image_keys="img", flip=flip), Affine(image_keys="img", flip=flip))
    torch.testing.assert_close(twice({"img": x}, rng=Rng(0))["img"], x, atol=1e-5, rtol=0)
    sq = x[..., : min(h, w), : min(h, w)]
    quarter = Affine(image_keys="img", rotate=(90, 90))
    four = chain(*[quarter] * 4)
    torch.testing.assert_close(four({"img": sq}, rng=Rng(0))["img"], sq, atol=1e-5, rtol=0)
