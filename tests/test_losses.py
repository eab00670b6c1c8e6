"""Loss records against torch.nn.functional, class weights, resizing, purity under func.grad / compile."""

import attrs
import pytest
import torch
import torch.nn.functional as F

from fusefn import nd
from fusefn.core import from_config, to_config
from fusefn.errors import ConfigError
from fusefn.losses import (
    BCEWithLogits,
    CrossEntropy,
    Focal,
    Loss,
    SegmentationCrossEntropy,
    SoftDice,
    apply,
    ipw_class_weights,
    resize_target,
    total,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch():
    g = gen()
    return {
        "model": {
            "head": {
                "logits": torch.randn(8, 4, generator=g),
                "bin": torch.randn(8, generator=g),
                "seg": torch.randn(2, 3, 4, 4, generator=g),
            }
        },
        "data": {
            "gt": {
                "label": torch.randint(0, 4, (8,), generator=g),
                "bin": torch.randint(0, 2, (8,), generator=g),
                "mask": torch.randint(0, 3, (2, 8, 8), generator=g),
            },
            "w": torch.rand(8, generator=g),
        },
    }


def test_cross_entropy_and_bce_match_functional(batch):
    logits, y = nd.get(batch, "model.head.logits"), nd.get(batch, "data.gt.label")
    ce = CrossEntropy(
        pred="model.head.logits", target="data.gt.label", weight=2.0, class_weights=(1, 2, 3, 4), label_smoothing=0.1
    )
    ref = F.cross_entropy(logits, y, weight=torch.tensor([1.0, 2, 3, 4]), label_smoothing=0.1) * 2
    torch.testing.assert_close(ce(batch), ref)
    bce = BCEWithLogits(pred="model.head.bin", target="data.gt.bin", pos_weight=3.0)
    ref = F.binary_cross_entropy_with_logits(
        nd.get(batch, "model.head.bin"), nd.get(batch, "data.gt.bin").float(), pos_weight=torch.tensor(3.0)
    )
    torch.testing.assert_close(bce(batch), ref)


def test_generic_loss_and_sample_weights(batch):
    logits, y, w = nd.get(batch, "model.head.logits"), nd.get(batch, "data.gt.label"), nd.get(batch, "data.w")
    plain = Loss(fn=F.cross_entropy, pred="model.head.logits", target="data.gt.label")
    torch.testing.assert_close(plain(batch), F.cross_entropy(logits, y))
    weighted = attrs.evolve(plain, sample_weight="data.w")
    per = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(weighted(batch), (per * w).sum() / w.sum())
    ce_w = CrossEntropy(pred="model.head.logits", target="data.gt.label", sample_weight="data.w")
    torch.testing.assert_close(ce_w(batch), weighted(batch))
    kw = Loss(fn=F.cross_entropy, pred="model.head.logits", target="data.gt.label", kwargs={"label_smoothing": 0.2})
    torch.testing.assert_close(kw(batch), F.cross_entropy(logits, y, label_smoothing=0.2))
    with pytest.raises(ConfigError, match="weight"):
        CrossEntropy(pred="a", target="b", weight=-1.0)


def test_focal_reduces_to_cross_entropy_at_gamma_zero(batch):
    f0 = Focal(pred="model.head.logits", target="data.gt.label", gamma=0.0)
    ce = CrossEntropy(pred="model.head.logits", target="data.gt.label")
    torch.testing.assert_close(f0(batch), ce(batch))
    b0 = Focal(pred="model.head.bin", target="data.gt.bin", gamma=0.0)
    bce = BCEWithLogits(pred="model.head.bin", target="data.gt.bin")
    torch.testing.assert_close(b0(batch), bce(batch))
    assert Focal(pred="model.head.logits", target="data.gt.label", gamma=2.0)(batch) < ce(batch)
    alpha = Focal(pred="model.head.logits", target="data.gt.label", gamma=0.0, alpha=(1, 0, 0, 0))
    y = nd.get(batch, "data.gt.label")
    per = F.cross_entropy(nd.get(batch, "model.head.logits"), y, reduction="none")
    torch.testing.assert_close(alpha(batch), (per * (y == 0)).mean())


def test_soft_dice_perfect_and_by_hand():
    target = torch.tensor([[[0, 1], [1, 2]]])
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    b = {"p": onehot, "t": target}
    assert float(SoftDice(pred="p", target="t", activation=None, smooth=0.0)(b)) == pytest.approx(0.0)
    logits = torch.randn(1, 3, 2, 2, generator=gen(1))
    probs = logits.softmax(1)
    dice = (2 * (probs * onehot).sum((2, 3)) + 1) / (probs.sum((2, 3)) + onehot.sum((2, 3)) + 1)
    got = SoftDice(pred="p", target="t")({"p": logits, "t": target})
    torch.testing.assert_close(got, 1 - dice.mean())


def test_ipw_weights_and_resizing():
    t = torch.tensor([[[0, 0, 0, 1], [0, 0, 1, 1]]])  # counts 5, 3, 0
    w = ipw_class_weights(t, 3)
    torch.testing.assert_close(w, torch.tensor([8 / (3 * 5), 8 / (3 * 3), 0.0]))
    big = torch.zeros(1, 4, 4, dtype=torch.long)
    big[0, 0, 1] = 2
    assert resize_target(big, (2, 2), "maxpool").tolist() == [[[2, 0], [0, 0]]]
    assert resize_target(big, (2, 2), "nearest").tolist() == [[[0, 0], [0, 0]]]
    assert resize_target(big, (4, 4)) is not None


def test_segmentation_cross_entropy(batch):
    seg = SegmentationCrossEntropy(pred="model.head.seg", target="data.gt.mask", class_weights="ipw")
    logits = nd.get(batch, "model.head.seg")
    small = resize_target(nd.get(batch, "data.gt.mask"), (4, 4))
    ref = F.cross_entropy(logits, small, weight=ipw_class_weights(small, 3))
    torch.testing.assert_close(seg(batch), ref)
    fixed = SegmentationCrossEntropy(
        pred="model.head.seg", target="data.gt.mask", class_weights=[1, 2, 3], resize="maxpool"
    )
    small = resize_target(nd.get(batch, "data.gt.mask"), (4, 4), "maxpool")
    torch.testing.assert_close(fixed(batch), F.cross_entropy(logits, small, weight=torch.tensor([1.0, 2, 3])))
    with pytest.raises(ConfigError, match="class_weights"):
        SegmentationCrossEntropy(pred="a", target="b", class_weights="inverse")


def test_total_and_apply_are_pure(batch):
    losses = {
        "ce": CrossEntropy(pred="model.head.logits", target="data.gt.label"),
        "bce": BCEWithLogits(pred="model.head.bin", target="data.gt.bin", weight=0.5),
    }
    t, parts = total(losses, batch)
    torch.testing.assert_close(t, parts["ce"] + parts["bce"])
    out = apply(losses, batch)
    assert "losses" not in batch
    torch.testing.assert_close(nd.get(out, "losses.total_loss"), t)
    assert out["model"] is batch["model"]
    with pytest.raises(ConfigError):
        total({}, batch)


def test_records_round_trip_through_config():
    for loss in [
        Loss(fn=F.mse_loss, pred="a", target="b", kwargs={"reduction": "sum"}),
        CrossEntropy(pred="a", target="b", class_weights=(1.0, 2.0)),
        Focal(pred="a", target="b", alpha=(1, 2)),
        SoftDice(pred="a", target="b"),
        SegmentationCrossEntropy(pred="a", target="b", class_weights="ipw"),
    ]:
        assert from_config(to_config(loss)) == loss


def test_losses_work_under_func_grad(batch):
    losses = {
        "ce": CrossEntropy(pred="model.head.logits", target="data.gt.label"),
        "focal": Focal(pred="model.head.logits", target="data.gt.label"),
        "seg": SegmentationCrossEntropy(pred="model.head.seg", target="data.gt.mask", class_weights="ipw"),
        "dice": SoftDice(pred="model.head.seg", target="data.gt.mask"),
    }

    def objective(logits, seg):
        b = nd.assoc_many(batch, {"model.head.logits": logits, "model.head.seg": seg})
        return total(losses, b)[0]

    logits, seg = nd.get(batch, "model.head.logits"), nd.get(batch, "model.head.seg")
    g_logits, g_seg = torch.func.grad(objective, argnums=(0, 1))(logits, seg)
    l2, s2 = logits.clone().requires_grad_(), seg.clone().requires_grad_()
    objective(l2, s2).backward()
    torch.testing.assert_close(g_logits, l2.grad)
    torch.testing.assert_close(g_seg, s2.grad)


@pytest.mark.slow
def test_losses_compile_without_graph_breaks(batch):
    losses = {
        "ce": CrossEntropy(pred="model.head.logits", target="data.gt.label", sample_weight="data.w"),
        "focal": Focal(pred="model.head.bin", target="data.gt.bin", alpha=0.25),
        "seg": SegmentationCrossEntropy(
            pred="model.head.seg", target="data.gt.mask", class_weights="ipw", resize="maxpool"
        ),
        "dice": SoftDice(pred="model.head.seg", target="data.gt.mask"),
    }

    def fn(b):
        return total(losses, b)[0]

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(batch), fn(batch))


def test_singleton_label_axis_is_accepted(batch):
    ce = CrossEntropy(pred="model.head.logits", target="data.gt.label")
    col = nd.assoc(batch, "data.gt.label", nd.get(batch, "data.gt.label")[:, None])
    torch.testing.assert_close(ce(col), ce(batch))


@pytest.mark.parametrize("class_weights", [None, (1.0, 2.0, 3.0)])
def test_cross_entropy_with_unit_sample_weights_is_the_plain_loss(class_weights):
    # segmentation-shaped, with ignored pixels: the weighted mean must follow torch's own normaliser
    from fusefn.losses import CrossEntropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 5, 5, generator=g)
    target = torch.randint(0, 3, (4, 5, 5), generator=g)
    target[0, :2] = -100
    batch = {"p": logits, "t": target, "w": torch.ones(4)}
    plain = CrossEntropy(pred="p", target="t", class_weights=class_weights)(batch)
    weighted = CrossEntropy(pred="p", target="t", class_weights=class_weights, sample_weight="w")(batch)
    torch.testing.assert_close(weighted, plain)
    # a zero weight removes a sample entirely
    batch0 = {**batch, "w": torch.tensor([0.0, 1.0, 1.0, 1.0])}
    only = CrossEntropy(pred="p", target="t", class_weights=class_weights)({"p": logits[1:], "t": target[1:]})
    torch.testing.assert_close(
        CrossEntropy(pred="p", target="t", class_weights=class_weights, sample_weight="w")(batch0), only
    )


def test_every_public_loss_follows_the_loss_call_protocol():
    # a loss maps a batch to a weighted 0-d tensor (not to a batch: it is not a Transform); apply is the Transform
    import inspect

    from fusefn import keys, losses

    b = {
        "p": torch.randn(4, 3, 6, 6, generator=gen(1)),
        "t": torch.randint(0, 3, (4, 6, 6), generator=gen(2)),
        "pb": torch.randn(4, 1, generator=gen(3)),
        "tb": torch.randint(0, 2, (4, 1), generator=gen(4)).float(),
        "time": torch.tensor([3.0, 1.0, 2.0, 2.0]),
        "event": torch.tensor([1, 0, 1, 1]),
    }
    examples = {
        "Loss": Loss(fn=F.mse_loss, pred="pb", target="tb"),
        "CrossEntropy": CrossEntropy(pred="p", target="t"),
        "BCEWithLogits": BCEWithLogits(pred="pb", target="tb"),
        "Focal": Focal(pred="p", target="t"),
        "SoftDice": SoftDice(pred="p", target="t"),
        "SegmentationCrossEntropy": SegmentationCrossEntropy(pred="p", target="t"),
        "MSE": losses.MSE(pred="pb", target="tb"),
        "Huber": losses.Huber(pred="pb", target="tb"),
        "CoxPH": losses.CoxPH(pred="pb", time="time", event="event"),
    }
    classes = {n for n in losses.__all__ if inspect.isclass(getattr(losses, n))}
    assert {n for n in classes if not issubclass(getattr(losses, n), Exception)} == set(examples)
    for name, loss in examples.items():
        value = loss(b)
        assert isinstance(value, torch.Tensor) and value.ndim == 0, name
    out = apply(examples, b)
    assert set(out["losses"]) == {*examples, "total_loss"} and nd.get(out, keys.TOTAL_LOSS).ndim == 0


@pytest.mark.parametrize("bad", [float("nan"), -3.0, 4.0, 1.5])
def test_class_label_losses_are_nan_on_labels_they_cannot_take(batch, bad):
    # before: an IndexError naming nothing (a device-side assert on CUDA) or, for 1.5, class 1 silently
    from fusefn.losses import InvalidTargetError, check_targets

    label = nd.get(batch, "data.gt.label").float()
    label[2] = bad
    mask = nd.get(batch, "data.gt.mask").float()
    mask[1, 2, 2] = bad if bad != 4.0 else 3.0  # 3 classes; a pixel the nearest resize to 4x4 keeps
    b = nd.assoc_many(batch, {"data.gt.label": label, "data.gt.mask": mask, "data.sample_id": list("abcdefgh")})
    cases = {
        "ce": (CrossEntropy(pred="model.head.logits", target="data.gt.label"), "data.gt.label", ["c"]),
        "ce_w": (
            CrossEntropy(pred="model.head.logits", target="data.gt.label", sample_weight="data.w"),
            "data.gt.label",
            ["c"],
        ),
        "focal": (Focal(pred="model.head.logits", target="data.gt.label", alpha=(1, 1, 1, 1)), "data.gt.label", ["c"]),
        "seg": (SegmentationCrossEntropy(pred="model.head.seg", target="data.gt.mask"), "data.gt.mask", ["b"]),
        "dice": (SoftDice(pred="model.head.seg", target="data.gt.mask"), "data.gt.mask", ["b"]),
    }
    for name, (loss, key, ids) in cases.items():
        try:
            value = loss(b)
        except (IndexError, RuntimeError):  # the CPU kernels' own range check (the train/eval steps explain it)
            assert bad != 1.5 and b["model"]["head"]["logits"].device.type == "cpu", name
        else:
            assert torch.isnan(value), name  # a fraction never passes as a class
        with pytest.raises(InvalidTargetError) as info:
            check_targets({name: loss}, b, step="eval step")
        assert info.value.sample_id == ids and info.value.key == key and f"loss {name!r}" in str(info.value), name
    # valid labels given as floats give the same loss as integer labels
    ok = nd.assoc(batch, "data.gt.label", nd.get(batch, "data.gt.label").float())
    ce = CrossEntropy(pred="model.head.logits", target="data.gt.label")
    torch.testing.assert_close(ce(ok), ce(batch))


def test_ignored_labels_stay_valid_and_real_targets_are_checked_for_finiteness(batch):
    from fusefn.losses import InvalidTargetError, check_targets

    label = nd.get(batch, "data.gt.label").clone()
    label[0] = -100
    b = nd.assoc(batch, "data.gt.label", label)
    ce = CrossEntropy(pred="model.head.logits", target="data.gt.label")
    assert torch.isfinite(ce(b))
    check_targets({"ce": ce}, b)  # nothing to say
    t = nd.get(batch, "data.gt.bin").float()
    t[4] = float("inf")
    bce = BCEWithLogits(pred="model.head.bin", target="data.gt.bin")
    with pytest.raises(InvalidTargetError, match=r"sample \['#4'\].*finite numbers"):
        check_targets({"bce": bce}, nd.assoc(batch, "data.gt.bin", t))


def test_cross_entropy_ignores_any_index_with_class_and_sample_weights():
    # an ignore_index outside the classes (255, as in segmentation) must not index the class weights
    batch = {"p": torch.randn(3, 2), "t": torch.tensor([0, 1, 255]), "w": torch.tensor([1.0, 2.0, 5.0])}
    loss = CrossEntropy(pred="p", target="t", ignore_index=255, class_weights=(1.0, 2.0), sample_weight="w")
    per = F.cross_entropy(batch["p"][:2], batch["t"][:2], weight=torch.tensor([1.0, 2.0]), reduction="none")
    expected = (per * batch["w"][:2]).sum() / (batch["w"][:2] * torch.tensor([1.0, 2.0])).sum()
    torch.testing.assert_close(loss(batch), expected)
