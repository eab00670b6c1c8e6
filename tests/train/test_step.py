"""The pure train/eval step against the hand-written PyTorch loop it replaces."""

import pytest
import torch
import torch.nn.functional as F

from fusefn import Rng, optim
from fusefn.errors import ConfigError
from fusefn.train import TrainState, init_state, make_eval_step, make_train_step, tree_clone

MODEL = {"d": 64, "c": 2}


def _batches(toy, n_batches=4, bs=8):
    ds = toy["Digits"](n_batches * bs, seed=3)
    out = []
    for j in range(n_batches):
        items = [ds[i] for i in range(j * bs, (j + 1) * bs)]
        out.append(torch.utils.data.default_collate(items))
    return out


def _fusefn_run(toy, opt, batches, **kw):
    state = init_state(MODEL, opt, rng=Rng(0), init=toy["init"])
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=toy["apply"], **kw)
    outs = []
    for b in batches:
        state, out = step(state, b)
        outs.append(out)
    return state, outs


def _torch_run(toy, batches, make_opt):
    params, _ = toy["init"](MODEL, rng=Rng(0))
    w = params["w"].clone().requires_grad_(True)
    b = params["b"].clone().requires_grad_(True)
    opt = make_opt([w, b])
    losses = []
    for batch in batches:
        opt.zero_grad()
        x = batch["data"]["input"]["img"].flatten(1)
        loss = F.cross_entropy(x @ w + b, batch["data"]["gt"]["label"])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"w": w.detach(), "b": b.detach()}, losses


def test_train_step_equals_torch_loop(toy):
    batches = _batches(toy)
    state, outs = _fusefn_run(toy, optim.adamw(lr=1e-2), batches)
    ref, ref_losses = _torch_run(toy, batches, lambda p: torch.optim.AdamW(p, lr=1e-2))
    for k in ref:
        torch.testing.assert_close(state.params[k], ref[k], atol=1e-6, rtol=1e-6)
    assert [float(o["losses"]["total_loss"]) for o in outs] == pytest.approx(ref_losses, abs=1e-6)
    assert state.step == len(batches)
    # the output keeps the batch (ids included) and adds the model and loss keys
    assert outs[0]["data"]["sample_id"][:2] == ["s0", "s1"]
    assert outs[0]["model"]["head_0"]["probs"].shape == (8, 2)
    assert set(outs[0]["losses"]) == {"ce", "total_loss"}


def test_accumulation_averages_gradients(toy):
    """Two half batches accumulated == one full batch (a loss that is a batch mean)."""
    full = _batches(toy, n_batches=2, bs=8)
    halves = [[_half(b, 0), _half(b, 1)] for b in full]
    a, _ = _fusefn_run(toy, optim.sgd(lr=0.5), full)
    b, outs = _fusefn_run(toy, optim.sgd(lr=0.5), halves, accumulate=2)
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k], atol=1e-6, rtol=1e-6)
    assert len(outs[0]) == 2 and b.step == 2


def _half(batch, i):
    sl = slice(0, 4) if i == 0 else slice(4, 8)
    return {
        "data": {
            "sample_id": batch["data"]["sample_id"][sl],
            "input": {"img": batch["data"]["input"]["img"][sl]},
            "gt": {"label": batch["data"]["gt"]["label"][sl]},
        }
    }


def test_accumulation_needs_a_sequence(toy):
    b = _batches(toy, 1)[0]
    step = make_train_step(MODEL, {"ce": toy["ce"]}, optim.sgd(lr=0.1), apply=toy["apply"], accumulate=2)
    state = init_state(MODEL, optim.sgd(lr=0.1), init=toy["init"])
    with pytest.raises(ConfigError, match="sequence of 2"):
        step(state, b)


def test_step_is_pure_in_its_outputs_and_donates_state(toy):
    """A new state comes back; the caller who kept a clone still has the old values."""
    batches = _batches(toy, 1)
    opt = optim.adamw(lr=1e-2)
    state = init_state(MODEL, opt, init=toy["init"])
    kept = tree_clone(state.params)
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=toy["apply"])
    new, _ = step(state, batches[0])
    assert isinstance(new, TrainState) and new is not state
    assert not torch.equal(kept["w"], new.params["w"])
    # donation: no per-step copy of the parameters
    assert new.params["w"].data_ptr() == state.params["w"].data_ptr()


def test_eval_step_adds_outputs_and_losses(toy):
    b = _batches(toy, 1)[0]
    state = init_state(MODEL, optim.sgd(lr=0.1), init=toy["init"])
    ev = make_eval_step(MODEL, {"ce": toy["ce"]}, apply=toy["apply"])
    out = ev(state, b)
    assert out["model"]["head_0"]["logits"].shape == (8, 2)
    assert float(out["losses"]["total_loss"]) > 0
    assert not out["model"]["head_0"]["logits"].requires_grad
    out2 = ev((state.params, state.buffers), b)
    torch.testing.assert_close(out["losses"]["total_loss"], out2["losses"]["total_loss"])


def test_bf16_autocast_runs(toy):
    state, outs = _fusefn_run(toy, optim.adamw(lr=1e-2), _batches(toy, 2), precision="bf16")
    assert state.params["w"].dtype == torch.float32
    assert torch.isfinite(outs[-1]["losses"]["total_loss"])


def test_fp16_loss_scaling_skips_overflow(toy):
    batches = _batches(toy, 2)
    bad = {**batches[0], "data": {**batches[0]["data"], "input": {"img": batches[0]["data"]["input"]["img"] * 1e30}}}
    opt = optim.sgd(lr=0.1)
    state = init_state(MODEL, opt, init=toy["init"])
    kept = tree_clone(state.params)
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=toy["apply"], precision="fp16")
    state, _ = step(state, bad)
    assert torch.equal(state.params["w"], kept["w"])  # overflow: update skipped
    assert float(state.loss_scale["scale"]) == 2.0**15
    state, _ = step(state, batches[1])
    assert not torch.equal(state.params["w"], kept["w"])


def test_bad_options():
    with pytest.raises(ConfigError, match="precision"):
        make_train_step(MODEL, {}, optim.sgd(lr=0.1), apply=lambda *a, **k: None, precision="fp8")
    with pytest.raises(ConfigError, match="accumulate"):
        make_train_step(MODEL, {}, optim.sgd(lr=0.1), apply=lambda *a, **k: None, accumulate=0)


def test_real_model_step_with_batchnorm_updates_buffers(cnn, data, toy):
    from fusefn import models

    opt = optim.adamw(lr=1e-2)
    state = init_state(cnn, opt, rng=Rng(0))
    before = tree_clone(state.buffers)
    step = make_train_step(cnn, {"ce": toy["ce"]}, opt)
    batch = torch.utils.data.default_collate([data[0][i] for i in range(8)])
    state, out = step(state, batch)
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], state.buffers[k])]
    assert changed  # batch-norm running statistics moved
    assert out["model"]["head_0"]["logits"].shape == (8, 2)
    assert models.param_count(state.params) > 0


@pytest.mark.slow
def test_compiled_step_equals_eager_and_never_recompiles(cnn, data, toy):
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(lr=optim.warmup_cosine(1e-2, 2, 20)))
    batches = [torch.utils.data.default_collate([data[0][i] for i in range(j * 8, j * 8 + 8)]) for j in range(4)]

    def run(compile):
        state = init_state(cnn, opt, rng=Rng(0))
        step = make_train_step(cnn, {"ce": toy["ce"]}, opt, compile=compile)
        losses = []
        for b in batches:
            state, out = step(state, b)
            losses.append(float(out["losses"]["total_loss"]))
        return state, losses

    eager, eager_losses = run(False)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled, compiled_losses = run(True)
    assert compiled_losses == pytest.approx(eager_losses, abs=1e-4)
    ev_eager = make_eval_step(cnn, {"ce": toy["ce"]})(eager, batches[0])
    with torch._dynamo.config.patch(error_on_recompile=True):
        ev = make_eval_step(cnn, {"ce": toy["ce"]}, compile=True)
        for _ in range(2):
            ev_out = ev(compiled, batches[0])
    assert ev_out["data"]["sample_id"] == batches[0]["data"]["sample_id"]
    torch.testing.assert_close(
        ev_out["model"]["head_0"]["probs"], ev_eager["model"]["head_0"]["probs"], atol=1e-4, rtol=1e-4
    )
    for k in eager.params:
        torch.testing.assert_close(compiled.params[k], eager.params[k], atol=1e-4, rtol=1e-4)
