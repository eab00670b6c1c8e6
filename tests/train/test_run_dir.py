"""A model directory belongs to one run (issue 20, item 3): refused, resumed, overwritten; stale checkpoints named."""

import json
import shutil

import pytest
import torch

from fusefn import metrics, optim
from fusefn.train import BestEpochSource, CheckpointRule, LoaderSettings, fit, load_model
from fusefn.train.checkpoint import checkpoint_path
from fusefn.train.run_dir import RunDirError, claim_run_dir, read_run


def _fit(toy, data, model_dir, model=None, *, best="validation.metrics.accuracy", lr=1e-2, epochs=2, **kw):
    opt = "max" if "metrics" in best else "min"
    return fit(
        model or {"d": 64, "c": 2},
        {"ce": toy["ce"]},
        optim.adamw(lr=lr),
        data[0],
        data[1],
        model_dir=model_dir,
        epochs=epochs,
        metrics={"accuracy": metrics.Accuracy(pred="model.head_0.probs", target="data.gt.label")},
        loader=LoaderSettings(batch_size=16),
        checkpoints=CheckpointRule(best=BestEpochSource(source=best, optimization=opt)),
        device="cpu",
        progress=False,
        apply=toy["apply"],
        init=toy["init"],
        **kw,
    )


def test_run_json_records_the_configuration_and_checkpoints_carry_its_id(toy, data, tmp_path):
    _fit(toy, data, tmp_path)
    run = read_run(tmp_path)
    assert run["config"]["model"] == {"d": 64, "c": 2} and run["config"]["seed"] == 0
    assert run["config"]["data"]["train"]["length"] == 96 and run["config"]["best"] == ["validation.metrics.accuracy"]
    from fusefn.train import load_checkpoint

    for path in (tmp_path / "checkpoints").glob("*.pt"):
        assert load_checkpoint(path)["run_id"] == run["run_id"]


def test_training_another_model_into_a_run_directory_is_refused_and_leaves_it_intact(toy, data, tmp_path):
    _fit(toy, data, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").glob("*.pt")}
    with pytest.raises(RunDirError, match=rf"model_dir {tmp_path} holds .*differs: model.c: 2 != 3.*overwrite=True"):
        _fit(toy, data, tmp_path, model={"d": 64, "c": 3})
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").glob("*.pt")} == before


def test_re_running_the_same_training_is_refused_unless_resumed(toy, data, tmp_path):
    first = _fit(toy, data, tmp_path)
    with pytest.raises(RunDirError, match="the same configuration"):
        _fit(toy, data, tmp_path)
    run_id = read_run(tmp_path)["run_id"]
    more = _fit(toy, data, tmp_path, epochs=3, resume="last")  # the run goes on under its id
    assert more.epoch == 3 and len(more.history) == 3 and more.history[:2] == first.history
    assert read_run(tmp_path)["run_id"] == run_id


def test_overwrite_replaces_the_run_and_best_is_the_new_one(toy, data, tmp_path):
    _fit(toy, data, tmp_path, best="validation.metrics.accuracy")
    old_id = read_run(tmp_path)["run_id"]
    new = _fit(toy, data, tmp_path, best="train.losses.total_loss", lr=5e-2, overwrite=True)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["best_train.losses.total_loss.pt", "last.pt"]  # the earlier run's best is gone
    assert read_run(tmp_path)["run_id"] != old_id
    _, state = load_model(tmp_path, "best")
    best_epoch = new.best["train.losses.total_loss"]["epoch"]
    assert state.epoch == best_epoch and state.history == new.history[:best_epoch]


def test_a_stale_best_checkpoint_is_refused_when_loaded(toy, data, tmp_path):
    # an earlier run's best_*.pt copied back beside a new run (what fit before run ids left behind)
    _fit(toy, data, tmp_path / "old")
    _fit(toy, data, tmp_path / "new", best="train.losses.total_loss")
    stale = tmp_path / "new" / "checkpoints" / "best_validation.metrics.accuracy.pt"
    shutil.copy(tmp_path / "old" / "checkpoints" / "best_validation.metrics.accuracy.pt", stale)
    with pytest.raises(RunDirError, match=r"best_validation.metrics.accuracy.pt belongs to an earlier run"):
        load_model(tmp_path / "new", "best_validation.metrics.accuracy")
    # "best" is the run's own best source, whatever else lies in the folder
    assert checkpoint_path(tmp_path / "new", "best").name == "best_train.losses.total_loss.pt"
    load_model(tmp_path / "new", "best")


def test_infer_refuses_a_stale_best(toy, data, tmp_path, cnn):
    from fusefn.losses import CrossEntropy
    from fusefn.train import infer

    def run(d, lr):
        fit(
            cnn,
            {"ce": CrossEntropy(pred="model.head_0.logits", target="data.gt.label")},
            optim.adamw(lr=lr),
            data[0],
            model_dir=d,
            epochs=1,
            loader=LoaderSettings(batch_size=32),
            device="cpu",
            progress=False,
        )

    run(tmp_path / "a", 1e-2)
    run(tmp_path / "b", 1e-3)
    stale = tmp_path / "b" / "checkpoints" / "best_train.losses.total_loss.pt"
    shutil.copy(tmp_path / "a" / "checkpoints" / "best_train.losses.total_loss.pt", stale)
    with pytest.raises(RunDirError, match="earlier run"):
        infer(tmp_path / "b", data[1], output_file=tmp_path / "p.parquet", output_columns=["model.head_0.probs"])


def test_a_directory_with_checkpoints_but_no_run_record_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(RunDirError, match="it has no run.json"):
        claim_run_dir(tmp_path, {"model": 1})
    record = claim_run_dir(tmp_path, {"model": 1}, overwrite=True)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == record["run_id"]


def test_claim_without_write_changes_nothing(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    claim_run_dir(tmp_path, {"model": 1}, overwrite=True, write=False)  # a non-main rank under torchrun
    assert (tmp_path / "checkpoints" / "last.pt").exists() and not (tmp_path / "run.json").exists()
