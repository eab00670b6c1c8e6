"""Composition (Model, Multistream) and the errors a bad batch or config gives."""

import pytest
import torch

from fusefn import Rng, nd
from fusefn.errors import ConfigError, MissingKeyError
from fusefn.models import (
    MLP,
    ClassifierHead,
    Model,
    ModelInputError,
    Multistream,
    RegressionHead,
    ResNet18,
    SegmentationHead,
    SegmentationHead3D,
    SmallCNN,
    UNet,
    apply,
    init,
)


def _img_batch(*shapes, keys=("img",)):
    return {"data": {"input": {k: torch.rand(*s) for k, s in zip(keys, shapes)}}}


def test_several_inputs_are_concatenated_on_channels():
    model = Model(
        inputs=("data.input.img", "data.input.mask"),
        backbone=SmallCNN(in_channels=3, channels=(4,)),
        heads=(ClassifierHead(name="h", num_classes=2),),
    )
    params, buffers = init(model, rng=Rng(0))
    b = _img_batch((2, 2, 8, 8), (2, 1, 8, 8), keys=("img", "mask"))
    out, _ = apply(model, params, buffers, b)
    # same as one input holding both
    single = Model(backbone=SmallCNN(in_channels=3, channels=(4,)), heads=(ClassifierHead(name="h", num_classes=2),))
    both = {"data": {"input": {"img": torch.cat([b["data"]["input"]["img"], b["data"]["input"]["mask"]], 1)}}}
    ref, _ = apply(single, params, buffers, both)
    assert torch.equal(nd.get(out, "model.h.logits"), nd.get(ref, "model.h.logits"))


def test_classifier_tabular_inputs_join_after_pooling_on_the_channel_axis():
    head = ClassifierHead(
        name="h", num_classes=2, pooling="max", tabular_inputs=("data.input.age", "data.input.sex"), tabular_features=3
    )
    model = Model(backbone=SmallCNN(in_channels=1, channels=(4,)), heads=(head,))
    params, buffers = init(model, rng=Rng(0))
    b = nd.assoc_many(
        _img_batch((5, 1, 8, 8)), {"data.input.age": torch.rand(5, 1), "data.input.sex": torch.rand(5, 2)}
    )
    out, _ = apply(model, params, buffers, b)
    feats = nd.get(out, "model.backbone_features").flatten(2).amax(2)
    x = torch.cat([feats, b["data"]["input"]["age"], b["data"]["input"]["sex"]], 1)
    ref = x @ params["heads.h.out.weight"].T + params["heads.h.out.bias"]
    torch.testing.assert_close(nd.get(out, "model.h.logits"), ref)
    assert params["heads.h.out.weight"].shape == (2, 4 + 3)

    with pytest.raises(ModelInputError, match=r"tabular.*summing to 3"):
        apply(model, params, buffers, nd.assoc(b, "data.input.sex", torch.rand(5, 3)))


def test_sigmoid_for_multi_label_and_single_logit():
    m = Model(
        backbone=SmallCNN(in_channels=1, channels=(4,)),
        heads=(
            ClassifierHead(name="multi", num_classes=3, multi_label=True),
            ClassifierHead(name="binary", num_classes=1),
            SegmentationHead(name="seg", num_classes=1),
        ),
    )
    params, buffers = init(m, rng=Rng(0))
    out, _ = apply(m, params, buffers, _img_batch((2, 1, 8, 8)))
    for h in ("multi", "binary", "seg"):
        torch.testing.assert_close(nd.get(out, f"model.{h}.probs"), torch.sigmoid(nd.get(out, f"model.{h}.logits")))


def test_multistream_separate_and_shared_backbones():
    heads = (ClassifierHead(name="h", num_classes=2),)
    sep = Multistream(
        inputs=("data.input.a", "data.input.b"),
        backbones=(SmallCNN(in_channels=1, channels=(4,)), SmallCNN(in_channels=2, channels=(6,))),
        heads=heads,
    )
    b = _img_batch((2, 1, 8, 8), (2, 2, 8, 8), keys=("a", "b"))
    params, buffers = init(sep, rng=Rng(0))
    out, _ = apply(sep, params, buffers, b)
    assert nd.get(out, "model.backbone_features").shape == (2, 10, 8, 8)
    assert nd.get(out, "model.h.probs").shape == (2, 2)

    shared = Multistream(
        inputs=("data.input.a", "data.input.c"), backbones=(SmallCNN(in_channels=1, channels=(4,)),), heads=heads
    )
    params, buffers = init(shared, rng=Rng(0))
    assert not any(k.startswith("streams.1.") for k in params)
    b = nd.assoc(b, "data.input.c", b["data"]["input"]["a"])
    out, _ = apply(shared, params, buffers, b)
    f = nd.get(out, "model.backbone_features")
    assert torch.equal(f[:, :4], f[:, 4:])  # one set of weights, identical inputs

    with pytest.raises(ConfigError, match="backbones has 3 entries for 2 inputs"):
        Multistream(inputs=("a.a", "a.b"), backbones=(MLP(in_channels=1),) * 3)
    with pytest.raises(ModelInputError, match="stream 1"):
        apply(sep, *init(sep, rng=Rng(0)), _img_batch((2, 1, 8, 8), (2, 2, 4, 4), keys=("a", "b")))


def test_missing_input_key_names_block_key_and_close_matches():
    model = Model(backbone=SmallCNN(in_channels=1, channels=(4,)), heads=(ClassifierHead(name="h", num_classes=2),))
    params, buffers = init(model, rng=Rng(0))
    with pytest.raises(MissingKeyError) as e:
        apply(model, params, buffers, _img_batch((2, 1, 8, 8), keys=("im",)))
    assert "backbone" in str(e.value) and "'data.input.img'" in str(e.value) and "data.input.im" in str(e.value)
    tab = ClassifierHead(name="h", num_classes=2, tabular_inputs=("data.input.age",), tabular_features=1)
    m2 = Model(backbone=SmallCNN(in_channels=1, channels=(4,)), heads=(tab,))
    with pytest.raises(MissingKeyError, match=r"head 'h'.*data\.input\.age"):
        apply(m2, *init(m2, rng=Rng(0)), _img_batch((2, 1, 8, 8)))


def test_wrong_channels_or_dims_name_block_key_and_shapes():
    model = Model(backbone=ResNet18(in_channels=1, width=4), heads=(ClassifierHead(name="h", num_classes=2),))
    params, buffers = init(model, rng=Rng(0))
    with pytest.raises(ModelInputError) as e:
        apply(model, params, buffers, _img_batch((2, 3, 32, 32)))
    msg = str(e.value)
    assert "backbone" in msg and "'data.input.img'" in msg and "expected 1 channels" in msg and "(2, 3, 32, 32)" in msg
    with pytest.raises(ModelInputError, match=r"backbone.*'data.input.img'.*\(2, 1, 32, 32, 32\).*expected 4 dims"):
        apply(model, params, buffers, _img_batch((2, 1, 32, 32, 32)))
    with pytest.raises(ModelInputError, match=r"'data.input.img' has dtype torch.uint8"):
        apply(model, params, buffers, {"data": {"input": {"img": torch.zeros(2, 1, 32, 32, dtype=torch.uint8)}}})
    unet = Model(backbone=UNet(in_channels=1, channels=(4, 8, 16)), heads=())
    with pytest.raises(ModelInputError, match="divisible by 4"):
        apply(unet, *init(unet, rng=Rng(0)), _img_batch((2, 1, 10, 12)))


def test_head_input_size_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"heads\[0\] \(h\): in_channels=256 but the backbone writes 512"):
        Model(backbone=ResNet18(), heads=(ClassifierHead(name="h", in_channels=256),))
    with pytest.raises(ConfigError, match="does not produce"):
        Model(backbone=ResNet18(), heads=(ClassifierHead(name="h", features="model.backbone_encoder"),))
    with pytest.raises(ConfigError, match="3D but the backbone features have 2"):
        Model(backbone=ResNet18(), heads=(SegmentationHead3D(name="s"),))
    with pytest.raises(ConfigError, match="used twice"):
        Model(backbone=ResNet18(), heads=(RegressionHead(name="h"), RegressionHead(name="h")))
    with pytest.raises(ConfigError, match="name"):
        ClassifierHead(name="a.b")
    with pytest.raises(ConfigError, match="tabular_features"):
        ClassifierHead(name="h", tabular_inputs=("data.x",))


def test_head_reading_another_key_checks_its_size_at_run_time():
    model = Model(
        backbone=SmallCNN(in_channels=1, channels=(4,)),
        heads=(
            SegmentationHead(name="seg", num_classes=3),
            ClassifierHead(name="cls", num_classes=2, features="model.seg.logits", in_channels=3),
            ClassifierHead(name="bad", num_classes=2, features="model.seg.logits", in_channels=5),
        ),
    )
    with pytest.raises(ModelInputError, match=r"head 'bad'.*'model.seg.logits'.*expected 5 channels"):
        apply(model, *init(model, rng=Rng(0)), _img_batch((2, 1, 8, 8)))
