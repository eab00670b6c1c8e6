"""The new losses inside torch.compile: one graph (fullgraph), same values and gradients as eager."""

import pytest
import torch

from fusefn.losses import MSE, BCEWithLogits, CoxPH, Huber, total

LOSSES = {
    "mse": MSE(pred="reg", target="y"),
    "huber": Huber(pred="reg", target="y", delta=0.5),
    "bce": BCEWithLogits(pred="ml", target="labels", pos_weight=(1.0, 2.0, 3.0), mask="known"),
    "cox": CoxPH(pred="risk", time="time", event="event"),
}


def batch():
    g = torch.Generator().manual_seed(0)
    return {
        "reg": torch.randn(16, 1, generator=g),
        "y": torch.randn(16, generator=g),
        "ml": torch.randn(16, 3, generator=g),
        "labels": torch.randint(0, 2, (16, 3), generator=g).float(),
        "known": (torch.rand(16, 3, generator=g) < 0.8).float(),
        "risk": torch.randn(16, 1, generator=g),
        "time": torch.randint(1, 6, (16,), generator=g).float(),
        "event": (torch.rand(16, generator=g) < 0.6).float(),
    }


def grads(b):
    inputs = {k: b[k] for k in ("reg", "ml", "risk")}
    return torch.func.grad_and_value(lambda p: total(LOSSES, {**b, **p})[0])(inputs)


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_losses_compile_without_graph_breaks(backend):
    b = batch()
    (g_c, v_c), (g_e, v_e) = torch.compile(grads, fullgraph=True, backend=backend)(b), grads(b)
    assert torch.allclose(v_c, v_e, atol=1e-6)
    for k in g_e:
        assert torch.isfinite(g_c[k]).all() and torch.allclose(g_c[k], g_e[k], atol=1e-6), k
