"""Affine + Elastic fused into one resampling, the indexing path of flips, the sliced 3D grid_sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusefn import Rng
from fusefn.augment import Affine, Elastic, GaussianNoise, Intensity, chain
from fusefn.augment._common import generator
from fusefn.augment._resample import centred_base, grid_from_inverse, grid_sample


def smooth(n: int, spatial: tuple, seed: int = 0) -> torch.Tensor:
    """Low-frequency images: a coarse random field upsampled (interpolation error stays small)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1) + (4,) * len(spatial), generator=g)
    mode = "bicubic" if len(spatial) == 2 else "trilinear"
    return F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)


def sequential(affine, elastic, batch, seed):
    """The two ops one after the other, with the params the pipeline draws (same stream, same order)."""
    n = next(iter(batch.values())).shape[0]
    g = generator(Rng(seed), "cpu")
    pa = affine._sample(g, n)
    pe = elastic._sample(g, n)
    return elastic.apply(affine.apply(batch, pa), pe), pa, pe


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.mark.parametrize("dims,size", [(2, 48), (3, 24)])
@pytest.mark.parametrize("padding", ["border", "reflection"])
def test_fused_matches_sequential_on_smooth_images(dims, size, padding):
    aff = Affine(dims=dims, image_keys="img", rotate=(-20, 20), scale=(0.9, 1.1), translate=(-3, 3))
    el = Elastic(dims=dims, image_keys="img", displacement=2.0, padding=padding)
    batch = {"img": smooth(3, (size,) * dims)}
    pipe = chain(aff, el)
    assert len(pipe.sample(3, rng=Rng(1))) == 1  # one stage
    fused = pipe(batch, rng=Rng(1))["img"]
    seq, _, _ = sequential(aff, el, batch, 1)
    assert corr(fused, seq["img"]) >= 0.99


@pytest.mark.parametrize("dims", [2, 3])
def test_zero_displacement_gives_the_affine_alone(dims):
    aff = Affine(dims=dims, image_keys="img", mask_keys="seg", rotate=(-30, 30), scale=(0.8, 1.2), translate=(-2, 2))
    el = Elastic(dims=dims, image_keys="img", mask_keys="seg", displacement=0.0)
    x = torch.rand((2, 1) + (12,) * dims)
    batch = {"img": x, "seg": (x > 0.5).to(torch.int64)}
    fused = chain(aff, el)(batch, rng=Rng(5))
    _, pa, _ = sequential(aff, el, batch, 5)
    alone = aff.apply(batch, pa)
    torch.testing.assert_close(fused["img"], alone["img"], atol=1e-5, rtol=0)
    assert (fused["seg"] != alone["seg"]).float().mean() < 1e-3  # nearest: ties may break otherwise


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("padding", ["border", "reflection"])
def test_identity_affine_gives_the_elastic_alone(dims, padding):
    aff = Affine(dims=dims, image_keys="img", mask_keys="seg")  # nothing drawn: the identity
    el = Elastic(dims=dims, image_keys="img", mask_keys="seg", displacement=3.0, padding=padding)
    x = torch.rand((2, 1) + (10,) * dims)
    batch = {"img": x, "seg": (x * 4).to(torch.int64)}
    fused = chain(aff, el)(batch, rng=Rng(2))
    _, _, pe = sequential(aff, el, batch, 2)
    alone = el.apply(batch, pe)
    torch.testing.assert_close(fused["img"], alone["img"], atol=1e-5, rtol=0)
    assert torch.equal(fused["seg"], alone["seg"])
    assert set(fused["seg"].unique().tolist()) <= set(batch["seg"].unique().tolist())


def test_gates_params_and_fixed_path():
    aff = Affine(dims=2, image_keys="img", rotate=(-20, 20), p=0.5)
    el = Elastic(dims=2, image_keys="img", p=0.5)
    pipe = chain(aff, el)
    x = torch.rand(16, 1, 16, 16)
    (params,) = pipe.sample(16, rng=Rng(3))
    _, pa, pe = sequential(aff, el, {"img": x}, 3)
    # the same draws as the two ops: the fused stage only regroups them
    assert torch.equal(params["affine"]["matrix"], pa["matrix"])
    assert torch.equal(params["field"][pe["index"]], pe["field"])
    assert torch.equal(params["apply"], pa["apply"] | pe["apply"])
    out = pipe.apply({"img": x}, (params,))["img"]
    idle = ~params["apply"]
    assert idle.any() and torch.equal(out[idle], x[idle])
    fixed = pipe.apply_fixed({"img": x}, pipe.fixed_params((params,), 16))["img"]
    torch.testing.assert_close(fixed, out, atol=1e-6, rtol=0)


def test_not_fused_when_order_or_keys_differ():
    x = {"img": torch.rand(2, 1, 8, 8), "other": torch.rand(2, 1, 8, 8)}
    el_first = chain(Elastic(dims=2, image_keys="img"), Affine(dims=2, image_keys="img", rotate=(-5, 5)))
    other_keys = chain(Affine(dims=2, image_keys="img"), Elastic(dims=2, image_keys=("img", "other")))
    zeros = chain(Affine(dims=2, image_keys="img"), Elastic(dims=2, image_keys="img", padding="zeros"))
    for pipe in (el_first, other_keys, zeros):
        assert len(pipe.sample_like(x, rng=Rng(0))) == 2
        assert pipe(x, rng=Rng(0))["img"].shape == x["img"].shape


def test_points_follow_the_affine_in_a_fused_stage():
    aff = Affine(dims=2, image_keys="img", point_keys="pts", rotate=(90, 90))
    pipe = chain(aff, Elastic(dims=2, image_keys="img", displacement=1.0))
    batch = {"img": torch.rand(1, 1, 9, 9), "pts": torch.tensor([[[0.0, 0.0]]])}
    out = pipe(batch, rng=Rng(0))
    torch.testing.assert_close(out["pts"], aff(batch, rng=Rng(0))["pts"])


# ------------------------------------------------------------ flips and swaps by indexing


@pytest.mark.parametrize("spatial", [(5, 7), (5, 6, 7)])
def test_flips_are_exact_indexing(spatial):
    d = len(spatial)
    aug = Affine(dims=d, image_keys="img", mask_keys="seg", flip=(1.0,) * d)
    x = torch.rand((3, 2, *spatial))
    seg = (x[:, :1] * 5).to(torch.uint8)
    out = aug({"img": x, "seg": seg}, rng=Rng(0))
    axes = list(range(2, 2 + d))
    assert torch.equal(out["img"], x.flip(axes))
    assert torch.equal(out["seg"], seg.flip(axes))
    assert torch.equal(x, x.clone())  # the input is untouched


def test_right_angle_rotation_of_a_cube_is_exact_indexing():
    aug = Affine(dims=3, image_keys="img", rotate=((0, 0), (0, 0), (90, 90)))
    x = torch.rand(2, 1, 5, 5, 5)
    out = aug({"img": x}, rng=Rng(0))["img"]
    assert torch.equal(out, torch.rot90(x, 1, dims=(2, 3)))


def test_indexing_writes_safely_into_an_owned_tensor():
    # Intensity makes the key owned, so the flip writes in place: it must read every pixel first
    pipe = chain(
        Intensity(image_keys="img", multiply=(1.0, 1.0), clip=None), Affine(dims=2, image_keys="img", rotate=(90, 90))
    )
    x = torch.rand(2, 1, 6, 6)
    out = pipe({"img": x}, rng=Rng(0))["img"]
    assert torch.equal(out, torch.rot90(x, 1, dims=(2, 3)))


def test_mixed_batch_resamples_only_what_it_must():
    aug = Affine(dims=2, image_keys="img", flip=(0.5, 0.5), rotate=(-30, 30), p=0.5)
    x = torch.rand(32, 1, 16, 16)
    params = aug.sample(32, rng=Rng(4))
    out = aug.apply({"img": x}, params)["img"]
    expected = torch.stack(
        [
            F.grid_sample(
                x[i : i + 1], grid_from_inverse(params["inverse"][i : i + 1], (16, 16), x.dtype), align_corners=False
            )[0]
            for i in range(32)
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------ grids and the sliced 3D grid_sample


def test_grid_from_inverse_matches_the_matrix_product():
    aug = Affine(dims=3, image_keys="img", rotate=(-40, 40), scale=(0.5, 2.0), shear=(-10, 10), translate=(-4, 4))
    inv = aug.sample(3, rng=Rng(0))["inverse"]
    spatial = (6, 7, 8)
    base = centred_base(spatial, device="cpu", dtype=torch.float64)
    scale = torch.tensor([2.0 / s for s in spatial], dtype=torch.float64)
    expected = (base @ (inv[:, :3, :] * scale[None, :, None]).transpose(1, 2)).flip(-1).view(3, *spatial, 3)
    torch.testing.assert_close(grid_from_inverse(inv, spatial, torch.float64), expected)


@pytest.mark.parametrize("depth", [8, 7])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_sliced_grid_sample_equals_grid_sample(depth, mode):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.rand(1, 2, depth, 6, 5)
        grid = torch.rand(1, depth, 4, 5, 3) * 2.4 - 1.2
        expected = F.grid_sample(x, grid, mode, "zeros", align_corners=False)
        assert torch.equal(grid_sample(x, grid, mode, "zeros"), expected)
        strided = grid.movedim(-1, 1).contiguous().movedim(1, -1)  # as the elastic and fused grids come
        assert torch.equal(grid_sample(x, strided, mode, "zeros"), expected)
    finally:
        torch.set_num_threads(threads)


def test_default_volume_pipeline_still_runs_with_noise():
    pipe = chain(Affine(dims=3, image_keys="img", flip=(0.5, 0.5, 0.5)), GaussianNoise(image_keys="img", std=0.0))
    x = torch.rand(4, 1, 6, 6, 6)
    out = pipe({"img": x}, rng=Rng(0))["img"]
    for i in range(4):  # each sample is x flipped on some axes
        assert any(torch.equal(out[i], x[i].flip(a)) for a in ([], [1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3]))


def test_separable_trilinear_upsampling_equals_interpolate():
    from fusefn.augment.elastic import _upsample

    field = torch.randn(2, 3, 4, 5, 3)
    for size in [(12, 7, 9), (4, 5, 3), (1, 6, 2)]:
        expected = F.interpolate(field, size=size, mode="trilinear", align_corners=True)
        torch.testing.assert_close(_upsample(field, size), expected, atol=1e-5, rtol=0)
