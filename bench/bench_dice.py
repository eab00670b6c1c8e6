"""3D Dice on FuseMedML's 4 NIfTI segmentations: labels {1,2,3}, {2,3} and {2}, per volume then averaged (issue 6).

The 4 predicted / reference label maps (50–178 × 512 × 512) of FuseMedML's ``semantic_segmentation`` inputs (shipped in
``src/fusefn_recipes/reference/fuse_eval``) are read once into memory; each timing covers turning them into the three
binary groupings and computing the three averaged Dice values. ``--quick`` takes every second voxel along each axis.

- FuseMedML 0.4.1: its own ``example_seg_0`` — ``EvaluatorDefault().eval(batch_size=1)`` over the volumes with three
  ``MetricDice`` metrics whose ``pre_collect_process_func`` builds the binary masks, as the example writes them.
- fusefn: one ``fusefn.metrics.Dice(classes=((1, 2, 3), (2, 3), (2,)))`` reducer over the integer label maps,
  updated with one volume at a time.

Row ``metrics.seg3d.all`` (issue 15): every segmentation metric of the three label groups on the same volumes,
distances in mm (spacing = column norms of each file's affine), NSD at τ = 2 mm; from the integer label maps in
memory to the per-volume values.

- fusefn: ``fusefn.metrics.segmentation.case_scores`` per volume: Dice, IoU, HD95, ASSD, NSD, volumes and their
  difference (MONAI's definitions; one surface extraction per class and mask, exact KD-tree searches), the
  volumes on a pool of the run's ``--threads`` threads (``case_scores(workers=threads)`` also runs a volume's
  label groups side by side). fusefn and FuseMedML alternate every repetition (``measure_interleaved``);
  MONAI (minutes per repetition) runs after them.
- MONAI 1.6.1: ``DiceMetric``, ``MeanIoU``, ``HausdorffDistanceMetric(percentile=95)``,
  ``SurfaceDistanceMetric(symmetric=True)`` and ``SurfaceDiceMetric([2.0] * 3)`` with ``spacing=``, over the three
  group masks stacked as channels (``include_background=True``); building the channels is timed. MONAI has no
  volume difference.
- FuseMedML 0.4.1: all it offers in 3D of that list — ``MetricDice`` and ``MetricIouJaccard`` through
  ``EvaluatorDefault`` as in its example (its only Hausdorff, ``Metric2DHausdorff``, is 2D only; it has no ASSD/NSD).
"""

from __future__ import annotations

import pathlib
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

SEG = C.FUSE_EVAL / "semantic_segmentation"
GROUPS = {"label_1": (1, 2, 3), "label_2": (2, 3), "label_3": (2,)}


def load_volumes(stride: int):
    import nibabel as nib

    vols = []
    for p in sorted((SEG / "predicted").glob("*.nii.gz")):
        sid = p.name.split(".")[0]
        pred = np.asanyarray(nib.load(p).dataobj)[::stride, ::stride, ::stride]
        label = np.asanyarray(nib.load(SEG / "labeled" / sid / "seg.nii.gz").dataobj)[::stride, ::stride, ::stride]
        vols.append((sid, np.ascontiguousarray(pred), np.ascontiguousarray(label)))
    return vols


def _pre_collect(group: str):
    labels = GROUPS[group]

    # FuseMedML's example builds the masks with a loop of == over the group's labels; same here
    def f(sample_dict: dict) -> dict:
        mask = np.zeros(sample_dict["pred.array"].shape, dtype=bool)
        mask_label = np.zeros(sample_dict["pred.array"].shape, dtype=bool)
        for lab in labels:
            mask[sample_dict["pred.array"] == lab] = True
            mask_label[sample_dict["label.array"] == lab] = True
        sample_dict[f"pred.array_{group}"] = mask
        sample_dict[f"label.array_{group}"] = mask_label
        return sample_dict

    return f


def fusemedml_dice(vols):
    from fuse.eval.evaluator import EvaluatorDefault
    from fuse.eval.metrics.segmentation.metrics_segmentation_common import MetricDice

    out = {}

    def run():
        def data_iter():
            for sid, pred, label in vols:
                yield {"id": sid, "pred.array": pred, "label.array": label}

        metrics = {
            f"dice_{g}": MetricDice(
                pred=f"pred.array_{g}", target=f"label.array_{g}", pre_collect_process_func=_pre_collect(g)
            )
            for g in GROUPS
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = EvaluatorDefault().eval(ids=None, data=data_iter(), batch_size=1, metrics=metrics)
        out["value"] = [round(float(res[f"metrics.dice_{g}.average"]), 4) for g in GROUPS]

    return run, out


def fusefn_dice(vols):
    metrics, why = C.optional_import("fusefn.metrics", "Dice")
    if metrics is None:
        return None, why
    # one reducer scores the three label groups straight from the integer label maps
    dice = metrics.Dice(pred="pred", target="target", classes=tuple(GROUPS.values()), class_names=tuple(GROUPS))
    out = {}

    def run():
        state = dice.init()
        for _sid, pred, label in vols:
            state = dice.update(state, {"pred": pred[None], "target": label[None]})
        res = dice.compute(state)
        out["value"] = [round(float(res[g]), 4) for g in GROUPS]

    return (run, out), None


TAU = 2.0


def fusefn_all(vols, threads: int = 1):
    seg, why = C.optional_import("fusefn.metrics.segmentation", "case_scores")
    if seg is None:
        return None, why
    out = {}
    groups = tuple(GROUPS.values())

    def one(v):
        _sid, p, r, sp = v
        return seg.case_scores(p, r, groups, spacing=sp, tolerance=TAU, workers=threads)

    def run():
        # the run's threads: volumes side by side, and a volume's label groups side by side (NumPy and the
        # KD-tree searches release the GIL)
        with ThreadPoolExecutor(threads) as pool:
            res = list(pool.map(one, vols))
        out["value"] = _summary([[[v[k][m] for k in v] for m in ("dice", "hd95", "assd", "nsd")] for v in res])

    return (run, out), None


def _summary(per_volume) -> list:
    """Mean over volumes of [dice, hd95, assd, nsd] per group, rounded: the systems' values side by side."""
    a = np.asarray(per_volume, dtype=np.float64)  # (volumes, 4 metrics, 3 groups)
    return np.round(a.mean(axis=0), 4).tolist()


def monai_all(vols):
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDiceMetric, SurfaceDistanceMetric

    out = {}

    def run():
        rows = []
        for _sid, p, r, sp in vols:
            yp = torch.from_numpy(np.stack([np.isin(p, g) for g in GROUPS.values()])[None])
            yr = torch.from_numpy(np.stack([np.isin(r, g) for g in GROUPS.values()])[None])
            s = list(sp)
            d = DiceMetric(include_background=True, reduction="none")(yp, yr)
            MeanIoU(include_background=True, reduction="none")(yp, yr)
            h = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(yp, yr, spacing=s)
            a = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")(yp, yr, spacing=s)
            n = SurfaceDiceMetric([TAU] * 3, include_background=True, reduction="none")(yp, yr, spacing=s)
            rows.append([t[0].tolist() for t in (d, h, a, n)])
        out["value"] = _summary(rows)

    return run, out


def fusemedml_overlap(vols):
    from fuse.eval.evaluator import EvaluatorDefault
    from fuse.eval.metrics.segmentation.metrics_segmentation_common import MetricDice, MetricIouJaccard

    out = {}

    def run():
        def data_iter():
            for sid, pred, label, _sp in vols:
                yield {"id": sid, "pred.array": pred, "label.array": label}

        metrics = {}
        for g in GROUPS:
            for kind, cls in (("dice", MetricDice), ("iou", MetricIouJaccard)):
                metrics[f"{kind}_{g}"] = cls(
                    pred=f"pred.array_{g}", target=f"label.array_{g}", pre_collect_process_func=_pre_collect(g)
                )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = EvaluatorDefault().eval(ids=None, data=data_iter(), batch_size=1, metrics=metrics)
        out["value"] = [round(float(res[f"metrics.dice_{g}.average"]), 4) for g in GROUPS]

    return run, out


def load_geometry(stride: int):
    import nibabel as nib

    spacing = {}
    for p in sorted((SEG / "predicted").glob("*.nii.gz")):
        a = nib.load(SEG / "labeled" / p.name.split(".")[0] / "seg.nii.gz").affine
        spacing[p.name.split(".")[0]] = tuple(float(x) * stride for x in np.linalg.norm(a[:3, :3], axis=0))
    return spacing


def all_metrics_rows(rec, args, vols) -> None:
    spacing = load_geometry(2 if args.quick else 1)
    vols = [(sid, p, r, spacing[sid]) for sid, p, r in vols]
    voxels = sum(v[1].size for v in vols)
    name = "metrics.seg3d.all"
    common = {"figure": "time", "unit": "s", "n": voxels, "n_unit": "voxels"}
    settings = {
        C.FUSEFN: f"case_scores per volume, all metrics, τ = 2 mm; {args.threads} threads (volumes and label groups "
        "side by side)",
        C.FUSEMEDML: "MetricDice + MetricIouJaccard (all its 3D metrics of the list), batch_size=1",
    }
    # fusefn and FuseMedML alternate every repetition: a change in the machine's load hits both alike
    runs, outs = {}, {}
    sides, why = C.attempt(fusefn_all, vols, args.threads)
    if sides is None:
        rec.skip(name, C.FUSEFN, why)
    else:
        runs[C.FUSEFN], outs[C.FUSEFN] = sides
    m, why = C.peer("fuse.eval.metrics.segmentation.metrics_segmentation_common", "MetricIouJaccard")
    if m is None:
        rec.skip(name, C.FUSEMEDML, why)
    else:
        runs[C.FUSEMEDML], outs[C.FUSEMEDML] = fusemedml_overlap(vols)
    times = C.measure_interleaved(runs, repeats=args.repeats, warmup=args.warmup) if runs else {}
    for system, t in times.items():
        if isinstance(t, Exception):
            rec.skip(name, system, f"failed: {type(t).__name__}: {str(t)[:300]}")
            continue
        rec.add(name, system, t, **common, extra={"value": outs[system]["value"]}, settings=settings[system])
        print(f"  {system} values:", outs[system]["value"])
    m, why = C.peer("monai.metrics", "SurfaceDiceMetric")
    if m is None:
        rec.skip(name, C.MONAI, why)
    else:
        with C.guard(rec, name, C.MONAI):
            run, out = monai_all(vols)
            # minutes per repetition: no untimed warm-up (nothing in it is compiled or cached)
            t = C.measure(run, repeats=args.repeats, warmup=0)
            rec.add(
                name,
                C.MONAI,
                t,
                **common,
                extra={"value": out["value"]},
                settings="Dice, MeanIoU, HD95, symmetric ASSD, SurfaceDice(τ = 2 mm) metrics with spacing, CPU",
            )
            print("  MONAI [dice, hd95, assd, nsd] × groups:", out["value"])


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("dice", args)
    rec = C.Recorder("dice", args)
    if args.device.startswith("cuda"):
        print("  FuseMedML's Dice is NumPy on the host: no CUDA rows")
        return
    vols = load_volumes(2 if args.quick else 1)
    voxels = sum(v[1].size for v in vols)
    name = "metrics.dice3d.nifti"
    m, why = C.peer("fuse.eval.metrics.segmentation.metrics_segmentation_common", "MetricDice")
    if m is None:
        rec.skip(name, C.FUSEMEDML, why)
    else:
        with C.guard(rec, name, C.FUSEMEDML):
            run, out = fusemedml_dice(vols)
            t = C.measure(run, repeats=args.repeats, warmup=min(args.warmup, 1))
            rec.add(
                name,
                C.FUSEMEDML,
                t,
                figure="time",
                unit="s",
                n=voxels,
                n_unit="voxels",
                extra={"value": out["value"]},
                settings="its example_seg_0: 3 × MetricDice with pre_collect_process_func, batch_size=1",
            )
            print("  FuseMedML Dice:", out["value"])
    sides, why = C.attempt(fusefn_dice, vols)
    if sides is None:
        rec.skip(name, C.FUSEFN, why)
    else:
        with C.guard(rec, name, C.FUSEFN):
            run, out = sides
            t = C.measure(run, repeats=args.repeats, warmup=args.warmup)
            rec.add(
                name,
                C.FUSEFN,
                t,
                figure="time",
                unit="s",
                n=voxels,
                n_unit="voxels",
                extra={"value": out["value"]},
                settings="Dice(classes=3 label groups), one volume per update",
            )
            print("  fusefn Dice:", out["value"])
    all_metrics_rows(rec, args, vols)


if __name__ == "__main__":
    main()
