"""Faults of a run (issue 19, item 5 and infer's part of item 4).

Invalid labels name the samples, key, loss and step; sample ids that become names stay
inside their folder; a failed validation keeps the epoch's training; infer writes its output
set whole or not at all, also on a full disk.
"""

import contextlib
import json
import os
import pathlib
import subprocess
import uuid

import h5py
import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from fusefn import Rng, losses, metrics, optim
from fusefn.data import visualize
from fusefn.losses import InvalidTargetError
from fusefn.train import LoaderSettings, fit, infer, init_state, load_checkpoint, make_train_step, train_epoch
from fusefn.train.loop import ValidationError

CE = losses.CrossEntropy(pred="model.head_0.logits", target="data.gt.label")
MODEL = {"d": 64, "c": 2}


class Relabelled(torch.utils.data.Dataset):
    """``toy["Digits"]`` with float labels (as a table without ToLabel gives), ``bad`` ones at given rows."""

    def __init__(self, base, bad: dict):
        self.base, self.bad = base, bad

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        s = self.base[i]
        label = float(self.bad.get(i, s["data"]["gt"]["label"]))
        return {"data": {**s["data"], "gt": {"label": torch.tensor(label)}}}


class Renamed(torch.utils.data.Dataset):
    """``base`` with the sample ids ``ids``."""

    def __init__(self, base, ids):
        self.base, self.ids = base, list(ids)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        s = self.base[i]
        return {"data": {**s["data"], "sample_id": self.ids[i]}}


def _fit(toy, train, val, tmp, epochs=1, loss=CE, **kw):
    return fit(
        MODEL,
        {"ce": loss},
        optim.adamw(lr=1e-2),
        train,
        val,
        model_dir=tmp,
        epochs=epochs,
        loader=LoaderSettings(batch_size=16, shuffle=False),
        device="cpu",
        progress=False,
        apply=toy["apply"],
        init=toy["init"],
        **kw,
    )


# ------------------------------------------------------------------ item 5: invalid labels


@pytest.mark.parametrize("bad", [float("nan"), -3.0, 7.0, 0.5])
def test_an_invalid_label_names_the_sample_key_loss_and_train_step(toy, tmp_path, bad):
    # before: NaN -> "IndexError: Target -9223372036854775808 is out of bounds", -3 and 7 the same
    # naming no sample, and 0.5 silently trained as class 0
    train = Relabelled(toy["Digits"](32), {5: bad})
    with pytest.raises(InvalidTargetError) as info:
        _fit(toy, train, None, tmp_path)
    msg = str(info.value)
    assert "'s5'" in msg and "'data.gt.label'" in msg and "loss 'ce'" in msg and "train step" in msg, msg
    assert "[0, 2)" in msg and "last good checkpoint: none" in msg
    assert info.value.sample_id == ["s5"] and info.value.key == "data.gt.label"


def test_an_invalid_label_in_validation_names_the_eval_step_and_keeps_the_epoch(toy, tmp_path):
    val = Relabelled(toy["Digits"](16, seed=1), {2: float("nan"), 9: 5.0})
    with pytest.raises(ValidationError) as info:
        _fit(toy, toy["Digits"](32), val, tmp_path)
    msg = str(info.value)
    assert "epoch 1 validation failed" in msg and "eval step" in msg and "['s2', 's9']" in msg, msg
    assert isinstance(info.value.__cause__, InvalidTargetError)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_a_generic_loss_failing_on_a_label_is_explained(toy, cnn):
    # a custom loss indexes with the label itself: the step's failure is explained after the fact
    opt = optim.sgd(lr=0.1)
    generic = losses.Loss(fn=F.cross_entropy, pred="model.head_0.logits", target="data.gt.label")
    step = make_train_step(cnn, {"gen": generic}, opt)
    batch = torch.utils.data.default_collate([toy["Digits"](8)[i] for i in range(8)])
    batch["data"]["gt"]["label"] = batch["data"]["gt"]["label"].clone()
    batch["data"]["gt"]["label"][3] = 9  # class 9 of 2
    with pytest.raises(InvalidTargetError, match=r"train step 1, loss 'gen'.*'s3': 9") as info:
        step(init_state(cnn, opt, rng=Rng(0)), batch)
    assert isinstance(info.value.__cause__, IndexError)


@pytest.mark.slow
def test_compiled_step_poisons_invalid_labels_without_recompiling(toy, cnn):
    opt = optim.adamw(lr=1e-3)
    step = make_train_step(cnn, {"ce": CE}, opt, compile=True)
    data = Relabelled(toy["Digits"](24), {19: float("nan")})
    batches = [torch.utils.data.default_collate([data[i] for i in range(j, j + 8)]) for j in (0, 8, 16)]
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        state, _ = train_epoch(step, init_state(cnn, opt, rng=Rng(0)), batches[:2])
        with pytest.raises(InvalidTargetError, match=r"'s19'.*train step 3 \(epoch 2, batch 0\)"):
            train_epoch(step, state, batches[2:])


# ------------------------------------------------------------------ item 5: non-finite validation


def _nan_input(toy, n, at, seed=1):
    return toy["Digits"](n, seed=seed, nan_at=at)


@pytest.mark.parametrize("with_metrics", [True, False])
def test_non_finite_validation_keeps_the_epochs_training(toy, tmp_path, with_metrics):
    # before: the metric's SampleError (or a NaN loss) ended fit before the epoch's checkpoint was written
    kw = {"metrics": {"acc": metrics.Accuracy(pred="model.head_0.probs", target="data.gt.label")}}
    kw = kw if with_metrics else {}
    _fit(toy, toy["Digits"](32), toy["Digits"](16, seed=1), tmp_path, epochs=1, **kw)
    with pytest.raises(ValidationError, match=r"epoch 2 validation failed: .*'s3'.*last\.pt") as info:
        _fit(toy, toy["Digits"](32), _nan_input(toy, 16, 3), tmp_path, epochs=2, resume="last", **kw)
    assert "ce = nan, total_loss = nan in the eval step (batch 0)" in str(info.value)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]
    assert state.epoch == 2 and [h["epoch"] for h in state.history] == [1, 2]
    assert "train" in state.history[-1] and "validation_error" in state.history[-1]
    # fixed data: the run goes on after the saved epoch
    done = _fit(toy, toy["Digits"](32), toy["Digits"](16, seed=1), tmp_path, epochs=3, resume="last", **kw)
    assert done.epoch == 3 and "validation" in done.history[-1]


def test_undefined_validation_metrics_stay_nan_with_a_warning(toy, tmp_path, caplog):
    # an AUC over one class is undefined, not a fault: recorded as NaN, the run goes on
    one_class = Renamed(toy["Digits"](48, seed=1), [f"v{i}" for i in range(48)])
    keep = [i for i in range(48) if int(one_class[i]["data"]["gt"]["label"]) == 1][:8]
    val = torch.utils.data.Subset(one_class, keep)
    auc = {"auc": metrics.AUCROC(pred="model.head_0.probs", target="data.gt.label")}
    with pytest.warns(Warning):
        state = _fit(toy, toy["Digits"](32), val, tmp_path, validation_metrics=auc)
    assert state.epoch == 1 and np.isnan(state.history[-1]["validation"]["metrics"]["auc"])
    assert "validation values not finite (kept as NaN): metrics.auc" in caplog.text


# ------------------------------------------------------------------ item 5: sample ids as names

ODD_IDS = ["a/b", ".", "..", "", "../../escape", "x" * 300, "ü %2F", "dup", "dup"]


def _train_cnn(cnn, data, toy, model_dir):
    fit(
        cnn,
        {"ce": toy["ce"]},
        optim.adamw(lr=1e-2),
        data[0],
        None,
        model_dir=model_dir,
        epochs=1,
        loader=LoaderSettings(batch_size=16),
        device="cpu",
        progress=False,
    )


def _files(folder: pathlib.Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_odd_sample_ids_are_encoded_in_the_h5_sidecar(cnn, data, toy, tmp_path):
    # before: h5py raised on '.' (and made groups of 'a/b') at the very end, and the whole result was lost
    _train_cnn(cnn, data, toy, tmp_path / "m")
    ds = Renamed(data[1], ODD_IDS)
    out = tmp_path / "out" / "pred.parquet"
    cols = {"features": "model.backbone_features", "probs": "model.head_0.probs"}
    frame = infer(tmp_path / "m", ds, output_file=out, output_columns=cols, device="cpu", batch_size=4)
    assert frame["sample_id"].to_list() == ODD_IDS
    assert _files(tmp_path / "out") == {"pred.parquet", "pred.h5"}
    with h5py.File(tmp_path / "out" / "pred.h5") as f:
        names = [n.decode() for n in f["_index/name"][:]]
        assert [s.decode() for s in f["_index/sample_id"][:]] == ODD_IDS
        assert len(set(names)) == len(ODD_IDS) and all("/" not in n and n not in (".", "..") for n in names)
        assert names[0] == "a%2Fb" and names[1] == "%2E" and names[2] == "%2E." and names[3] == "%"
        for sid, name in zip(ODD_IDS, names):
            assert f["features"][name].attrs["sample_id"] == sid and f["features"][name].shape == (8, 4, 4)
        assert sorted(f["features"]) == sorted(names)


@pytest.mark.slow
def test_show_samples_names_files_by_encoded_id_and_keeps_the_mapping(tmp_path):
    samples = [
        {"data": {"sample_id": sid, "input": {"img": np.random.default_rng(i).random((1, 8, 8))}}}
        for i, sid in enumerate(ODD_IDS)
    ]
    out = tmp_path / "figs"
    written = visualize.show_samples(samples, out, mask_key=None, label_key=None)
    assert all(p.parent == out and p.is_file() for p in written) and len(written) == len(ODD_IDS)
    index = json.loads((out / "index.json").read_text())
    assert list(index.values()) == ODD_IDS and sorted(index) == sorted(p.name for p in written)
    assert _files(tmp_path) == {"figs", *(f"figs/{n}" for n in index), "figs/index.json", "figs/.fusefn-set"}
    assert visualize.sample_path(out, "../../x").parent == out
    assert visualize.show_samples(samples[:1], out, mask_key=None, label_key=None)[0].name == "a%2Fb.png"
    assert sorted(p.name for p in out.iterdir()) == [".fusefn-set", "a%2Fb.png", "index.json"]


# ------------------------------------------------------------------ item 4: infer's output set


def _infer(model_dir, ds, out, **kw):
    kw.setdefault("output_columns", {"features": "model.backbone_features", "probs": "model.head_0.probs"})
    return infer(model_dir, ds, output_file=out, device="cpu", batch_size=16, **kw)


def _snapshot(folder: pathlib.Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_set_without_sidecar_removes_the_previous_one_and_strays_are_swept(cnn, data, toy, tmp_path):
    _train_cnn(cnn, data, toy, tmp_path / "m")
    out = tmp_path / "out" / "pred.parquet"
    _infer(tmp_path / "m", data[1], out)
    assert _files(out.parent) == {"pred.parquet", "pred.h5"}
    stray = out.parent / ".pred.h5.k1ll3d.tmp"  # what a run killed while writing leaves
    stray.write_bytes(b"half")
    # before: the previous run's pred.h5 stayed beside the new pred.parquet (a mixed set), and so did the stray
    _infer(tmp_path / "m", data[1], out, output_columns={"probs": "model.head_0.probs"})
    assert _files(out.parent) == {"pred.parquet"}


def test_a_failing_write_keeps_the_previous_set_and_names_the_path(cnn, data, toy, tmp_path, monkeypatch):
    _train_cnn(cnn, data, toy, tmp_path / "m")
    out = tmp_path / "out" / "pred.parquet"
    _infer(tmp_path / "m", data[1], out)
    before = _snapshot(out.parent)
    real = pathlib.Path.write_bytes

    def full(self, payload):
        if self.name.startswith(".pred.h5."):
            raise OSError(28, "No space left on device")
        return real(self, payload)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        _infer(tmp_path / "m", Renamed(data[1], [f"n{i}" for i in range(48)]), out)
    assert info.value.filename == str(out.parent / "pred.h5")
    assert _snapshot(out.parent) == before  # no new parquet beside the old sidecar, no temporary file


def test_an_array_the_sidecar_cannot_hold_is_recorded_not_fatal(cnn, data, toy, tmp_path, monkeypatch):
    _train_cnn(cnn, data, toy, tmp_path / "m")
    real = h5py.Group.create_dataset

    def picky(self, name, *a, **kw):
        if name == "s3":
            raise TypeError("no conversion path for dtype")
        return real(self, name, *a, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", picky)
    out = tmp_path / "pred.parquet"
    frame = _infer(tmp_path / "m", data[1], out)
    assert frame.height == 48 and pl.read_parquet(out).height == 48
    failed = json.loads((tmp_path / "pred.failed.json").read_text())
    assert failed == [
        {"sample_id": "s3", "column": "features", "error": "cannot store in the .h5 file: no conversion path for dtype"}
    ]


@contextlib.contextmanager
def _tmpfs(path: pathlib.Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_infer_on_a_full_disk_keeps_the_previous_set(cnn, data, toy, tmp_path):
    _train_cnn(cnn, data, toy, tmp_path / "m")
    with _tmpfs(tmp_path / f"disk-{uuid.uuid4().hex[:6]}", "4m") as disk:
        out = disk / "pred.parquet"
        _infer(tmp_path / "m", data[1], out)
        before = _snapshot(disk)
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 8192))
        more = Renamed(torch.utils.data.ConcatDataset([data[1]] * 4), [f"n{i}" for i in range(192)])
        with pytest.raises(OSError) as info:
            _infer(tmp_path / "m", more, out)
        assert info.value.errno == 28 and str(disk) in str(info.value), info.value
        (disk / "filler").unlink()
        assert _snapshot(disk) == before  # the previous set, whole; no temporary file
        _infer(tmp_path / "m", more, out)  # with room again, the new set replaces it
        assert pl.read_parquet(out).height == 192 and _files(disk) == {"pred.parquet", "pred.h5"}
