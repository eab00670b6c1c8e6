"""GaussianBlur against a per-sample separable reference."""

import pytest
import torch
import torch.nn.functional as F

from fusefn.augment import GaussianBlur
from fusefn.core import Rng
from fusefn.errors import ConfigError, SampleError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_blur_matches_reference_convolution():
    x = torch.rand(5, 2, 12, 10, generator=gen(1))
    aug = GaussianBlur(image_keys="img", sigma=(0.5, 1.5), p=0.7)
    params = aug.sample(5, rng=Rng(2))
    out = aug.apply({"img": x}, params)["img"]
    r = 5  # ceil(3 · 1.5)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    for i in range(5):
        if not params["apply"][i]:
            assert torch.equal(out[i], x[i])
            continue
        w = torch.exp(-0.5 * (t / params["sigma"][i]) ** 2)
        w = w / w.sum()
        y = x[i : i + 1].reshape(2, 1, 12, 10)
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), w.view(1, 1, -1, 1))
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), w.view(1, 1, 1, -1))
        torch.testing.assert_close(out[i], y.reshape(2, 12, 10), atol=1e-6, rtol=1e-5)


def test_blur_3d_keeps_mass_of_interior_impulse():
    x = torch.zeros(1, 1, 11, 11, 11)
    x[0, 0, 5, 5, 5] = 1.0
    out = GaussianBlur(dims=3, image_keys="img", sigma=(1.0, 1.0))({"img": x}, rng=Rng(0))["img"]
    torch.testing.assert_close(out.sum(), torch.tensor(1.0))


def test_errors():
    with pytest.raises(ConfigError, match=r"GaussianBlur\.sigma.*low > high"):
        GaussianBlur(image_keys="img", sigma=(2.0, 1.0))
    with pytest.raises(SampleError, match=r"GaussianBlur.*'img'"):
        GaussianBlur(dims=3, image_keys="img")({"img": torch.rand(2, 1, 8, 8)}, rng=Rng(0))
