"""MSE and Huber against torch.nn.functional, with sample weights and a head's (N, 1) output against (N,) targets."""

import pytest
import torch
import torch.nn.functional as F

from fusefn.core import from_config, to_config
from fusefn.errors import ConfigError
from fusefn.losses import MSE, Huber


def make_batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return {
        "pred": torch.randn(n, 1, generator=g, dtype=torch.float64) * 3,
        "y": torch.randn(n, generator=g, dtype=torch.float64) * 3,
        "w": torch.rand(n, generator=g, dtype=torch.float64),
    }


@pytest.mark.parametrize("delta", [0.1, 1.0, 2.5])
def test_equal_torch_functional(delta):
    b = make_batch()
    y = b["y"].reshape(-1, 1)
    assert torch.equal(MSE(pred="pred", target="y")(b), F.mse_loss(b["pred"], y))
    assert torch.equal(Huber(pred="pred", target="y", delta=delta)(b), F.huber_loss(b["pred"], y, delta=delta))
    # Huber is quadratic then linear around delta, by hand
    e = (b["pred"] - y).abs()
    by_hand = torch.where(e <= delta, 0.5 * e**2, delta * (e - delta / 2)).mean()
    assert torch.allclose(Huber(pred="pred", target="y", delta=delta)(b), by_hand, atol=1e-12)


@pytest.mark.parametrize("cls", [MSE, Huber])
def test_sample_weights(cls):
    b = make_batch(1)
    plain = cls(pred="pred", target="y")
    weighted = cls(pred="pred", target="y", sample_weight="w", weight=3.0)
    ones = cls(pred="pred", target="y", sample_weight="ones")
    assert torch.allclose(ones({**b, "ones": torch.ones(16)}), plain(b), atol=1e-12)
    per = (F.mse_loss if cls is MSE else F.huber_loss)(b["pred"][:, 0], b["y"], reduction="none")
    assert torch.allclose(weighted(b), 3.0 * (per * b["w"]).sum() / b["w"].sum(), atol=1e-12)


@pytest.mark.parametrize("cls", [MSE, Huber])
def test_gradients_finite_and_config_round_trip(cls):
    b = make_batch(2)
    pred = b["pred"].clone().requires_grad_(True)
    cls(pred="pred", target="y")({**b, "pred": pred}).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    loss = cls(pred="model.head_0.pred", target="data.gt.y", weight=0.5)
    assert from_config(to_config(loss)) == loss


def test_huber_delta_must_be_positive():
    with pytest.raises(ConfigError, match="Huber.delta"):
        Huber(pred="p", target="t", delta=0.0)
