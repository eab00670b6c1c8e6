"""Cutout: holes of the drawn size, only on active samples."""

import pytest
import torch

from fusefn.augment import Cutout
from fusefn.core import Rng
from fusefn.errors import ConfigError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dims", [2, 3])
def test_holes_have_the_drawn_size(dims):
    x = torch.ones(8, 2, *([10] * dims))
    aug = Cutout(dims=dims, image_keys="img", size=(0.2, 0.5), fill=-1.0, p=0.5)
    params = aug.sample(8, rng=Rng(1))
    out = aug.apply({"img": x}, params)["img"]
    for i in range(8):
        holes = out[i, 0] == -1
        if params["apply"][i]:
            extent = torch.round(params["fraction"][i, 0] * 10)
            assert holes.sum() == int(extent.prod())
            assert torch.equal(out[i, 0], out[i, 1])
        else:
            assert not holes.any()
    assert torch.equal(x, torch.ones_like(x))


def test_errors():
    with pytest.raises(ConfigError, match=r"Cutout\.count"):
        Cutout(image_keys="img", count=0)
    with pytest.raises(ConfigError, match=r"Cutout\.size"):
        Cutout(image_keys="img", size=(0.5, 0.1))
