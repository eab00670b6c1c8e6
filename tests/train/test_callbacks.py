"""Callbacks: TensorBoard event files, time statistics, early-stopping decisions from the history."""

import logging
import pathlib

import pytest

from fusefn.errors import ConfigError
from fusefn.train import EarlyStopping, RunContext, TensorBoard, TimeStats
from fusefn.train.callbacks import flat_results


def _res(epoch, loss):
    return {
        "epoch": epoch,
        "learning_rate": 0.1,
        "train": {"losses": {"total_loss": loss}, "metrics": {"auc": {"macro": 0.5}}},
    }


def test_tensorboard_writes_train_and_validation(tmp_path):
    run = RunContext(model_dir=tmp_path, epochs=1)
    tb = TensorBoard()
    tb.on_fit_start(run)
    tb.on_epoch_end(run, 1, {**_res(1, 0.3), "validation": {"losses": {"total_loss": 0.4}}})
    tb.on_fit_end(run)
    for mode in ("train", "validation"):
        assert list((tmp_path / "tensorboard" / mode).glob("events.out.tfevents.*"))


def test_flat_results_keeps_numbers():
    assert flat_results(_res(1, 0.3), "train") == {"losses.total_loss": 0.3, "metrics.auc.macro": 0.5}


def test_time_stats_warns_on_data_wait(caplog):
    run = RunContext(model_dir=pathlib.Path("."), epochs=4)
    run.timings = {"epoch_s": 10.0, "data_wait_s": 5.0, "history_s": [10.0]}
    with caplog.at_level(logging.INFO, logger="fusefn.train"):
        TimeStats().on_epoch_end(run, 1, {})
    text = caplog.text
    assert "about 30 s left" in text and "waiting for data" in text


@pytest.mark.parametrize(
    ("losses", "patience", "stop"),
    [([1.0, 0.9, 0.8], 1, False), ([1.0, 1.1, 1.2], 2, True), ([1.0, 1.1, 0.5, 0.6], 2, False)],
)
def test_early_stopping_decision(losses, patience, stop):
    es = EarlyStopping(source="train.losses.total_loss", optimization="min", patience=patience)
    assert es.should_stop([_res(i, v) for i, v in enumerate(losses)]) is stop


def test_early_stopping_config():
    with pytest.raises(ConfigError, match="patience"):
        EarlyStopping(patience=0)
