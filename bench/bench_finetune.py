"""Fine-tuning optimizer pieces on the parameters of a ResNet-18 (11.7 M, 62 tensors): one update each (issue 18).

The gradients are fixed random tensors; each timing is 10 updates, so what is measured is the optimizer, not a model.

Row ``finetune.groups_adamw``: AdamW, weight decay 0.05 on the weights and none on biases and batch-norm weights.

- fusefn: ``optim.adamw(1e-3, weight_decay=0.05, decay="weights")`` (two parameter groups) ``update``.
- PyTorch (hand-written): ``torch.optim.AdamW`` with the same two param groups, its default (``foreach=None``,
  which is the single-tensor loop on the CPU) and ``fused=True``.

Row ``finetune.from_torch_radam``: ``optim.from_torch(torch.optim.RAdam, lr=1e-3)`` against ``torch.optim.RAdam``
itself: what rebuilding the optimizer and handing its state in and out costs per update.

Row ``finetune.ema``: the moving average of the weights, one update. fusefn: ``fusefn.train.ema.EMA(0.999).update``
(one for-each lerp); PyTorch (hand-written): timm's ``ModelEmaV2`` loop, ``ema.mul_(d).add_(p, alpha=1 - d)``
per tensor.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

STEPS = 10


def _resnet18_params():
    import torch

    from fusefn import Rng, models

    net = models.Model(
        backbone=models.ResNet18(in_channels=3), heads=(models.ClassifierHead(name="head_0", num_classes=2),)
    )
    params, _ = models.init(net, rng=Rng(0))
    g = torch.Generator().manual_seed(1)
    grads = {k: 1e-3 * torch.randn(v.shape, generator=g) for k, v in params.items()}
    return params, grads


def _fusefn_runner(opt, params, grads):
    state = {"p": {k: v.clone() for k, v in params.items()}}
    state["s"] = opt.init(state["p"])

    def run():
        for _ in range(STEPS):
            state["p"], state["s"] = opt.update(grads, state["s"], state["p"])

    return run


def _torch_runner(make, params, grads, groups_of):
    import torch

    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    for k, p in ps.items():
        p.grad = grads[k].clone()
    opt = make(groups_of(ps))

    def run():
        with torch.no_grad():
            for _ in range(STEPS):
                opt.step()

    return run


def _two_groups(ps):
    no_decay = [v for k, v in ps.items() if v.dim() <= 1 or k.endswith(".bias")]
    decay = [v for k, v in ps.items() if not (v.dim() <= 1 or k.endswith(".bias"))]
    return [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv=None):
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    import torch

    from fusefn import optim
    from fusefn.train.ema import EMA

    rec = C.Recorder("finetune", args)
    params, grads = _resnet18_params()
    n = sum(v.numel() for v in params.values())
    kw = dict(figure="time", unit="ms", n=STEPS, n_unit="updates")

    name = "finetune.groups_adamw"
    times = C.measure_interleaved(
        {
            C.FUSEFN: _fusefn_runner(optim.adamw(1e-3, weight_decay=0.05, decay="weights"), params, grads),
            C.TORCH: _torch_runner(lambda g: torch.optim.AdamW(g, lr=1e-3), params, grads, _two_groups),
            C.TORCH + " fused": _torch_runner(
                lambda g: torch.optim.AdamW(g, lr=1e-3, fused=True), params, grads, _two_groups
            ),
        },
        repeats=args.repeats,
        warmup=args.warmup,
    )
    settings = {
        C.FUSEFN: 'adamw(1e-3, weight_decay=0.05, decay="weights")',
        C.TORCH: "torch.optim.AdamW, 2 param groups, default foreach=None",
        C.TORCH + " fused": "torch.optim.AdamW, 2 param groups, fused=True",
    }
    for system, t in times.items():
        if isinstance(t, Exception):
            rec.skip(name, system, f"failed: {t}")
        else:
            rec.add(name, system, t, settings=settings[system], extra={"params": n}, **kw)

    name = "finetune.from_torch_radam"
    times = C.measure_interleaved(
        {
            C.FUSEFN: _fusefn_runner(optim.from_torch(torch.optim.RAdam, lr=1e-3), params, grads),
            C.TORCH: _torch_runner(lambda g: torch.optim.RAdam(g, lr=1e-3), params, grads, lambda ps: ps.values()),
        },
        repeats=args.repeats,
        warmup=args.warmup,
    )
    settings = {C.FUSEFN: "from_torch(torch.optim.RAdam, lr=1e-3)", C.TORCH: "torch.optim.RAdam(lr=1e-3)"}
    for system, t in times.items():
        rec.add(name, system, t, settings=settings[system], extra={"params": n}, **kw)

    name = "finetune.ema"
    ema = EMA(decay=0.999)
    ours = ema.init(params, {})
    theirs = {k: v.clone() for k, v in params.items()}

    def fusefn_ema():
        for _ in range(STEPS):
            ema.update(ours, params, {})

    def timm_ema():
        with torch.no_grad():
            for _ in range(STEPS):
                for k, e in theirs.items():
                    e.mul_(0.999).add_(params[k], alpha=1 - 0.999)

    times = C.measure_interleaved({C.FUSEFN: fusefn_ema, C.TORCH: timm_ema}, repeats=args.repeats, warmup=args.warmup)
    settings = {C.FUSEFN: "EMA(decay=0.999).update", C.TORCH: "timm ModelEmaV2 loop: mul_(d).add_(p, alpha=1-d)"}
    for system, t in times.items():
        rec.add(name, system, t, settings=settings[system], extra={"params": n}, **kw)


if __name__ == "__main__":
    main()
