"""Shared toys for the training tests: a linear model with a hand-written apply, a SmallCNN, data."""

import pytest
import torch
import torch.nn.functional as F

from fusefn import models, nd
from fusefn.core import record


@record
class CE:
    """Cross-entropy loss record (test stand-in for fusefn.losses.CrossEntropy)."""

    pred: str = "model.head_0.logits"
    target: str = "data.gt.label"

    def __call__(self, batch):
        return F.cross_entropy(nd.get(batch, self.pred), nd.get(batch, self.target))


def linear_init(model, *, rng):
    g = rng.generator()
    return {"w": torch.randn(model["d"], model["c"], generator=g) * 0.1, "b": torch.zeros(model["c"])}, {}


def linear_apply(model, params, buffers, batch, train=False, rng=None):
    x = nd.get(batch, "data.input.img").flatten(1)
    logits = x @ params["w"] + params["b"]
    return nd.assoc_many(batch, {"model.head_0.logits": logits, "model.head_0.probs": logits.softmax(-1)}), buffers


class Digits(torch.utils.data.Dataset):
    """Synthetic 2-class 1×8×8 images whose label is the sign of the mean; ids ``s<i>``."""

    def __init__(self, n=96, seed=0, nan_at=None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = (self.x.mean((1, 2, 3)) > 0).long()
        self.nan_at = nan_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if self.nan_at is not None and i == self.nan_at:
            x = torch.full_like(x, float("nan"))
        return {"data": {"sample_id": f"s{i}", "input": {"img": x}, "gt": {"label": self.y[i]}}}


@pytest.fixture
def cnn():
    return models.Model(
        backbone=models.SmallCNN(in_channels=1, channels=(4, 8)),
        heads=(models.ClassifierHead(name="head_0", num_classes=2),),
    )


@pytest.fixture
def data():
    return Digits(96, seed=0), Digits(48, seed=1)


@pytest.fixture
def toy():
    return {"ce": CE(), "init": linear_init, "apply": linear_apply, "Digits": Digits}
