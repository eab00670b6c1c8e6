"""The eager CPU fast paths give the general path's values: in-plane 3D maps, views, runs, channel-first grids."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import Rng
from fusefn.augment import (
    Affine,
    GaussianNoise,
    Intensity,
    _common,
    _resample,
    affine,
    default_volume_pipeline,
    intensity,
)
from fusefn.errors import ConfigError

KEY = "img"


def general(monkeypatch, fn):
    """``fn()`` with the in-plane path switched off: every sample through the 3D kernel."""
    with monkeypatch.context() as m:
        m.setattr(affine, "planar", lambda inv: torch.zeros(inv.shape[0], dtype=torch.bool))
        return fn()


# ------------------------------------------------------------------ in-plane 3D maps


@settings(max_examples=30, deadline=None)
@given(
    angle=st.floats(-180, 180),
    zoom=st.floats(0.7, 1.3),
    shift=st.integers(-12, 12),
    flips=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    padding=st.sampled_from(["zeros", "border", "reflection"]),
    threads=st.sampled_from([1, 2]),
)
def test_in_plane_maps_equal_the_3d_kernel(angle, zoom, shift, flips, padding, threads):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 10, 12, 9, generator=g)
    seg = (torch.rand(2, 1, 10, 12, 9, generator=g) * 4).to(torch.int64)
    aug = Affine(
        dims=3,
        image_keys=KEY,
        mask_keys="seg",
        rotate=((angle, angle), (0, 0), (0, 0)),
        scale=(zoom, zoom),
        scale_axes=(1, 2),
        translate=((shift, shift), (-2, 2), (-2, 2)),
        flip=tuple(float(f) for f in flips),
        padding=padding,
    )
    params = aug.sample(2, rng=Rng(1))
    assert bool(_resample.planar(params["inverse"]).all())
    batch = {KEY: x, "seg": seg}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = aug.apply(batch, params)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(affine, "planar", lambda inv: torch.zeros(inv.shape[0], dtype=torch.bool))
            slow = aug.apply(batch, params)
    finally:
        torch.set_num_threads(before)
    # the 3D kernel gives the neighbouring slice a weight of about 1e-6 (its depth coordinate is rounded)
    torch.testing.assert_close(fast[KEY], slow[KEY], atol=1e-5, rtol=0)
    assert torch.equal(fast["seg"], slow["seg"])
    assert torch.equal(batch[KEY], x)  # the input is untouched


def test_planar_detects_only_maps_that_keep_the_slices():
    def inverse(**kw):
        return Affine(dims=3, image_keys=KEY, **kw).sample(1, rng=Rng(0))["inverse"]

    assert _resample.planar(inverse(rotate=((30, 30), (0, 0), (0, 0)), translate=((3, 3), (0.5, 0.5), (0, 0))))
    assert _resample.planar(inverse(flip=(1.0, 0.0, 1.0), scale=(1.2, 1.2), scale_axes=(1, 2)))
    assert not _resample.planar(inverse(rotate=((0, 0), (5, 5), (0, 0))))  # tilts the slices
    assert not _resample.planar(inverse(scale=(1.2, 1.2)))  # zooms the depth
    assert not _resample.planar(inverse(translate=((0.5, 0.5), (0, 0), (0, 0))))  # between slices


def test_in_plane_map_on_a_mixed_batch_and_an_owned_tensor(monkeypatch):
    """Planar, general and indexing samples in one batch; in place on an owned tensor gives the same values."""
    x = torch.rand(6, 1, 8, 10, 10, generator=torch.Generator().manual_seed(3))
    aug = Affine(dims=3, image_keys=KEY, rotate=((-90, 90), (0, 0), (0, 0)), p=0.7)
    tilt = Affine(dims=3, image_keys=KEY, rotate=((0, 0), (5, 5), (0, 0)), p=0.5)
    params = aug.sample(6, rng=Rng(2))
    params["inverse"][1] = tilt.sample(1, rng=Rng(0))["inverse"][0]  # one sample needs the 3D kernel
    params["inverse"][2] = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))  # a flip: indexing
    params["apply"][:3] = True
    params["index"] = torch.nonzero(params["apply"]).flatten()
    slow = general(monkeypatch, lambda: aug.apply({KEY: x}, params))[KEY]
    fast = aug.apply({KEY: x}, params)[KEY]
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    owned = x.clone()
    in_place, _ = aug._apply({KEY: owned}, params, frozenset({KEY}))
    torch.testing.assert_close(in_place[KEY], slow, atol=1e-5, rtol=0)
    assert torch.equal(fast[~params["apply"]], x[~params["apply"]])


def test_scale_axes_zooms_only_those_axes():
    aug = Affine(dims=3, image_keys=KEY, scale=(1.5, 1.5), scale_axes=(1, 2))
    m = aug.sample(2, rng=Rng(0))["matrix"]
    assert torch.equal(torch.diagonal(m, dim1=1, dim2=2)[:, :3], torch.tensor([[1.0, 1.5, 1.5]] * 2).double())
    # without scale_axes, the same draws as before the option existed: one factor on every axis
    iso = Affine(dims=3, image_keys=KEY, scale=(0.5, 2.0)).sample(3, rng=Rng(4))["matrix"]
    part = Affine(dims=3, image_keys=KEY, scale=(0.5, 2.0), scale_axes=(0, 1, 2)).sample(3, rng=Rng(4))["matrix"]
    assert torch.equal(iso, part)
    for bad in [(), (3,), (1, 1), (True,), ("1",)]:
        with pytest.raises(ConfigError, match=r"Affine\.scale_axes"):
            Affine(dims=3, image_keys=KEY, scale=(0.9, 1.1), scale_axes=bad)


# ------------------------------------------------------------------ grids, buffers, runs


def test_channel_first_grid_is_bit_identical(monkeypatch):
    inv = Affine(dims=3, image_keys=KEY, rotate=(-40, 40), scale=(0.5, 2), shear=(-10, 10), translate=(-4, 4))
    inverse = inv.sample(3, rng=Rng(0))["inverse"]
    for dtype in (torch.float32, torch.float64):
        fast = _resample.grid_from_inverse(inverse, (6, 7, 8), dtype)
        monkeypatch.setattr(_resample, "chunked", lambda x: False)
        slow = _resample.grid_from_inverse(inverse, (6, 7, 8), dtype)
        monkeypatch.undo()
        assert torch.equal(fast, slow)


def test_output_buffer_rows_and_write_rows():
    x = torch.arange(6.0).view(6, 1, 1).expand(6, 1, 3).contiguous()
    index = torch.tensor([1, 2, 4])
    out = _common.output_buffer(x, index, owned=False)
    keep = torch.tensor([0, 3, 5])
    assert torch.equal(out[keep], x[keep]) and out.data_ptr() != x.data_ptr()
    assert _common.output_buffer(x, index, owned=True) is x
    assert _common.runs(torch.tensor([1, 2, 4, 5, 6, 9])) == [(0, 1, 2), (2, 4, 3), (5, 9, 1)]
    view = _common.rows(x, torch.tensor([2, 3]))
    assert view.data_ptr() == x[2].data_ptr()  # consecutive: a view
    copy = _common.rows(x, torch.tensor([1, 3]))
    assert copy.data_ptr() != x[1].data_ptr() and torch.equal(copy, x[[1, 3]])
    y = torch.full((2, 1, 3), -1.0)
    assert torch.equal(_common.write_rows(x.clone(), torch.tensor([4, 5]), y)[4:], y)
    assert torch.equal(_common.write_rows(x.clone(), torch.tensor([0, 5]), y)[[0, 5]], y)


def _whole(monkeypatch, fn):
    with monkeypatch.context() as m:
        for mod in (_resample, intensity, affine, _common):
            m.setattr(mod, "chunked", lambda x: False)
        return fn()


@pytest.mark.parametrize("seed", range(3))
def test_volume_pipeline_eager_paths_equal_the_whole_batch_path(monkeypatch, seed):
    """Views, runs and the channel-first grid change no value: bit for bit the compiled/GPU path's arithmetic."""
    pipe = default_volume_pipeline(KEY)
    batch = {KEY: torch.rand(6, 1, 8, 9, 10, generator=torch.Generator().manual_seed(seed))}
    params = pipe.sample_like(batch, rng=Rng(seed))
    fast = pipe.apply(batch, params)[KEY]
    slow = _whole(monkeypatch, lambda: pipe.apply(batch, params))[KEY]
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("chunk_bytes", [16, 1 << 21])  # samples counted as volumes (runs of views), or as images
@pytest.mark.parametrize("owned", [False, True])
def test_intensity_and_noise_runs_equal_the_whole_batch_path(monkeypatch, owned, chunk_bytes):
    ops = (
        Intensity(image_keys=KEY, gamma=(0.8, 1.2), multiply=(0.9, 1.1), add=(-0.1, 0.1), contrast=(0.8, 1.2), p=0.5),
        Intensity(image_keys=KEY, multiply=(0.5, 2.0), clip=None, p=0.5),
        GaussianNoise(image_keys=KEY, std=(0.1, 0.2), p=0.5),
    )
    x = torch.rand(9, 2, 5, 6, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    monkeypatch.setattr(_common, "CHUNK_BYTES", chunk_bytes)
    for op in ops:
        params = op.sample_like({KEY: x}, rng=Rng(7))
        assert 0 < params["index"].shape[0] < 9

        def run(op=op, params=params):
            src = x.clone()
            out, _ = op._apply({KEY: src}, params, frozenset({KEY}) if owned else frozenset())
            if not owned:
                assert torch.equal(src, x)  # the caller's tensor is untouched
            return out[KEY]

        assert torch.equal(run(), _whole(monkeypatch, run))


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_in_plane_blocks_change_no_value(monkeypatch, padding):
    """Slice blocks of any size (one slice each, or the whole volume) give the same bits."""
    x = torch.rand(3, 2, 9, 8, 7, generator=torch.Generator().manual_seed(5))
    aug = Affine(
        dims=3,
        image_keys=KEY,
        rotate=((-60, 60), (0, 0), (0, 0)),
        translate=((-4, 4), (-1, 1), (-1, 1)),
        integer_translate=True,
        flip=(0.5, 0.0, 0.0),
        padding=padding,
    )
    params = aug.sample(3, rng=Rng(9))
    monkeypatch.setattr(_resample, "BLOCK_BYTES", 1)
    small = aug.apply({KEY: x}, params)[KEY]
    monkeypatch.setattr(_resample, "BLOCK_BYTES", 1 << 40)
    whole = aug.apply({KEY: x}, params)[KEY]
    assert torch.equal(small, whole)
