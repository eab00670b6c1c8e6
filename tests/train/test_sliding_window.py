"""sliding_window: MONAI's windows and weights, exact streamed argmax, flips, padding, bad inputs."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn.errors import ConfigError
from fusefn.train.sliding_window import importance_map, scan_interval, sliding_window, window_starts

monai_utils = pytest.importorskip("monai.inferers.utils")
from monai.data.utils import compute_importance_map, dense_patch_slices  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402


def _net(cin=2, k=5, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(cin, 6, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(6, k, 3, padding=1)
    ).eval()
    return net


def _monai(net, x, roi, overlap, mode="gaussian", sigma_scale=0.125, padding_mode="constant"):
    with torch.no_grad():
        return sliding_window_inference(
            x[None], roi, 3, net, overlap=overlap, mode=mode, sigma_scale=sigma_scale, padding_mode=padding_mode
        )[0]


CASES = [
    ((2, 29, 23, 19), (12, 12, 12), 0.25),  # larger than the roi, odd sizes
    ((2, 11, 9, 13), (16, 16, 16), 0.5),  # smaller on every axis: padded
    ((2, 20, 7, 33), (8, 12, 10), (0.25, 0.5, 0.1)),  # mixed, overlap per axis
    ((2, 16, 16, 16), (16, 16, 16), 0.25),  # exactly one window
]


@pytest.mark.parametrize(("shape", "roi", "overlap"), CASES)
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_equals_monai_and_argmax_streams_exactly(shape, roi, overlap, blend):
    net = _net()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ref = _monai(net, x, roi, overlap, mode=blend, sigma_scale=0.2)
    out = sliding_window(net, x, roi=roi, overlap=overlap, blend=blend, sigma_scale=0.2, batch_size=3)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for bs in (1, 7):  # batches that straddle slabs
        labels = sliding_window(
            net, x, roi=roi, overlap=overlap, blend=blend, sigma_scale=0.2, batch_size=bs, output="argmax"
        )
        assert labels.dtype == torch.uint8 and labels.shape == shape[1:]
        assert torch.equal(labels.long(), out.argmax(0))


def test_numpy_in_numpy_out_and_reflect_padding():
    net = _net(cin=1, k=3)
    x = np.random.default_rng(0).normal(size=(1, 9, 12, 5)).astype(np.float32)
    out = sliding_window(net, x, roi=(8, 8, 8), overlap=0.5, pad_mode="reflect")
    assert isinstance(out, np.ndarray) and out.shape == (3, 9, 12, 5)
    ref = _monai(net, torch.from_numpy(x), (8, 8, 8), 0.5, padding_mode="reflect")
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)


@given(
    size=st.integers(1, 60),
    roi=st.integers(1, 40),
    overlap=st.floats(0, 0.95),
)
@settings(max_examples=200, deadline=None)
def test_window_layout_and_weights_are_monais(size, roi, overlap):
    size = max(size, roi)  # padded first
    ours = window_starts((size,), (roi,), scan_interval((size,), (roi,), (overlap,)))[0]
    interval = monai_utils._get_scan_interval((size,), (roi,), 1, (overlap,))
    assert scan_interval((size,), (roi,), (overlap,)) == interval
    theirs = [s[0].start for s in dense_patch_slices((size,), (roi,), interval)]
    assert ours == theirs
    assert ours[0] == 0 and ours[-1] == size - roi  # the whole axis is covered


@pytest.mark.parametrize("roi", [(5, 5), (16, 9, 7), (1, 3, 2)])
@pytest.mark.parametrize("sigma", [0.125, 0.5, (0.1, 0.3, 0.2)])
def test_importance_map_is_monais_including_its_floor(roi, sigma):
    if isinstance(sigma, tuple):
        sigma = sigma[: len(roi)]
    ours = importance_map(roi, blend="gaussian", sigma_scale=sigma)
    theirs = compute_importance_map(roi, mode="gaussian", sigma_scale=sigma)
    assert torch.equal(ours, theirs)
    assert torch.equal(importance_map(roi, blend="constant"), compute_importance_map(roi, mode="constant"))


def test_flip_tta_averages_flipped_predictions():
    net = _net(cin=1, k=2)
    x = torch.randn(1, 20, 18, 17, generator=torch.Generator().manual_seed(2))
    flips = ((0,), (1, 2))
    out = sliding_window(net, x, roi=(12, 12, 12), tta_flips=flips)
    parts = [sliding_window(net, x, roi=(12, 12, 12))]
    for axes in flips:
        dims = [a + 1 for a in axes]
        parts.append(sliding_window(net, x.flip(dims), roi=(12, 12, 12)).flip(dims))
    torch.testing.assert_close(out, sum(parts) / 3, atol=1e-5, rtol=0)
    # a predictor that commutes with the flips gives the same answer with or without them
    ident = lambda w: torch.cat([w, 2 * w], 1)  # noqa: E731
    torch.testing.assert_close(
        sliding_window(ident, x, roi=8, tta_flips=flips), sliding_window(ident, x, roi=8), atol=1e-6, rtol=0
    )


def test_2d_images_and_integer_volumes():
    x = torch.arange(3 * 30 * 21, dtype=torch.int16).reshape(3, 30, 21)
    out = sliding_window(lambda w: w[:, :2] * 1.0, x, roi=(10, 10))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x[:2].float(), rtol=1e-6, atol=1e-3)


def test_many_classes_give_wider_label_dtype():
    k = 300

    def predictor(w):
        scores = torch.arange(k, dtype=torch.float32).reshape(1, k, 1, 1)
        return scores.expand(w.shape[0], k, *w.shape[2:]) * (w[:, :1] + 2)

    labels = sliding_window(predictor, torch.rand(1, 6, 5), roi=(4, 4), output="argmax")
    assert labels.dtype == torch.int16 and bool((labels == k - 1).all())


def test_progress_bar(capsys):
    sliding_window(lambda w: w, torch.rand(1, 9, 9), roi=(4, 4), progress=True)
    assert "sliding window" in capsys.readouterr().err


def test_roi_larger_than_volume_without_padding_is_an_error():
    with pytest.raises(
        ConfigError, match=r"roi \(16, 8, 8\) is larger than the volume's spatial shape \(10, 9, 9\) on axis 0"
    ):
        sliding_window(lambda w: w, torch.rand(1, 10, 9, 9), roi=(16, 8, 8), pad_mode=None)


@pytest.mark.parametrize(
    ("predictor", "match"),
    [
        (lambda w: w[:, :, :-1], r"returned shape \(2, 1, 7, 8, 8\) for windows of shape \(2, 1, 8, 8, 8\)"),
        (lambda w: w[0], r"returned shape \(1, 8, 8, 8\)"),
        (lambda w: w[:1], r"expected \(N, K, \*roi\) = \(2, K, 8, 8, 8\)"),
    ],
)
def test_predictor_of_wrong_shape_names_shapes(predictor, match):
    with pytest.raises(ConfigError, match=match):
        sliding_window(predictor, torch.rand(1, 8, 8, 16), roi=8, overlap=0, batch_size=2)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"roi": (8, 8)}, "roi has 2 values for 3 spatial axes"),
        ({"roi": 8, "overlap": 1.0}, r"overlap must be in \[0, 1\)"),
        ({"roi": 8, "blend": "box"}, "blend must be one of"),
        ({"roi": 8, "output": "labels"}, "output must be one of"),
        ({"roi": 8, "batch_size": 0}, "batch_size must be a positive int"),
        ({"roi": 8, "pad_mode": "edge"}, "pad_mode must be one of"),
        ({"roi": 8, "tta_flips": ((3,),)}, "tta_flips"),
        ({"roi": 0}, "roi must be positive"),
        ({"roi": 8, "sigma_scale": 0}, "sigma_scale must be > 0"),
    ],
)
def test_bad_settings_are_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        sliding_window(lambda w: w, torch.rand(1, 8, 8, 8), **kw)


def test_memory_is_one_slab_not_the_volume():
    """The blending buffers hold one slab: a predictor sees every window, yet no K×D×H×W tensor is made."""
    k, shape = 8, (1, 64, 20, 20)
    sizes = []
    real_zeros = torch.zeros

    def spy(*args, **kw):
        t = real_zeros(*args, **kw)
        sizes.append(t.numel())
        return t

    torch.zeros = spy
    try:
        sliding_window(
            lambda w: w.expand(-1, k, -1, -1, -1) * 1.0, torch.rand(shape), roi=8, overlap=0.5, output="argmax"
        )
    finally:
        torch.zeros = real_zeros
    assert max(sizes) <= k * 8 * 20 * 20  # K × roi[0] × H × W


def test_ties_go_to_the_lowest_class_as_torch_argmax():
    x = torch.randn(1, 13, 11, 9, generator=torch.Generator().manual_seed(3))

    def tied(w):  # classes 1 and 2 always equal; class 0 wins where w < 0
        return torch.cat([-w, w, w], 1)

    labels = sliding_window(tied, x, roi=6, output="argmax")
    scores = sliding_window(tied, x, roi=6)
    assert torch.equal(labels.long(), scores.argmax(0))
    assert set(labels.unique().tolist()) == {0, 1}
