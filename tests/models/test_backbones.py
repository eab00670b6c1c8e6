"""Output shapes of every backbone with every head kind, in 2D and 3D (small inputs)."""

import pytest
import torch

from fusefn import Rng, nd
from fusefn.errors import ConfigError
from fusefn.models import (
    MLP,
    ClassifierHead,
    InceptionResNetV2,
    Model,
    RegressionHead,
    ResNet,
    ResNet18,
    ResNet18_3D,
    ResNet34,
    ResNet50,
    SegmentationHead,
    SegmentationHead3D,
    SmallCNN,
    UNet,
    apply,
    init,
)


def _heads(spatial_dims):
    seg = SegmentationHead if spatial_dims == 2 else SegmentationHead3D
    return (
        ClassifierHead(name="cls", num_classes=3, pooling="max", layers=(4,)),
        RegressionHead(name="reg", num_outputs=2),
        seg(name="seg", num_classes=2, layers=(4,)),
    )


def _run(model, x, seed=0):
    params, buffers = init(model, rng=Rng(seed))
    out, _ = apply(model, params, buffers, {"data": {"input": {"img": x}}}, train=True)
    return out


CNN_CASES = [
    pytest.param(SmallCNN(in_channels=2, channels=(4, 8)), (2, 2, 8, 8), (8, 4, 4), id="smallcnn-2d"),
    pytest.param(
        SmallCNN(in_channels=1, channels=(4, 8), spatial_dims=3), (2, 1, 8, 8, 8), (8, 4, 4, 4), id="smallcnn-3d"
    ),
    pytest.param(ResNet18(in_channels=1, width=4), (2, 1, 32, 32), (32, 1, 1), id="resnet18"),
    pytest.param(ResNet34(in_channels=3, width=4), (2, 3, 32, 32), (32, 1, 1), id="resnet34"),
    pytest.param(ResNet50(in_channels=1, width=4), (2, 1, 32, 32), (128, 1, 1), id="resnet50"),
    pytest.param(ResNet18_3D(in_channels=1, width=4), (2, 1, 32, 32, 32), (32, 1, 1, 1), id="resnet18-3d"),
    pytest.param(UNet(in_channels=1, channels=(4, 8, 16)), (2, 1, 16, 16), (4, 16, 16), id="unet-2d"),
    pytest.param(UNet(in_channels=1, channels=(4, 8), spatial_dims=3), (2, 1, 8, 8, 8), (4, 8, 8, 8), id="unet-3d"),
]


@pytest.mark.parametrize(("backbone", "in_shape", "feat_shape"), CNN_CASES)
def test_backbone_with_every_head(backbone, in_shape, feat_shape):
    model = Model(backbone=backbone, heads=_heads(backbone.spatial_dims))
    out = _run(model, torch.rand(*in_shape))
    n = in_shape[0]
    assert nd.get(out, "model.backbone_features").shape == (n, *feat_shape)
    assert nd.get(out, "model.cls.logits").shape == (n, 3)
    assert torch.allclose(nd.get(out, "model.cls.probs").sum(1), torch.ones(n))
    assert nd.get(out, "model.reg.pred").shape == (n, 2)
    # the segmentation head is upsampled back to the input size
    assert nd.get(out, "model.seg.logits").shape == (n, 2, *in_shape[2:])
    assert torch.allclose(nd.get(out, "model.seg.probs").sum(1), torch.ones(n, *in_shape[2:]))


def test_resnet_standard_widths():
    assert ResNet18(in_channels=1).outputs() == {"features": 512}
    assert ResNet34().outputs() == {"features": 512}
    assert ResNet50().outputs() == {"features": 2048}
    assert ResNet18_3D().spatial_dims == 3


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unet_encoder_feeds_a_classifier(spatial_dims):
    unet = UNet(in_channels=1, channels=(4, 8, 16), spatial_dims=spatial_dims)
    seg = SegmentationHead if spatial_dims == 2 else SegmentationHead3D
    model = Model(
        backbone=unet,
        heads=(
            seg(name="seg", num_classes=2),
            ClassifierHead(name="cls", num_classes=2, features="model.backbone_encoder"),
        ),
    )
    shape = (2, 1) + (8,) * spatial_dims
    out = _run(model, torch.rand(*shape))
    assert nd.get(out, "model.backbone_encoder").shape == (2, 16) + (2,) * spatial_dims
    assert nd.get(out, "model.seg.logits").shape == (2, 2) + (8,) * spatial_dims
    assert nd.get(out, "model.cls.probs").shape == (2, 2)


def test_inception_truncated_at_14_units_gives_384_channels():
    backbone = InceptionResNetV2(in_channels=1, logical_units_num=14)
    assert backbone.outputs() == {"features": 384}
    model = Model(backbone=backbone, heads=_heads(2))
    out = _run(model, torch.rand(2, 1, 75, 75))
    assert nd.get(out, "model.backbone_features").shape == (2, 384, 3, 3)
    assert nd.get(out, "model.cls.logits").shape == (2, 3)
    assert nd.get(out, "model.reg.pred").shape == (2, 2)
    assert nd.get(out, "model.seg.probs").shape == (2, 2, 75, 75)


@pytest.mark.parametrize(
    ("units", "channels"), [(0, 320), (10, 320), (11, 1088), (12, 384), (31, 384), (32, 2080), (42, 2080), (43, 1536)]
)
def test_inception_unit_channels(units, channels):
    assert InceptionResNetV2(logical_units_num=units).outputs()["features"] == channels


def test_inception_cut_1088_and_small_truncation_run():
    b = InceptionResNetV2(in_channels=1, logical_units_num=12, intra_block_cut_level=1088)
    assert b.outputs()["features"] == 1088
    small = Model(backbone=InceptionResNetV2(in_channels=1, logical_units_num=1), heads=())
    out = _run(small, torch.rand(2, 1, 27, 27))
    assert nd.get(out, "model.backbone_features").shape == (2, 320, 1, 1)


def test_mlp_with_pooled_heads():
    model = Model(
        inputs=("data.input.tab",),
        backbone=MLP(in_channels=5, layers=(8, 6)),
        heads=(ClassifierHead(name="cls", num_classes=4), RegressionHead(name="reg")),
    )
    params, buffers = init(model, rng=Rng(0))
    out, _ = apply(model, params, buffers, {"data": {"input": {"tab": torch.rand(3, 5)}}})
    assert nd.get(out, "model.backbone_features").shape == (3, 6)
    assert nd.get(out, "model.cls.probs").shape == (3, 4)
    assert nd.get(out, "model.reg.pred").shape == (3, 1)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ResNet(depth=20), "ResNet.depth"),
        (lambda: ResNet(spatial_dims=1), "ResNet.spatial_dims"),
        (lambda: SmallCNN(in_channels=0), "SmallCNN.in_channels"),
        (lambda: SmallCNN(channels=()), "SmallCNN.channels"),
        (lambda: UNet(channels=(4, -1)), "UNet.channels"),
        (lambda: InceptionResNetV2(logical_units_num=44), "InceptionResNetV2.logical_units_num"),
        (lambda: InceptionResNetV2(intra_block_cut_level=100), "InceptionResNetV2.intra_block_cut_level"),
        (lambda: MLP(dropout=1.0), "MLP.dropout"),
    ],
)
def test_bad_backbone_config_names_the_field(make, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make()
