"""The moving average of the weights: the hand-written loop it replaces, evaluation on it, checkpoints, compile."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from fusefn import Rng, models, optim
from fusefn.errors import ConfigError
from fusefn.train import StepSettings, TrainState, fit, init_state, make_eval_step, make_train_step, tree_clone
from fusefn.train.checkpoint import load_checkpoint
from fusefn.train.ema import EMA

MODEL = {"d": 64, "c": 2}


def _batches(toy, n_batches=6, bs=8):
    ds = toy["Digits"](n_batches * bs, seed=3)
    return [torch.utils.data.default_collate([ds[i] for i in range(j * bs, (j + 1) * bs)]) for j in range(n_batches)]


def _run(toy, batches, ema, opt=None, **kw):
    opt = opt or optim.sgd(0.5, 0.9)
    state = init_state(MODEL, opt, rng=Rng(0), init=toy["init"])
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=toy["apply"], ema=ema, **kw)
    live = []
    for b in batches:
        state, _ = step(state, b)
        live.append(tree_clone(state.params))
    return state, live


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_the_hand_written_average(toy, warmup):
    batches = _batches(toy)
    state, live = _run(toy, batches, EMA(decay=0.9, warmup=warmup))
    start, _ = toy["init"](MODEL, rng=Rng(0))
    ref = {k: v.clone() for k, v in start.items()}
    for t, p in enumerate(live):
        d = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
        ref = {k: d * ref[k] + (1 - d) * p[k] for k in ref}
    for k in ref:
        torch.testing.assert_close(state.ema["params"][k], ref[k], atol=1e-6, rtol=1e-6)
    assert int(state.ema["count"]) == len(batches)
    # the live weights are those of a run without the average
    plain, _ = _run(toy, batches, None)
    for k in ref:
        torch.testing.assert_close(state.params[k], plain.params[k], atol=0, rtol=0)
    assert plain.ema is None
    assert not torch.allclose(state.ema["params"]["w"], state.params["w"])


def test_eval_step_runs_the_averaged_weights(toy):
    batches = _batches(toy)
    state, _ = _run(toy, batches, EMA(decay=0.8))
    ev = make_eval_step(MODEL, {"ce": toy["ce"]}, apply=toy["apply"])
    on_state = ev(state, batches[0])["model"]["head_0"]["logits"]
    on_ema = ev((state.ema["params"], state.ema["buffers"]), batches[0])["model"]["head_0"]["logits"]
    on_live = ev((state.params, state.buffers), batches[0])["model"]["head_0"]["logits"]
    torch.testing.assert_close(on_state, on_ema, atol=0, rtol=0)
    assert not torch.allclose(on_state, on_live)
    assert state.eval_weights()[0] is state.ema["params"]
    assert TrainState(params={"w": torch.ones(1)}).eval_weights()[0]["w"].item() == 1.0


def test_averages_float_buffers_and_copies_integer_ones():
    ema = EMA(decay=0.5)
    s = ema.init({"w": torch.zeros(1)}, {"mean": torch.zeros(2), "n": torch.tensor(0)})
    s = ema.update(s, {"w": torch.ones(1)}, {"mean": torch.ones(2), "n": torch.tensor(7)})
    assert s["buffers"]["mean"].tolist() == [0.5, 0.5] and int(s["buffers"]["n"]) == 7
    s2 = EMA(decay=0.5, buffers=False).update(
        EMA(decay=0.5).init({"w": torch.zeros(1)}, {"mean": torch.zeros(2)}),
        {"w": torch.ones(1)},
        {"mean": torch.ones(2)},
    )
    assert s2["buffers"]["mean"].tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError, match="EMA.decay"):
        EMA(decay=1.0)
    with pytest.raises(ConfigError, match="ema must be"):
        make_train_step(MODEL, {}, optim.sgd(0.1), ema=0.99)


def test_freezing_leaves_frozen_parameters_out_of_the_backward_pass(toy):
    seen = []

    def apply(model, params, buffers, batch, train=False, rng=None):
        seen.append({k: v.requires_grad for k, v in params.items()})
        return toy["apply"](model, params, buffers, batch, train, rng)

    opt = optim.freeze(optim.sgd(0.5), "w")
    state = init_state(MODEL, opt, rng=Rng(0), init=toy["init"])
    w0 = state.params["w"].clone()
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=apply)
    for b in _batches(toy, 2):
        state, _ = step(state, b)
    assert torch.equal(state.params["w"], w0)
    assert not torch.equal(state.params["b"], torch.zeros(2))
    assert seen[0] == {"w": False, "b": True}


@pytest.mark.slow
def test_compiled_step_keeps_the_same_average_without_recompiles(toy):
    batches = _batches(toy)
    eager, _ = _run(toy, batches, EMA(decay=0.9, warmup=True))
    torch._dynamo.reset()
    cc = CompileCounter()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled, _ = _run(toy, batches, EMA(decay=0.9, warmup=True), compile=True, backend=cc)
    for k in eager.ema["params"]:
        torch.testing.assert_close(compiled.ema["params"][k], eager.ema["params"][k], atol=1e-6, rtol=1e-6)
    assert cc.frame_count == 1


@pytest.mark.slow
def test_fit_validates_on_the_average_saves_it_and_resumes_with_it(tmp_path, cnn, data):
    from fusefn import losses

    train, val = data
    loss = {"ce": losses.CrossEntropy(pred="model.head_0.logits", target="data.gt.label")}
    kw = dict(epochs=2, step=StepSettings(ema=EMA(decay=0.9), prefetch=False), progress=False, seed=1)
    opt = optim.adamw(1e-2, weight_decay=0.05, decay="weights")
    whole = fit(cnn, loss, opt, train, val, model_dir=tmp_path / "a", **kw)
    # the validation loss of the history is that of the averaged weights
    ev = make_eval_step(cnn, loss)
    from fusefn.train import epoch_batches, eval_epoch

    batches, _ = epoch_batches(val, batch_size=32)
    again = eval_epoch(ev, whole, batches)["losses"]["total_loss"]
    assert whole.history[-1]["validation"]["losses"]["total_loss"] == pytest.approx(again, rel=1e-5)
    live = eval_epoch(ev, (whole.params, whole.buffers), epoch_batches(val, batch_size=32)[0])
    assert live["losses"]["total_loss"] != pytest.approx(again, rel=1e-5)
    saved = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["state"]
    for k, t in whole.ema["params"].items():
        torch.testing.assert_close(saved.ema["params"][k], t, atol=0, rtol=0)
    # one epoch, then a resumed second: the same average as the uninterrupted run
    fit(cnn, loss, opt, train, val, model_dir=tmp_path / "b", **{**kw, "epochs": 1})
    resumed = fit(cnn, loss, opt, train, val, model_dir=tmp_path / "b", resume="last", **kw)
    for k, t in whole.ema["params"].items():
        torch.testing.assert_close(resumed.ema["params"][k], t, atol=1e-6, rtol=1e-6)
    assert int(resumed.ema["count"]) == int(whole.ema["count"]) == whole.step


def test_models_keep_parameter_names_that_patterns_select(cnn):
    params, _ = models.init(cnn, rng=Rng(0))
    opt = optim.freeze(optim.sgd(0.1), "backbone.*")
    trained = opt.trainable_params(params)
    assert trained and all(k.startswith("heads.") or not k.startswith("backbone.") for k in trained)


@pytest.mark.slow
def test_torch_optimizer_in_a_partially_compiled_step_equals_eager_and_fullgraph_refuses(toy):
    from fusefn.train._compile import GraphBreakError

    batches = _batches(toy, 3)
    opt = optim.from_torch(torch.optim.RAdam, lr=1e-2)
    eager, _ = _run(toy, batches, None, opt=opt)
    torch._dynamo.reset()
    partial, _ = _run(toy, batches, None, opt=opt, compile="partial", backend=CompileCounter())
    for k in eager.params:
        torch.testing.assert_close(partial.params[k], eager.params[k], atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()
    with pytest.raises(GraphBreakError):
        _run(toy, batches, None, opt=opt, compile=True, backend=CompileCounter())
