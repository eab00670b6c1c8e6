"""The public pieces fit is glued from: settings records, epoch_batches, train_epoch, eval_epoch, BestEpochs."""

import pytest
import torch

from fusefn import Reducer, Rng, metrics, optim
from fusefn.errors import ConfigError
from fusefn.train import (
    BestEpochs,
    BestEpochSource,
    CheckpointRule,
    EpochMeans,
    LoaderSettings,
    StepSettings,
    best_name,
    distributed,
    epoch_batches,
    eval_epoch,
    fit,
    init_state,
    load_checkpoint,
    make_eval_step,
    make_train_step,
    save_checkpoint,
    train_epoch,
)

MODEL = {"d": 64, "c": 2}


def _acc():
    return {"accuracy": metrics.Accuracy(pred="model.head_0.probs", target="data.gt.label")}


# ---------------------------------------------------------------------------------------------- settings


def test_settings_defaults_are_the_agreed_ones():
    assert (LoaderSettings().batch_size, LoaderSettings().workers, LoaderSettings().shuffle) == (32, 0, True)
    assert LoaderSettings().drop_last is False and LoaderSettings().collate is None
    assert (StepSettings().compile, StepSettings().precision, StepSettings().accumulate) == (False, "auto", 1)
    rule = CheckpointRule()
    assert (rule.best, rule.start_saving_epochs, rule.every, rule.durable) == (None, None, 1, False)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: LoaderSettings(batch_size=0), "LoaderSettings.batch_size"),
        (lambda: LoaderSettings(workers=-1), "LoaderSettings.workers"),
        (lambda: LoaderSettings(shuffle="yes"), "LoaderSettings.shuffle"),
        (lambda: LoaderSettings(collate=3), "LoaderSettings.collate"),
        (lambda: StepSettings(precision="fp8"), "StepSettings.precision"),
        (lambda: StepSettings(accumulate=0), "StepSettings.accumulate"),
        (lambda: CheckpointRule(every=0), "CheckpointRule.every"),
        (lambda: CheckpointRule(start_saving_epochs=-1), "CheckpointRule.start_saving_epochs"),
        (lambda: CheckpointRule(best=()), "CheckpointRule.best"),
        (lambda: CheckpointRule(best=("validation.metrics.auc",)), "CheckpointRule.best"),
    ],
)
def test_settings_reject_bad_values_naming_the_field(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_checkpoint_rule_sources_and_names():
    auc = BestEpochSource(source="validation.metrics.auc")
    assert CheckpointRule(best=auc).best == (auc,)
    assert CheckpointRule().sources(True)[0].source == "validation.losses.total_loss"
    assert CheckpointRule().sources(False) == (BestEpochSource(source="train.losses.total_loss", optimization="min"),)
    rule = CheckpointRule(best=auc, start_saving_epochs=2, every=2)
    assert rule.names(1, ()) == ["last"]
    assert rule.names(2, (auc,)) == ["best_validation.metrics.auc", "epoch_2", "last"]


# ------------------------------------------------------------------------------------------ best epochs


def _res(epoch, auc, loss=1.0):
    return {"epoch": epoch, "validation": {"metrics": {"auc": auc}, "losses": {"total_loss": loss}}}


def test_best_epochs_is_a_reducer_that_matches_the_fold():
    srcs = (
        BestEpochSource(source="validation.metrics.auc", optimization="max", on_equal_values="better"),
        BestEpochSource(source="validation.losses.total_loss", optimization="min", on_equal_values="worse"),
    )
    best = BestEpochs(sources=srcs)
    assert isinstance(best, Reducer)
    history = [_res(1, 0.7, 1.0), _res(2, 0.8, 0.9), _res(3, 0.8, 0.9), _res(4, float("nan"), 0.95), _res(5, 0.6, 0.8)]
    folded = best.init()
    for r in history:
        folded = best.update(folded, r)
    assert best.compute(folded) == {"validation.metrics.auc": 3, "validation.losses.total_loss": 5}
    for cut in range(len(history) + 1):
        a, b = best.init(), best.init()
        for r in history[:cut]:
            a = best.update(a, r)
        for r in history[cut:]:
            b = best.update(b, r)
        assert best.merge(a, b) == folded, cut


def test_best_epochs_improved_and_errors():
    best = BestEpochs(sources=BestEpochSource(source="validation.metrics.auc"))
    s1 = best.update(best.init(), _res(1, 0.5))
    s2 = best.update(s1, _res(2, 0.4))
    s3 = best.update(s2, _res(3, 0.9))
    assert best.improved(best.init(), s1) == best.sources and best.improved(s1, s2) == ()
    assert [best_name(s) for s in best.improved(s2, s3)] == ["best_validation.metrics.auc"]
    with pytest.raises(ConfigError, match=r"'validation.metrics.auc' is not in the epoch results; available: epoch"):
        best.update(s3, {"epoch": 4})
    with pytest.raises(ConfigError, match="BestEpochs.sources"):
        BestEpochs(sources=())


# ------------------------------------------------------------------------------------------- batches


def test_epoch_batches_is_the_one_seeded_shuffle():
    from fusefn.data import index_batches

    data = torch.utils.data.TensorDataset(torch.arange(10))
    batches, count = epoch_batches(data, 4, rng=Rng(7), batch_size=3, collate=list)
    got = [[int(x) for (x,) in b] for b in batches]
    assert count == 4 and got == index_batches(10, batch_size=3, rng=Rng(7).child("shuffle", 4))
    rest, count = epoch_batches(data, 4, rng=Rng(7), batch_size=3, collate=list, skip=1)
    assert count == 3 and [[int(x) for (x,) in b] for b in rest] == got[1:]
    ready = [{"a": i} for i in range(5)]
    it, n = epoch_batches(ready, 0, skip=2)
    assert n == 3 and list(it) == ready[2:]


# ------------------------------------------------------------------------------------------- epochs


def test_train_epoch_and_eval_epoch(toy, data):
    opt = optim.adamw(lr=1e-2)
    state = init_state(MODEL, opt, rng=Rng(0), init=toy["init"])
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=toy["apply"])
    batches, _ = epoch_batches(data[0], 1, rng=state.rng, batch_size=16)
    state, res = train_epoch(step, state, batches, metrics=_acc())
    assert (state.epoch, state.step, state.batch_in_epoch, state.partial) == (1, 6, 0, None)
    assert set(res) == {"losses", "metrics"} and set(res["losses"]) == {"ce", "total_loss"}
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0
    evaluate = make_eval_step(MODEL, {"ce": toy["ce"]}, apply=toy["apply"])
    val, _ = epoch_batches(data[1], batch_size=16)
    out = eval_epoch(evaluate, state, val, metrics=_acc())
    assert set(out) == {"losses", "metrics"} and out["losses"]["total_loss"] > 0


def test_train_epoch_stopped_and_resumed_equals_one_epoch(toy, data):
    """``stop`` ends the epoch early with what a checkpoint needs; the rest of the epoch finishes it exactly."""
    opt = optim.sgd(lr=0.1)
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=toy["apply"])

    def fresh():
        return init_state(MODEL, opt, rng=Rng(1), init=toy["init"])

    whole, whole_res = train_epoch(step, fresh(), epoch_batches(data[0], 1, rng=Rng(1), batch_size=16)[0])
    calls = []
    part, none = train_epoch(
        step,
        fresh(),
        epoch_batches(data[0], 1, rng=Rng(1), batch_size=16)[0],
        stop=lambda: calls.append(1) or len(calls) == 2,
    )
    assert none is None and part.batch_in_epoch == 2 and part.partial["batches"] == 2 and part.epoch == 0
    rest = epoch_batches(data[0], 1, rng=Rng(1), batch_size=16, skip=part.batch_in_epoch)[0]
    done, res = train_epoch(step, part, rest)
    assert res == whole_res and done.step == whole.step and done.epoch == 1
    assert all(torch.equal(done.params[k], whole.params[k]) for k in whole.params)


def test_epoch_means_is_a_reducer():
    means = EpochMeans(metrics=_acc())
    assert isinstance(means, Reducer)
    outs = [
        {
            "losses": {"total_loss": torch.tensor(float(i))},
            "model": {"head_0": {"probs": torch.tensor([[0.2, 0.8], [0.9, 0.1]])}},
            "data": {"gt": {"label": torch.tensor([1, i % 2])}},
        }
        for i in range(4)
    ]
    a, b, whole = means.init(), means.init(), means.init()
    for i, o in enumerate(outs):
        whole = means.update(whole, o)
        a, b = (means.update(a, o), b) if i < 2 else (a, means.update(b, o))
    assert means.compute(means.merge(a, b)) == means.compute(whole)
    assert means.compute(whole)["losses"]["total_loss"] == 1.5


def test_augment_is_called_with_the_step_rng(toy, data):
    opt = optim.sgd(lr=0.1)
    state = init_state(MODEL, opt, rng=Rng(5), init=toy["init"])
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=toy["apply"], accumulate=2)
    seen = []

    def aug(batch, *, rng):
        seen.append(rng)
        return batch

    batches, _ = epoch_batches(data[0], 1, batch_size=16)
    state, _ = train_epoch(step, state, batches, augment=aug, accumulate=2)
    assert seen[:4] == [Rng(5).child("augment", s, i) for s in (0, 1) for i in (0, 1)]
    assert state.step == 3  # 6 mini-batches, 2 per update


# --------------------------------------------------------------------------------- a loop of your own


def test_hand_loop_from_the_public_pieces_equals_fit_bit_for_bit(toy, data, tmp_path):
    opt = optim.adamw(lr=optim.cosine_decay(1e-2, 20))
    auc = BestEpochSource(source="validation.metrics.accuracy")
    fitted = fit(
        MODEL,
        {"ce": toy["ce"]},
        opt,
        data[0],
        data[1],
        model_dir=tmp_path / "fit",
        epochs=3,
        metrics=_acc(),
        loader=LoaderSettings(batch_size=16),
        checkpoints=CheckpointRule(best=auc),
        seed=4,
        device="cpu",
        progress=False,
        apply=toy["apply"],
        init=toy["init"],
    )

    state = init_state(MODEL, opt, rng=Rng(4), init=toy["init"])
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=toy["apply"])
    evaluate = make_eval_step(MODEL, {"ce": toy["ce"]}, apply=toy["apply"])
    best = BestEpochs(sources=auc)
    for epoch in range(1, 4):
        lr = optim.learning_rate(opt, state.opt_state, state.lr_scale)
        state, train_res = train_epoch(
            step, state, epoch_batches(data[0], epoch, rng=state.rng, batch_size=16)[0], metrics=_acc()
        )
        val = eval_epoch(evaluate, state, epoch_batches(data[1], batch_size=16)[0], metrics=_acc())
        res = {"epoch": epoch, "learning_rate": lr, "train": train_res, "validation": val}
        new_best = best.update(state.best, res)
        names = CheckpointRule(best=auc).names(epoch, best.improved(state.best, new_best))
        state = state.replace(best=new_best, history=(*state.history, res))
        save_checkpoint([tmp_path / "mine" / f"{n}.pt" for n in names], state, model=MODEL, optimizer=opt)

    assert state.history == fitted.history and state.best == fitted.best and state.step == fitted.step
    assert all(torch.equal(state.params[k], fitted.params[k]) for k in fitted.params)
    assert all(torch.equal(state.opt_state["exp_avg"][k], fitted.opt_state["exp_avg"][k]) for k in fitted.params)
    mine = load_checkpoint(tmp_path / "mine" / "best_validation.metrics.accuracy.pt")["state"]
    theirs = load_checkpoint(tmp_path / "fit" / "checkpoints" / "best_validation.metrics.accuracy.pt")["state"]
    assert mine.epoch == theirs.epoch and mine.rng == theirs.rng == Rng(4)


# ------------------------------------------------------------------------------------------ side effects


def test_fit_leaves_no_exit_hook_and_no_process_group(toy, data, tmp_path, monkeypatch):
    import atexit

    registered = []
    monkeypatch.setattr(atexit, "register", lambda *a, **k: registered.append(a))
    fit(
        MODEL,
        {"ce": toy["ce"]},
        optim.sgd(lr=0.1),
        data[0],
        model_dir=tmp_path,
        epochs=1,
        device="cpu",
        progress=False,
        apply=toy["apply"],
        init=toy["init"],
    )
    assert registered == []
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())


def test_process_group_joins_and_leaves_what_it_joined(tmp_path, monkeypatch):
    if not torch.distributed.is_available():
        pytest.skip("torch built without distributed")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with distributed.process_group() as active:  # one process: nothing to join
        assert active is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(
        torch.distributed,
        "init_process_group",
        lambda backend: torch.distributed.distributed_c10d.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
        ),
    )
    with distributed.process_group() as active:
        assert active and distributed.world_size() == 1
        with distributed.process_group() as inner:  # nested: the outer block's group, left alone
            assert inner
        assert torch.distributed.is_initialized()
    assert not torch.distributed.is_initialized()
