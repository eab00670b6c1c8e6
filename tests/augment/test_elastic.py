"""Elastic deformation: zero field is the identity, masks keep labels, errors."""

import pytest
import torch

from fusefn.augment import Elastic
from fusefn.core import Rng
from fusefn.errors import ConfigError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dims", [2, 3])
def test_zero_displacement_is_identity(dims):
    x = torch.rand(2, 1, *([8] * dims), generator=gen(1))
    out = Elastic(dims=dims, image_keys="img", displacement=0.0)({"img": x}, rng=Rng(0))["img"]
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_masks_keep_labels_and_images_move(dims):
    shape = (3, 1, *([12] * dims))
    seg = torch.randint(0, 2, shape, generator=gen(2)) * 5
    img = torch.rand(shape, generator=gen(2))
    out = Elastic(dims=dims, image_keys="img", mask_keys="seg", displacement=2.0)({"img": img, "seg": seg}, rng=Rng(3))
    assert set(out["seg"].unique().tolist()) <= {0, 5}
    assert not torch.allclose(out["img"], img)


def test_config_errors():
    with pytest.raises(ConfigError, match=r"Elastic\.control_points"):
        Elastic(image_keys="img", control_points=1)
    with pytest.raises(ConfigError, match=r"Elastic\.p"):
        Elastic(image_keys="img", p=2)
