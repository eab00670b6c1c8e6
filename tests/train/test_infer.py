"""infer: rebuild from config, Parquet columns, HDF5 for big arrays, ensembles, missing checkpoints."""

import h5py
import numpy as np
import polars as pl
import pytest
import torch

from fusefn import models, nd, optim
from fusefn.errors import ConfigError
from fusefn.train import CheckpointError, LoaderSettings, fit, infer, load_model


def _train(cnn, data, toy, model_dir, seed=0):
    return fit(
        cnn,
        {"ce": toy["ce"]},
        optim.adamw(lr=1e-2),
        data[0],
        data[1],
        model_dir=model_dir,
        epochs=1,
        loader=LoaderSettings(batch_size=16),
        seed=seed,
        device="cpu",
        progress=False,
    )


def test_infer_writes_requested_columns(cnn, data, toy, tmp_path):
    state = _train(cnn, data, toy, tmp_path / "m")
    model, loaded = load_model(tmp_path / "m", "best")
    assert model == cnn and loaded.epoch == 1
    out = tmp_path / "infer" / "val.parquet"
    frame = infer(
        tmp_path / "m",
        data[1],
        output_file=out,
        output_columns={"probs": "model.head_0.probs", "label": "data.gt.label"},
        device="cpu",
    )
    back = pl.read_parquet(out)
    assert back.columns == ["sample_id", "probs", "label"] and back.height == 48
    assert back["sample_id"].to_list()[:3] == ["s0", "s1", "s2"]
    probs = np.asarray(back["probs"].to_list())
    assert probs.shape == (48, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert frame.equals(back)
    # the same numbers as the model applied by hand to the restored state
    b = torch.utils.data.default_collate([data[1][i] for i in range(4)])
    ref, _ = models.apply(cnn, state.params, state.buffers, b, train=False)
    np.testing.assert_allclose(probs[:4], nd.get(ref, "model.head_0.probs").numpy(), atol=1e-6)


def test_ensemble_means_probabilities_and_votes(cnn, data, toy, tmp_path):
    _train(cnn, data, toy, tmp_path / "a", seed=0)
    _train(cnn, data, toy, tmp_path / "b", seed=1)
    cols = {"probs": "model.head_0.probs"}
    fa = infer(tmp_path / "a", data[1], output_file=tmp_path / "a.parquet", output_columns=cols, device="cpu")
    fb = infer(tmp_path / "b", data[1], output_file=tmp_path / "b.parquet", output_columns=cols, device="cpu")
    fe = infer(
        [tmp_path / "a", tmp_path / "b"], data[1], output_file=tmp_path / "e.parquet", output_columns=cols, device="cpu"
    )
    pa, pb, pe = (np.asarray(f["probs"].to_list()) for f in (fa, fb, fe))
    np.testing.assert_allclose(pe, (pa + pb) / 2, atol=1e-6)
    assert "probs_vote" in fe.columns and set(fe["probs_vote"].to_list()) <= {0, 1}


def test_large_arrays_go_to_hdf5(cnn, data, toy, tmp_path):
    _train(cnn, data, toy, tmp_path / "m")
    frame = infer(
        tmp_path / "m",
        data[1],
        output_file=tmp_path / "out.parquet",
        output_columns={"features": "model.backbone_features", "probs": "model.head_0.probs"},
        device="cpu",
    )
    assert "features" not in frame.columns and "probs" in frame.columns
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["features"]["s0"].shape == (8, 4, 4)


def test_missing_checkpoint_and_bad_columns(data, tmp_path):
    with pytest.raises(CheckpointError, match="train first"):
        infer(tmp_path / "none", data[1], output_file=tmp_path / "x.parquet", checkpoint="last", device="cpu")
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        infer(tmp_path / "none", data[1], output_file=tmp_path / "x.parquet", device="cpu")
    with pytest.raises(ConfigError, match="empty"):
        infer(tmp_path, data[1], output_file=tmp_path / "x.parquet", output_columns=())
    assert not (tmp_path / "x.parquet").exists()


def test_failed_samples_are_reported_and_the_rest_written(cnn, data, toy, tmp_path):
    from fusefn.errors import SampleError

    class Broken(type(data[1])):
        def __getitem__(self, i):
            if i in (3, 7):
                raise SampleError("unreadable", sample_id=f"s{i}", op="Read")
            return super().__getitem__(i)

    _train(cnn, data, toy, tmp_path / "m")
    out = tmp_path / "out.parquet"
    frame = infer(tmp_path / "m", Broken(48, seed=1), output_file=out, batch_size=8, device="cpu")
    assert frame.height == 46 and "s3" not in frame["sample_id"].to_list()
    import json

    failed = json.loads((tmp_path / "out.failed.json").read_text())
    assert [f["sample_id"] for f in failed] == ["s3", "s7"] and "unreadable" in failed[0]["error"]


def test_shards_merge_into_the_rows_of_one_process(cnn, data, toy, tmp_path):
    """What ``infer(shard=True)`` does on 2 ranks, here in one process: each rank's share (positions r, r + 2, …)
    predicted on its own, the parts merged back in the dataset's order, failures included, equal the whole."""
    from fusefn.errors import SampleError
    from fusefn.train.infer import _merge, _run_all

    class Broken(type(data[1])):
        def __getitem__(self, i):
            if i in (3, 8):
                raise SampleError("unreadable", sample_id=f"s{i}", op="Read")
            return super().__getitem__(i)

    _train(cnn, data, toy, tmp_path / "m")
    ds, cols, cpu = Broken(21, seed=1), {"probs": "model.head_0.probs"}, torch.device("cpu")
    whole = _merge([_run_all([tmp_path / "m"], ds, cols, "best", 4, None, 0, cpu, ())], replicated=True)
    parts = [_run_all([tmp_path / "m"], ds, cols, "best", 4, None, 0, cpu, (), list(range(r, 21, 2))) for r in (0, 1)]
    assert [i for p in parts for i in p[0]] != whole[0]  # the shares interleave ...
    ids, merged, failed = _merge(parts, replicated=False)
    assert ids == whole[0] and len(ids) == 19  # ... and merge back in order
    assert [f["sample_id"] for f in failed] == ["s3", "s8"] and failed == whole[2]
    # other batch compositions: equal to float rounding (volume mode, one case at a time, is bit-equal)
    np.testing.assert_allclose(np.stack(merged["probs"]), np.stack(whole[1]["probs"]), rtol=0, atol=1e-6)
