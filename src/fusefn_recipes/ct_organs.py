"""3D CT segmentation from files on disk: two organs and a lesion, a 3D UNet on patches, sliding windows.

Shows the volume segmentation path end to end on generated CT-like phantoms written as a
scanner would (no download): ``make-example DIR`` writes each case's image as a DICOM series
(HU stored with a rescale intercept, 0.7–0.9 mm pixels, 2–3 mm slices, axial, flipped, coronal,
sagittal or tilted acquisitions) and its label map as NIfTI (1 liver, 2 kidney, 3 a lesion inside
the liver). Training reads them back with ``ReadDicomSeries`` / ``ReadNifti`` (the label map checked
to lie on the image's grid), orients them to RAS and resamples to one spacing (``--spacing``),
windows the HU, and caches each volume with its per-class ``ForegroundIndices``; a 3D UNet learns
from patches drawn per class (``PatchSampler(ratios=...)``) with soft Dice + cross-entropy.
``infer`` runs sliding windows over each test case, keeps the largest component of each organ, and
writes one NIfTI mask per case on the grid its scan was read on; ``analyze`` scores them against the
reference label maps (``fusefn.analyze.evaluate_segmentations``: Dice, IoU, HD95, ASSD, NSD, volume
difference, bootstrap CIs over cases). The liver is scored with its lesion (labels 1+3), as the
Decathlon's liver task and KiTS score an organ with its tumour.

``--data DIR`` reads a ``make-example`` folder, or a Medical Segmentation Decathlon task folder
(``dataset.json``, ``imagesTr/``, ``labelsTr/``: NIfTI images, classes named by its ``labels``).
Without it, the cases are generated from ``--seed`` into ``OUT/example`` on first use.

Under ``torchrun`` (``torchrun --nproc-per-node 2 -m fusefn_recipes.ct_organs train ...``) rank 0 fills the
cache while the others wait, each rank trains on patches of its own share of the volumes and the gradients
are averaged (``--batch-size`` is per rank); ``infer`` run on every rank predicts each rank's share of the
test cases and rank 0 writes the merged sidecar (docs/scaling-out.md). ``fusefn cache build ct_organs`` and
``fusefn visualize ct_organs`` use :func:`static_data`; ``cross_validation --recipe ct_organs`` uses :func:`cv_task`.

Figure reached (measured, default run, seed 0: 30 generated cases, 16 train / 4 validation / 10 test,
1.5 mm, 24³ patches, a (8, 16, 32) UNet, 30 epochs): on the 10 held-out cases, Dice liver 0.955
[0.954, 0.957], kidney 0.912 [0.903, 0.919], lesion 0.884 [0.872, 0.897]; HD95 1.08 / 0.89 / 2.49 mm;
5 min 04 s wall (362 s of CPU, 623 MB peak) on 2 cores (load 4 falling to 0.2), 2026-12-06.

    python recipes/ct_organs.py make-example data/ct
    python recipes/ct_organs.py all --out runs/ct_organs --data data/ct
"""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Mapping

import click
import numpy as np
import polars as pl
import torch

from fusefn import Rng, augment, chain, keys, nd, optim, recipe, record, train
from fusefn._atomic import atomic_path
from fusefn.data import DataSource, PatchDataset, PatchSampler
from fusefn.data.ops import (
    ForegroundIndices,
    KeepLargestComponent,
    Orient,
    ReadDicomSeries,
    ReadNifti,
    Resample,
    Window,
)
from fusefn.errors import ConfigError
from fusefn.losses import SegmentationCrossEntropy, SoftDice
from fusefn.metrics import Dice
from fusefn.models import Model, SegmentationHead3D, UNet
from fusefn.recipe import RecipeInputError, Run
from fusefn_recipes import ct_organs_data as ctd

__all__ = [
    "RECIPE",
    "cli",
    "LabelMap",
    "make_model",
    "cases",
    "splits",
    "datasets",
    "patch_data",
    "losses",
    "fit_model",
    "predict",
]

SEG = "data.gt.seg"  # this recipe's own key: the label map, D×H×W int64 (what the losses and Dice read)
LABELS = keys.labels()  # where volume inference puts the predicted label map
SPLITS = ("train", "validation", "test")
LESION_WORDS = ("lesion", "tumour", "tumor", "cancer", "nodule", "mass", "metastas", "edema", "enhancing")


@record
class LabelMap:
    """Static op: the mask read as ``1×D×H×W`` becomes ``out_key`` (``D×H×W`` int64); the mask key is dropped."""

    key: str = keys.MASK
    out_key: str = SEG

    def __call__(self, sample: Mapping) -> dict:
        lab = np.asarray(nd.get(sample, self.key))
        return nd.assoc(nd.dissoc(sample, self.key), self.out_key, torch.from_numpy(lab.reshape(lab.shape[-3:])).long())


# ------------------------------------------------------------------------------ data


def data_dir(run: Run) -> pathlib.Path:
    """``--data``, or ``OUT/example`` (generated from the run's seed on first use)."""
    if run.hp["data"]:
        return pathlib.Path(run.hp["data"])
    folder = run.out / "example"
    if not (folder / "ct_organs.json").is_file():
        run.logger.info("writing %d generated CT cases to %s", run.hp["n_cases"], folder)
        ctd.write_example(folder, run.hp["n_cases"], rng=run.rng, size=_fov(run.hp["fov"]))
    return folder


def _fov(value) -> tuple:
    return (float(value),) * 3 if np.ndim(value) == 0 else tuple(float(x) for x in value)


def cases(run: Run) -> tuple[DataSource, dict[int, str], str]:
    """The cases (``sample_id``, ``image``, ``label``, ``split``), the classes ``{value: name}`` and the file kind."""
    frame, names, kind = ctd.find_cases(data_dir(run))
    n, n_val, n_test = len(frame), run.hp["n_validation"], run.hp["n_test"]
    if n < n_val + n_test + 1:
        raise RecipeInputError(f"{n} cases: too few for {n_val} validation + {n_test} test cases and training")
    order = run.rng.child("ct_organs/split").numpy().permutation(n)
    split = np.empty(n, object)
    split[order[:n_test]], split[order[n_test : n_test + n_val]], split[order[n_test + n_val :]] = SPLITS[::-1]
    frame = frame.with_columns(pl.Series("split", split.tolist(), dtype=pl.String))
    return DataSource.from_frame(frame, name=f"ct_organs {kind}"), names, kind


def splits(run: Run) -> dict[str, DataSource]:
    src, _, _ = cases(run)
    return {s: src.filter(pl.col("split") == s) for s in SPLITS}


def _reader(kind: str):
    return ReadDicomSeries(path="{image}") if kind == "dicom" else ReadNifti(path="{image}")


def _static(run: Run, kind: str, names: Mapping, with_labels: bool = True):
    """Read, orient to RAS, resample to ``--spacing``, window the HU; with the labels, their foreground indices."""
    hp = run.hp
    label_keys = (keys.MASK,) if with_labels else ()
    ops = [_reader(kind)]
    if with_labels:
        ops.append(ReadNifti(key=keys.MASK, path="{label}", check_affine_key=keys.AFFINE))
    ops += [
        Orient(axcodes="RAS", label_keys=label_keys),
        Resample(spacing=hp["spacing"], label_keys=label_keys),
        Window(keys=(keys.IMAGE,), center=hp["window"][0], width=hp["window"][1]),
    ]
    if with_labels:
        ops += [LabelMap(), ForegroundIndices(label_key=SEG, classes=tuple(sorted(names)), rng=run.rng)]
    return chain(*ops)


def _sampler(run: Run, names: Mapping) -> PatchSampler:
    # every class as often as the background: the lesion (a few hundred voxels) is seen in every batch
    ratios = {**{c: 1.0 for c in names}, "bg": run.hp["bg_ratio"]}
    return PatchSampler(size=(run.hp["patch"],) * 3, n=run.hp["patches"], ratios=ratios, keys=(keys.IMAGE, SEG))


# ----------------------------------------------------------------------------- model


def make_model(channels: tuple, num_classes: int) -> Model:
    """A 3D UNet with a dense head of ``num_classes`` (background included) writing ``model.head_0.logits``."""
    return Model(
        inputs=(keys.IMAGE,),
        backbone=UNet(in_channels=1, channels=channels, spatial_dims=3),
        heads=(SegmentationHead3D(name=keys.HEAD, num_classes=num_classes),),
    )


def patch_data(run: Run, names: Mapping, train_ds, val_ds) -> tuple:
    """``(training patches, validation batches)``: under ``torchrun`` this rank's volumes only (each rank others)."""
    hp = run.hp
    sampler = _sampler(run, names)
    patches = PatchDataset(train_ds, sampler, rng=run.rng.child("patches"), batch_size=hp["batch_size"], mix=2)
    # validation: the same patches every epoch (one draw, epoch 0), so epochs compare
    val = PatchDataset(val_ds, sampler, rng=run.rng.child("validation"), batch_size=hp["batch_size"], shuffle=False)
    return patches, list(val)


def losses(run: Run, names: Mapping) -> dict:
    """Cross-entropy plus soft Dice over the classes (background left out of the Dice), weighted ``--dice-weight``."""
    return {
        "ce": SegmentationCrossEntropy(pred=keys.logits(), target=SEG),
        "dice": SoftDice(pred=keys.logits(), target=SEG, include_background=False, weight=run.hp["dice_weight"]),
    }


def fit_model(run: Run, train_ds, val_ds, model_dir=None):
    """Train the UNet on patches of the built volume datasets ``train_ds`` / ``val_ds`` (also cross_validation's fit).

    Under ``torchrun`` each rank draws the patches of its share of the volumes and the gradients are
    averaged: ``--batch-size`` is per rank, as in :func:`fusefn.train.fit`.
    """
    hp = run.hp
    _, names, _ = cases(run)
    patches, val = patch_data(run, names, train_ds, val_ds)
    epochs = run.limit(hp["epochs"], "max_epochs")
    # cosine decay of the learning rate from --lr to 0 over the run's updates (every patch once per epoch)
    updates = len(patches.volume_order(0)) * hp["patches"]
    steps = max(epochs * -(-updates // hp["batch_size"]), 1)
    num_classes = max(names) + 1
    dice = Dice(pred=keys.probs(), target=SEG, classes=tuple(sorted(names)), class_names=_names(names))
    return recipe.fit(
        run,
        make_model(tuple(hp["channels"]), num_classes),
        losses(run, names),
        optim.adamw(lr=optim.cosine_decay(hp["lr"], decay_steps=steps), weight_decay=hp["weight_decay"]),
        patches.epochs(workers=run.limit(hp["workers"], "num_workers"), threads=True),
        val,
        epochs=hp["epochs"],
        model_dir=model_dir,
        metrics={"dice": dice},
        augment=augment.Intensity(image_keys=(keys.IMAGE,), multiply=(0.9, 1.1), add=(-0.05, 0.05), clip=None),
        best=train.BestEpochSource(source=f"validation.{keys.TOTAL_LOSS}", optimization="min"),
        # 32 patches of 24³ estimate each channel's statistics from ~440k voxels; the default (256 samples)
        # re-runs every training patch of the epoch, a fifth of the epoch's time
        batch_norm=train.BatchNormStats(samples=32),
    )


def datasets(run: Run) -> dict:
    """The (unbuilt, cached) volume datasets of the train and validation splits."""
    src, names, kind = cases(run)
    static = _static(run, kind, names)
    return {s: recipe.dataset(src.filter(pl.col("split") == s), static, cache_root=run.cache_dir) for s in SPLITS[:2]}


def train_phase(run: Run):
    # the group held over the whole phase: rank 0 fills the cache while the others wait, then every rank trains
    with train.process_group():
        train_ds, val_ds = recipe.build(*datasets(run).values(), workers=run.hp["workers"])
        return fit_model(run, train_ds, val_ds)


def _names(names: Mapping) -> tuple:
    return tuple(names[c] for c in sorted(names))


# ----------------------------------------------------------------------------- infer


def _organs(run: Run, names: Mapping) -> tuple:
    """The classes whose largest component is kept: ``--keep-largest``, else every class not named like a lesion."""
    if run.hp["keep_largest"]:
        return tuple(run.hp["keep_largest"])
    return tuple(c for c in sorted(names) if not any(w in names[c].lower() for w in LESION_WORDS))


def predict(run: Run):
    """Sliding-window inference of the test cases into ``OUT/infer`` (masks, reference copies, the sidecar).

    Under an active process group every rank predicts its share of the cases (each writes the masks of
    its own) and rank 0 writes the merged sidecar, the same rows as one process would.
    """
    from fusefn.data import Dataset
    from fusefn.train import distributed

    recipe.check_trained(run.model_dir)
    src, names, kind = cases(run)
    test_src = src.filter(pl.col("split") == "test")
    # lazy: each rank reads and resamples only the cases it predicts; a case that fails to load is recorded
    test = Dataset(source=test_src, static=_static(run, kind, names, with_labels=False))
    out = run.infer_file.parent
    masks, reference = out / "masks", out / "reference"
    if distributed.is_main():
        for folder in (masks, reference):
            shutil.rmtree(folder, ignore_errors=True)
    distributed.barrier()
    roi = (run.hp["roi"] or run.hp["patch"],) * 3
    organs = _organs(run, names)
    # train.infer as recipe.infer calls it, sharded: under a process group every rank is here
    frame = train.infer(
        run.model_dir,
        test,
        output_file=run.infer_file,
        checkpoint="best",
        device=run.device,
        sliding_window=train.SlidingWindowSettings(roi=roi, overlap=run.hp["overlap"], batch_size=run.hp["sw_batch"]),
        postprocess=KeepLargestComponent(key=LABELS, classes=organs) if organs else None,
        nifti_dir=masks,
        shard=True,
    )
    if distributed.is_main():
        # the reference label maps of the test cases beside the predictions, named as infer names the masks
        reference.mkdir(parents=True, exist_ok=True)
        for row in test_src.frame.iter_rows(named=True):
            with atomic_path(reference / f"{row['sample_id']}.nii.gz") as tmp:  # analyze never reads half a file
                shutil.copyfile(row["label"], tmp)
    distributed.barrier()
    return frame


def infer_phase(run: Run):
    # every rank runs this phase (RECIPE.all_ranks) inside the run's process group: each predicts its share
    return predict(run)


# ---------------------------------------------------------------------------- analyze


def scored_classes(names: Mapping, kind: str) -> dict:
    """What is scored: each class; in the generated phantoms the liver with its lesion (labels 1+3)."""
    if kind == "dicom" and set(names) == set(ctd.CLASSES):
        return {"liver": (1, 3), "kidney": (2,), "lesion": (3,)}
    return {names[c]: (c,) for c in sorted(names)}


def analyze_phase(run: Run) -> dict:
    from fusefn.analyze import evaluate_segmentations

    masks, reference = run.infer_file.parent / "masks", run.infer_file.parent / "reference"
    if not masks.is_dir() or not reference.is_dir():
        raise RecipeInputError(f"no predicted masks in {masks}: run `infer` first (or `all`) with the same --out")
    _, names, kind = cases(run)
    classes = scored_classes(names, kind)
    results = evaluate_segmentations(
        masks,
        reference,
        classes=classes,
        tolerance_mm=run.hp["tolerance"],
        n_boot=run.hp["n_boot"],
        rng=run.rng.child("bootstrap"),
        out=run.report_dir,
    )
    curves = recipe.curves_figure(
        run.model_dir / "metrics.csv", run.report_dir / "curves.png", (keys.TOTAL_LOSS, "losses.dice")
    )
    recipe.append_figures(run.report_dir / "report.md", [("training curves (patches)", curves)])
    parts = []
    for name in classes:
        d = results["classes"][name]["dice"]
        value, ci = recipe.format_ci(d)
        parts.append(f"{name} Dice {value} {ci}")
    n = len(results.get("per_case", {}))
    click.echo(f"test cases {n}: " + "; ".join(parts))
    return results


# ------------------------------------------------------------------------------- hooks


def static_data(cache_dir: pathlib.Path, *, rng: Rng):
    """The static pipeline of a default run and all its cases: what ``fusefn cache build`` and ``fusefn visualize`` use.

    The generated cases are written beside the cache: ``--cache-dir runs/ct_organs/cache`` prepares exactly
    what ``all --out runs/ct_organs`` reads (its ``example/`` cases and its cache).
    """
    from fusefn.data import H5Cache

    cache_dir = pathlib.Path(cache_dir)
    run = RECIPE.make_run(cache_dir.parent if cache_dir.name == "cache" else cache_dir, rng=rng, device="cpu")
    frame, names, kind = ctd.find_cases(data_dir(run))  # every case, whatever its split
    src = DataSource.from_frame(frame, name=f"ct_organs {kind}")
    return H5Cache(root=cache_dir, pipeline=_static(run, kind, names)), src


def cv_task(run: Run) -> recipe.CVTask:
    """For cross_validation: the training and validation cases are the pool, the test cases are held out.

    Folds are not stratified (the cases have no class label); each fold's model predicts with sliding
    windows (:func:`cv_infer`) and is scored by its mean Dice over the organs and the lesion (:func:`cv_score`).
    """
    src, names, kind = cases(run)
    static = _static(run, kind, names)
    return recipe.CVTask(
        pool=src.filter(pl.col("split") != "test"),
        held_out=src.filter(pl.col("split") == "test"),
        dataset=lambda source: recipe.dataset(source, static, cache_root=run.cache_dir),
        fit=fit_model,
        output_columns={},
        stratify=None,
        infer=cv_infer,
        score=cv_score,
        score_name="mean Dice",
    )


def cv_infer(run: Run, data, model_dir, output_file) -> pl.DataFrame:
    """Sliding-window inference of ``data`` by the model(s) of ``model_dir`` into ``output_file`` (its masks beside)."""
    _, names, _ = cases(run)
    output_file = pathlib.Path(output_file)
    organs = _organs(run, names)
    roi = (run.hp["roi"] or run.hp["patch"],) * 3
    masks = output_file.with_suffix("") / "masks"
    shutil.rmtree(masks, ignore_errors=True)  # a rerun into the same --out must not leave other folds' masks
    return recipe.infer(
        run,
        data,
        {},
        model_dir=model_dir,
        output_file=output_file,
        # an ensemble averages the members' probabilities, as the classification ensembles do
        sliding_window=train.SlidingWindowSettings(
            roi=roi, overlap=run.hp["overlap"], batch_size=run.hp["sw_batch"], scores_key=keys.probs()
        ),
        postprocess=KeepLargestComponent(key=LABELS, classes=organs) if organs else None,
        nifti_dir=masks,
    )


def cv_score(run: Run, output_file, source: DataSource) -> dict:
    """Mean Dice over the scored classes of the masks :func:`cv_infer` wrote, against ``source``'s label maps.

    ``{"value", "lower", "upper", "per_class"}``: the mean over cases of each class's Dice averaged over
    the classes, its bootstrap CI over cases, and each class's own.
    """
    import tempfile

    from fusefn.analyze import evaluate_segmentations

    _, names, kind = cases(run)
    masks = pathlib.Path(output_file).with_suffix("") / "masks"
    with tempfile.TemporaryDirectory() as tmp:
        reference = pathlib.Path(tmp)
        for row in source.frame.iter_rows(named=True):
            shutil.copyfile(row["label"], reference / f"{row['sample_id']}.nii.gz")
        res = evaluate_segmentations(
            masks, reference, classes=scored_classes(names, kind), n_boot=run.hp["n_boot"], rng=run.rng.child("cv")
        )
    per_class = {c: r["dice"] for c, r in res["classes"].items()}
    dice = np.array([[row[c]["dice"] for c in per_class] for row in res["per_case"].values()], float)
    return {**_mean_ci(np.nanmean(dice, axis=1), run), "per_class": per_class}


def _mean_ci(values: np.ndarray, run: Run) -> dict:
    boots = run.rng.child("cv-mean").numpy().choice(values, (run.hp["n_boot"], len(values))).mean(1)
    low, high = np.quantile(boots, [0.025, 0.975])
    return {"value": float(values.mean()), "lower": float(low), "upper": float(high)}


# ---------------------------------------------------------------------------- commands


@click.command("make-example")
@click.argument("folder", type=click.Path(path_type=pathlib.Path, file_okay=False))
@click.option("--n", "n", type=int, default=30, show_default=True, help="Cases.")
@click.option("--fov", type=float, default=80.0, show_default=True, help="Field of view (mm) of each side.")
@click.option("--layout", type=click.Choice(["dicom", "msd"]), default="dicom", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def make_example(folder, n, fov, layout, seed):
    """Write generated CT cases to FOLDER: DICOM series + NIfTI labels (or a Decathlon task folder, --layout msd)."""
    if n < 1:
        raise click.BadParameter("must be >= 1", param_hint="--n")
    write = ctd.write_example if layout == "dicom" else ctd.write_msd_example
    ids = write(folder, n, rng=Rng(seed), size=(fov,) * 3)
    click.echo(f"wrote {len(ids)} cases to {folder}")


def _spacing(ctx, param, value):
    try:
        parts = [float(x) for x in str(value).split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: one number or three joined by commas (mm)") from None
    if len(parts) not in (1, 3) or min(parts) <= 0:
        raise click.BadParameter(f"{value!r}: one number or three joined by commas, all > 0 (mm)")
    return parts[0] if len(parts) == 1 else tuple(parts)


OPTIONS = [
    click.option("--data", type=click.Path(path_type=str, file_okay=False), default=None, help="Cases folder."),
    click.option("--n-cases", type=int, default=30, show_default=True, help="Generated cases (without --data)."),
    click.option("--fov", type=float, default=80.0, show_default=True, help="Generated field of view (mm)."),
    click.option("--n-validation", type=int, default=4, show_default=True, help="Validation cases."),
    click.option("--n-test", type=int, default=10, show_default=True, help="Held-out test cases."),
    click.option("--spacing", default="1.5", callback=_spacing, show_default=True, help="Common spacing (mm)."),
    click.option("--window", type=(float, float), default=(50.0, 500.0), show_default=True, help="HU centre width."),
    click.option("--patch", type=int, default=24, show_default=True, help="Patch side (voxels)."),
    click.option("--patches", type=int, default=6, show_default=True, help="Patches per volume per epoch."),
    click.option("--bg-ratio", type=float, default=1.0, show_default=True, help="Background share vs each class."),
    click.option("--channels", type=int, multiple=True, default=(8, 16, 32), show_default=True),
    click.option("--weight-decay", type=float, default=1e-4, show_default=True),
    click.option("--dice-weight", type=float, default=1.0, show_default=True, help="Weight of the soft Dice loss."),
    click.option("--roi", type=int, default=None, help="Sliding-window side (default --patch)."),
    click.option("--overlap", type=float, default=0.5, show_default=True),
    click.option("--sw-batch", type=int, default=4, show_default=True, help="Windows per sliding-window batch."),
    click.option("--keep-largest", type=int, multiple=True, default=(), help="Classes kept as one component."),
    click.option("--tolerance", type=float, default=2.0, show_default=True, help="NSD tolerance (mm)."),
]


def _check(run: Run) -> None:
    k = 2 ** (len(run.hp["channels"]) - 1)
    if run.hp["patch"] % k or (run.hp["roi"] or k) % k:
        raise ConfigError(
            f"--patch and --roi must be multiples of {k}: the UNet halves them {k.bit_length() - 1} times"
        )


def _checked(phase):
    def wrapped(run: Run):
        _check(run)
        return phase(run)

    wrapped.__name__ = phase.__name__
    return wrapped


RECIPE = recipe.Recipe(
    name="ct_organs",
    doc=__doc__,
    # the common flags, spelt as in every recipe; --workers: the threads cutting patches
    defaults={"epochs": 30, "batch_size": 4, "lr": 3e-3, "workers": 2, "n_boot": 2000},
    options=OPTIONS,
    train=_checked(train_phase),
    infer=_checked(infer_phase),
    analyze=analyze_phase,
    commands=(make_example,),
    static_data=static_data,
    cv_task=cv_task,
    mask_key=SEG,
    label_key=None,
    all_ranks=("train", "infer"),  # every rank predicts its share of the cases
)
cli = RECIPE.cli()

if __name__ == "__main__":
    cli()
