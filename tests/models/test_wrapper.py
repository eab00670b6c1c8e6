"""Wrapper around a plain nn.Module equals calling the module directly."""

import pytest
import torch
from torch import nn

from fusefn import Rng, nd
from fusefn.errors import ConfigError
from fusefn.models import Wrapper, apply, as_module, init, summary


class TwoHeads(nn.Module):
    """A small module with batch norm and two outputs (module-level, so it saves as config)."""

    def __init__(self, cin: int = 2, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.cls = nn.Linear(4, classes)
        self.reg = nn.Linear(4, 1)

    def forward(self, x, extra):
        h = self.body(x) + extra
        return self.cls(h), self.reg(h)


def make_two_heads(**kwargs):
    return TwoHeads(**kwargs)


@pytest.mark.parametrize("factory", [TwoHeads, make_two_heads])
@pytest.mark.parametrize("train", [False, True])
def test_wrapper_equals_direct_call(factory, train):
    w = Wrapper(
        module=factory,
        kwargs={"cin": 2, "classes": 3},
        inputs=("data.input.img", "data.input.extra"),
        outputs=("model.head_0.logits", "model.reg.pred"),
        activation="softmax",
    )
    params, buffers = init(w, rng=Rng(0))
    direct = TwoHeads(cin=2, classes=3)
    direct.load_state_dict({k.removeprefix("net."): t for k, t in {**params, **buffers}.items()})
    direct.train(train)
    x, extra = torch.rand(5, 2, 6, 6), torch.rand(5, 1)
    batch = {"data": {"input": {"img": x, "extra": extra}}}
    out, new_buffers = apply(w, params, buffers, batch, train=train)
    logits, pred = direct(x, extra)
    assert torch.equal(nd.get(out, "model.head_0.logits"), logits)
    assert torch.equal(nd.get(out, "model.reg.pred"), pred)
    torch.testing.assert_close(nd.get(out, "model.head_0.probs"), torch.softmax(logits, 1))
    assert torch.equal(new_buffers["net.body.1.running_mean"], direct.body[1].running_mean)
    assert w.writes() == ("model.head_0.logits", "model.reg.pred", "model.head_0.probs")


def test_wrapper_init_is_seeded_and_leaves_global_rng_alone():
    w = Wrapper(module=nn.Linear, kwargs={"in_features": 3, "out_features": 2}, inputs="data.x", outputs="model.y")
    state = torch.random.get_rng_state()
    p1, _ = init(w, rng=Rng(1))
    assert torch.equal(state, torch.random.get_rng_state())
    p2, _ = init(w, rng=Rng(1))
    p3, _ = init(w, rng=Rng(2))
    assert torch.equal(p1["net.weight"], p2["net.weight"])
    assert not torch.equal(p1["net.weight"], p3["net.weight"])
    module = as_module(w, p1, {})
    x = torch.rand(4, 3)
    assert torch.equal(module({"data": {"x": x}})["model"]["y"], x @ p1["net.weight"].T + p1["net.bias"])
    assert "wrapped module" in summary(w) and "8 params" in summary(w)


def test_wrapper_config_errors():
    with pytest.raises(ConfigError, match="Wrapper.module"):
        Wrapper(module=3)
    with pytest.raises(ConfigError, match="Wrapper.kwargs"):
        Wrapper(module=nn.Linear, kwargs={"in_features": {"a": 1}})
    with pytest.raises(ConfigError, match="not an nn.Module"):
        Wrapper(module=dict)
    w = Wrapper(module=nn.Identity, outputs=("model.a", "model.b"), inputs="data.x")
    with pytest.raises(ConfigError, match="returned 1 outputs"):
        apply(w, {}, {}, {"data": {"x": torch.ones(1)}})


def test_wrapper_loads_a_local_weights_file(tmp_path):
    source = TwoHeads(cin=2, classes=3)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    w = Wrapper(module=TwoHeads, inputs=("a.x", "a.e"), outputs=("m.c", "m.r"), weights=tmp_path / "w.pt")
    params, _ = init(w, rng=Rng(0))
    assert torch.equal(params["net.cls.weight"], source.cls.weight)
    torch.save(TwoHeads(cin=1, classes=3).state_dict(), tmp_path / "bad.pt")
    bad = Wrapper(module=TwoHeads, inputs=("a.x", "a.e"), outputs=("m.c", "m.r"), weights=tmp_path / "bad.pt")
    with pytest.raises(
        ConfigError, match=r"wrapped module.*'body.0.weight': expected shape \(4, 2, 3, 3\), found \(4, 1, 3, 3\)"
    ):
        init(bad, rng=Rng(0))
