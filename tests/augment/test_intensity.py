"""Intensity and GaussianNoise against hand-written per-sample references."""

import pytest
import torch

from fusefn.augment import GaussianNoise, Intensity
from fusefn.core import Rng
from fusefn.errors import ConfigError, SampleError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _reference(x, gamma, mul, add, con, lo=0.0, hi=1.0):
    # the documented order, one sample at a time, without in-place tricks
    y = x.clamp(lo, hi) ** gamma
    y = (y * mul).clamp(lo, hi)
    y = (y + add).clamp(lo, hi)
    mean = y.mean()
    return ((y - mean) * con + mean).clamp(lo, hi)


def test_intensity_matches_per_sample_reference():
    x = torch.rand(10, 2, 9, 7, generator=gen(1)) * 1.2 - 0.1
    aug = Intensity(
        image_keys="img", gamma=(0.8, 1.2), multiply=(0.9, 1.1), add=(-0.1, 0.1), contrast=(0.8, 1.2), p=0.6
    )
    params = aug.sample(10, rng=Rng(2))
    out = aug.apply({"img": x}, params)["img"]
    for i in range(10):
        if params["apply"][i]:
            ref = torch.stack(
                [
                    _reference(x[i, c], *(params[k][i] for k in ("gamma", "multiply", "add", "contrast")))
                    for c in range(2)
                ]
            )
            torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=1e-5)
        else:
            assert torch.equal(out[i], x[i])


def test_identity_factors_return_input():
    x = torch.rand(4, 1, 8, 8, generator=gen(3))
    aug = Intensity(image_keys="img", gamma=(1, 1), multiply=(1, 1), add=(0, 0), contrast=(1, 1))
    torch.testing.assert_close(aug({"img": x}, rng=Rng(0))["img"], x, atol=1e-6, rtol=0)


def test_gamma_on_a_custom_clip_range():
    x = torch.full((1, 1, 2, 2), 5.0)
    out = Intensity(image_keys="img", gamma=(2, 2), clip=(0.0, 10.0))({"img": x}, rng=Rng(0))["img"]
    torch.testing.assert_close(out, torch.full_like(x, 2.5))


def test_noise_is_scaled_and_only_on_active_samples():
    x = torch.zeros(64, 1, 32, 32)
    aug = GaussianNoise(image_keys="img", std=(0.1, 0.2), p=0.5)
    params = aug.sample_like({"img": x}, rng=Rng(4))
    out = aug.apply({"img": x}, params)["img"]
    on = params["apply"]
    assert torch.equal(out[~on], x[~on])
    std = out[on].flatten(1).std(dim=1)
    torch.testing.assert_close(std, params["std"][on], rtol=0.1, atol=0)


def test_noise_sample_needs_shapes():
    with pytest.raises(ConfigError, match=r"GaussianNoise\.sample needs shapes"):
        GaussianNoise(image_keys="img").sample(4, rng=Rng(0))


def test_config_and_input_errors():
    with pytest.raises(ConfigError, match=r"Intensity\.add.*low > high"):
        Intensity(image_keys="img", add=(0.1, -0.1))
    with pytest.raises(ConfigError, match=r"Intensity\.p"):
        Intensity(image_keys="img", p=-0.1)
    with pytest.raises(ConfigError, match=r"Intensity\.gamma needs clip"):
        Intensity(image_keys="img", gamma=(0.9, 1.1), clip=None)
    with pytest.raises(ConfigError, match=r"GaussianNoise\.std"):
        GaussianNoise(image_keys="img", std=-1.0)
    with pytest.raises(SampleError, match=r"Intensity.*'img'.*floating"):
        Intensity(image_keys="img", add=(0, 1))({"img": torch.zeros(2, 1, 4, 4, dtype=torch.int64)}, rng=Rng(0))


def test_noise_params_for_another_shape_are_refused():
    aug = GaussianNoise(image_keys="img")
    params = aug.sample(2, rng=Rng(0), shapes={"img": (1, 4, 4)})
    with pytest.raises(SampleError, match=r"GaussianNoise.*'img'.*shape"):
        aug.apply({"img": torch.zeros(2, 1, 5, 5)}, params)
