"""The device feed of train_epoch/eval_epoch and the augmentation it moves into the step."""

import pytest
import torch

from fusefn import Rng, augment, keys, nd, optim
from fusefn.train import init_state, make_train_step, train_epoch
from fusefn.train.prefetch import device_batches, lookahead


def test_cpu_feed_passes_the_batches_through_untouched():
    batches = [{"x": torch.ones(2)}, {"x": torch.zeros(2)}]
    out = list(device_batches(iter(batches), "cpu"))
    assert all(a is b for a, b in zip(out, batches))
    assert list(device_batches([], None)) == []


@pytest.mark.parametrize("depth", [1, 2])
def test_lookahead_keeps_the_order_and_runs_ahead_by_depth(depth):
    log = []

    def start(i):
        log.append(("start", i))
        return i * 10

    got = []
    for v in lookahead(range(5), start, lambda h: h + 1, depth=depth):
        got.append(v)
        started = [i for kind, i in log if kind == "start"]
        # when item k is used, items up to k + depth have been started (or all of them)
        assert started[-1] == min(4, len(got) - 1 + depth)
    assert got == [1, 11, 21, 31, 41]


def test_lookahead_passes_errors_of_the_source_on():
    def source():
        yield 1
        raise ValueError("broken reader")

    with pytest.raises(ValueError, match="broken reader"):
        list(lookahead(source(), lambda x: x, lambda x: x))


def test_train_epoch_runs_an_augmentation_inside_the_step_with_the_same_draws(toy):
    model, opt = {"d": 64, "c": 2}, optim.sgd(0.1)
    pipe = augment.default_image_pipeline(keys.IMAGE)
    ds = toy["Digits"](24, seed=4)
    batches = [torch.utils.data.default_collate([ds[i] for i in range(j, j + 8)]) for j in (0, 8, 16)]
    step = make_train_step(model, {"ce": toy["ce"]}, opt, apply=toy["apply"])
    state = init_state(model, opt, rng=Rng(0), init=toy["init"])
    fused, _ = train_epoch(step, state, batches, augment=pipe)
    # by hand: the augmentation before the step, from the stream the loop always used
    ref = init_state(model, opt, rng=Rng(0), init=toy["init"])
    for b in batches:
        ref, out = step(ref, pipe(b, rng=ref.rng.child("augment", ref.step, 0)))
    for k in ref.params:
        assert torch.equal(fused.params[k], ref.params[k])
    assert step.with_augment(pipe) is step.with_augment(pipe)  # built once, reused every epoch
    assert nd.get(out, keys.IMAGE).shape == (8, 1, 8, 8)
