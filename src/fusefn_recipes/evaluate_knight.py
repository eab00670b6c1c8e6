"""The analyzer alone: FuseMedML's published KNIGHT evaluation, reproduced with fusefn.metrics.

Shows how to evaluate inference files you already have, with no model: read
prediction and target CSVs with Polars, join them on ``id``, and run metric
reducers over the frame's columns — binary ROC AUC with a 10,000-resample
stratified bootstrap CI, the 5-class one-vs-rest AUCs, per-fold AUCs from one
inference file per fold, and (when the library has them) the DeLong test and the
3D Dice of the NIfTI segmentations.

Data: the real KNIGHT baseline outputs from FuseMedML's own evaluation tests, shipped
with the package (:func:`fusefn_recipes.reference.fuse_eval_dir`; ``--data`` to point
elsewhere).

Figure reached (measured): AUC 0.845; CI mean/std/lower/upper 0.845/0.062/0.709/0.951
(FuseMedML: 0.8456/0.0622/0.712/0.954 — equal within Monte-Carlo error, the RNGs differ);
folds 0.841/0.837; per class B 0.877, LR 0.857, IR 0.670, HR 0.911, VHR 0.723, macro 0.808;
DeLong z 1.672, p 0.0945; Dice 0.8741/0.7164/0.7184 — every published value. The
10,000-resample bootstrap takes ≈ 0.06 s (FuseMedML: 49.6 s).

    python recipes/evaluate_knight.py all --out runs/knight
"""

from __future__ import annotations

import pathlib
import time

import click
import numpy as np
import polars as pl

from fusefn import Rng, metrics, recipe
from fusefn.analyze import analyze as fusefn_analyze
from fusefn.errors import ConfigError
from fusefn.recipe import Run
from fusefn_recipes.reference import fuse_eval_dir

__all__ = ["RECIPE", "cli", "PUBLISHED", "CLASS_NAMES", "binary", "multiclass", "folds", "delong", "dice"]

CLASS_NAMES = ("B", "LR", "IR", "HR", "VHR")
THRESHOLD = 0.5  # the decision threshold of task 1's scores: fixed, as FuseMedML's evaluation (no validation set)

# what FuseMedML 0.4.1 produces on the same files (reference/fuse_eval/README.md)
PUBLISHED = {
    "binary.auc": 0.845,
    "binary.ci.mean": 0.8456,
    "binary.ci.std": 0.0622,
    "binary.ci.lower": 0.712,
    "binary.ci.upper": 0.954,
    "folds.pooled": 0.845,
    "folds.fold0": 0.841,
    "folds.fold1": 0.837,
    "folds.mean": 0.839,
    **{f"multiclass.{c}": v for c, v in zip((*CLASS_NAMES, "macro"), (0.877, 0.857, 0.670, 0.911, 0.723, 0.808))},
    "delong.z": 1.672,
    "delong.p": 0.09453,
    "delong.auc1": 0.9643,
    "delong.auc2": 0.7381,
    "dice.label_1_2_3": 0.8741,
    "dice.label_2_3": 0.7164,
    "dice.label_2": 0.7184,
}

# the DeLong example FuseMedML checks against R
_DELONG_TARGET = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
_DELONG_PRED1 = [0.1, 0.2, 0.05, 0.3, 0.1, 0.6, 0.6, 0.7, 0.8, 0.99, 0.8, 0.67, 0.5]
_DELONG_PRED2 = [0.3, 0.6, 0.2, 0.1, 0.1, 0.9, 0.23, 0.7, 0.9, 0.4, 0.77, 0.3, 0.89]


def default_data_dir() -> pathlib.Path:
    """The FuseMedML inputs shipped with the package: :func:`fusefn_recipes.reference.fuse_eval_dir`."""
    try:
        return fuse_eval_dir()
    except FileNotFoundError as e:
        raise ConfigError(f"{e}; or pass --data DIR") from e


def _read(data: pathlib.Path, name: str) -> pl.DataFrame:
    path = data / name
    if not path.is_file():
        raise ConfigError(f"--data {data}: {name} not found (expected FuseMedML's KNIGHT evaluation inputs there)")
    return pl.read_csv(path)


def _columns(frame: pl.DataFrame) -> dict:
    """A frame as a flat batch: one array per column, sample ids under data.sample_id."""
    batch = {c: frame[c].to_numpy() for c in frame.columns}
    batch["data"] = {"sample_id": frame["id"].to_list()}
    return batch


def _run(metric, batch):
    return metric.compute(metric.update(metric.init(), batch))


def binary(data: pathlib.Path, n: int, *, rng: Rng) -> dict:
    """Example 1: CanAT-score vs Task1-target, AUC and stratified bootstrap CI."""
    frame = _read(data, "example1_predictions.csv").join(_read(data, "example1_targets.csv"), on="id", validate="1:1")
    batch = _columns(frame)
    auc = metrics.AUCROC(pred="CanAT-score", target="Task1-target")
    t0 = time.perf_counter()
    ci = _run(metrics.Bootstrap(auc, n=n, rng=rng, stratify="Task1-target"), batch)
    seconds = time.perf_counter() - t0
    return {"auc": _run(auc, batch), "ci": ci, "ci_seconds": seconds, "frame": frame}


def multiclass(data: pathlib.Path) -> dict:
    """Example 7: 5-class scores vs Task2-target, one-vs-rest AUC per class and macro."""
    frame = _read(data, "example7_predictions.csv").join(_read(data, "example1_targets.csv"), on="id", validate="1:1")
    cols = tuple(f"{c}-score" for c in CLASS_NAMES)
    return _run(metrics.AUCROC(pred=cols, target="Task2-target", class_names=CLASS_NAMES), _columns(frame))


def folds(data: pathlib.Path) -> dict:
    """Example 2: one inference file per fold, concatenated with a fold column; AUC per fold and pooled."""
    parts = [_read(data, f"example2_predictions_fold{k}.csv").with_columns(pl.lit(k).alias("fold")) for k in (0, 1)]
    frame = pl.concat(parts).join(_read(data, "example2_targets.csv"), on="id", validate="1:1")
    auc = metrics.AUCROC(pred="CanAT-score", target="Task1-target")
    out = {f"fold{k}": _run(auc, _columns(frame.filter(pl.col("fold") == k))) for k in (0, 1)}
    out["mean"] = float(np.mean([out["fold0"], out["fold1"]]))
    out["pooled"] = _run(auc, _columns(frame))
    return out


def delong() -> dict:
    """FuseMedML's DeLong example (verified against R)."""
    batch = {"p1": np.array(_DELONG_PRED1), "p2": np.array(_DELONG_PRED2), "y": np.array(_DELONG_TARGET)}
    r = _run(metrics.DeLong(pred1="p1", pred2="p2", target="y"), batch)
    return {"z": r["z"], "p": r["p_value"], "auc1": r["auc1"], "auc2": r["auc2"]}


def dice(data: pathlib.Path) -> dict | None:
    """Dice of the 4 predicted NIfTI label maps, per volume then averaged, for three label groups."""
    seg = data / "semantic_segmentation"
    if not seg.is_dir():
        return None
    import nibabel as nib

    metric = metrics.Dice(pred="pred", target="target", classes=((1, 2, 3), (2, 3), 2))
    state = metric.init()
    for pred_file in sorted((seg / "predicted").glob("id_*.nii.gz")):
        sid = pred_file.name.removesuffix(".nii.gz")
        pred = np.asarray(nib.load(pred_file).dataobj)
        target = np.asarray(nib.load(seg / "labeled" / sid / "seg.nii.gz").dataobj)
        state = metric.update(state, {"pred": pred[None], "target": target[None], "data": {"sample_id": [sid]}})
    r = metric.compute(state)
    return {"label_1_2_3": r["1+2+3"], "label_2_3": r["2+3"], "label_2": r["2"]}


def _analyze(run: Run) -> dict:
    data = pathlib.Path(run.hp["data"]) if run.hp.get("data") else default_data_dir()
    n = run.hp["n_boot"] if not run.fast else min(run.hp["n_boot"], 1000)
    b = binary(data, n, rng=run.rng)
    ours = {
        "binary.auc": b["auc"],
        **{f"binary.ci.{k}": b["ci"][k] for k in ("mean", "std", "lower", "upper")},
        **{f"folds.{k}": v for k, v in folds(data).items()},
        **{f"multiclass.{k}": v for k, v in multiclass(data).items()},
    }
    ours.update({f"delong.{k}": v for k, v in delong().items()})
    if run.hp["dice"]:
        try:
            t0 = time.perf_counter()
            dc = dice(data)
            if dc:
                ours.update({f"dice.{k}": v for k, v in dc.items()})
                run.logger.info("Dice of 4 volumes took %.2f s (FuseMedML 0.4.1: 19.6 s)", time.perf_counter() - t0)
        except Exception as e:
            run.logger.warning("Dice skipped: %s", e)
    return {"ours": ours, "binary": b, "n_resamples": n}


def analyze(run: Run) -> None:
    res = _analyze(run)
    ours = res["ours"]
    lines = [f"{'figure':<22} {'fusefn':>9} {'FuseMedML':>10}"]
    for k, v in ours.items():
        pub = PUBLISHED.get(k)
        lines.append(f"{k:<22} {v:>9.4f} {pub if pub is not None else '':>10}")
    lines.append(
        f"bootstrap of {res['n_resamples']} resamples took {res['binary']['ci_seconds']:.3f} s "
        "(FuseMedML 0.4.1: 49.6 s)"
    )
    click.echo("\n".join(lines))
    rd = run.report_dir
    recipe.save_json(rd / "metrics.json", {"fusefn": ours, "fusemedml": PUBLISHED, "n_resamples": res["n_resamples"]})
    frame = res["binary"]["frame"]
    # the AUC's bootstrap CI in the legend; the circle: FuseMedML's fixed threshold (no validation set here)
    fig = recipe.roc_figure(
        rd / "roc_binary.png",
        frame["Task1-target"].to_numpy(),
        frame["CanAT-score"].to_numpy(),
        title="KNIGHT task 1 (CanAT-score)",
        auc=res["binary"]["ci"],
        threshold=THRESHOLD,
    )
    # the analyzer's figures: ROC with its bootstrap band, confusion matrix, reliability
    fusefn_analyze(
        frame,
        id="id",
        score="CanAT-score",
        label="Task1-target",
        out=rd / "analysis",
        ci=res["n_resamples"],
        rng=run.rng,
        class_names=["no AT", "AT"],
    )
    captions = {
        "roc.png": "ROC, task 1, with its 95 % bootstrap band",
        "confusion_matrix.png": f"confusion matrix at {THRESHOLD:g}",
        "reliability.png": "reliability diagram",
    }
    figures = [(c, rd / "analysis" / f) for f, c in captions.items() if (rd / "analysis" / f).is_file()]
    figures = figures or [("ROC, task 1", fig)]
    rows = [("ROC AUC, task 1", res["binary"]["ci"])]
    rows += [(f"{k} (FuseMedML {PUBLISHED.get(k, '–')})", v) for k, v in ours.items() if k != "binary.auc"]
    table = "\n".join(["```", *lines, "```"])
    recipe.write_report(
        rd / "report.md",
        "KNIGHT evaluation (FuseMedML's published figures)",
        rows,
        intro="Bootstrap: stratified by Task1-target, seed "
        f"{run.rng.seed}, {res['n_resamples']} resamples, percentile interval. Decision threshold of task 1: "
        f"{THRESHOLD:g}, fixed as in FuseMedML's evaluation (the files hold no validation predictions to tune it on).",
        sections=[("fusefn vs FuseMedML", table)],
        figures=figures,
    )


OPTIONS = [
    click.option(
        "--data",
        type=click.Path(path_type=pathlib.Path, file_okay=False),
        default=None,
        help="Folder with FuseMedML's KNIGHT CSVs [default: the copy shipped in fusefn_recipes/reference/fuse_eval].",
    ),
    click.option(
        "--dice/--no-dice",
        default=True,
        show_default=True,
        help="Also the 3D Dice of the NIfTI segmentations (needs nibabel).",
    ),
]

RECIPE = recipe.Recipe(
    name="evaluate_knight",
    doc=__doc__,
    options=OPTIONS,
    # the bootstrap's resamples and seed are --n-boot and --seed as in every recipe; the seed that gave the
    # figures quoted above stays the default, and the old spellings still work (with a warning)
    defaults={"n_boot": 10_000, "seed": 1234},
    aliases={"n_resamples": "n_boot", "ci_seed": "seed"},
    analyze=analyze,
)
cli = RECIPE.cli()

if __name__ == "__main__":
    cli()
