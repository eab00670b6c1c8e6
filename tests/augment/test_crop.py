"""RandomCrop against slicing; RandomResizedCrop against interpolate; shapes and errors."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from fusefn.augment import RandomCrop, RandomResizedCrop
from fusefn.core import Rng
from fusefn.errors import ConfigError, SampleError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dims", [2, 3])
def test_random_crop_equals_slicing(dims):
    shape = (6, 2, *([10] * dims))
    x = torch.rand(shape, generator=gen(1))
    seg = torch.randint(0, 4, (6, 1, *([10] * dims)), generator=gen(1))
    size = (4, 7, 5)[:dims]
    aug = RandomCrop(dims=dims, image_keys="img", mask_keys="seg", point_keys="pts", size=size, p=0.5)
    pts = torch.rand(6, 3, dims) * 10
    params = aug.sample(6, rng=Rng(2))
    out = aug.apply({"img": x, "seg": seg, "pts": pts}, params)
    for i in range(6):
        # find the crop start by search: the crop is an exact copy
        starts = [range(10 - s + 1) for s in size]
        found = [
            st
            for st in itertools.product(*starts)
            if torch.equal(out["img"][i], x[i][(slice(None), *(slice(a, a + s) for a, s in zip(st, size)))])
        ]
        assert found, i
        st = found[0]
        assert torch.equal(out["seg"][i], seg[i][(slice(None), *(slice(a, a + s) for a, s in zip(st, size)))])
        torch.testing.assert_close(out["pts"][i], pts[i] - torch.tensor(st, dtype=torch.float32))
        if not params["apply"][i]:
            assert list(st) == [(10 - s) // 2 for s in size]


def test_resized_crop_of_whole_image_equals_bilinear_resize():
    x = torch.rand(3, 1, 16, 16, generator=gen(3))
    out = RandomResizedCrop(image_keys="img", size=(8, 8), p=0.0)({"img": x}, rng=Rng(0))["img"]
    ref = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_resized_crop_masks_keep_labels():
    seg = torch.randint(0, 3, (4, 1, 20, 20), generator=gen(4)) * 2
    img = torch.rand(4, 1, 20, 20)
    aug = RandomResizedCrop(image_keys="img", mask_keys="seg", size=(12, 12), scale=(0.3, 0.9))
    out = aug({"img": img, "seg": seg}, rng=Rng(5))
    assert out["img"].shape == (4, 1, 12, 12) and out["seg"].shape == (4, 1, 12, 12)
    assert set(out["seg"].unique().tolist()) <= {0, 2, 4}


def test_resized_crop_moves_points_with_the_image():
    x = torch.zeros(6, 1, 32, 32)
    x[:, :, 12, 17] = 1.0
    pts = torch.tensor([[[12.0, 17.0]]]).expand(6, 1, 2).contiguous()
    aug = RandomResizedCrop(image_keys="img", point_keys="pts", size=(64, 64), scale=(0.8, 1.0))
    out = aug({"img": x, "pts": pts}, rng=Rng(6))
    peak = out["img"].flatten(1).argmax(1)
    found = torch.stack([peak // 64, peak % 64], dim=1).to(torch.float32)
    assert (out["pts"][:, 0] - found).abs().max() <= 1.0  # an upsampled impulse peaks at the nearest pixel


def test_errors():
    with pytest.raises(ConfigError, match=r"RandomCrop\.size"):
        RandomCrop(image_keys="img", size=(4, 4, 4))
    with pytest.raises(ConfigError, match=r"RandomResizedCrop\.scale"):
        RandomResizedCrop(image_keys="img", size=4, scale=(0.5, 1.5))
    with pytest.raises(SampleError, match=r"RandomCrop.*larger"):
        RandomCrop(image_keys="img", size=(12, 4))({"img": torch.rand(1, 1, 8, 8)}, rng=Rng(0))
