"""fit: epoch results, checkpoints, best epochs, resume, faults, callbacks wiring."""

import os
import signal

import pytest
import torch

from fusefn import Rng, metrics, optim
from fusefn.errors import ConfigError
from fusefn.train import (
    BestEpochSource,
    CheckpointError,
    CheckpointRule,
    CsvMetrics,
    EarlyStopping,
    LoaderSettings,
    NonFiniteLossError,
    StepSettings,
    fit,
    load_checkpoint,
)

MODEL = {"d": 64, "c": 2}


def _metrics():
    return {"accuracy": metrics.Accuracy(pred="model.head_0.probs", target="data.gt.label")}


def _fit(toy, data, tmp, epochs=3, **kw):
    kw.setdefault("optimizer", optim.adamw(lr=1e-2))
    opt = kw.pop("optimizer")
    kw["loader"] = LoaderSettings(batch_size=16, **kw.pop("loader", {}))
    return fit(
        MODEL,
        {"ce": toy["ce"]},
        opt,
        data[0],
        data[1],
        model_dir=tmp,
        epochs=epochs,
        metrics=_metrics(),
        device="cpu",
        progress=False,
        apply=toy["apply"],
        init=toy["init"],
        **kw,
    )


def test_epoch_results_and_checkpoint_files(toy, data, tmp_path):
    state = _fit(
        toy,
        data,
        tmp_path,
        epochs=4,
        validate_first=True,
        checkpoints=CheckpointRule(
            start_saving_epochs=2,
            every=2,
            best=[
                BestEpochSource(source="validation.metrics.accuracy", optimization="max"),
                BestEpochSource(source="train.losses.total_loss", optimization="min"),
            ],
        ),
    )
    assert state.epoch == 4 and len(state.history) == 5
    first, last = state.history[0], state.history[-1]
    assert set(first) == {"epoch", "learning_rate", "validation"}  # epoch 0 baseline
    assert set(last["train"]) == {"losses", "metrics"} and set(last["train"]["losses"]) == {"ce", "total_loss"}
    assert 0.0 <= last["validation"]["metrics"]["accuracy"] <= 1.0
    assert last["learning_rate"] == pytest.approx(1e-2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [
        "best_train.losses.total_loss.pt",
        "best_validation.metrics.accuracy.pt",
        "epoch_2.pt",
        "epoch_4.pt",
        "last.pt",
    ]
    # the best checkpoint holds the state of its epoch
    b = state.best["train.losses.total_loss"]
    saved = load_checkpoint(tmp_path / "checkpoints" / "best_train.losses.total_loss.pt")["state"]
    assert saved.epoch == b["epoch"]
    assert (tmp_path / "model.json").is_file()


def test_unknown_best_source_fails_before_training(toy, data, tmp_path):
    with pytest.raises(ConfigError, match=r"validation.metrics.auc.*available: .*validation.metrics.accuracy"):
        _fit(toy, data, tmp_path, checkpoints=CheckpointRule(best=BestEpochSource(source="validation.metrics.auc")))
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_resume_continues_bit_identically(toy, data, tmp_path):
    full = _fit(toy, data, tmp_path / "a", epochs=4)
    _fit(toy, data, tmp_path / "b", epochs=2)
    resumed = _fit(toy, data, tmp_path / "b", epochs=4, resume="last")
    for k in full.params:
        assert torch.equal(full.params[k], resumed.params[k])
    assert full.history == resumed.history
    assert full.best == resumed.best


def test_resume_from_another_model_config_is_refused(toy, data, tmp_path):
    _fit(toy, data, tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match=r"another model config.*c"):
        fit(
            {"d": 64, "c": 3},
            {"ce": toy["ce"]},
            optim.adamw(lr=1e-2),
            data[0],
            model_dir=tmp_path,
            epochs=2,
            resume="last",
            device="cpu",
            progress=False,
            apply=toy["apply"],
            init=toy["init"],
        )


def test_nan_loss_stops_naming_step_and_ids(toy, tmp_path):
    bad = (toy["Digits"](32, nan_at=5), toy["Digits"](16, seed=1))
    with pytest.raises(NonFiniteLossError, match=r"step \d+ .*'s5'.*last good checkpoint: none"):
        _fit(toy, bad, tmp_path, loader={"shuffle": False})


def test_model_dir_that_is_a_file(toy, data, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        _fit(toy, data, f)


def test_ctrl_c_writes_last_and_resume_is_exact(toy, data, tmp_path):
    class Interrupting(type(data[0])):
        def __getitem__(self, i):
            if self.armed and i == self.at:
                self.armed = False
                os.kill(os.getpid(), signal.SIGINT)
            return super().__getitem__(i)

    ds = Interrupting(96, seed=0)
    ds.armed, ds.at = True, 40
    full = _fit(toy, data, tmp_path / "a", epochs=2, loader={"shuffle": False})
    with pytest.raises(KeyboardInterrupt):
        _fit(toy, (ds, data[1]), tmp_path / "b", epochs=2, loader={"shuffle": False})
    saved = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["state"]
    assert saved.epoch == 0 and saved.batch_in_epoch > 0  # mid-epoch 1
    resumed = _fit(toy, (ds, data[1]), tmp_path / "b", epochs=2, loader={"shuffle": False}, resume="last")
    for k in full.params:
        assert torch.equal(full.params[k], resumed.params[k])
    assert full.history == resumed.history


def test_callbacks_csv_and_early_stopping(toy, data, tmp_path):
    stop = EarlyStopping(source="train.losses.total_loss", optimization="max", patience=1)
    state = _fit(toy, data, tmp_path, epochs=6, callbacks=(CsvMetrics(), stop))
    assert state.epoch == 2  # loss goes down, so "max" stops after one epoch without improvement
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("mode,epoch,") and "losses.total_loss" in rows[0]
    assert len(rows) == 1 + 2 * 2  # train + validation per epoch


def test_plateau_reduces_learning_rate(toy, data, tmp_path):
    plateau = optim.ReduceLROnPlateau(source="train.losses.total_loss", mode="max", patience=0, factor=0.5)
    state = _fit(toy, data, tmp_path, epochs=3, plateau=plateau)
    lrs = [h["learning_rate"] for h in state.history]
    assert lrs == pytest.approx([1e-2, 1e-2, 5e-3])  # epoch 1 sets the best; epoch 2 is worse


def test_augment_runs_on_device_with_step_generator(toy, data, tmp_path):
    seen = []

    def aug(batch, *, rng):
        seen.append(torch.rand(1, generator=rng.generator()).item())
        return batch

    _fit(toy, data, tmp_path, epochs=1, augment=aug)
    assert len(seen) == 6 and len(set(seen)) == 6  # one independent stream per step


def test_iterable_of_batches_is_accepted(toy, data, tmp_path):
    batches = [torch.utils.data.default_collate([data[0][i] for i in range(j, j + 8)]) for j in range(0, 32, 8)]
    state = fit(
        MODEL,
        {"ce": toy["ce"]},
        optim.sgd(lr=0.1),
        batches,
        model_dir=tmp_path,
        epochs=2,
        device="cpu",
        progress=False,
        apply=toy["apply"],
        init=toy["init"],
    )
    assert state.step == 8 and "validation" not in state.history[-1]


def test_real_model_fit_with_accumulation(cnn, data, toy, tmp_path):
    state = fit(
        cnn,
        {"ce": toy["ce"]},
        optim.adamw(lr=1e-2),
        data[0],
        data[1],
        model_dir=tmp_path,
        epochs=1,
        loader=LoaderSettings(batch_size=16),
        step=StepSettings(accumulate=2),
        device="cpu",
        progress=False,
    )
    assert state.step == 3  # 6 mini-batches, 2 per update


def test_balanced_batch_sampler_drives_the_epochs(toy, data, tmp_path):
    from fusefn.data import BalancedBatchSampler

    labels = [int(data[0][i]["data"]["gt"]["label"]) for i in range(len(data[0]))]
    sampler = BalancedBatchSampler(labels, batch_size=8, num_batches=5, rng=Rng(0))
    seen = []

    def aug(batch, *, rng):
        seen.append(batch["data"]["gt"]["label"].tolist())
        return batch

    state = _fit(toy, data, tmp_path, epochs=2, loader={"batch_sampler": sampler}, augment=aug)
    assert state.step == 10
    assert all(sum(b) == 4 for b in seen)  # balanced: half of each batch is class 1
    assert seen[:5] != seen[5:]  # a new epoch draws new batches
