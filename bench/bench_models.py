"""Models: functional ``apply`` vs the same ``nn.Module`` called directly, forward + backward (issue 5).

For each network, one training step's forward + cross-entropy + backward on the same batch and the same weights
(the systems alternate every repetition, so a change in the machine's load hits them alike):

- nn.Module: ``fusefn.models.as_module(model, params, buffers, train=True)`` — the very network ``apply`` runs, as
  a stateful module with ``nn.Parameter`` leaves — called directly, ``loss.backward()``.
- fusefn apply: ``fusefn.models.apply(model, params, buffers, batch, train=True)`` with the parameters as leaf
  tensors (``requires_grad``), ``loss.backward()``.
- fusefn apply + torch.func.grad: the gradient taken with ``torch.func.grad`` over ``apply`` (what a pure step does).

Networks: the digits ``SmallCNN`` (batch 32 × 1×8×8) and ResNet-18 (batch 16 × 1×64×64; 4 with ``--quick``), eager,
on the chosen device. On CUDA, additionally ResNet-18 (batch 64 × 1×224×224) and 3D ResNet-18 (batch 8 × 1×96³)
with bf16 autocast, ``apply`` eager vs ``torch.compile``-d (forward + backward through ``torch.func.grad``).
"""

from __future__ import annotations

import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

MODULE = "nn.Module (direct)"
APPLY = C.FUSEFN + " apply"
FUNC_GRAD = C.FUSEFN + " apply + func.grad"
EAGER = C.FUSEFN + " eager (bf16)"
COMPILED = C.FUSEFN + " compiled (bf16)"


def networks(quick: bool, device: str):
    from fusefn.models import ClassifierHead, Model, ResNet18, ResNet18_3D, SmallCNN

    head = (ClassifierHead(name="head_0", num_classes=10),)
    nets = [
        (
            "smallcnn",
            Model(backbone=SmallCNN(in_channels=1, channels=(16, 32)), heads=head),
            (32, 1, 8, 8),
            20 if quick else 50,
        ),
        (
            "resnet18",
            Model(backbone=ResNet18(in_channels=1), heads=head),
            (4 if quick else 16, 1, 64, 64),
            2 if quick else 5,
        ),
    ]
    gpu = []
    if device.startswith("cuda"):
        gpu = [
            ("resnet18.224", Model(backbone=ResNet18(in_channels=1), heads=head), (64, 1, 224, 224), 5),
            ("resnet18_3d.96", Model(backbone=ResNet18_3D(in_channels=1), heads=head), (8, 1, 96, 96, 96), 3),
        ]
    return nets, gpu


def make_batch(shape, device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).to(device)
    y = torch.randint(0, 10, (shape[0],), generator=g).to(device)
    return {"data": {"input": {"img": x}, "gt": {"label": y}}}


def steps(model, shape, iters: int, device: str):
    """{system: callable running ``iters`` forward+backward steps}."""
    from fusefn import Rng
    from fusefn.models import apply, as_module, init

    params, buffers = init(model, rng=Rng(0), device=device)
    batch = make_batch(shape, device)
    y = batch["data"]["gt"]["label"]
    module = as_module(model, {k: t.clone() for k, t in params.items()}, dict(buffers), train=True)
    leaves = {k: t.clone().requires_grad_(t.is_floating_point()) for k, t in params.items()}

    def run_module():
        for _ in range(iters):
            for p in module.parameters():
                p.grad = None
            loss = F.cross_entropy(module(batch)["model"]["head_0"]["logits"], y)
            loss.backward()

    def run_apply():
        for _ in range(iters):
            for t in leaves.values():
                t.grad = None
            out, _ = apply(model, leaves, buffers, batch, train=True)
            loss = F.cross_entropy(out["model"]["head_0"]["logits"], y)
            loss.backward()

    def loss_fn(p):
        out, _ = apply(model, p, buffers, batch, train=True)
        return F.cross_entropy(out["model"]["head_0"]["logits"], y)

    grad_fn = torch.func.grad(loss_fn)

    def run_func_grad():
        for _ in range(iters):
            grad_fn(params)

    return {MODULE: run_module, APPLY: run_apply, FUNC_GRAD: run_func_grad}, (grad_fn, params)


def compiled_steps(model, shape, iters: int, device: str):
    from fusefn import Rng
    from fusefn.models import apply, init

    params, buffers = init(model, rng=Rng(0), device=device)
    batch = make_batch(shape, device)
    y = batch["data"]["gt"]["label"]

    def loss_fn(p):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            out, _ = apply(model, p, buffers, batch, train=True)
            return F.cross_entropy(out["model"]["head_0"]["logits"].float(), y)

    eager = torch.func.grad(loss_fn)
    compiled = torch.compile(torch.func.grad(loss_fn))

    def run(fn):
        def go():
            for _ in range(iters):
                fn(params)

        return go

    return {EAGER: run(eager), COMPILED: run(compiled)}


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("models", args)
    rec = C.Recorder("models", args)
    models, why = C.optional_import("fusefn.models", "apply", "as_module", "init", "ResNet18")
    if models is None:
        rec.skip("models.*", C.FUSEFN, why)
        return
    nets, gpu = networks(args.quick, args.device)
    for label, model, shape, iters in nets:
        name = f"models.fwd_bwd.{label}"
        runs, why = C.attempt(lambda m=model, s=shape, k=iters: (steps(m, s, k, args.device)[0], None))
        if runs is None:
            rec.skip(name, C.FUSEFN, why)
            continue
        # systems alternate every repetition, so load changes on the machine hit them alike
        all_times = C.measure_interleaved(runs, repeats=args.repeats, warmup=max(args.warmup, 1), device=args.device)
        for system, t in all_times.items():
            if isinstance(t, Exception):
                rec.skip(name, system, f"failed: {type(t).__name__}: {str(t)[:300]}")
                continue
            rec.add(
                name,
                system,
                [x / iters for x in t],
                figure="step time",
                unit="ms",
                n=shape[0],
                n_unit="images per batch",
                settings=f"batch {'×'.join(map(str, shape))}, eager, {iters} steps per repetition",
            )
    for label, model, shape, iters in gpu:
        name = f"models.compile.{label}"
        runs, why = C.attempt(lambda m=model, s=shape, k=iters: (compiled_steps(m, s, k, args.device), None))
        if runs is None:
            rec.skip(name, C.FUSEFN, why)
            continue
        # compilation happens in the warm-up
        all_times = C.measure_interleaved(runs, repeats=args.repeats, warmup=max(args.warmup, 2), device=args.device)
        for system, t in all_times.items():
            if isinstance(t, Exception):
                rec.skip(name, system, f"failed: {type(t).__name__}: {str(t)[:300]}")
                continue
            rec.add(
                name,
                system,
                [x / iters for x in t],
                figure="step time",
                unit="ms",
                n=shape[0],
                n_unit="images per batch",
                settings=f"batch {'×'.join(map(str, shape))}, bf16 autocast, forward+backward (torch.func.grad)",
            )


if __name__ == "__main__":
    main()
