"""torch.compile(fullgraph=True) of apply gives the eager output (CNN, ResNet-18, UNet)."""

import pytest
import torch

from fusefn import Rng, nd
from fusefn.models import ClassifierHead, Model, ResNet18, SegmentationHead, SmallCNN, UNet, apply, init

MODELS = {
    "cnn": (
        Model(backbone=SmallCNN(in_channels=1, channels=(8, 16)), heads=(ClassifierHead(name="h", num_classes=10),)),
        (4, 1, 8, 8),
    ),
    "resnet18": (
        Model(backbone=ResNet18(in_channels=1, width=8), heads=(ClassifierHead(name="h", num_classes=2),)),
        (2, 1, 32, 32),
    ),
    "unet": (
        Model(
            backbone=UNet(in_channels=1, channels=(4, 8, 16)),
            heads=(
                SegmentationHead(name="seg", num_classes=2),
                ClassifierHead(name="h", num_classes=2, features="model.backbone_encoder"),
            ),
        ),
        (2, 1, 16, 16),
    ),
}


@pytest.mark.slow
def test_compiled_apply_matches_eager():
    torch._dynamo.reset()
    for name, (model, shape) in MODELS.items():
        params, buffers = init(model, rng=Rng(0))
        batch = {"data": {"input": {"img": torch.rand(*shape, generator=torch.Generator().manual_seed(1))}}}

        def step(p, b, batch, model=model):
            return apply(model, p, b, batch, train=True)

        compiled = torch.compile(step, fullgraph=True)
        out_c, buf_c = compiled(params, buffers, batch)
        out_e, buf_e = step(params, buffers, batch)
        for key in model.writes():
            torch.testing.assert_close(
                nd.get(out_c, key), nd.get(out_e, key), atol=1e-5, rtol=1e-5, msg=f"{name} {key}"
            )
        for k in buf_e:
            torch.testing.assert_close(buf_c[k], buf_e[k], atol=1e-5, rtol=1e-5, msg=f"{name} {k}")
        # the compiled call is pure as well: the caller's buffers did not move
        assert buffers["backbone.bn1.running_mean" if name == "resnet18" else next(iter(buffers))].abs().sum() == 0


@pytest.mark.slow
def test_compiled_grad_step_matches_eager():
    # with dropout: its mask comes from the rng tensor, so compiled and eager agree
    model = Model(
        backbone=SmallCNN(in_channels=1, channels=(8, 16)),
        heads=(ClassifierHead(name="h", num_classes=10, layers=(16,), dropout=0.3),),
    )
    shape = (4, 1, 8, 8)
    params, buffers = init(model, rng=Rng(0))
    batch = {
        "data": {
            "input": {"img": torch.rand(*shape, generator=torch.Generator().manual_seed(1))},
            "gt": {"label": torch.tensor([1, 2, 3, 4])},
        }
    }

    def loss_fn(p, b, batch):
        out, new_b = apply(model, p, b, batch, train=True, rng=torch.tensor(123))
        return torch.nn.functional.cross_entropy(nd.get(out, "model.h.logits"), nd.get(batch, "data.gt.label")), new_b

    step = torch.func.grad(loss_fn, has_aux=True)
    g_e, b_e = step(params, buffers, batch)
    g_c, b_c = torch.compile(step, fullgraph=True)(params, buffers, batch)
    for k in g_e:
        torch.testing.assert_close(g_c[k], g_e[k], atol=1e-5, rtol=1e-4, msg=k)
    for k in b_e:
        torch.testing.assert_close(b_c[k], b_e[k], atol=1e-5, rtol=1e-5, msg=k)
