"""Turn the JSON rows of bench/results-*.jsonl into bench/RESULTS.md.

    python bench/report.py [RESULTS.jsonl ...] [--out bench/RESULTS.md]

Per comparison: a table with each system's median (min–max over the repetitions), the ratio of fusefn's figure to
that system's, the issue's target for that ratio and whether it is met; the machine on top of each run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

OUT = C.BENCH_DIR / "RESULTS.md"
FUSEFN_VARIANTS = (C.FUSEFN, C.FUSEFN + " (compiled apply)", C.FUSEFN + " (compiled apply_fixed)")

_CACHE_BUILD_NOTE = (
    "Before every timed build, untimed and for every system: the previous store is deleted and `os.sync()` "
    "writes back its dirty pages, so no build pays for the one before it."
)
_CACHE_READ_NOTE = (
    "A read fetches every sample once, in one shuffled order, and sums all its values: the time counts until "
    "every byte was used, so work a system defers (fusefn maps large rows) is inside it."
)


_CEILING = (">=", 0.9, "≥ 90 % of the bare-loop ceiling (plain h5py) in the same run")


def _cache_comparisons(label: str, dims: str, shape: str, ceiling: bool, disk: bool) -> dict[str, dict[str, Any]]:
    """The build / read / disk comparisons of one cache case (issues 3 and 20).

    Issue 20 (item 10) redefined the 3D targets: the 3D build and read run at this machine's I/O limits, so they
    are judged against a bare h5py loop with no fusefn in it, measured in the same run (FuseMedML and MONAI stay
    beside it); disk use is judged on compressible int16 CT-like volumes with ``compression="lzf"``, as the uniform
    random floats of the other cases cannot get under their raw bytes.
    """
    build = {C.H5PY: _CEILING} if ceiling else {C.FUSEMEDML: (">=", 3.0, "build ≥ 3× FuseMedML")}
    read = (
        {C.H5PY: _CEILING}
        if ceiling
        else {
            C.FUSEMEDML: (">=", 10.0, "read ≥ 10× FuseMedML"),
            C.H5PY: (">=", 0.75, "within 25 % of the plain-h5py ceiling"),
        }
    )
    disk_spec = {"title": f"Sample cache: disk use, {dims}", "issue": "3, 20", "better": "lower", "targets": {}}
    if disk:
        disk_spec["subject"] = ("fusefn, lzf",)
        disk_spec["targets"] = {"raw array bytes": ("<=", 1.0, "lzf: no larger than the raw array bytes")}
    return {
        f"cache.build.{label}": {
            "title": f"Sample cache: build, {dims} ({shape}, 2 workers)",
            "issue": "3, 20",
            "note": _CACHE_BUILD_NOTE,
            "better": "higher",
            "targets": build,
        },
        f"cache.read.{label}": {
            "title": f"Sample cache: read, {dims} ({shape})",
            "issue": "3, 20",
            "note": _CACHE_READ_NOTE,
            "better": "higher",
            "targets": read,
        },
        f"cache.disk.{label}": disk_spec,
    }


# name -> what the row measures and the targets on the ratio fusefn / system (of the row's figure).
# "subject": the fusefn system(s) the ratio is taken for (the best present one when several).
# "targets": system -> (op, value, words); "gpu_targets" replace them when fusefn ran on CUDA; "note": how it
# was measured, printed under the table.
COMPARISONS: dict[str, dict[str, Any]] = {
    **_cache_comparisons("2d", "2D", "1×256×256 float32", ceiling=False, disk=False),
    **_cache_comparisons("3d", "3D", "1×64×128×128 float32", ceiling=True, disk=False),
    **_cache_comparisons("ct3d", "3D CT-like", "1×64×128×128 int16 HU", ceiling=True, disk=True),
    "augment.2d": {
        "title": "Augmentation: default pipeline, 2D (1×256×256)",
        "issue": 4,
        "better": "higher",
        "subject": FUSEFN_VARIANTS,
        "targets": {C.FUSEMEDML: (">=", 2.0, "CPU: ≥ 2× FuseMedML")},
        "gpu_targets": {C.FUSEMEDML: (">=", 50.0, "GPU: ≥ 50× FuseMedML's CPU throughput")},
    },
    "augment.3d": {
        "title": "Augmentation: default pipeline, 3D (1×96×96×96)",
        "issue": "4, 16",
        "better": "higher",
        "subject": FUSEFN_VARIANTS,
        "targets": {C.FUSEMEDML: (">=", 1.5, "CPU: ≥ 1.5× FuseMedML (issue 16)")},
        "note": "FuseMedML's row is its KNIGHT 3D pipeline (nearest-neighbour 3D rotation p .5, per-slice bilinear 2D "
        "affine p .5, noise p .3, no intensity group): less work than fusefn's default (trilinear rotation about every "
        "axis, intensity group, noise p .5). The row 'fusefn (FuseMedML's augmentations)' runs FuseMedML's "
        "augmentations with fusefn ops (in-plane samples on the 2D kernel). fusefn's eager rows resample volumes on "
        "its compiled kernel (fusefn.augment._sample3d: PyTorch's grid_sample values bit for bit) and draw noise on "
        "both threads; the compiled rows trace PyTorch's grid_sample (the kernel is eager-only). Ratios depend on "
        "thread count and load: this is the 2-thread run on the quiet machine (2026-12-07 01:58, load < 2); at 1 "
        "thread fusefn is 1.21× and the same-work row 1.50× FuseMedML (85.2 / 105.1 vs 70.2 volumes/s)",
    },
    "augment.3d_elastic": {
        "title": "Augmentation: affine + elastic deformation, 3D (16 × 1×96³)",
        "issue": 16,
        "better": "higher",
        "subject": (C.FUSEFN,),
        "targets": {C.FUSEFN + " (two resamplings)": (">=", 1.3, "one composed grid: ≥ 1.3× two resamplings")},
        "note": "both fusefn rows resample on the compiled 3D kernel; at 1 thread the fused chain is 1.54× the two "
        "resamplings (51.7 vs 33.5 volumes/s, 2026-12-07, MONAI 1.70); FuseMedML has no 3D elastic deformation",
    },
    "metrics.auc_ci.knight": {
        "title": "ROC AUC + stratified bootstrap 95 % CI on the 60 KNIGHT cases",
        "issue": 6,
        "better": "lower",
        "targets": {C.FUSEMEDML: ("<=", 1 / 500, "≥ 500× faster than FuseMedML's CI(MetricAUCROC)")},
    },
    "metrics.delong.5e3": {
        "title": "DeLong's test of two AUCs on 5,000 cases (tied scores)",
        "issue": 18,
        "better": "lower",
        "targets": {C.FUSEMEDML: ("<=", 1 / 5, "≥ 5× faster than FuseMedML's delong_auc_test (O(N²) memory)")},
        "note": "measured 2026-12-06 by bench_compare.py alone on the loaded machine (load 13-14); z and p equal FuseMedML's to 1e-12",
    },
    "metrics.paired_bootstrap.1000": {
        "title": "Paired bootstrap of an AUC difference: 1,000 cases, 1,000 resamples",
        "issue": 18,
        "better": "lower",
        "targets": {C.FUSEMEDML: ("<=", 1 / 20, "≥ 20× faster than FuseMedML's PairedBootstrap")},
        "note": "measured 2026-12-06 by bench_compare.py alone on the loaded machine (load 13-14); z and p equal FuseMedML's to 1e-12",
    },
    "finetune.groups_adamw": {
        "title": "AdamW with a no-decay group (biases, norms), ResNet-18 parameters, 10 updates",
        "issue": 18,
        "better": "lower",
        "targets": {C.TORCH: ("<=", 1.0, "no slower than torch.optim.AdamW with param groups")},
        "note": "measured 2026-12-06 by bench_finetune.py alone on the loaded machine (load 10-15): rough",
    },
    "finetune.from_torch_radam": {
        "title": "optim.from_torch(RAdam) vs torch.optim.RAdam, ResNet-18 parameters, 10 updates",
        "issue": 18,
        "better": "lower",
        "targets": {C.TORCH: ("<=", 1.1, "wrapper overhead ≤ 10 %")},
        "note": "measured 2026-12-06 by bench_finetune.py alone on the loaded machine (load 10-15): rough",
    },
    "finetune.ema": {
        "title": "Moving average of the weights, ResNet-18 parameters, 10 updates",
        "issue": 18,
        "better": "lower",
        "targets": {C.TORCH: ("<=", 1.0, "no slower than timm's ModelEmaV2 loop")},
        "note": "measured 2026-12-06 by bench_finetune.py alone on the loaded machine (load 10-15): rough",
    },
    "metrics.auc.1e6": {
        "title": "ROC AUC on 10⁶ scores",
        "issue": 6,
        "better": "lower",
        "targets": {
            C.SKLEARN: ("<=", 1.0, "time ≤ scikit-learn's"),
            C.TORCHMETRICS: ("<=", 1.0, "time ≤ torchmetrics' (issue 16)"),
        },
    },
    "metrics.dice3d.nifti": {
        "title": "3D Dice (3 label groups) on the 4 shared NIfTI volumes",
        "issue": 6,
        "better": "lower",
        "targets": {C.FUSEMEDML: ("<=", 1 / 20, "≥ 20× faster than FuseMedML's MetricDice")},
    },
    "metrics.seg3d.all": {
        "title": "Segmentation metrics (Dice, IoU, HD95, ASSD, NSD, volume) of 3 label groups on the 4 shared NIfTI volumes",
        "issue": 15,
        "better": "lower",
        "targets": {
            C.MONAI: ("<=", 1 / 5, "≥ 5× faster than MONAI's Dice/IoU/HD95/ASSD/SurfaceDice metrics"),
            C.FUSEMEDML: (
                "<=",
                1 / 20,
                "≥ 20× faster than FuseMedML (MetricDice + MetricIouJaccard, all it has in 3D)",
            ),
        },
        "note": "fusefn and FuseMedML measured 2026-12-06 23:53 by bench_dice.py alone (load ~1.3; fusefn on 2 threads, FuseMedML's code single-threaded); MONAI's row is from the earlier run",
    },
    "infer.sliding.probs": {
        "title": "Sliding-window inference, blended scores (1×128×128×96, roi 64³, conv net 1→16→16→4)",
        "issue": 15,
        "better": "lower",
        "targets": {C.MONAI: ("<=", 1.0, "time ≤ MONAI's sliding_window_inference")},
        "note": "measured 2026-12-07 00:12 by bench_sliding.py alone on the quiet machine (load ~1.3); an earlier quiet run gave 1.007. The net (identical oneDNN convolutions) is 85 % of the time; the blending itself costs fusefn 22 ms against MONAI's 27 ms",
    },
    "infer.sliding.argmax": {
        "title": "Sliding-window inference to a label map (same net and volume)",
        "issue": 15,
        "better": "lower",
        "targets": {C.MONAI: ("<=", 1.0, "time ≤ MONAI + argmax")},
        "note": "measured 2026-12-07 00:12 by bench_sliding.py alone on the quiet machine (load ~1.3); at load 10-15 one run came out 1.05",
    },
    "infer.sliding.memory": {
        "title": "Sliding-window label map, peak memory: 32 classes, 1×256×256×192, roi 64³",
        "issue": 15,
        "better": "lower",
        "targets": {C.MONAI: ("<=", 0.4, "peak ≤ 0.4× MONAI's")},
    },
    "infer.sliding.memory96": {
        "title": "Sliding-window label map, peak memory: 32 classes, 1×256×256×192, roi 96³",
        "issue": 15,
        "better": "lower",
        "targets": {},
    },
    "analyze 10⁶ binary": {
        "title": "fusefn analyze: 10⁶ binary predictions, 10,000 resamples, whole command",
        "issue": 17,
        "better": "lower",
        "targets": {},
        "note": "target ≤ 60 s on 2 cores (an absolute figure, no peer); fresh subprocess, CLI defaults "
        "(BCa for ECE/AP, ROC band, figures)",
    },
    "analyze 10⁶ binary peak RSS": {
        "title": "fusefn analyze: 10⁶ binary predictions, peak memory",
        "issue": 17,
        "better": "lower",
        "targets": {},
        "note": "target ≤ 2 GB (2048 MiB); ru_maxrss of the child",
    },
    "analyze 20,000 binary": {
        "title": "fusefn analyze: 20,000 binary predictions, 10,000 resamples",
        "issue": 17,
        "better": "lower",
        "targets": {},
        "note": "issue 17 measured 36 s / 1.17 GB before",
    },
    "analyze 20,000 binary peak RSS": {
        "title": "fusefn analyze: 20,000 binary predictions, peak memory",
        "issue": 17,
        "better": "lower",
        "targets": {},
    },
    "metrics.cindex.2e4": {
        "title": "Harrell's C on 20,000 censored cases (tied times)",
        "issue": 18,
        "better": "lower",
        "targets": {
            "lifelines": ("<=", 1.0, "time ≤ lifelines'"),
            "scikit-survival": ("<=", 1.0, "time ≤ scikit-survival's"),
        },
    },
    "metrics.cindex_ci.500": {
        "title": "Harrell's C + 1,000-resample bootstrap CI on 500 cases",
        "issue": 18,
        "better": "lower",
        "targets": {"lifelines": ("<=", 1 / 10, "≥ 10× faster than lifelines called per resample")},
    },
    "metrics.regression.1e6": {
        "title": "MAE, RMSE, R², Pearson, Spearman on 10⁶ pairs",
        "issue": 18,
        "better": "lower",
        "targets": {"scikit-learn + SciPy": ("<=", 1.5, "time ≤ 1.5× scikit-learn + SciPy")},
    },
    "train.epoch.digits": {
        "title": "Training: one epoch of the digits model, data in memory",
        "issue": 7,
        "better": "lower",
        "targets": {
            C.TORCH: ("<=", 1.05, "fit overhead ≤ 5 % over a hand-written loop"),
            C.FUSEMEDML: ("<=", 0.7, "≤ 0.7× FuseMedML's Lightning module"),
        },
    },
    "models.fwd_bwd.smallcnn": {
        "title": "Forward + backward, digits SmallCNN: functional apply vs the module",
        "issue": 5,
        "better": "lower",
        "subject": ("fusefn apply",),
        "targets": {"nn.Module (direct)": ("<=", 1.05, "apply ≤ 1.05× the module")},
    },
    "models.fwd_bwd.resnet18": {
        "title": "Forward + backward, ResNet-18 (1×64×64): functional apply vs the module",
        "issue": 5,
        "better": "lower",
        "subject": ("fusefn apply",),
        "targets": {"nn.Module (direct)": ("<=", 1.05, "apply ≤ 1.05× the module")},
    },
    "geometry.resample.ct": {
        "title": "Resampling a 512×512×300 int16 CT + mask to 1.5 mm isotropic (image linear, mask nearest)",
        "issue": 14,
        "better": "lower",
        "targets": {
            C.MONAI: ("<=", 0.5, "≥ 2× faster than MONAI's Spacingd"),
            "SimpleITK": ("<=", 1.0, "time ≤ SimpleITK's ResampleImageFilter"),
        },
    },
    "read.dicom_series.ct": {
        "title": "Reading a DICOM CT series (300 × 512×512 int16) with its geometry",
        "issue": 14,
        "better": "lower",
        "targets": {C.MONAI: ("<=", 0.5, "≥ 2× faster than MONAI's LoadImage(PydicomReader)")},
    },
    "patches.96cube.256x256x160": {
        "title": "Patch sampling: 96³ patches (pos:neg 1:1) from cached 1×256×256×160 volumes, delivered to the loop",
        "issue": 15,
        "better": "higher",
        "subject": (C.FUSEFN,),
        "targets": {
            C.MONAI: (
                ">=",
                5.0,
                "≥ 5× MONAI RandCropByPosNegLabeld over CacheDataset (2 workers each: fusefn threads, MONAI processes)",
            ),
            "TorchIO 1.2.1": (">=", 5.0, "≥ 5× TorchIO Queue + LabelSampler (2 workers each)"),
        },
        "note": "measured 2026-12-06 23:59 by bench_patches.py alone, load 1.7-3.8",
    },
    "gpu.step.resnet18_2d": {
        "title": "GPU: ResNet-18 train step, 3×224², bf16, batch 64 — compiled vs eager",
        "issue": 16,
        "better": "higher",
        "subject": ("fusefn compiled step",),
        "targets": {},
        "gpu_targets": {"fusefn eager step": (">=", 1.3, "compiled whole step ≥ 1.3× eager")},
    },
    "gpu.step.resnet18_2d.augment": {
        "title": "GPU: ResNet-18 train step with the default image pipeline in the step",
        "issue": 16,
        "better": "higher",
        "subject": ("fusefn compiled step + augmentation",),
        "targets": {},
        "gpu_targets": {"fusefn eager step + augmentation": (">=", 1.5, "augmentation in the graph: ≥ 1.5× eager")},
    },
    "gpu.step.unet3d": {
        "title": "GPU: 3D UNet train step, 96³ patches, bf16, batch 2",
        "issue": 16,
        "better": "higher",
        "subject": ("fusefn compiled step",),
        "targets": {},
    },
    "gpu.step.unet3d.augment": {
        "title": "GPU: 3D UNet train step with the default volume pipeline in the step",
        "issue": 16,
        "better": "higher",
        "subject": ("fusefn compiled step + augmentation",),
        "targets": {},
    },
    "gpu.augment.2d": {
        "title": "GPU augmentation: default pipeline, 2D (256 × 1×256²)",
        "issue": 16,
        "better": "higher",
        "subject": ("fusefn eager", "fusefn compiled"),
        "targets": {},
        "gpu_targets": {
            "FuseMedML 0.4.1 (CPU)": (">=", 50.0, "≥ 50× FuseMedML's CPU throughput"),
            "MONAI 1.6.1 (device tensors)": (">=", 3.0, "≥ 3× MONAI's GPU transforms"),
        },
    },
    "gpu.augment.3d": {
        "title": "GPU augmentation: default pipeline, 3D (64 × 1×96³)",
        "issue": 16,
        "better": "higher",
        "subject": ("fusefn eager", "fusefn compiled"),
        "targets": {},
        "gpu_targets": {
            "FuseMedML 0.4.1 (CPU)": (">=", 50.0, "≥ 50× FuseMedML's CPU throughput"),
            "MONAI 1.6.1 (device tensors)": (">=", 3.0, "≥ 3× MONAI's GPU transforms"),
        },
    },
    "gpu.pipeline.hdf5": {
        "title": "GPU: HDF5 cache → compiled ResNet-18 step (images/s)",
        "issue": 16,
        "better": "higher",
        "subject": ("fusefn compiled step, prefetch",),
        "targets": {},
        "gpu_targets": {"fusefn compiled step, no prefetch": (">=", 1.0, "prefetch no slower")},
    },
    "gpu.pipeline.hdf5.idle": {
        "title": "GPU idle fraction, HDF5 cache → compiled ResNet-18 step (%)",
        "issue": 16,
        "better": "lower",
        "subject": ("fusefn compiled step, prefetch",),
        "targets": {},
        "note": "target: the GPU ≥ 90 % busy, i.e. idle ≤ 10 % (an absolute figure)",
    },
    "gpu.sliding_window": {
        "title": "GPU sliding-window inference, 3D UNet, 512×512×300, argmax",
        "issue": 16,
        "better": "lower",
        "targets": {},
        "gpu_targets": {C.MONAI: ("<=", 1 / 1.5, "≥ 1.5× MONAI's speed")},
    },
    "gpu.sliding_window.memory": {
        "title": "GPU sliding-window inference: peak GPU memory (MiB)",
        "issue": 16,
        "better": "lower",
        "targets": {},
        "gpu_targets": {C.MONAI: ("<=", 0.5, "≤ 0.5× MONAI's peak memory")},
    },
    "models.compile.resnet18.224": {
        "title": "GPU: ResNet-18 step (batch 64, 1×224×224, bf16), compiled vs eager",
        "issue": "5, 7",
        "better": "lower",
        "subject": ("fusefn compiled (bf16)",),
        "targets": {"fusefn eager (bf16)": ("<=", 1 / 1.3, "compiled ≥ 1.3× faster")},
    },
    "models.compile.resnet18_3d.96": {
        "title": "GPU: 3D ResNet-18 step (batch 8, 1×96³, bf16), compiled vs eager",
        "issue": 5,
        "better": "lower",
        "subject": ("fusefn compiled (bf16)",),
        "targets": {},
    },
}


def load(paths: Sequence[pathlib.Path]) -> dict[str, tuple[dict, list[dict]]]:
    """{file label: (machine info, rows)}."""
    runs = {}
    for p in paths:
        info, rows = {}, []
        for line in p.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("bench") == "_machine":
                info = row
            else:
                rows.append(row)
        runs[p.name] = (info, rows)
    return runs


def fmt(x: float) -> str:
    if x == 0 or x != x:  # zero or NaN
        return str(x)
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_ratio(r: float) -> str:
    # near 1 the later digits decide a "≤ 1.05" or "≤ 1" target: show more of them
    if 0.99 <= r <= 1.01:
        return f"{r:.5g}"
    return f"{r:.4g}" if 0.9 <= r <= 1.1 else f"{r:.3g}"


def check(ratio: float, op: str, value: float) -> bool:
    return ratio >= value if op == ">=" else ratio <= value


def pick_subject(rows_by_system: dict[str, dict], spec: dict) -> str | None:
    cands = [s for s in spec.get("subject", (C.FUSEFN,)) if s in rows_by_system]
    if not cands:
        return None
    better_high = spec["better"] == "higher"
    return sorted(cands, key=lambda s: rows_by_system[s]["median"], reverse=better_high)[0]


def comparison_md(name: str, rows: list[dict]) -> tuple[list[str], list[tuple[str, str, bool | None]]]:
    spec = COMPARISONS.get(name, {"title": name, "issue": "?", "better": "lower", "targets": {}})
    by_sys: dict[str, dict] = {}
    for r in rows:
        by_sys[r["system"]] = r  # the last row of a system wins (a re-run with --only appends)
    subject = pick_subject(by_sys, spec)
    sub_row = by_sys.get(subject) if subject else None
    on_gpu = bool(sub_row and str(sub_row.get("device", "")).startswith("cuda"))
    targets = spec.get("gpu_targets", spec["targets"]) if on_gpu else spec["targets"]
    any_row = next(iter(by_sys.values()))
    unit = any_row["unit"]
    better = "higher is better" if spec["better"] == "higher" else "lower is better"
    out = [f"### {spec['title']}", ""]
    size = f"n = {any_row['n']:,} {any_row.get('n_unit', '')}".rstrip()
    sizes = "quick sizes" if any(r.get("quick") for r in by_sys.values()) else "full sizes"
    out.append(f"`{name}` · issue {spec['issue']} · {any_row['figure']} in {unit} ({better}) · {size} ({sizes})")
    out.append("")
    ratio_head = f"{subject} / system" if subject else "fusefn / system"
    out.append(f"| system | device | median | min–max | reps | {ratio_head} | target | met |")
    out.append("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    verdicts = []
    for system, r in by_sys.items():
        rng = "" if r["repeats"] == 1 else f"{fmt(r['min'])}–{fmt(r['max'])}"
        ratio = tgt = met = ""
        if sub_row is not None and system != subject and r["median"]:
            q = sub_row["median"] / r["median"]
            ratio = fmt_ratio(q)
            if system in targets:
                op, value, words = targets[system]
                ok = check(q, op, value)
                tgt = f"{'≥' if op == '>=' else '≤'} {value:.3g} ({words})"
                met = "met" if ok else "**not met**"
                verdicts.append((name, f"{words}: {ratio} vs {'≥' if op == '>=' else '≤'} {value:.3g}", ok))
        elif system == subject:
            ratio = "1"
        dev = str(r.get("device", "")).split(" (")[0]
        out.append(f"| {system} | {dev} | {fmt(r['median'])} | {rng} | {r['repeats']} | {ratio} | {tgt} | {met} |")
    for system, (op, value, words) in targets.items():
        if system not in by_sys or sub_row is None:
            missing = system if system not in by_sys else "fusefn"
            out.append(f"| {missing} | | — | | | | {'≥' if op == '>=' else '≤'} {value:.3g} ({words}) | no row yet |")
            verdicts.append((name, f"{words}: no {missing} row", None))
    out.append("")
    notes = [f"- {s}: {r['settings']}" for s, r in by_sys.items() if r.get("settings")]
    vals = [f"- value computed by {s}: `{json.dumps(r['value'])}`" for s, r in by_sys.items() if "value" in r]
    if spec.get("note"):
        notes.append(f"- {spec['note']}")
    out += notes + vals
    if notes or vals:
        out.append("")
    return out, verdicts


def machine_md(info: dict) -> list[str]:
    if not info:
        return ["Machine: not recorded (rows written by a script run alone).", ""]
    peers = ", ".join(
        f"{k} {info[k]}"
        for k in ("fuse-med-ml", "monai", "torchmetrics", "scikit-learn", "h5py", "numpy")
        if info.get(k)
    )
    return [
        f"- **CPU**: {info.get('cpu')}, {info.get('cores')} cores; **threads** (torch.set_num_threads, all systems): "
        f"{info.get('threads')}",
        f"- **device**: {info.get('device')}",
        f"- **torch** {info.get('torch')}, Python {info.get('python')}, fusefn {info.get('fusefn')}",
        f"- **peers**: {peers or 'not installed (peer rows skipped)'}",
        f"- **run**: {info.get('date')}, {'QUICK (reduced sizes)' if info.get('quick') else 'full sizes'}, "
        f"{info.get('repeats')} timed repetitions after {info.get('warmup')} warm-up; load average at start "
        f"{info.get('load_average')} (other work on the machine makes the figures noisy)",
        *_runs_md(info.get("runs") or {}),
        "",
    ]


def _runs_md(runs: dict) -> list[str]:
    """When some benchmarks were re-run alone (``--only``), which rows come from which run."""
    by_date: dict[str, list[str]] = {}
    for bench, date in runs.items():
        by_date.setdefault(date, []).append(bench)
    if len(by_date) < 2:
        return []
    parts = [f"{', '.join(b)} at {d}" for d, b in sorted(by_date.items(), reverse=True)]
    return [f"- **rows measured**: {'; '.join(parts)} (re-run alone; the machine line above is the latest run's)"]


def generate(paths: Sequence[pathlib.Path] | None = None, out: pathlib.Path = OUT) -> pathlib.Path:
    paths = list(paths) if paths else sorted(C.BENCH_DIR.glob("results-*.jsonl"))
    runs = load(paths)
    lines = [
        "# fusefn benchmarks",
        "",
        "Generated by `python bench/report.py` from the JSON rows the scripts in `bench/` write; do not edit by hand.",
        "Run everything with `nox -s bench` (full sizes) or `nox -s bench -- --quick` (reduced sizes, < 5 min on 2",
        "cores); one comparison with `nox -s bench -- --only NAME`; on a CUDA machine `python bench/run.py --device "
        "cuda`.",
        "Every figure is the median over the repetitions after warm-up (min–max beside it), all systems on identical",
        "inputs with the same thread count. Ratios are fusefn's figure over the other system's: above 1 means fusefn is",
        "higher (faster for rates), below 1 lower (faster for times). Peers run with their documented defaults or the",
        "settings of their own examples, listed under each table.",
        "",
    ]
    summary: list[tuple[str, str, bool | None]] = []
    body: list[str] = []
    for label, (info, rows) in runs.items():
        kind = ("CUDA" if "cuda" in label else "CPU") + (" quick" if info.get("quick") else (" full" if info else ""))
        body += [f"## {kind} run (`{label}`)", ""]
        body += machine_md(info)
        if info.get("quick"):
            body += [
                "> Quick run: reduced sizes, so the figures are indicative only; the issues' targets are for the",
                "> full sizes.",
                "",
            ]
        names = list(dict.fromkeys(r["name"] for r in rows))
        order = [n for n in COMPARISONS if n in names] + [n for n in names if n not in COMPARISONS]
        for name in order:
            md, verdicts = comparison_md(name, [r for r in rows if r["name"] == name])
            body += md
            summary += [(f"{kind}: {n}", w, ok) for n, w, ok in verdicts]
    if summary:
        lines += [
            "## Targets at a glance",
            "",
            "| comparison | target: measured ratio vs required | met |",
            "| --- | --- | --- |",
        ]
        for n, w, ok in summary:
            lines.append(f"| `{n}` | {w} | {'met' if ok else ('—' if ok is None else '**not met**')} |")
        lines.append("")
    lines += body
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="*", type=pathlib.Path, help="JSON-lines files (default: bench/results-*.jsonl)")
    p.add_argument("--out", type=pathlib.Path, default=OUT)
    args = p.parse_args(argv)
    print(generate(args.results, args.out))


if __name__ == "__main__":
    main()
