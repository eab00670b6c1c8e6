"""Training epoch overhead on the digits model (issue 7).

The digits recipe's model (``SmallCNN(channels=(16, 32))`` + a 10-class ``ClassifierHead``) trains for
``--warmup + --repeats`` epochs on scikit-learn's 1,797 8×8 digits, already in memory as ready batches of 32
(the same batches, in the same order, for every system), AdamW (lr 1e-2, weight decay 1e-4), cross-entropy, no
validation, no metrics. The figure is the time of one epoch; the first ``--warmup`` epochs are not counted.

- PyTorch (hand-written): the same network as an ``nn.Module`` (``fusefn.models.as_module``, the stateful twin of
  ``apply``), ``torch.optim.AdamW``, the usual ``zero_grad / forward / loss / backward / step`` loop.
- fusefn: ``fusefn.train.fit`` (progress bar off; its default checkpoints: ``last`` and ``best``), epoch time taken
  between consecutive ``on_epoch_end`` callbacks.
- FuseMedML 0.4.1: ``LightningModuleDefault`` around the same module (wrapped to read/write its flat batch keys),
  ``LossDefault(callable=F.cross_entropy)``, ``pl.Trainer(default_root_dir, max_epochs, accelerator, devices=1)``
  as its MNIST example (default logger, checkpointing and progress bar); epoch time between consecutive
  ``on_train_epoch_start`` hooks.
"""

from __future__ import annotations

import functools
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

BATCH = 32
LR, WD = 1e-2, 1e-4
FUSEFN_PRECISE_BN = "fusefn, fit defaults (precise BN)"


def digits(quick: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    if quick:
        x, y = x[:320], y[:320]
    return x, y


def ready_batches(x, y, device):
    out = []
    for s in range(0, x.shape[0], BATCH):
        out.append(
            {
                "data": {
                    "sample_id": list(range(s, min(s + BATCH, x.shape[0]))),
                    "input": {"img": x[s : s + BATCH].to(device)},
                    "gt": {"label": y[s : s + BATCH].to(device)},
                }
            }
        )
    return out


def digits_model():
    from fusefn.models import ClassifierHead, Model, SmallCNN

    return Model(
        inputs=("data.input.img",),
        backbone=SmallCNN(in_channels=1, channels=(16, 32)),
        heads=(ClassifierHead(name="head_0", num_classes=10),),
    )


def fresh_module(model, device):
    from fusefn import Rng
    from fusefn.models import as_module, init

    params, buffers = init(model, rng=Rng(0), device=device)
    return as_module(model, params, buffers, train=True)


# ---------------------------------------------------------------- hand-written loop


def plain_epochs(model, batches, epochs: int, device: str) -> list[float]:
    module = fresh_module(model, device)
    opt = torch.optim.AdamW(module.parameters(), lr=LR, weight_decay=WD)
    times = []
    for _ in range(epochs):
        C.sync(device)
        t0 = time.perf_counter()
        for b in batches:
            opt.zero_grad(set_to_none=True)
            logits = module(b)["model"]["head_0"]["logits"]
            loss = F.cross_entropy(logits, b["data"]["gt"]["label"])
            loss.backward()
            opt.step()
        C.sync(device)
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- fusefn.train.fit


def fusefn_epochs(model, batches, epochs: int, device: str, workdir: pathlib.Path, precise_bn: bool = False):
    train, why = C.optional_import("fusefn.train", "fit", "Callback")
    if train is None:
        return None, why
    losses_mod, why = C.optional_import("fusefn.losses", "CrossEntropy")
    if losses_mod is None:
        return None, why
    from fusefn import optim

    stamps = []

    class EpochClock(train.Callback):
        def on_fit_start(self, run):
            C.sync(device)
            stamps.append(time.perf_counter())

        def on_epoch_end(self, run, epoch, results):
            C.sync(device)
            stamps.append(time.perf_counter())

    train.fit(
        model,
        {"ce": losses_mod.CrossEntropy(pred="model.head_0.logits", target="data.gt.label")},
        optim.adamw(lr=LR, weight_decay=WD),
        batches,
        model_dir=workdir / ("fusefn-bn" if precise_bn else "fusefn"),
        epochs=epochs,
        # the hand-written loop does not recompute batch-norm statistics after each epoch; fit does by default
        **({} if precise_bn else {"batch_norm": None}),
        device=device,
        seed=0,
        loader=train.LoaderSettings(shuffle=False),
        progress=False,
        callbacks=(EpochClock(),),
    )
    return list(np.diff(stamps)), None


# ---------------------------------------------------------------- FuseMedML Lightning


class _FlatKeys(torch.nn.Module):
    """FuseMedML models read and write flat batch_dict keys; this adapts the shared module to them."""

    def __init__(self, module):
        super().__init__()
        self.m = module

    def forward(self, batch_dict):
        out = self.m({"data": {"input": {"img": batch_dict["data.input.img"]}}})
        batch_dict["model.logits.head_0"] = out["model"]["head_0"]["logits"]
        return batch_dict


def fusemedml_epochs(model, batches, epochs: int, device: str, workdir: pathlib.Path):
    pl_mod, why = C.peer("fuse.dl.lightning.pl_module", "LightningModuleDefault")
    if pl_mod is None:
        return None, why
    import pytorch_lightning as pl
    from fuse.dl.losses.loss_default import LossDefault
    from fuse.utils.ndict import NDict

    module = _FlatKeys(fresh_module(model, device))
    flat = [
        NDict({"data.input.img": b["data"]["input"]["img"], "data.gt.label": b["data"]["gt"]["label"]}) for b in batches
    ]
    loader = torch.utils.data.DataLoader(flat, batch_size=None, shuffle=False, collate_fn=lambda b: b)
    lm = pl_mod.LightningModuleDefault(
        model_dir=str(workdir / "fuse"),
        model=module,
        losses={"ce": LossDefault(pred="model.logits.head_0", target="data.gt.label", callable=F.cross_entropy)},
        optimizers_and_lr_schs={"optimizer": torch.optim.AdamW(module.parameters(), lr=LR, weight_decay=WD)},
    )
    stamps = []

    class EpochClock(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            C.sync(device)
            stamps.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            C.sync(device)
            stamps.append(time.perf_counter())

    trainer = pl.Trainer(
        default_root_dir=str(workdir / "fuse"),
        max_epochs=epochs,
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        callbacks=[EpochClock()],
    )
    trainer.fit(lm, loader)
    return list(np.diff(stamps)), None


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("train", args)
    rec = C.Recorder("train", args)
    x, y = digits(args.quick)
    batches = ready_batches(x, y, args.device)
    model = digits_model()
    epochs = args.warmup + args.repeats
    n = x.shape[0]
    name = "train.epoch.digits"
    t = plain_epochs(model, batches, epochs, args.device)[args.warmup :]
    rec.add(
        name,
        C.TORCH,
        t,
        figure="epoch time",
        unit="ms",
        n=n,
        n_unit="samples per epoch",
        settings="as_module(model) + torch.optim.AdamW, plain loop",
    )
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="fusefn-bench-train-"))
    try:
        for system, fn, settings in (
            (C.FUSEFN, fusefn_epochs, "fit(progress=False, batch_norm=None): the loop's work, default checkpoints"),
            (
                FUSEFN_PRECISE_BN,
                functools.partial(fusefn_epochs, precise_bn=True),
                "fit(progress=False) defaults: also recomputes batch-norm statistics on 256 samples after each epoch",
            ),
            (C.FUSEMEDML, fusemedml_epochs, "LightningModuleDefault + pl.Trainer as its MNIST example"),
        ):
            try:
                t, why = fn(model, batches, epochs, args.device, workdir)
            except Exception as e:  # a failing system must not hide the other rows
                t, why = None, f"failed: {type(e).__name__}: {str(e)[:300]}"
            if t is None:
                rec.skip(name, system, why)
                continue
            rec.add(
                name,
                system,
                t[args.warmup :],
                figure="epoch time",
                unit="ms",
                n=n,
                n_unit="samples per epoch",
                settings=settings,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
