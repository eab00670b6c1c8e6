"""Exact resume after SIGKILL: a killed-and-resumed run ends bit-identical to an uninterrupted one."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from fusefn.train import load_checkpoint

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import torch.nn.functional as F
    from fusefn import metrics, models, nd, optim, train

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model_dir, kill_after, kill_mid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    class CE:
        def __call__(self, batch):
            return F.cross_entropy(nd.get(batch, "model.head_0.logits"), nd.get(batch, "data.gt.label"))

    class Data(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 1, 8, 8, generator=g)
            self.y = (self.x.mean((1, 2, 3)) > 0).long()
            self.calls = 0  # per instance: the train set counts its own samples
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            self.calls += 1
            if kill_mid and self.calls == kill_mid:
                os.kill(os.getpid(), signal.SIGKILL)
            return {"data": {"sample_id": f"s{i}", "input": {"img": self.x[i]}, "gt": {"label": self.y[i]}}}

    class KillAfter(train.Callback):
        def on_epoch_end(self, run, epoch, results):
            if kill_after and epoch == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    model = models.Model(backbone=models.SmallCNN(in_channels=1, channels=(4, 8)),
                         heads=(models.ClassifierHead(name="head_0", num_classes=2),))
    train.fit(model, {"ce": CE()}, optim.adamw(lr=optim.cosine_decay(1e-2, 40)), Data(64, 0), Data(32, 1),
              model_dir=model_dir, epochs=6, loader=train.LoaderSettings(batch_size=10), device="cpu", progress=False,
              seed=3, metrics={"auc": metrics.AUCROC(pred="model.head_0.probs", target="data.gt.label")},
              checkpoints=train.CheckpointRule(best=train.BestEpochSource(source="validation.metrics.auc")),
              callbacks=(KillAfter(),), resume="last")
    """
)


def _run(script, model_dir, kill_after=0, kill_mid=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), str(model_dir), str(kill_after), str(kill_mid)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill", [{"kill_after": 3}, {"kill_mid": 2 * 64 * 3 + 30}])
def test_sigkill_then_resume_is_bit_identical(tmp_path, kill):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ref = _run(script, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    killed = _run(script, tmp_path / "run", **kill)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state"].epoch == 3
    resumed = _run(script, tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")["state"]
    b = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state"]
    assert a.epoch == b.epoch == 6 and a.step == b.step
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    for k in a.buffers:
        assert torch.equal(a.buffers[k], b.buffers[k]), k
    assert a.history == b.history
    assert a.best == b.best
    best_a = load_checkpoint(next((tmp_path / "ref" / "checkpoints").glob("best_*.pt")))["state"]
    best_b = load_checkpoint(next((tmp_path / "run" / "checkpoints").glob("best_*.pt")))["state"]
    assert best_a.epoch == best_b.epoch
