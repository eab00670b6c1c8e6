"""The whole step as one graph: augmentation, model, losses and update, with no breaks and no recompiles.

The counting tests trace with dynamo's ``CompileCounter`` backend (the captured graph runs as
FX, no inductor codegen): they count frames, graphs, breaks and recompiles, which is what
the issue asks; what inductor makes of the graph is measured by bench/bench_gpu.py.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from fusefn import Rng, augment, keys, losses, models, nd, optim
from fusefn.errors import ConfigError
from fusefn.train import StepSettings, init_state, make_eval_step, make_train_step, train_epoch
from fusefn.train._compile import GraphBreakError


def _batch(n, i, spatial=(32, 32), seg=False):
    g = torch.Generator().manual_seed(i)
    x = torch.rand(n, 1, *spatial, generator=g)
    gt = (x > 0.5).long()[:, 0] if seg else torch.randint(0, 2, (n,), generator=g)
    return {"data": {"sample_id": [f"s{i}_{j}" for j in range(n)], "input": {"img": x}, "gt": {"label": gt}}}


def _count(run):
    torch._dynamo.reset()
    counters.clear()
    cc = CompileCounter()
    with torch._dynamo.config.patch(error_on_recompile=True):
        result = run(cc)
    return result, cc


def _epochs(model, loss, opt, pipe, batches, *, compile, backend=None, epochs=2):
    step = make_train_step(model, loss, opt, compile=compile, backend=backend)
    state = init_state(model, opt, rng=Rng(0))
    history = []
    for epoch in range(epochs):
        state = state.replace(lr_scale=1.0 / (epoch + 1))  # a new learning-rate scale every epoch
        state, res = train_epoch(step, state, batches, augment=pipe)
        history.append(res["losses"]["total_loss"])
    return state, history


@pytest.mark.slow
def test_resnet18_step_with_augmentation_is_one_graph_over_epochs_last_batch_and_lr():
    model = models.Model(
        backbone=models.ResNet18(in_channels=1), heads=(models.ClassifierHead(name="head_0", num_classes=2),)
    )
    loss = {"ce": losses.CrossEntropy(pred="model.head_0.logits", target="data.gt.label")}
    # a small step: batch-norm over 4 samples amplifies float rounding differences of a large one
    opt = optim.sgd(1e-4, momentum=0.9)
    pipe = augment.default_image_pipeline(keys.IMAGE)
    batches = [_batch(4, i) for i in range(3)] + [_batch(3, 9)]  # a smaller last batch

    (state, compiled), cc = _count(lambda cc: _epochs(model, loss, opt, pipe, batches, compile=True, backend=cc))
    # one frame, one graph: no graph break, no recompile over 2 epochs, 2 lr scales, 8 draws, 2 batch sizes
    assert cc.frame_count == 1
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]
    # the augmentation inside the graph gives the same training as the eager loop augmenting outside (first epoch:
    # later, batch-norm over 3-4 samples at 1×1 resolution amplifies the traced graph's rounding differences)
    _, eager = _epochs(model, loss, opt, pipe, batches, compile=False)
    assert compiled[0] == pytest.approx(eager[0], rel=1e-3)

    def evaluate(cc):
        ev = make_eval_step(model, loss, compile=True, backend=cc)
        return [ev(state, b) for b in (batches[0], batches[-1], batches[1])]

    outs, cc = _count(evaluate)
    assert cc.frame_count == 1 and not counters["graph_break"]
    assert outs[1]["data"]["sample_id"] == batches[-1]["data"]["sample_id"]


@pytest.mark.slow
def test_3d_unet_step_with_volume_pipeline_on_patches_is_one_graph():
    model = models.Model(
        backbone=models.UNet(in_channels=1, channels=(4, 8), spatial_dims=3),
        heads=(models.SegmentationHead(name="seg", in_channels=4, num_classes=2, spatial_dims=3),),
    )
    loss = {"ce": losses.SegmentationCrossEntropy(pred="model.seg.logits", target="data.gt.label")}
    opt = optim.adamw(1e-3)
    pipe = augment.default_volume_pipeline(keys.IMAGE)
    batches = [_batch(3, i, (16, 16, 16), seg=True) for i in range(2)] + [_batch(2, 7, (16, 16, 16), seg=True)]
    (_, compiled), cc = _count(lambda cc: _epochs(model, loss, opt, pipe, batches, compile=True, backend=cc))
    assert cc.frame_count == 1
    assert not counters["graph_break"]
    _, eager = _epochs(model, loss, opt, pipe, batches, compile=False)
    assert compiled == pytest.approx(eager, rel=1e-3)


def _linear(toy, breaks: bool):
    def apply(model, params, buffers, batch, train=False, rng=None):
        if breaks:
            torch._dynamo.graph_break()
        return toy["apply"](model, params, buffers, batch, train=train, rng=rng)

    return apply


def test_a_graph_break_is_an_error_naming_the_fallback_never_a_silent_eager_run(toy):
    model, opt = {"d": 64, "c": 2}, optim.sgd(0.1)
    batch = _batch(4, 0, (8, 8))
    torch._dynamo.reset()
    state = init_state(model, opt, rng=Rng(0), init=toy["init"])
    step = make_train_step(model, {"ce": toy["ce"]}, opt, apply=_linear(toy, True), compile=True, backend="eager")
    with pytest.raises(GraphBreakError, match=r"train step 1 does not compile into one graph.*compile='partial'"):
        step(state, batch)
    ev = make_eval_step(model, {"ce": toy["ce"]}, apply=_linear(toy, True), compile=True, backend="eager")
    with pytest.raises(GraphBreakError, match="eval step"):
        ev(state, batch)
    # the documented fallback runs, in pieces
    torch._dynamo.reset()
    partial = make_train_step(model, {"ce": toy["ce"]}, opt, apply=_linear(toy, True), compile="partial")
    new, out = partial(state, batch)
    assert new.step == 1 and torch.isfinite(out["losses"]["total_loss"])


def test_compile_modes_are_checked(toy):
    model, opt = {"d": 64, "c": 2}, optim.sgd(0.1)
    with pytest.raises(ConfigError, match="compile must be a bool or one of"):
        make_train_step(model, {"ce": toy["ce"]}, opt, apply=toy["apply"], compile="fast")
    with pytest.raises(ConfigError, match="StepSettings.compile"):
        StepSettings(compile="fast")
    step = make_train_step(model, {"ce": toy["ce"]}, opt, apply=toy["apply"], compile="reduce-overhead")
    state = init_state(model, opt, rng=Rng(0), init=toy["init"])
    with pytest.raises(ConfigError, match="CUDA graphs, which need a CUDA device; the params are on cpu"):
        step(state, _batch(4, 0, (8, 8)))
    with pytest.raises(ConfigError, match="memory_format"):
        make_eval_step(model, memory_format="nhwc")


def test_step_settings_give_the_step_arguments():
    s = StepSettings(compile="max-autotune", precision="bf16", memory_format="channels_last")
    assert s.train_kwargs()["compile"] == "max-autotune"
    assert s.eval_kwargs() == {"compile": "max-autotune", "precision": "bf16", "memory_format": "channels_last"}
    assert StepSettings().precision == "auto" and StepSettings().prefetch


def test_augmentation_inside_the_eager_step_equals_augmenting_before_it(toy):
    model, opt = {"d": 64, "c": 2}, optim.sgd(0.1)
    pipe = augment.default_image_pipeline(keys.IMAGE)
    batches = [_batch(4, i, (8, 8)) for i in range(3)]

    def run(inside: bool):
        step = make_train_step(model, {"ce": toy["ce"]}, opt, apply=toy["apply"], augment=pipe if inside else None)
        state = init_state(model, opt, rng=Rng(0), init=toy["init"])
        outs = []
        for b in batches:
            if not inside:
                b = pipe(b, rng=state.rng.child("augment", state.step, 0))
            state, out = step(state, b)
            outs.append(out)
        return state, outs

    (a, outs_a), (b, outs_b) = run(True), run(False)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    assert torch.equal(nd.get(outs_a[-1], keys.IMAGE), nd.get(outs_b[-1], keys.IMAGE))
    with pytest.raises(ConfigError, match="augment must be a fusefn.augment.Augmentation"):
        make_train_step(model, {"ce": toy["ce"]}, opt, augment=lambda b, rng: b)


def test_channels_last_step_trains_like_the_contiguous_one(cnn, toy):
    opt = optim.sgd(0.1)
    batch = _batch(4, 0, (8, 8))
    runs = []
    for fmt in ("contiguous", "channels_last"):
        state = init_state(cnn, opt, rng=Rng(0))
        state, _ = make_train_step(cnn, {"ce": toy["ce"]}, opt, memory_format=fmt)(state, batch)
        runs.append(state)
    for k in runs[0].params:
        torch.testing.assert_close(runs[1].params[k], runs[0].params[k], atol=1e-5, rtol=1e-5)
    w = next(v for v in runs[1].params.values() if v.ndim == 4)
    assert w.is_contiguous(memory_format=torch.channels_last)
