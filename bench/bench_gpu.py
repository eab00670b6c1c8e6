"""GPU suite (issue 16): compiled vs eager steps, GPU augmentation, HDF5 cache to GPU, sliding windows.

Finishes in ≤ 8 min on one H100. ``python bench/bench_gpu.py --device cuda`` appends rows to
``bench/results-cuda.jsonl``; ``--dry`` runs every row at tiny sizes on the CPU (small models, dynamo's ``eager``
backend instead of inductor) so the script cannot rot on machines without a GPU (tests/test_bench_gpu_dry.py).
Every row carries ``graphs``, ``graph_breaks`` and ``recompiles`` (new dynamo graphs beyond one per compiled
function, counted over warm-up and timing).

Rows and settings (full sizes; ``--dry`` in brackets):
- ``gpu.step.resnet18_2d``: ResNet-18, 3×224² [SmallCNN 3×32²], batch 64 [4], bf16 autocast, channels_last, SGD
  with momentum, cross-entropy; fusefn's step eager and compiled (``StepSettings(compile=True)``: one graph).
  ``gpu.step.resnet18_2d.augment``: the same two with the default image pipeline inside the step (in the graph when
  compiled). Figure: images/s over ``steps`` steps.
- ``gpu.step.unet3d`` (and ``.augment``): fusefn UNet (16, 32, 64, 128) 3D, 1×96³ patches [UNet (4, 8), 16³],
  batch 2, bf16, AdamW, segmentation cross-entropy; the default volume pipeline in the ``.augment`` row.
- ``gpu.augment.{2d,3d}``: 256 × 1×256² and 64 × 1×96³ [4 × 32², 2 × 16³] images per call. fusefn's default
  pipeline on the device, eager and ``torch.compile(apply_fixed, fullgraph=True)``; MONAI 1.6.1's dictionary
  transforms per sample on device tensors (bench/bench_augment.py's chain); FuseMedML 0.4.1 per sample on the CPU
  (its examples' pipelines, bench_augment.py).
- ``gpu.pipeline.hdf5``: an ``H5Cache`` of 1024 [16] float32 3×224² [3×32²] images read by 4 [0] DataLoader workers,
  batch 64 [4], fed to the compiled ResNet-18 step by ``train_epoch`` with and without prefetch (pinned memory, a side
  stream). Figures: images/s, and the GPU idle fraction (1 − step time on the GPU's clock / wall time) in
  ``gpu.pipeline.hdf5.idle`` (%).
- ``gpu.sliding_window``: the compiled 3D UNet (2 classes) over a 1×512×512×300 [1×48×40×24] volume,
  roi 96³ [16³], overlap 0.25, gaussian blending, 4 windows per call, bf16; fusefn
  ``sliding_window(output="argmax")`` vs MONAI
  ``sliding_window_inference`` then argmax; the same compiled predictor. Figures: seconds, and the peak GPU memory
  above the volume's in ``gpu.sliding_window.memory`` (MiB).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import pathlib
import sys
import tempfile
import time

import attrs
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

KEY = "data.input.img"
SIZES = {
    "full": {
        "r18": (64, 3, 224),
        "unet": (2, 1, 96),
        "unet_channels": (16, 32, 64, 128),
        "aug2d": (256, 256),
        "aug3d": (64, 96),
        "pipe_n": 1024,
        "pipe_workers": 4,
        "volume": (512, 512, 300),
        "roi": 96,
        "steps": 10,
    },
    "dry": {
        "r18": (4, 3, 32),
        "unet": (2, 1, 16),
        "unet_channels": (4, 8),
        "aug2d": (4, 32),
        "aug3d": (2, 16),
        "pipe_n": 16,
        "pipe_workers": 0,
        "volume": (48, 40, 24),
        "roi": 16,
        "steps": 2,
    },
}


def parse(argv=None) -> argparse.Namespace:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--dry", action="store_true", help="every row at tiny sizes on the CPU (a smoke test)")
    known, rest = extra.parse_known_args(argv)
    args = C.parse_args(__doc__.splitlines()[0], rest)
    args.dry = known.dry
    if args.dry:
        args.device, args.repeats, args.warmup = "cpu", 1, 1
        if "--results" not in rest:
            args.results = pathlib.Path(tempfile.mkdtemp()) / "results-dry.jsonl"
    elif not args.device.startswith("cuda"):
        raise SystemExit("bench_gpu.py: pass --device cuda (or --dry for the CPU smoke run)")
    args.size = SIZES["dry" if args.dry else "full"]
    return args


# ------------------------------------------------------------------------------ counting graphs


class Graphs:
    """Dynamo's graph and break counters over a block: ``graphs``, ``graph_breaks``, ``recompiles``."""

    def __init__(self, functions: int):
        self.functions = functions

    def __enter__(self):
        from torch._dynamo.utils import counters

        self.counters = counters
        self.g0 = counters["stats"]["unique_graphs"]
        self.b0 = sum(counters["graph_break"].values())
        return self

    def __exit__(self, *exc):
        graphs = self.counters["stats"]["unique_graphs"] - self.g0
        self.result = {
            "graphs": graphs,
            "graph_breaks": sum(self.counters["graph_break"].values()) - self.b0,
            "recompiles": max(0, graphs - self.functions),
        }
        return False


def compile_kw(args) -> dict:
    # the dry run traces with dynamo but skips inductor's code generation (minutes on 2 cores)
    return {"compile": True, "backend": "eager"} if args.dry else {"compile": True}


def precision(args) -> str:
    return "fp32" if args.dry else "bf16"


def timed(rec: C.Recorder, args, name: str, systems: dict, n: int, n_unit: str, unit: str, functions: dict) -> None:
    """Time ``systems`` (``{label: (run, settings[, device])}``) one after the other, each with its graph counts."""
    for label, (run, settings, *where) in systems.items():
        with Graphs(functions.get(label, 0)) as g:
            try:
                times = C.measure(run, repeats=args.repeats, warmup=args.warmup, device=args.device)
            except Exception as e:  # a row that fails is recorded as skipped, the suite goes on
                rec.skip(name, label, f"failed: {type(e).__name__}: {str(e)[:300]}")
                continue
        rec.add(
            name,
            label,
            times,
            figure="throughput",
            unit=unit,
            n=n,
            n_unit=n_unit,
            rate=True,
            device=where[0] if where else None,
            settings=settings,
            extra=g.result,
        )


# ------------------------------------------------------------------------------ training steps


def step_rows(rec: C.Recorder, args) -> None:
    from fusefn import Rng, augment, keys, losses, models, optim
    from fusefn.train import init_state, make_train_step

    s = args.size
    cases = {
        "resnet18_2d": (
            models.Model(
                backbone=models.SmallCNN(in_channels=3, channels=(8, 16))
                if args.dry
                else models.ResNet18(in_channels=3),
                heads=(models.ClassifierHead(name="head_0", num_classes=2),),
            ),
            {"ce": losses.CrossEntropy(pred="model.head_0.logits", target="data.gt.label")},
            optim.sgd(0.01, momentum=0.9),
            augment.default_image_pipeline(keys.IMAGE),
            s["r18"] + (s["r18"][2],),
            False,
        ),
        "unet3d": (
            models.Model(
                backbone=models.UNet(in_channels=1, channels=s["unet_channels"], spatial_dims=3),
                heads=(models.SegmentationHead(name="seg", in_channels=s["unet_channels"][0], spatial_dims=3),),
            ),
            {"ce": losses.SegmentationCrossEntropy(pred="model.seg.logits", target="data.gt.label")},
            optim.adamw(1e-3),
            augment.default_volume_pipeline(keys.IMAGE),
            s["unet"] + (s["unet"][2], s["unet"][2]),
            True,
        ),
    }
    dev = torch.device(args.device)
    for case, (model, loss, opt, pipe, shape, seg) in cases.items():
        g = torch.Generator().manual_seed(0)
        x = torch.rand(shape, generator=g)
        gt = (x[:, 0] > 0.5).long() if seg else torch.randint(0, 2, (shape[0],), generator=g)
        batch = {"data": {"input": {"img": x.to(dev)}, "gt": {"label": gt.to(dev)}}}
        for aug in (None, pipe):
            systems, functions = {}, {}
            for compiled in (False, True):
                kw = compile_kw(args) if compiled else {}
                step = make_train_step(
                    model, loss, opt, precision=precision(args), memory_format="channels_last", augment=aug, **kw
                )
                holder = {"state": init_state(model, opt, rng=Rng(0), device=dev)}

                def run(step=step, holder=holder, batch=batch):
                    st = holder["state"]
                    for _ in range(s["steps"]):
                        st, out = step(st, batch)
                    float(out["losses"]["total_loss"])  # what train_epoch reads every step
                    holder["state"] = st

                label = f"{C.FUSEFN} {'compiled' if compiled else 'eager'} step{' + augmentation' if aug else ''}"
                where = "inside the compiled graph" if compiled else "eager, inside the step"
                settings = f"{precision(args)}, channels_last, {'one graph (fullgraph)' if compiled else 'eager'}" + (
                    f", default pipeline {where}" if aug else ", no augmentation"
                )
                systems[label] = (run, settings)
                functions[label] = 1 if compiled else 0
            name = f"gpu.step.{case}" + (".augment" if aug else "")
            timed(rec, args, name, systems, shape[0] * s["steps"], "images", "images/s", functions)


# ------------------------------------------------------------------------------ augmentation


def augment_rows(rec: C.Recorder, args) -> None:
    import bench_augment as BA

    from fusefn import Rng, nd

    s = args.size
    for label, imgs in (
        ("2d", BA.images(s["aug2d"][0], (s["aug2d"][1],) * 2)),
        ("3d", BA.images(s["aug3d"][0], (s["aug3d"][1],) * 3)),
    ):
        name, n = f"gpu.augment.{label}", imgs.shape[0]
        pipe, why = BA.fusefn_pipeline(imgs.ndim - 2)
        systems, functions = {}, {}
        if pipe is None:
            rec.skip(name, C.FUSEFN, why)
        else:
            batch = nd.assoc({}, KEY, imgs.to(args.device))
            calls = itertools.count()

            def eager(pipe=pipe, batch=batch, calls=calls):
                nd.get(pipe(batch, rng=Rng(0).child(next(calls))), KEY)

            kw = {"fullgraph": True, **({"backend": "eager"} if args.dry else {})}
            fixed = torch.compile(pipe.apply_fixed, **kw)

            def compiled(pipe=pipe, batch=batch, calls=calls, fixed=fixed, n=n):
                params = pipe.fixed_params(pipe.sample_like(batch, rng=Rng(0).child(next(calls))), n)
                nd.get(fixed(batch, params), KEY)

            systems[f"{C.FUSEFN} eager"] = (eager, "default pipeline, one batch on the device, eager")
            systems[f"{C.FUSEFN} compiled"] = (compiled, "default pipeline, torch.compile(apply_fixed, fullgraph=True)")
            functions[f"{C.FUSEFN} compiled"] = 1
        m, why = C.peer("monai.transforms", "RandAffined")
        if m is None:
            rec.skip(name, C.MONAI, why)
        else:
            systems[f"{C.MONAI} (device tensors)"] = (
                BA.monai_run(imgs, args.device),
                "bench_augment's chain per sample",
            )
        m, why = C.peer("fuseimg.data.ops.aug.geometry", "OpAugAffine2D")
        if m is None:
            rec.skip(name, f"{C.FUSEMEDML} (CPU)", why)
        else:
            systems[f"{C.FUSEMEDML} (CPU)"] = (
                BA.fusemedml_run(imgs),
                "its examples' pipelines per sample, on the CPU",
                "cpu",
            )
        BA.seed_globals()
        timed(rec, args, name, systems, n, "images", "images/s", functions)


# ------------------------------------------------------------------------------ HDF5 cache -> GPU


@attrs.frozen
class MakeImage:
    """A static op writing a seeded float32 image and a label (part of the bench, not of fusefn)."""

    shape: tuple = attrs.field(converter=tuple)

    def __call__(self, sample):
        from fusefn import nd

        i = int(nd.get(sample, "data.sample_id"))
        x = np.random.default_rng(i).random(self.shape, dtype=np.float32)
        return nd.assoc_many(sample, {KEY: x, "data.gt.label": np.int64(i % 2)})


class CachedImages(torch.utils.data.Dataset):
    """The cache's samples as tensors; the reader opens in each process that reads (DataLoader workers)."""

    def __init__(self, cache, ids):
        self.cache, self.ids, self.reader = cache, list(ids), None

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        if self.reader is None:
            self.reader = self.cache.open()
        s = self.reader.read(self.ids[i])
        x, y = s["data"]["input"]["img"], s["data"]["gt"]["label"]
        return {
            "data": {
                "sample_id": str(self.ids[i]),
                "input": {"img": torch.from_numpy(np.asarray(x))},
                "gt": {"label": torch.as_tensor(y)},
            }
        }


class BusyClock:
    """Wraps a step: the GPU time of each step (CUDA events on the main stream), summed."""

    def __init__(self, step, device: str):
        self.step, self.cuda, self.pairs = step, device.startswith("cuda"), []
        self.losses = getattr(step, "losses", {})

    def __call__(self, state, batch):
        if not self.cuda:
            return self.step(state, batch)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = self.step(state, batch)
        b.record()
        self.pairs.append((a, b))
        return out

    def busy_s(self) -> float:
        torch.cuda.synchronize()
        total = sum(a.elapsed_time(b) for a, b in self.pairs) / 1e3
        self.pairs = []
        return total


def pipeline_rows(rec: C.Recorder, args) -> None:
    from fusefn import Rng, keys, losses, models, optim
    from fusefn.data.cache import H5Cache
    from fusefn.train import default_collate, epoch_batches, init_state, make_train_step, train_epoch

    s = args.size
    bs, ch, hw = s["r18"]
    name, n = "gpu.pipeline.hdf5", s["pipe_n"]
    root = pathlib.Path(tempfile.mkdtemp(dir=args.workdir))
    cache = H5Cache(root=root, pipeline=MakeImage(shape=(ch, hw, hw)), workers=s["pipe_workers"], progress=False)
    report = cache.build([str(i) for i in range(n)])
    assert report.computed == n, report
    data = CachedImages(cache, [str(i) for i in range(n)])
    model = models.Model(
        backbone=models.SmallCNN(in_channels=3, channels=(8, 16)) if args.dry else models.ResNet18(in_channels=3),
        heads=(models.ClassifierHead(name="head_0", num_classes=2),),
    )
    opt = optim.sgd(0.01, momentum=0.9)
    loss = {
        "ce": losses.CrossEntropy(
            pred="model.head_0.logits", target=keys.LABEL if hasattr(keys, "LABEL") else "data.gt.label"
        )
    }
    step = make_train_step(
        model, loss, opt, precision=precision(args), memory_format="channels_last", **compile_kw(args)
    )
    holder = {"state": init_state(model, opt, rng=Rng(0), device=args.device), "epoch": 0}
    for prefetch in (False, True):
        clock, idle = BusyClock(step, args.device), []

        def run(prefetch=prefetch, clock=clock, idle=idle):
            holder["epoch"] += 1
            batches, _ = epoch_batches(
                data,
                holder["epoch"],
                rng=Rng(0),
                batch_size=bs,
                collate=default_collate,
                workers=s["pipe_workers"],
                drop_last=True,
            )
            t0 = time.perf_counter()
            holder["state"], _ = train_epoch(clock, holder["state"], batches, device=args.device, prefetch=prefetch)
            C.sync(args.device)
            wall = time.perf_counter() - t0
            if clock.cuda:
                idle.append(1.0 - clock.busy_s() / wall)

        label = f"{C.FUSEFN} compiled step, {'prefetch' if prefetch else 'no prefetch'}"
        with Graphs(1) as g:
            try:
                times = C.measure(run, repeats=args.repeats, warmup=args.warmup, device=args.device)
            except Exception as e:
                rec.skip(name, label, f"failed: {type(e).__name__}: {str(e)[:300]}")
                continue
        frac = float(np.median(idle[args.warmup :])) if idle[args.warmup :] else float("nan")
        settings = (
            f"H5Cache, {s['pipe_workers']} workers, batch {bs}, train_epoch(prefetch={prefetch}); "
            "GPU idle fraction in gpu_idle"
        )
        rec.add(
            name,
            label,
            times,
            figure="throughput",
            unit="images/s",
            n=(n // bs) * bs,
            n_unit="images",
            rate=True,
            settings=settings,
            extra={**g.result, "gpu_idle": frac},
        )
        if math.isfinite(frac):
            idle_kw = {"figure": "GPU idle", "unit": "%", "n": (n // bs) * bs, "n_unit": "images"}
            rec.add_value(f"{name}.idle", label, 100 * frac, settings=settings, **idle_kw)


# ------------------------------------------------------------------------------ sliding window


def sliding_rows(rec: C.Recorder, args) -> None:
    from fusefn import Rng, models
    from fusefn.train import make_eval_step

    s = args.size
    name = "gpu.sliding_window"
    model = models.Model(
        backbone=models.UNet(in_channels=1, channels=s["unet_channels"], spatial_dims=3),
        heads=(models.SegmentationHead(name="seg", in_channels=s["unet_channels"][0], spatial_dims=3),),
    )
    params, buffers = models.init(model, rng=Rng(0), device=args.device)
    kw = {"compile": True, "backend": "eager"} if args.dry else {"compile": True}
    ev = make_eval_step(model, precision=precision(args), **kw)

    def predictor(x):
        return ev((params, buffers), {"data": {"input": {"img": x}}})["model"]["seg"]["logits"].float()

    g = torch.Generator().manual_seed(0)
    volume = torch.rand((1, *s["volume"]), generator=g).to(args.device)
    roi = (s["roi"],) * 3
    systems: dict = {}
    try:
        from fusefn.train.sliding_window import sliding_window
    except ImportError as e:
        rec.skip(name, C.FUSEFN, f"fusefn.train.sliding_window not importable: {e}")
    else:
        systems[C.FUSEFN] = (
            lambda: sliding_window(
                predictor,
                volume,
                roi=roi,
                overlap=0.25,
                blend="gaussian",
                batch_size=4,
                device=args.device,
                output="argmax",
            ),
            "sliding_window(output='argmax'), gaussian, overlap 0.25, 4 windows per call",
        )
    m, why = C.peer("monai.inferers", "sliding_window_inference")
    if m is None:
        rec.skip(name, C.MONAI, why)
    else:
        systems[C.MONAI] = (
            lambda: (
                m.sliding_window_inference(volume[None], roi, 4, predictor, overlap=0.25, mode="gaussian")[0]
                .argmax(0)
                .to(torch.uint8)
            ),
            "sliding_window_inference(mode='gaussian', overlap=0.25, sw_batch_size=4), then argmax",
        )
    cuda = args.device.startswith("cuda")
    for label, (run, settings) in systems.items():
        peak = []

        def measured(run=run, peak=peak):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            out = run()
            assert tuple(out.shape) == tuple(s["volume"]), out.shape
            if cuda:
                peak.append((torch.cuda.max_memory_allocated() - base) / 2**20)

        with Graphs(1) as gr:
            try:
                times = C.measure(measured, repeats=args.repeats, warmup=args.warmup, device=args.device)
            except Exception as e:
                rec.skip(name, label, f"failed: {type(e).__name__}: {str(e)[:300]}")
                continue
        extra = {**gr.result, "peak_mib": max(peak) if peak else float("nan")}
        voxels = math.prod(s["volume"])
        rec.add(name, label, times, figure="time", unit="s", n=voxels, n_unit="voxels", settings=settings, extra=extra)
        if peak:
            mem_kw = {"figure": "peak GPU memory", "unit": "MiB", "n": voxels, "n_unit": "voxels"}
            rec.add_value(f"{name}.memory", label, max(peak), settings=settings, **mem_kw)


# ------------------------------------------------------------------------------ driver

ROWS = {"step": step_rows, "augment": augment_rows, "pipeline": pipeline_rows, "sliding": sliding_rows}


def main(argv=None) -> None:
    args = parse(argv)
    C.setup(args)
    C.header("gpu" + (" (dry)" if args.dry else ""), args)
    rec = C.Recorder("gpu", args)
    t0 = time.perf_counter()
    for part, fn in ROWS.items():
        t = time.perf_counter()
        with contextlib.ExitStack():
            try:
                fn(rec, args)
            except Exception as e:  # one part failing must not cost the others on a lent machine
                rec.skip(f"gpu.{part}", C.FUSEFN, f"part failed: {type(e).__name__}: {str(e)[:300]}")
                if args.dry:
                    raise
        print(f"  [{part}: {time.perf_counter() - t:.0f} s]")
    print(f"  total {time.perf_counter() - t0:.0f} s; rows in {args.results}")


if __name__ == "__main__":
    main()
