"""Checkpoints: round trip, atomic writes, naming rules, best-epoch rules."""

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fusefn import Rng, optim
from fusefn.errors import ConfigError
from fusefn.train import BestEpochSource, CheckpointError, TrainState, is_better, should_save_epoch
from fusefn.train.checkpoint import (
    best_name,
    checkpoint_path,
    config_diff,
    load_checkpoint,
    save_checkpoint,
)


def _state():
    p = {"w": torch.arange(6.0).reshape(2, 3)}
    opt = optim.adamw(lr=1e-3)
    return TrainState(
        params=p,
        buffers={"bn": torch.ones(3)},
        opt_state=opt.init(p),
        step=7,
        epoch=2,
        rng=Rng(5),
        best={"validation.metrics.auc": {"value": 0.9, "epoch": 2}},
        history=({"epoch": 1, "train": {"losses": {"total_loss": 1.0}}},),
    ), opt


def test_round_trip_keeps_everything(tmp_path, cnn):
    state, opt = _state()
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, state, model=cnn, optimizer=opt)
    torch.load(path, weights_only=True)  # nothing in it needs unpickling
    payload = load_checkpoint(path)
    got = payload["state"]
    assert torch.equal(got.params["w"], state.params["w"])
    assert torch.equal(got.opt_state["exp_avg"]["w"], state.opt_state["exp_avg"]["w"])
    assert (got.step, got.epoch, got.rng, got.best, got.history) == (7, 2, Rng(5), state.best, state.history)
    from fusefn.core import fingerprint, from_config

    assert from_config(payload["model_config"]) == cnn
    assert payload["model_fingerprint"] == fingerprint(cnn)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # an ordinary file, not mkstemp's 0600


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    state, _ = _state()
    path = tmp_path / "last.pt"
    save_checkpoint(path, state)
    before = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(path, state.replace(step=99))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


@pytest.mark.slow
def test_a_real_full_disk_names_the_path_and_keeps_the_previous_checkpoint(tmp_path):
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs")
    try:
        state, _ = _state()
        path = disk / "checkpoints" / "last.pt"
        save_checkpoint(path, state)
        before = path.read_bytes()
        big = state.replace(params={"w": torch.zeros(512, 1024)}, step=8)  # 2 MiB: more than the disk holds
        with pytest.raises(CheckpointError, match=rf"{path.parent}.*(No space|space)"):
            save_checkpoint(path, big)
        assert path.read_bytes() == before
        assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left
        assert load_checkpoint(path)["state"].step == 7
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_fit_sweeps_the_temporary_a_killed_save_left(tmp_path, cnn):
    from fusefn.losses import CrossEntropy
    from fusefn.train import LoaderSettings, fit

    stray = tmp_path / "m" / "checkpoints" / ".last.pt.abc123.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a checkpoint")
    batch = {"data": {"input": {"img": torch.rand(4, 1, 8, 8)}, "gt": {"label": torch.tensor([0, 1, 0, 1])}}}
    losses = {"ce": CrossEntropy(pred="model.head_0.logits", target="data.gt.label")}
    settings = LoaderSettings(shuffle=False)
    fit(cnn, losses, optim.sgd(0.1), [batch], model_dir=tmp_path / "m", epochs=1, progress=False, loader=settings)
    assert not stray.exists()


def test_unwritable_dir_is_a_checkpoint_error(tmp_path):
    state, _ = _state()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(blocker / "last.pt", state)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"a": 1}, other)
    with pytest.raises(CheckpointError, match="not a fusefn checkpoint"):
        load_checkpoint(other)


def test_checkpoint_path_rules(tmp_path):
    assert checkpoint_path(tmp_path, "last") == tmp_path / "checkpoints" / "last.pt"
    assert checkpoint_path(tmp_path, 3) == tmp_path / "checkpoints" / "epoch_3.pt"
    assert checkpoint_path(tmp_path, str(tmp_path / "x.pt")) == tmp_path / "x.pt"
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        checkpoint_path(tmp_path, "best")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best_validation.metrics.auc.pt").write_bytes(b"")
    assert checkpoint_path(tmp_path, "best").name == "best_validation.metrics.auc.pt"
    assert best_name(BestEpochSource(source="validation.metrics.auc")) == "best_validation.metrics.auc"


def test_is_better_rules():
    mx = BestEpochSource(source="a", optimization="max", on_equal_values="better")
    mn = BestEpochSource(source="a", optimization="min", on_equal_values="worse")
    assert is_better(1.0, 1.0, mx) and not is_better(1.0, 1.0, mn)
    assert is_better(0.5, 1.0, mn) and not is_better(0.5, 1.0, mx)
    assert not is_better(float("nan"), 1.0, mx)
    assert is_better(0.1, None, mn)


@given(st.integers(0, 50), st.integers(0, 10), st.integers(1, 5))
def test_should_save_epoch_matches_fusemedml_rule(n, start, gap):
    expected = n >= start and (n - start) % gap == 0
    assert should_save_epoch(n, start, gap) == expected


def test_bad_best_source_config():
    with pytest.raises(ValueError):
        BestEpochSource(source="a", optimization="largest")
    with pytest.raises(ConfigError):
        BestEpochSource(source="")


def test_config_diff_names_fields(cnn):
    import attrs

    from fusefn import models

    other = attrs.evolve(cnn, backbone=models.SmallCNN(in_channels=1, channels=(4, 16)))
    diff = config_diff(cnn, other)
    assert diff and any("channels" in d for d in diff)
    assert config_diff(cnn, cnn) == []
