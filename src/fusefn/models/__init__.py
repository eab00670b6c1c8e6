"""Models as records plus pure functions: backbones, heads, composition, functional apply.

A model record (:class:`Model`, :class:`Multistream`, :class:`Wrapper`, :class:`Ensemble`)
holds configuration only and says which batch keys it reads and writes. Its parameters
live outside it: ``params, buffers = init(model, rng=Rng(0))`` then
``batch, buffers = apply(model, params, buffers, batch, train=...)``; both call the
model's own methods (:class:`fusefn.protocols.ModelSpec`). Backbones follow
:class:`fusefn.protocols.Backbone`, heads :class:`fusefn.protocols.Head`.

>>> import torch
>>> from fusefn import Rng
>>> model = Model(backbone=SmallCNN(in_channels=1, channels=(4, 8)),
...               heads=(ClassifierHead(name="head_0", num_classes=10),))
>>> params, buffers = init(model, rng=Rng(0))
>>> out, _ = apply(model, params, buffers, {"data": {"input": {"img": torch.rand(2, 1, 8, 8)}}})
>>> out["model"]["head_0"]["logits"].shape
torch.Size([2, 10])
"""

from fusefn.models._layers import ModelInputError
from fusefn.models._record import UnportableModelWarning
from fusefn.models.backbones import (
    MLP,
    InceptionResNetV2,
    ResNet,
    ResNet18,
    ResNet18_3D,
    ResNet34,
    ResNet50,
    SmallCNN,
    UNet,
)
from fusefn.models.ensemble import Ensemble, majority_vote
from fusefn.models.functional import apply, as_module, init, load_weights, param_count, skeleton, summary
from fusefn.models.heads import ClassifierHead, RegressionHead, SegmentationHead, SegmentationHead3D
from fusefn.models.model import Model, Multistream
from fusefn.models.pretrained import RESNET_KEYS, load_pretrained, map_keys, read_state_dict
from fusefn.models.wrapper import Wrapper

__all__ = [
    "RESNET_KEYS",
    "load_pretrained",
    "map_keys",
    "read_state_dict",
    "MLP",
    "ClassifierHead",
    "Ensemble",
    "InceptionResNetV2",
    "Model",
    "ModelInputError",
    "Multistream",
    "RegressionHead",
    "ResNet",
    "ResNet18",
    "ResNet18_3D",
    "ResNet34",
    "ResNet50",
    "SegmentationHead",
    "SegmentationHead3D",
    "SmallCNN",
    "UNet",
    "UnportableModelWarning",
    "Wrapper",
    "apply",
    "as_module",
    "init",
    "load_weights",
    "majority_vote",
    "param_count",
    "skeleton",
    "summary",
]
