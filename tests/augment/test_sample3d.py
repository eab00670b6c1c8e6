"""The compiled 3D sampling kernel gives PyTorch's ``grid_sample`` values bit for bit, on every path it takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import Rng
from fusefn.augment import Affine, GaussianNoise, _common, _resample, _sample3d, chain, default_volume_pipeline

# numba is a dependency: this skips only where its wheels do not exist (then F.grid_sample runs everywhere)
needs_numba = pytest.mark.skipif(not _sample3d.available(), reason="numba is not importable here")

MODES = ["bilinear", "nearest"]
PADDINGS = ["zeros", "border", "reflection"]


def with_threads(n: int, fn):
    """``fn()`` on ``n`` threads, even for the tiny volumes here (the kernel keeps small work on one)."""
    before, least = torch.get_num_threads(), _sample3d._MIN_PER_THREAD
    torch.set_num_threads(n)
    _sample3d._MIN_PER_THREAD = 1
    try:
        return fn()
    finally:
        torch.set_num_threads(before)
        _sample3d._MIN_PER_THREAD = least


@needs_numba
@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    padding=st.sampled_from(PADDINGS),
    channels=st.integers(1, 3),
    in_shape=st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
    out_shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    spread=st.sampled_from([0.5, 1.0, 1.6, 40.0]),
    channels_first=st.booleans(),
    threads=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)
def test_grid_kernel_equals_grid_sample(
    mode, padding, channels, in_shape, out_shape, spread, channels_first, threads, seed
):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, channels, *in_shape), generator=g)
    grid = (torch.rand((2, *out_shape, 3), generator=g) * 2 - 1) * spread
    if channels_first:  # as the fused and elastic grids come: a strided view
        grid = grid.movedim(-1, 1).contiguous().movedim(1, -1)
    expected = F.grid_sample(x, grid, mode, padding, align_corners=False)
    assert _sample3d.eligible(x, grid, mode, padding)
    got = with_threads(threads, lambda: _sample3d.grid_sample_3d(x, grid, mode, padding))
    assert torch.equal(got, expected)


@needs_numba
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", MODES)
def test_grid_kernel_on_points_at_the_edges_and_beyond(mode, padding):
    # exact pixel centres, half-pixel ties, the outer edges, NaN and huge values: ATen's clipping and rounding
    x = torch.randn(1, 2, 4, 5, 6)
    values = torch.tensor([-1.0, 1.0, 0.0, -1 / 3, 1 / 3, 1 / 6, -1.2, 1e12, -1e12, float("nan"), float("inf")])
    pts = torch.cartesian_prod(values, values, values[:6])
    grid = pts.view(1, 1, 1, -1, 3)
    expected = F.grid_sample(x, grid, mode, padding, align_corners=False)
    assert not expected.isnan().any()
    assert torch.equal(_sample3d.grid_sample_3d(x, grid, mode, padding), expected)


@needs_numba
@settings(max_examples=25, deadline=None)
@given(
    padding=st.sampled_from(PADDINGS),
    active=st.lists(st.booleans(), min_size=4, max_size=4),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_affine_kernel_equals_grid_sample_on_the_affine_grid(padding, active, threads, seed):
    aug = Affine(dims=3, image_keys="img", rotate=(-40, 40), scale=(0.7, 1.4), shear=(-10, 10), translate=(-3, 3))
    inverse = aug.sample(4, rng=Rng(seed))["inverse"]
    index = torch.tensor([i for i, a in enumerate(active) if a], dtype=torch.int64)
    x = torch.rand(4, 2, 7, 9, 8)
    seg = (torch.rand(4, 1, 7, 9, 8) * 5).to(torch.uint8)
    theta = _resample.normalised_theta(inverse[index], (7, 9, 8), torch.float32)
    grid = _resample.grid_from_inverse(inverse[index], (7, 9, 8), torch.float32)

    def run():
        img = _sample3d.affine_3d(x, x.clone(), index, theta, "bilinear", padding)
        lab = _sample3d.affine_3d(seg, seg.clone(), index, theta, "nearest", padding)
        return img, lab

    img, lab = with_threads(threads, run)
    expected = x.clone()
    expected[index] = F.grid_sample(x[index], grid, "bilinear", padding, align_corners=False)
    assert torch.equal(img, expected)
    labels = seg.clone()
    labels[index] = F.grid_sample(seg[index].float(), grid, "nearest", padding, align_corners=False).to(torch.uint8)
    assert torch.equal(lab, labels)


@needs_numba
def test_affine_kernel_in_place_reads_every_sample_before_writing():
    aug = Affine(dims=3, image_keys="img", rotate=(-30, 30))
    inverse = aug.sample(3, rng=Rng(1))["inverse"]
    x = torch.rand(3, 1, 6, 6, 6)
    index = torch.tensor([0, 2])
    theta = _resample.normalised_theta(inverse[index], (6, 6, 6), torch.float32)
    expected = _sample3d.affine_3d(x, x.clone(), index, theta, "bilinear", "zeros")
    same = x.clone()
    assert _sample3d.affine_3d(same, same, index, theta, "bilinear", "zeros") is same
    assert torch.equal(same, expected)
    # a channels-last batch: empty_like gives a strided output buffer, written through a temporary
    x2 = torch.rand(3, 2, 6, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    strided = torch.empty_like(x2)
    assert not strided.is_contiguous()
    got = _sample3d.affine_3d(x2, strided, index, theta, "bilinear", "zeros")
    grid = _resample.grid_from_inverse(inverse[index], (6, 6, 6), torch.float32)
    assert torch.equal(got[index], F.grid_sample(x2[index], grid, align_corners=False))


@needs_numba
def test_integer_labels_are_copied_exactly():
    labels = torch.tensor([0, 2**24 + 1, 2**40 + 3], dtype=torch.int64)
    seg = labels[torch.randint(0, 3, (2, 1, 6, 7, 5))]
    inverse = Affine(dims=3, mask_keys="seg", rotate=(-30, 30)).sample(2, rng=Rng(2))["inverse"]
    theta = _resample.normalised_theta(inverse, (6, 7, 5), torch.float32)
    out = _sample3d.affine_3d(seg, torch.empty_like(seg), torch.arange(2), theta, "nearest", "zeros")
    assert set(out.unique().tolist()) <= set(labels.tolist())
    assert (out == 2**40 + 3).any()


@needs_numba
def test_what_the_kernel_does_not_take_goes_to_grid_sample():
    x, grid = torch.rand(1, 1, 4, 4, 4), torch.rand(1, 3, 3, 3, 3) * 2 - 1
    assert not _sample3d.eligible(x.double(), grid.double(), "bilinear", "zeros")
    assert not _sample3d.eligible(x.requires_grad_(), grid, "bilinear", "zeros")
    assert not _sample3d.eligible(x.detach(), grid, "bicubic", "zeros")
    assert not _sample3d.eligible(x.detach()[:, :, 0], grid[:, 0], "bilinear", "zeros")
    assert not _sample3d.eligible(torch.rand(1, 1, 0, 4, 4), grid, "bilinear", "zeros")  # F.grid_sample raises
    assert not _sample3d.eligible(torch.nn.Parameter(x.detach(), requires_grad=False), grid, "bilinear", "zeros")
    assert not _sample3d.affine_eligible(torch.zeros(1, 1, 2, 2, 2, dtype=torch.uint8), "bilinear", "zeros")
    assert _sample3d.affine_eligible(torch.zeros(1, 1, 2, 2, 2, dtype=torch.uint8), "nearest", "zeros")
    # float64 through the whole op: the same values as before, from F.grid_sample
    y = x.detach().double()
    g = grid.double()
    assert torch.equal(_resample.grid_sample(y, g, "bilinear", "zeros"), F.grid_sample(y, g, align_corners=False))


@needs_numba
@pytest.mark.parametrize("threads", [1, 2])
def test_volume_augmentation_is_the_same_with_and_without_the_kernel(monkeypatch, threads):
    pipe = chain(
        default_volume_pipeline("img", mask_keys="seg", p=0.7),
        Affine(dims=3, image_keys="img", mask_keys="seg", rotate=(-20, 20), padding="border", p=0.5),
    )
    g = torch.Generator().manual_seed(0)
    batch = {"img": torch.rand(5, 1, 12, 10, 11, generator=g), "seg": (torch.rand(5, 1, 12, 10, 11) * 3).long()}
    fast = with_threads(threads, lambda: pipe(batch, rng=Rng(5)))
    monkeypatch.setattr(_sample3d, "available", lambda: False)
    slow = with_threads(threads, lambda: pipe(batch, rng=Rng(5)))
    assert torch.equal(fast["img"], slow["img"])
    assert torch.equal(fast["seg"], slow["seg"])


@needs_numba
def test_the_eager_cpu_paths_take_the_kernel(monkeypatch):
    calls = []
    affine_3d, grid_sample_3d = _sample3d.affine_3d, _sample3d.grid_sample_3d
    monkeypatch.setattr(_sample3d, "affine_3d", lambda *a: calls.append("affine") or affine_3d(*a))
    monkeypatch.setattr(_sample3d, "grid_sample_3d", lambda *a: calls.append("grid") or grid_sample_3d(*a))
    batch = {"img": torch.rand(4, 1, 8, 8, 8), "seg": torch.zeros(4, 1, 8, 8, 8, dtype=torch.uint8)}
    Affine(dims=3, image_keys="img", mask_keys="seg", rotate=(10, 20))(batch, rng=Rng(0))
    assert calls == ["affine", "affine"]  # the image and the mask, each in one call for the batch
    calls.clear()
    from fusefn.augment import Elastic

    chain(Affine(dims=3, image_keys="img", rotate=(10, 20)), Elastic(dims=3, image_keys="img"))(batch, rng=Rng(0))
    assert calls and set(calls) == {"grid"}  # the fused grid
    calls.clear()
    Affine(dims=3, image_keys="img", rotate=(10, 20))({"img": batch["img"].double()}, rng=Rng(0))
    assert calls == []  # float64 stays on PyTorch's kernel


# ------------------------------------------------------------------ noise drawn on the threads


def test_volume_noise_does_not_depend_on_the_threads():
    aug = GaussianNoise(image_keys="img", std=(0.1, 0.3))
    shapes = {"img": (1, 40, 40, 41)}  # above OWN_GENERATOR_NUMEL: one generator per sample
    one = with_threads(1, lambda: aug.sample(5, rng=Rng(3), shapes=shapes))
    three = with_threads(3, lambda: aug.sample(5, rng=Rng(3), shapes=shapes))
    assert torch.equal(one["noise"]["img"], three["noise"]["img"])
    z = one["noise"]["img"]
    std = one["std"]
    for i in range(5):  # each sample's own std, a standard normal otherwise
        assert abs(float(z[i].std()) / float(std[i]) - 1) < 0.02
        assert abs(float(z[i].mean())) < 0.01


def test_scaled_normal_switches_to_own_generators_by_size_only():
    g = torch.Generator().manual_seed(0)
    small = _common.scaled_normal(g, 3, (1, 8, 8), torch.ones(3))
    assert torch.equal(small, torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(0)))
    scale = torch.tensor([0.37, 1.9])
    big = _common.scaled_normal(torch.Generator().manual_seed(0), 2, (1, 256, 256), scale)
    seeds = torch.randint(0, 2**32, (2,), generator=torch.Generator().manual_seed(0)).tolist()
    for i, s in enumerate(seeds):
        expected = torch.randn((1, 256, 256), generator=torch.Generator().manual_seed(s)) * scale[i]
        assert torch.equal(big[i], expected)


def test_threads_keep_the_callers_inference_and_grad_modes():
    aug = GaussianNoise(image_keys="img", std=0.1)
    batch = {"img": torch.rand(4, 1, 40, 40, 41)}  # large samples: their noise is drawn on the threads
    with torch.inference_mode():
        out = with_threads(2, lambda: aug(batch, rng=Rng(0)))["img"]
    assert out.is_inference()
    modes = []
    with torch.no_grad():
        _common.split_over_threads(4, lambda lo, hi: modes.append(torch.is_grad_enabled()), threads=2)
    assert modes and not any(modes)


def test_split_over_threads_covers_the_range_once_and_reraises():
    seen = []
    _common.split_over_threads(10, lambda lo, hi: seen.extend(range(lo, hi)), threads=3)
    assert sorted(seen) == list(range(10))

    def boom(lo, hi):
        if lo > 0:
            raise ValueError("from a worker")

    with pytest.raises(ValueError, match="from a worker"):
        _common.split_over_threads(4, boom, threads=2)
