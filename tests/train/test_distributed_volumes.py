"""ct_organs on 2 CPU ranks (gloo): training on disjoint volumes, sharded sliding-window inference merged on rank 0.

One generated dataset (9 small CT phantoms: 4 train, 2 validation, 3 test, one test case unreadable) is
used by three launches: ``torchrun`` with 2 ranks trains the recipe and, separately, the recipe's model on
fixed patches; one process trains the same model on the same global batches (the two ranks' batches as
two accumulated mini-batches) and predicts the test cases; ``torchrun`` with 2 ranks predicts them sharded.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import polars as pl
import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import json, os, pathlib, sys
    import attrs
    import torch
    from fusefn import Rng, keys, optim, recipe, train
    from fusefn.data import PatchDataset
    from fusefn_recipes import ct_organs

    torch.set_num_threads(1)
    out, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    HP = json.loads(sys.argv[3])
    HP["channels"] = tuple(HP["channels"])
    rank = int(os.environ.get("RANK", "0"))

    def run_of():
        return ct_organs.RECIPE.make_run(out, rng=Rng(0), device="cpu", hp=HP, force=True)

    def record(params, buffers, name):
        torch.save({"params": dict(params), "buffers": dict(buffers)}, out / f"{name}_rank{rank}.pt")

    def same_batches_fit(run, tr, va, data, accumulate, model_dir):
        # the recipe's model and losses, a constant learning rate, no augmentation: one update per global batch
        _, names, _ = ct_organs.cases(run)
        state = train.fit(
            ct_organs.make_model(HP["channels"], max(names) + 1), ct_organs.losses(run, names),
            optim.adamw(lr=3e-3), data, None, model_dir=model_dir, epochs=2, device="cpu", progress=False,
            seed=0, step=train.StepSettings(accumulate=accumulate), overwrite=True)
        return state

    if mode == "train":  # under torchrun; one process group for the whole script (a group left cannot be rejoined)
        seen = []
        threaded = PatchDataset.threaded

        def spy(self, epoch=None, **kw):
            for batch in threaded(self, epoch, **kw):
                if self.shuffle:  # training patches (validation is drawn once, unshuffled)
                    ids = list(batch["data"]["sample_id"])
                    origins = batch["data"]["patch"]["origin"].tolist()
                    seen.append({"epoch": epoch, "ids": ids, "origins": origins})
                yield batch

        with train.process_group():
            PatchDataset.threaded = spy
            state = ct_organs.RECIPE.run("train", out, rng=Rng(0), device="cpu", force=True, **HP)
            PatchDataset.threaded = threaded
            record(state.params, state.buffers, "recipe")
            (out / f"patches_rank{rank}.json").write_text(json.dumps(seen))
            run = run_of()
            tr, va = recipe.build(*ct_organs.datasets(run).values())
            patches, _ = ct_organs.patch_data(run, ct_organs.cases(run)[1], tr, va)
            state = same_batches_fit(run, tr, va, patches.epochs(threads=True), 1, out / "ddp_model")
            record(state.params, state.buffers, "ddp")
    elif mode == "one":  # one process: the same global batches; then the test cases predicted alone
        run = run_of()
        tr, va = recipe.build(*ct_organs.datasets(run).values())
        names = ct_organs.cases(run)[1]
        shards = []
        for r in range(2):
            patches, _ = ct_organs.patch_data(run, names, tr, va)
            shards.append(PatchDataset(tr, patches.sampler, rng=patches.rng, batch_size=patches.batch_size, mix=2,
                                       rank=r, world_size=2))

        seen = [[], []]

        def interleaved(epoch):
            for b0, b1 in zip(shards[0].threaded(epoch, workers=1), shards[1].threaded(epoch, workers=1)):
                for r, b in ((0, b0), (1, b1)):
                    ids, origins = list(b["data"]["sample_id"]), b["data"]["patch"]["origin"].tolist()
                    seen[r].append({"epoch": epoch, "ids": ids, "origins": origins})
                yield b0
                yield b1

        state = same_batches_fit(run, tr, va, interleaved, 2, out / "one_model")
        record(state.params, state.buffers, "one")
        (out / "patches_one.json").write_text(json.dumps(seen))
        alone = attrs.evolve(run, infer_name="infer/alone/predictions.parquet")
        ct_organs.predict(alone)
    elif mode == "predict":  # under torchrun: every rank its share of the test cases
        with train.process_group():
            frame = ct_organs.predict(attrs.evolve(run_of(), infer_name="infer/sharded/predictions.parquet"))
        (out / f"frame_rank{rank}.json").write_text(json.dumps(frame["sample_id"].to_list()))
    """
)

HP = {
    "n_validation": 2,
    "n_test": 3,
    "spacing": 3.0,
    "patch": 8,
    "patches": 2,
    "channels": [4, 8],
    "epochs": 2,
    "batch_size": 2,
    "workers": 1,
}


def _launch(script, out, mode, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    args = [str(script), str(out), mode, json.dumps(HP)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    res = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]


def _load(path):
    return torch.load(path, weights_only=False)


def _masks(folder):
    import nibabel as nib

    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_ct_organs_on_two_ranks(tmp_path):
    from fusefn import Rng
    from fusefn_recipes import ct_organs
    from fusefn_recipes import ct_organs_data as ctd

    data = tmp_path / "data"
    ctd.write_example(data, 9, rng=Rng(0), size=(48.0, 48.0, 40.0))
    HP["data"] = str(data)
    run = ct_organs.RECIPE.make_run(tmp_path / "run", rng=Rng(0), device="cpu", hp={**HP, "channels": (4, 8)})
    test_ids = ct_organs.splits(run)["test"].frame["sample_id"].to_list()
    broken = test_ids[1]
    for f in (data / "dicom" / broken).iterdir():  # an unreadable series: the case fails, the others go on
        f.write_bytes(b"not a DICOM file")
    script = tmp_path / "ct_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"

    _launch(script, out, "train", nproc=2)
    _launch(script, out, "one", nproc=1)
    _launch(script, out, "predict", nproc=2)

    # training: each rank drew patches of its own volumes, every epoch
    seen = [json.loads((out / f"patches_rank{r}.json").read_text()) for r in range(2)]
    epochs = sorted({b["epoch"] for b in seen[0]})
    assert len(epochs) == HP["epochs"] and epochs == sorted({b["epoch"] for b in seen[1]})
    for epoch in epochs:
        vols = [{i.split("#")[0] for b in s if b["epoch"] == epoch for i in b["ids"]} for s in seen]
        assert vols[0] and vols[1] and not vols[0] & vols[1], (epoch, vols)
        assert sum(1 for b in seen[0] if b["epoch"] == epoch) == sum(1 for b in seen[1] if b["epoch"] == epoch)

    # ... the patches a rank drew are those its share gives in another process: reproducible from the run's key
    def patches(batches):
        return {(b["epoch"], i, tuple(o)) for b in batches for i, o in zip(b["ids"], b["origins"])}

    alone = json.loads((out / "patches_one.json").read_text())
    assert patches(seen[0]) == patches(alone[0]) and patches(seen[1]) == patches(alone[1])
    assert not patches(seen[0]) & patches(seen[1])
    # ... after which both ranks hold the same weights and batch-norm statistics (gradients averaged)
    for name in ("recipe", "ddp"):
        r0, r1 = _load(out / f"{name}_rank0.pt"), _load(out / f"{name}_rank1.pt")
        for part in ("params", "buffers"):
            for k in r0[part]:
                assert torch.equal(r0[part][k], r1[part][k]), (name, part, k)
    # the same global batch gives the same update: 2 ranks x batch 2 = 1 process accumulating the 2 batches
    ddp, one = _load(out / "ddp_rank0.pt"), _load(out / "one_rank0.pt")
    for k in one["params"]:
        torch.testing.assert_close(ddp["params"][k], one["params"][k], atol=1e-6, rtol=1e-5)

    # inference: the merged sidecar of 2 ranks equals the one-process sidecar row for row, value for value
    sharded, alone = out / "infer" / "sharded", out / "infer" / "alone"
    f2 = pl.read_parquet(sharded / "predictions.parquet")
    f1 = pl.read_parquet(alone / "predictions.parquet")
    assert f2["sample_id"].to_list() == f1["sample_id"].to_list() == [i for i in test_ids if i != broken]
    assert f2["mask_file"].str.replace("/sharded/", "/alone/").to_list() == f1["mask_file"].to_list()
    for r in range(2):  # every rank returns the merged frame
        assert json.loads((out / f"frame_rank{r}.json").read_text()) == f1["sample_id"].to_list()
    import h5py

    with h5py.File(sharded / "predictions.h5") as a, h5py.File(alone / "predictions.h5") as b:
        assert [x.decode() for x in a["_index/sample_id"][:]] == f1["sample_id"].to_list()
        for col in b:
            for name in b[col]:
                np.testing.assert_array_equal(a[col][name][()], b[col][name][()])
    # the masks on the scanners' grids, one per case, written by the rank that owned the case
    m2, m1 = _masks(sharded / "masks"), _masks(alone / "masks")
    assert sorted(m2) == sorted(m1) == sorted(f"{i}.nii.gz" for i in test_ids if i != broken)
    for name in m1:
        np.testing.assert_array_equal(m2[name], m1[name])
    # the failing case, recorded once in the merged failures
    failed = json.loads((sharded / "predictions.failed.json").read_text())
    assert [f["sample_id"] for f in failed] == [broken]
    assert failed == json.loads((alone / "predictions.failed.json").read_text())
    shutil.rmtree(out / "cache", ignore_errors=True)
