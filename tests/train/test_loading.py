"""load_model / load_ensemble: the one way back from a model directory to a model record and its tensors."""

import json

import pytest
import torch

from fusefn import Rng, nd, to_config
from fusefn.errors import ConfigError
from fusefn.models import MLP, ClassifierHead, Ensemble, Model, apply, init
from fusefn.train import CheckpointError, TrainState, load_ensemble, load_model, save_checkpoint


def _mlp():
    return Model(
        inputs="data.x", backbone=MLP(in_channels=3, layers=(4,)), heads=(ClassifierHead(name="cls", num_classes=2),)
    )


def _save_runs(tmp_path, n=2):
    m = _mlp()
    runs = []
    for i in range(n):
        p, b = init(m, rng=Rng(i))
        save_checkpoint(tmp_path / f"run{i}" / "checkpoints" / "last.pt", TrainState(params=p, buffers=b), model=m)
        runs.append((m, p, b))
    return runs


def test_load_model_rebuilds_the_record_and_its_state(tmp_path):
    (m, p, _), _ = _save_runs(tmp_path)
    model, state = load_model(tmp_path / "run0", "last")
    assert model == m
    assert all(torch.equal(state.params[k], t) for k, t in p.items())


def test_load_model_falls_back_to_model_json(tmp_path):
    m = _mlp()
    p, b = init(m, rng=Rng(0))
    save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", TrainState(params=p, buffers=b))
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path / "run", "last")
    (tmp_path / "run" / "model.json").write_text(json.dumps(to_config(m)))
    assert load_model(tmp_path / "run", "last")[0] == m


def test_ensemble_from_training_checkpoint_dirs(tmp_path):
    runs = _save_runs(tmp_path)
    ens, state = load_ensemble([tmp_path / "run0", tmp_path / "run1"], "last")
    ref, rp, rb = Ensemble.stack(runs)
    assert ens == ref
    x = {"data": {"x": torch.rand(3, 3)}}
    assert torch.equal(
        nd.get(apply(ens, state.params, state.buffers, x)[0], "model.cls.probs"),
        nd.get(apply(ref, rp, rb, x)[0], "model.cls.probs"),
    )


def test_load_ensemble_needs_directories(tmp_path):
    with pytest.raises(ConfigError, match="model_dirs"):
        load_ensemble([])
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        load_ensemble([tmp_path / "missing"])


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)


def test_load_ensemble_passes_allowed_on(tmp_path):
    from fusefn.models import Wrapper

    m = Wrapper(module=Net, inputs="data.x", outputs="model.cls.logits", activation="softmax")
    for i in range(2):
        p, b = init(m, rng=Rng(i))
        save_checkpoint(tmp_path / f"run{i}" / "checkpoints" / "last.pt", TrainState(params=p, buffers=b), model=m)
    dirs = [tmp_path / "run0", tmp_path / "run1"]
    with pytest.raises(ConfigError, match=r"run0/checkpoints/last\.pt.*Net.*allowed="):
        load_ensemble(dirs, "last")
    # allowed, both members rebuild; the ensemble then wants heads, which a bare wrapped module lacks
    with pytest.raises(ConfigError, match="Ensemble.heads"):
        load_ensemble(dirs, "last", allowed=[Net])
    assert load_model(dirs[1], "last", allowed=[Net])[0] == m
