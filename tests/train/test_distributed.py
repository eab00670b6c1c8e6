"""DDP on CPU (gloo): 2 processes train like 1 process on the same global batch."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.nn.functional as F
    from fusefn import metrics, nd, optim, train

    torch.set_num_threads(1)
    model_dir, batch_size, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def init(model, *, rng):
        g = rng.generator()
        return {"w": torch.randn(64, 2, generator=g) * 0.1, "b": torch.zeros(2)}, {}

    def apply(model, params, buffers, batch, train=False, rng=None):
        logits = nd.get(batch, "data.input.img").flatten(1) @ params["w"] + params["b"]
        return nd.assoc_many(batch, {"model.head_0.logits": logits, "model.head_0.probs": logits.softmax(-1)}), buffers

    def ce(batch):
        return F.cross_entropy(nd.get(batch, "model.head_0.logits"), nd.get(batch, "data.gt.label"))

    class Data(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 1, 8, 8, generator=g)
            self.y = (self.x.mean((1, 2, 3)) > 0).long()
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            return {"data": {"sample_id": f"s{i}", "input": {"img": self.x[i]}, "gt": {"label": self.y[i]}}}

    with train.process_group():
        state = train.fit({"d": 64}, {"ce": ce}, optim.sgd(lr=0.5, momentum=0.9), Data(64, 0), Data(32, 1),
                          model_dir=model_dir, epochs=epochs, loader=train.LoaderSettings(batch_size=batch_size),
                          device="cpu", progress=False, seed=1, resume="last",
                          metrics={"acc": metrics.Accuracy(pred="model.head_0.probs", target="data.gt.label")},
                          init=init, apply=apply)
        if train.rank() == 0:
            out = {"history": state.history, "w": state.params["w"].flatten().tolist(), "world": train.world_size()}
            with open(model_dir + "/result.json", "w") as f:
                json.dump(out, f)
    """
)


def _flat(history, key):
    out = []
    for h in history:
        mode, *rest = key.split(".")
        v = h[mode]
        for r in rest:
            v = v[r]
        out.append(v)
    return out


def _launch(script, model_dir, batch_size, epochs, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(script), str(model_dir), str(batch_size), str(epochs)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    res = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((model_dir / "result.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    one = _launch(script, tmp_path / "one", 16, 3, nproc=1)
    two = _launch(script, tmp_path / "two", 8, 3, nproc=2)
    assert one["world"] == 1 and two["world"] == 2
    for key in ("train.losses.total_loss", "validation.losses.total_loss", "train.metrics.acc"):
        assert _flat(two["history"], key) == pytest.approx(_flat(one["history"], key), abs=1e-4), key
    assert two["w"] == pytest.approx(one["w"], abs=1e-4)
    # only rank 0 wrote checkpoints
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [
        "best_validation.losses.total_loss.pt",
        "last.pt",
    ]
    # a DDP run stopped after 2 epochs and resumed ends where the uninterrupted one did
    _launch(script, tmp_path / "resumed", 8, 2, nproc=2)
    resumed = _launch(script, tmp_path / "resumed", 8, 3, nproc=2)
    assert resumed["history"] == two["history"]
    assert resumed["w"] == two["w"]
