"""3D Dice on FuseMedML's 4 NIfTI segmentations: labels {1,2,3}, {2,3} and {2}, per volume then averaged (issue 6).

The 4 predicted / reference label maps (50–178 × 512 × 512) of FuseMedML's ``semantic_segmentation`` inputs (shipped in
``src/fusefn_recipes/reference/fuse_eval``) are read once into memory; each timing covers turning them into the three
binary groupings and computing the three averaged Dice values. ``--quick`` takes every second voxel along each axis.

- FuseMedML 0.4.1: its own ``example_seg_0`` — ``EvaluatorDefault().eval(batch_size=1)`` over the volumes with three
  ``MetricDice`` metrics whose ``pre_collect_process_func`` builds the binary masks, as the example writes them.
- fusefn: one ``fusefn.metrics.Dice(classes=((1, 2, 3), (2, 3), (2,)))`` reducer over the integer label maps,
  updated with one volume at a time.
"""

from __future__ import annotations

import pathlib
import sys
import warnings

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


if __name__ == "__main__":
    main()
