"""Checkpoints and model configs from elsewhere never run code: weights-only loading, trusted configs only."""

import json
import os
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusefn import Rng, metrics, models, optim, to_config
from fusefn.cli import main
from fusefn.errors import ConfigError
from fusefn.train import (
    CheckpointError,
    LoaderSettings,
    TrainState,
    epoch_batches,
    fit,
    init_state,
    load_checkpoint,
    load_model,
    make_train_step,
    save_checkpoint,
    train_epoch,
)
from fusefn.train.checkpoint import FORMAT, convert_checkpoint

MODEL = {"d": 64, "c": 2}


class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``: what a crafted checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path, name="evil.pt", where="history"):
    """A file that looks like an old fusefn checkpoint, its state carrying the payload."""
    marker = tmp_path / f"ran-{name}"
    state = {"params": {"w": torch.zeros(2)}, "step": 1, "epoch": 1, "seed": 0, "history": ()}
    state[where] = _Payload(marker)
    path = tmp_path / name
    torch.save({"format": "fusefn-checkpoint/1", "state": state, "model_config": None}, path)
    return path, marker


def _model_dir_with(tmp_path, payload_path):
    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "last.pt").write_bytes(payload_path.read_bytes())
    return tmp_path / "run"


def test_crafted_checkpoint_is_refused_by_load_checkpoint(tmp_path):
    path, marker = _crafted(tmp_path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(e.value)
    assert str(path) in msg and "posix.system" in msg and "convert_checkpoint" in msg and "trust=True" in msg


def test_crafted_checkpoint_is_refused_by_fusefn_inspect(tmp_path):
    path, marker = _crafted(tmp_path)
    for target in (path, _model_dir_with(tmp_path, path)):
        r = CliRunner().invoke(main, ["inspect", str(target)])
        assert r.exit_code == 2, r.output
        assert r.output.strip().splitlines()[-1].startswith("error: refusing to load checkpoint")
        assert "Traceback" not in r.output
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_on_resume_and_by_load_model(toy, data, tmp_path):
    path, marker = _crafted(tmp_path, where="partial")
    run = _model_dir_with(tmp_path, path)
    with pytest.raises(CheckpointError, match="refusing to load checkpoint"):
        fit(
            MODEL,
            {"ce": toy["ce"]},
            optim.sgd(lr=0.1),
            data[0],
            model_dir=run,
            epochs=1,
            resume="last",
            device="cpu",
            progress=False,
            apply=toy["apply"],
            init=toy["init"],
            loader=LoaderSettings(batch_size=16),
        )
    with pytest.raises(CheckpointError, match="refusing to load checkpoint"):
        load_model(run, "last")
    assert not marker.exists()


def test_crafted_new_format_file_cannot_smuggle_objects(tmp_path):
    # the tensors entry is unpickled too: the weights-only loader refuses an object there as well
    marker = tmp_path / "ran"
    path = tmp_path / "evil2.pt"
    torch.save({"format": FORMAT, "document": "{}", "tensors": {"w": _Payload(marker)}}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "cfg",
    [
        {"__type__": "os:system", "command": "touch {marker}"},
        {"__type__": "subprocess:run", "args": {"__tuple__": ["touch", "{marker}"]}},
        {"__type__": "builtins:exec", "source": "open('{marker}', 'w')"},
        {"__type__": "fusefn.core:OnKeys", "kernel": {"__ref__": "builtins:exec"}, "keys": {"__tuple__": ["a"]}},
    ],
    ids=["os.system", "subprocess.run", "builtins.exec", "ref-exec"],
)
def test_crafted_model_json_is_refused(tmp_path, cfg):
    marker = tmp_path / "ran"
    p, b = models.init(_mlp(), rng=Rng(0))
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last.pt", TrainState(params=p, buffers=b))  # no model config inside
    (run / "model.json").write_text(json.dumps(cfg).replace("{marker}", str(marker)))
    with pytest.raises(ConfigError, match=r"model\.json.*is not a fusefn component.*allowed="):
        load_model(run, "last")
    assert not marker.exists()


def test_crafted_model_config_inside_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(path, TrainState(params={"w": torch.zeros(1)}), model=_mlp())
    raw = torch.load(path, weights_only=True)
    doc = json.loads(raw["document"])
    doc["model_config"] = {"__type__": "os:system", "command": f"touch {marker}"}
    torch.save({**raw, "document": json.dumps(doc)}, path)
    with pytest.raises(ConfigError, match="os:system"):
        load_model(tmp_path / "run", "last")
    assert not marker.exists()


# --------------------------------------------------------------- what fusefn writes loads weights-only


def _mlp():
    return models.Model(
        inputs="data.x",
        backbone=models.MLP(in_channels=3, layers=(4,)),
        heads=(models.ClassifierHead(name="cls", num_classes=2),),
    )


def _metrics():
    return {
        "accuracy": metrics.Accuracy(pred="model.head_0.probs", target="data.gt.label"),
        "auc": metrics.AUCROC(pred="model.head_0.probs", target="data.gt.label"),
    }


def test_every_checkpoint_fit_writes_loads_weights_only(toy, data, tmp_path):
    fit(
        MODEL,
        {"ce": toy["ce"]},
        optim.adamw(lr=1e-2),
        data[0],
        data[1],
        model_dir=tmp_path,
        epochs=2,
        metrics=_metrics(),
        validate_first=True,
        device="cpu",
        progress=False,
        apply=toy["apply"],
        init=toy["init"],
        loader=LoaderSettings(batch_size=16),
    )
    files = sorted((tmp_path / "checkpoints").glob("*.pt"))
    assert len(files) >= 2
    for f in files:
        raw = torch.load(f, weights_only=True)
        assert raw["format"] == FORMAT and isinstance(json.loads(raw["document"]), dict)
        assert load_checkpoint(f)["state"].epoch == 2 or "best" in f.name


def test_interrupted_epoch_with_numpy_metric_states_round_trips_exactly(toy, data, tmp_path):
    """The mid-epoch state (NumPy metric states, loss sums) loads weights-only and finishes the epoch bit for bit."""
    opt = optim.adamw(lr=1e-2)
    step = make_train_step(MODEL, {"ce": toy["ce"]}, opt, apply=toy["apply"])

    def batches(skip=0):
        return epoch_batches(data[0], 1, rng=Rng(3), batch_size=16, skip=skip)[0]

    start = init_state(MODEL, opt, rng=Rng(3), init=toy["init"])
    whole, whole_res = train_epoch(step, start, batches(), metrics=_metrics())
    calls = []
    part, _ = train_epoch(
        step, init_state(MODEL, opt, rng=Rng(3), init=toy["init"]), batches(), metrics=_metrics(),
        stop=lambda: calls.append(1) or len(calls) == 3,
    )  # fmt: skip
    assert any(isinstance(x, np.ndarray) for x in part.partial["metrics"]["auc"].values())
    path = tmp_path / "last.pt"
    save_checkpoint(path, part, extra={"note": "mid-epoch", "ids": np.array(["s1", "s2"]), 3: (1, {2})})
    torch.load(path, weights_only=True)  # the plain loader reads it: nothing pickled
    loaded = load_checkpoint(path)
    back = loaded["state"]
    assert loaded["extra"]["ids"].tolist() == ["s1", "s2"] and loaded["extra"][3] == (1, {2})
    for name, st in part.partial["metrics"].items():
        got = back.partial["metrics"][name]
        for k, arr in st.items() if isinstance(st, dict) else [("", st)]:
            other = got[k] if isinstance(st, dict) else got
            assert other.dtype == arr.dtype and other.tobytes() == arr.tobytes()
    assert back.partial["loss_sums"] == part.partial["loss_sums"]
    done, res = train_epoch(step, back, batches(back.batch_in_epoch), metrics=_metrics())
    assert res == whole_res and done.step == whole.step
    assert all(torch.equal(done.params[k], whole.params[k]) for k in whole.params)
    assert all(torch.equal(done.opt_state["exp_avg"][k], whole.opt_state["exp_avg"][k]) for k in whole.params)


def test_state_values_keep_their_types_and_bits(tmp_path):
    nan_payload = np.frombuffer(np.uint64(0x7FF8_0000_0000_0001).tobytes(), np.float64)[0]
    best = {"validation.metrics.auc": {"value": float("nan"), "epoch": 2}, "loss": {"value": -0.0, "epoch": 1}}
    history = ({"epoch": 0, "validation": {"metrics": {"auc": float("inf")}}}, {"epoch": 1, "__odd__": [1, 2.5]})
    partial = {
        "scalars": (np.float32(0.1), np.int64(7), np.bool_(True), nan_payload),
        "grid": np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2],  # big-endian, not contiguous
        "empty": np.zeros((0, 3), np.float16),
        "objects": np.array(["a", None, 3], dtype=object),
        "keys": {1: "int", (2, 3): "tuple", 2.5: "float"},
        "shape": torch.Size([2, 3]),
        "dtype": torch.bfloat16,
        "bytes": b"\x00\xff",
        "complex": 1 + 2j,
    }
    w = torch.randn(3, 2)
    state = TrainState(
        params={"w": w},
        opt_state={"count": torch.tensor(5), "alias": w},
        rng=Rng(2**62 + 3),
        scheduler_state={"best": -float("inf"), "num_bad": 2, "scale": 0.5},
        best=best,
        history=history,
        loss_scale={"scale": torch.tensor(65536.0), "good_steps": 3},
        partial=partial,
    )
    save_checkpoint(tmp_path / "s.pt", state)
    back = load_checkpoint(tmp_path / "s.pt")["state"]
    assert back.rng == Rng(2**62 + 3) and back.scheduler_state == state.scheduler_state
    assert type(back.history) is tuple and back.history[1] == history[1]
    assert np.isinf(back.history[0]["validation"]["metrics"]["auc"])
    assert np.isnan(back.best["validation.metrics.auc"]["value"])
    assert str(back.best["loss"]["value"]) == "-0.0"
    assert back.opt_state["alias"] is back.params["w"]  # shared tensors stay shared
    p = back.partial
    assert [type(x) for x in p["scalars"]] == [np.float32, np.int64, np.bool_, np.float64]
    assert p["scalars"][3].tobytes() == nan_payload.tobytes()
    assert p["grid"].dtype == np.dtype(">i4") and p["grid"].tolist() == partial["grid"].tolist()
    assert p["grid"].flags.writeable
    assert p["empty"].shape == (0, 3) and p["empty"].dtype == np.float16
    assert p["objects"].dtype == object and p["objects"].tolist() == ["a", None, 3]
    assert p["keys"] == partial["keys"]
    assert (p["shape"], p["dtype"], p["bytes"], p["complex"]) == (
        torch.Size([2, 3]),
        torch.bfloat16,
        b"\x00\xff",
        1 + 2j,
    )


def test_a_value_only_pickle_could_store_is_refused_at_save(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, TrainState(params={"w": torch.zeros(1)}))
    before = path.read_bytes()

    class MetricState:
        pass

    with pytest.raises(CheckpointError, match=r"MetricState at state\.partial\.metrics\.mine"):
        save_checkpoint(path, TrainState(params={"w": torch.zeros(1)}, partial={"metrics": {"mine": MetricState()}}))
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------ the previous format


def _old_format(path, state_tree, **rest):
    """A checkpoint as fusefn-checkpoint/1 wrote it: the whole payload pickled."""
    torch.save({"format": "fusefn-checkpoint/1", "state": state_tree, "extra": {}, **rest}, path)


def test_previous_format_is_read_when_it_holds_plain_values(tmp_path):
    cfg = to_config(_mlp())
    tree = {
        "params": {"w": torch.ones(2)},
        "step": 3,
        "epoch": 1,
        "seed": 9,
        "best": {"a": {"value": 0.5, "epoch": 1}},
        "history": ({"epoch": 1},),
    }
    _old_format(tmp_path / "old.pt", tree, model_config=cfg)
    got = load_checkpoint(tmp_path / "old.pt")
    assert got["state"].rng == Rng(9) and got["state"].history == ({"epoch": 1},) and got["model_config"] == cfg


def test_previous_format_with_numpy_state_is_refused_then_converted_when_trusted(tmp_path):
    tree = {"params": {"w": torch.ones(2)}, "epoch": 1, "seed": 1, "partial": {"metrics": {"m": np.arange(3.0)}}}
    path = tmp_path / "old.pt"
    _old_format(path, tree, model_config=to_config(_mlp()))
    with pytest.raises(CheckpointError, match=r"numpy.*convert_checkpoint"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True)["state"].partial["metrics"]["m"].tolist() == [0.0, 1.0, 2.0]
    out = convert_checkpoint(path, tmp_path / "new.pt")
    torch.load(out, weights_only=True)
    got = load_checkpoint(out)
    assert got["state"].partial["metrics"]["m"].tolist() == [0.0, 1.0, 2.0] and got["state"].rng == Rng(1)
    assert got["model_config"] == to_config(_mlp())


# ---------------------------------------------------------------------- user components, allowed explicitly


class TinyNet(torch.nn.Module):
    def __init__(self, width: int = 2):
        super().__init__()
        self.lin = torch.nn.Linear(3, width)

    def forward(self, x):
        return self.lin(x)


def test_a_model_with_a_user_module_loads_when_allowed(tmp_path):
    model = models.Wrapper(module=TinyNet, inputs="data.x", outputs="model.y")
    p, b = models.init(model, rng=Rng(0))
    save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", TrainState(params=p, buffers=b), model=model)
    with pytest.raises(ConfigError, match=rf"{__name__}:TinyNet.*allowed="):
        load_model(tmp_path / "run", "last")
    assert load_model(tmp_path / "run", "last", allowed=[TinyNet])[0] == model
    assert load_model(tmp_path / "run", "last", allowed=[TinyNet.__module__])[0] == model
    assert pathlib.Path(tmp_path / "run" / "checkpoints" / "last.pt").is_file()
