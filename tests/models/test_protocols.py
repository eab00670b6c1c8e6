"""Every public model, backbone and head record of fusefn.models satisfies its written protocol."""

import inspect

import attrs
import pytest
import torch

import fusefn.models as M
from fusefn import Rng, nd
from fusefn.errors import ConfigError
from fusefn.protocols import Backbone, Head, ModelSpec

_CNN = M.SmallCNN(in_channels=1, channels=(4, 8))
_HEAD = M.ClassifierHead(name="h", num_classes=2)
_MODEL = M.Model(backbone=_CNN, heads=(_HEAD,))

EXAMPLES = {
    Backbone: [
        _CNN,
        M.ResNet18(in_channels=1, width=8),
        M.ResNet(depth=50, spatial_dims=3, width=4),
        M.InceptionResNetV2(in_channels=1, logical_units_num=1),
        M.MLP(in_channels=3, layers=(4,)),
        M.UNet(in_channels=1, channels=(4, 8)),
    ],
    Head: [
        _HEAD,
        M.RegressionHead(name="r"),
        M.SegmentationHead(name="s"),
        M.SegmentationHead3D(name="s3"),
    ],
    ModelSpec: [
        _MODEL,
        M.Multistream(inputs=("data.a", "data.b"), backbones=(_CNN,), heads=(_HEAD,)),
        M.Wrapper(module=torch.nn.Linear, kwargs={"in_features": 3, "out_features": 2}, inputs="data.x"),
        M.Ensemble(members=(_MODEL, _MODEL)),
    ],
}
CASES = [(protocol, x) for protocol, xs in EXAMPLES.items() for x in xs]


def _id(case):
    return f"{case[0].__name__}-{type(case[1]).__name__}" if isinstance(case, tuple) else None


def test_every_public_record_has_an_example():
    public = {obj for name in M.__all__ if inspect.isclass(obj := getattr(M, name)) and attrs.has(obj)}
    covered = {type(x) for _, x in CASES}
    assert public == covered


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_record_satisfies_its_protocol_and_no_other(case):
    protocol, record = case
    assert isinstance(record, protocol)
    assert [p for p in EXAMPLES if isinstance(record, p)] == [protocol]


@pytest.mark.parametrize("model", EXAMPLES[ModelSpec], ids=lambda m: type(m).__name__)
def test_model_methods_take_rng_keyword_only(model):
    for method in (model.init, model.apply):
        params = inspect.signature(method).parameters
        assert params["rng"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(model.apply).parameters["train"].kind is inspect.Parameter.KEYWORD_ONLY


@attrs.frozen
class Doubler:
    """A model written from scratch: the protocol is all fusefn needs."""

    def init(self, *, rng, device=None):
        return {"w": torch.rand(1, generator=rng.generator())}, {}

    def apply(self, params, buffers, batch, *, train=False, rng=None):
        return nd.assoc(batch, "model.y", nd.get(batch, "data.x") * params["w"]), buffers


def test_init_and_apply_call_the_models_own_methods():
    params, buffers = M.init(Doubler(), rng=Rng(3))
    assert torch.equal(params["w"], torch.rand(1, generator=Rng(3).generator()))
    out, _ = M.apply(Doubler(), params, buffers, {"data": {"x": torch.ones(2)}})
    assert torch.equal(out["model"]["y"], params["w"].expand(2))


def test_backbones_and_heads_are_checked_by_protocol():
    with pytest.raises(ConfigError, match=r"Model\.backbone must be a Backbone"):
        M.Model(backbone=_HEAD)
    with pytest.raises(ConfigError, match=r"Model\.heads\[0\].*must be a Head"):
        M.Model(backbone=_CNN, heads=(_CNN,))
    with pytest.raises(ConfigError, match=r"Multistream\.backbones\[1\]"):
        M.Multistream(inputs=("data.a", "data.b"), backbones=(_CNN, "resnet"))
    with pytest.raises(ConfigError, match=r"Ensemble\.members\[1\].*model records"):
        M.Ensemble(members=(_MODEL, _CNN))
