"""Any MedMNIST ``.npz`` you downloaded: 2D or 3D, binary, multi-class or multi-label — decided from the file.

Shows how one recipe adapts to a dataset it reads instead of one it knows: the
``.npz`` (``train_images``/``train_labels``, ``val_*``, ``test_*``) is inspected once —
2D gray (N×H×W), 2D colour (N×H×W×3) or 3D (N×D×H×W); labels N×1 with two values
(binary), more values (multi-class), or N×K of 0/1 (multi-label) — and the data
pipeline (``DataSource.from_medmnist`` → ``ops.ReadNpz`` → intensity → labels, in
the HDF5 cache), model (2D or 3D CNN), head (softmax or sigmoid), loss
(cross-entropy or BCE) and metrics (AUC per class + macro, accuracy) follow. An
optional ``info`` entry (a JSON string, e.g. ``{"task": "multi-label, binary-class",
"label": {"0": "atelectasis", …}}`` as MedMNIST's ``INFO``) overrides the guess and
names the classes.

No file at hand? ``python recipes/medmnist.py make-example OUT.npz`` writes a
small synthetic one with the same layout.

Figure reached: depends on the file (MedMNIST's own baselines: e.g. PneumoniaMNIST
AUC ≈ 0.95). Measured on the generated example (``make-example``, defaults: 2D binary,
600/150/300 images of 28×28), default run, seed 0: test ROC AUC 1.000, accuracy 0.990 at the
threshold chosen on the validation split (Youden's J, 0.309; 0.987 at 0.5); 53 s on a shared 2-core CPU.
A binary task's decision threshold is chosen on the validation split and applied to the test split;
multi-class tasks decide by argmax.

    python recipes/medmnist.py all --npz ~/data/pneumoniamnist.npz --out runs/pneumonia
"""

from __future__ import annotations

import io
import json
import pathlib
import zipfile
from collections.abc import Mapping

import attrs
import click
import numpy as np
import torch

from fusefn import Rng, augment, chain, keys, nd, optim, recipe, record, train
from fusefn._atomic import write_bytes
from fusefn.cli_errors import check_out
from fusefn.data import DataSource, ops
from fusefn.errors import ConfigError, SampleError
from fusefn.losses import BCEWithLogits, CrossEntropy
from fusefn.metrics import AUCROC, Bootstrap
from fusefn.models import ClassifierHead, Model, ResNet, SmallCNN
from fusefn.recipe import RecipeInputError, Run
from fusefn_recipes import phantoms

__all__ = ["RECIPE", "cli", "describe", "write_example", "MedMNISTLabel", "make_model", "Layout"]

LABELS = "data.gt.labels"  # this recipe's own key, multi-label: a float 0/1 vector per sample
SPLITS = {"train": "train", "validation": "val", "test": "test"}


@record
class Layout:
    """What a MedMNIST file holds, read from its arrays (and its optional ``info``)."""

    dims: int
    channels: int
    shape: tuple
    task: str  # "binary" | "multi-class" | "multi-label"
    num_classes: int
    class_names: tuple
    pixel_range: tuple | None  # (0, 255) for uint8 images


def describe(path: pathlib.Path) -> Layout:
    """The :class:`Layout` of the ``.npz`` at ``path``; a clear error when it is not MedMNIST-shaped."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise RecipeInputError(f"--npz {path}: no such file (download one from medmnist.com, or run make-example)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # a .npz is a zip archive
        raise RecipeInputError(
            f"--npz {path}: not a NumPy .npz archive (it starts with {magic!r}, a .npz is a zip file); "
            "give a MedMNIST .npz (download one from medmnist.com, or run make-example)"
        )
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise RecipeInputError(
            f"--npz {path}: not a NumPy .npz archive ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "give a MedMNIST .npz (download one from medmnist.com, or run make-example)"
        ) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise RecipeInputError(f"--npz {path}: a single .npy array, not a MedMNIST .npz archive")
    with z:
        need = [f"{s}_{k}" for s in SPLITS.values() for k in ("images", "labels")]
        missing = [n for n in need if n not in z.files]
        if missing:
            raise RecipeInputError(f"--npz {path}: not the MedMNIST layout, missing {missing} (has {z.files})")
        try:
            images, labels = z["train_images"], z["train_labels"]
            info = json.loads(str(z["info"])) if "info" in z.files else {}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise RecipeInputError(
                f"--npz {path}: damaged or unreadable ({(str(e) or type(e).__name__).splitlines()[0]})"
            ) from None
    labels = labels.reshape(len(labels), -1)
    if images.ndim == 3:
        dims, channels, shape = 2, 1, images.shape[1:]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] != images.shape[-1]:
        dims, channels, shape = 2, images.shape[-1], images.shape[1:3]
    elif images.ndim == 4:
        dims, channels, shape = 3, 1, images.shape[1:]
    else:
        raise RecipeInputError(f"--npz {path}: train_images has shape {images.shape}; expected N×H×W[×C] or N×D×H×W")
    task_info = str(info.get("task", ""))
    if "multi-label" in task_info or (not task_info and labels.shape[1] > 1):
        task, k = "multi-label", labels.shape[1]
    else:
        k = int(info["n_classes"]) if "n_classes" in info else int(labels.max()) + 1
        k = max(k, len(info.get("label", {})), 2)
        task = "binary" if k == 2 else "multi-class"
    names = info.get("label", {})
    class_names = tuple(str(names.get(str(i), i)) for i in range(k))
    pixel_range = (0.0, 255.0) if images.dtype == np.uint8 else None
    shape = tuple(int(s) for s in shape)
    return Layout(
        dims=dims,
        channels=channels,
        shape=shape,
        task=task,
        num_classes=k,
        class_names=class_names,
        pixel_range=pixel_range,
    )


@record
class MedMNISTLabel:
    """Static op: the source row's label(s) as ``data.gt.label`` (int) or ``data.gt.labels`` (0/1 float vector)."""

    task: str
    num_classes: int

    def __call__(self, sample: Mapping) -> dict:
        row = nd.get(sample, keys.SOURCE)
        if self.task != "multi-label":
            y = int(row["label"])
            if not 0 <= y < self.num_classes:
                sid = nd.get(sample, keys.SAMPLE_ID)
                raise SampleError(
                    f"label {y} outside 0..{self.num_classes - 1}", sample_id=sid, op="MedMNISTLabel", key="label"
                )
            return nd.assoc(sample, keys.LABEL, y)
        cols = [row[f"label_{j}"] for j in range(self.num_classes)] if self.num_classes > 1 else [row["label"]]
        return nd.assoc(sample, LABELS, torch.tensor(cols, dtype=torch.float32))


def static_pipeline(layout: Layout, split: str):
    """Read one split's image from the ``.npz``, scale to [0, 1] float32 C×H×W (C×D×H×W), attach labels."""
    read = ops.ReadNpz(
        array=f"{split}_images",
        index_key=keys.SOURCE + ".index",
        add_channel=layout.channels == 1,
        channels_last=layout.dims == 2 and layout.channels > 1,
    )
    steps = [read]
    if layout.pixel_range is not None:
        steps.append(ops.Normalize(keys=keys.IMAGE, source=layout.pixel_range))
    steps += [
        ops.ToTensor(keys=keys.IMAGE, dtype="float32"),
        MedMNISTLabel(task=layout.task, num_classes=layout.num_classes),
    ]
    return chain(*steps)


def datasets(run: Run, layout: Layout) -> dict:
    """The (unbuilt) datasets of the three splits, cached in ``OUT/cache`` with ``--cache``."""
    out = {}
    for name, split in SPLITS.items():
        src = DataSource.from_medmnist(run.hp["npz"], split=split)
        limit = run.limit(run.hp["max_per_split"] or len(src), "max_samples")
        if limit < len(src):
            src = src.head(limit)
        cache_root = run.cache_dir if run.hp["cache"] else None
        out[name] = recipe.dataset(src, static_pipeline(layout, split), cache_root=cache_root)
    return out


def make_model(layout: Layout, backbone: str, channels: tuple, width: int, dropout: float) -> Model:
    """A 2D or 3D CNN (SmallCNN, or a narrow ResNet-18) + a softmax or sigmoid head."""
    if backbone == "resnet18":
        net = ResNet(depth=18, spatial_dims=layout.dims, width=width, in_channels=layout.channels)
    else:
        net = SmallCNN(in_channels=layout.channels, channels=channels, spatial_dims=layout.dims)
    multi_label = layout.task == "multi-label"
    head = ClassifierHead(name=keys.HEAD, num_classes=layout.num_classes, multi_label=multi_label, dropout=dropout)
    return Model(inputs=(keys.IMAGE,), backbone=net, heads=(head,))


def augmentation(layout: Layout, p: float):
    """Light geometry and noise (MedMNIST images are small: a few pixels of shift, no flips)."""
    if layout.dims == 3:
        return augment.chain(
            augment.Affine(
                dims=3, image_keys=keys.IMAGE, rotate=(-10.0, 10.0), translate=(-2, 2), scale=(0.95, 1.05), p=p
            ),
            augment.GaussianNoise(image_keys=keys.IMAGE, std=0.02, p=p),
        )
    return augment.chain(
        augment.Affine(dims=2, image_keys=keys.IMAGE, rotate=(-10.0, 10.0), translate=(-2, 2), scale=(0.95, 1.05), p=p),
        augment.GaussianNoise(image_keys=keys.IMAGE, std=0.02, p=p),
    )


def _losses_metrics(layout: Layout):
    if layout.task == "multi-label":
        return {"cls": BCEWithLogits(pred=keys.logits(), target=LABELS)}, {}
    names = layout.class_names if layout.task == "multi-class" else None
    losses = {"cls": CrossEntropy(pred=keys.logits(), target=keys.LABEL)}
    return losses, recipe.classification_metrics(class_names=names)


# ---------------------------------------------------------------------------- phases


def _layout(run: Run) -> Layout:
    if run.hp["npz"] is None:
        raise RecipeInputError("give --npz PATH to a MedMNIST .npz (or make one: medmnist.py make-example OUT.npz)")
    return describe(run.hp["npz"])


def train_phase(run: Run):
    hp = run.hp
    layout = _layout(run)
    what = f"{layout.dims}D, {layout.channels} channel(s), {layout.task}, {layout.num_classes} classes"
    run.logger.info("%s: %s", hp["npz"], what)
    ds = datasets(run, layout)
    losses, metrics = _losses_metrics(layout)
    if metrics:
        source = "validation.metrics.auc" + (".macro" if layout.task == "multi-class" else "")
        best = train.BestEpochSource(source=source, optimization="max")
    else:
        best = train.BestEpochSource(source="validation.losses.total_loss", optimization="min")
    return recipe.fit(
        run,
        make_model(layout, hp["backbone"], tuple(hp["channels"]), hp["width"], hp["dropout"]),
        losses,
        optim.adamw(lr=hp["lr"], weight_decay=hp["weight_decay"]),
        *recipe.build(ds["train"], ds["validation"]),
        epochs=hp["epochs"],
        metrics=metrics,
        augment=augmentation(layout, hp["aug_p"]),
        best=best,
        batch_size=hp["batch_size"],
        workers=hp["workers"],
    )


def infer_phase(run: Run):
    recipe.check_trained(run.model_dir)
    layout = _layout(run)
    target = LABELS if layout.task == "multi-label" else keys.LABEL
    ds = datasets(run, layout)
    columns = {"probs": keys.probs(), "label": target}
    if layout.task == "binary":  # the analysis chooses the threshold on the validation split (multi-class: argmax)
        test, validation = recipe.build(ds["test"], ds["validation"])
        recipe.infer(run, validation, columns, batch_size=256, output_file=recipe.validation_file(run))
    else:
        (test,) = recipe.build(ds["test"])
    return recipe.infer(run, test, columns, batch_size=256)


def analyze_phase(run: Run) -> dict:
    layout = _layout(run)
    if layout.task == "multi-label":
        frame = recipe.read_inference(run.infer_file, ("sample_id", "probs", "label"))
        probs = np.asarray(frame["probs"].to_list(), dtype=np.float64)
        labels = np.asarray(frame["label"].to_list()).astype(np.int64)
        found = _multilabel(recipe.Findings(frame=frame, probs=probs, labels=labels), layout.class_names, run)
    else:
        found = recipe.classify(run, class_names=layout.class_names)
    intro = (
        f"{layout.dims}D, {layout.channels} channel(s), shape {layout.shape}, {layout.task} with "
        f"{layout.num_classes} classes; {len(found.probs)} test samples; 95 % CIs from {run.hp['n_boot']} "
        "bootstrap resamples."
    )
    title = f"MedMNIST — {pathlib.Path(run.hp['npz']).name}, test split"
    recipe.publish(run, found, title, intro=intro, metrics={"layout": _layout_dict(layout), "metrics": found.results})
    key = "ROC AUC" if "ROC AUC" in found.results else "ROC AUC macro"
    click.echo(recipe.headline(found, key, f"test {key}"))
    return found.results


def _layout_dict(layout: Layout) -> dict:
    return {f.name: getattr(layout, f.name) for f in attrs.fields(Layout)}


def _multilabel(found: recipe.Findings, names, run: Run) -> recipe.Findings:
    """ROC AUC per label (each a binary task) with CIs, after their macro mean."""
    per_label = []
    for j, name in enumerate(names):
        if len(np.unique(found.labels[:, j])) < 2:
            continue  # AUC undefined for a label absent (or always present) in the test split
        ci = Bootstrap(AUCROC(pred="p", target="y"), n=run.hp["n_boot"], rng=run.rng, stratify="y")
        per_label.append(
            (f"ROC AUC {name}", ci.compute(ci.update(ci.init(), {"p": found.probs[:, j], "y": found.labels[:, j]})))
        )
    nan = float("nan")
    macro = {
        "value": float(np.mean([r["value"] for _, r in per_label])) if per_label else nan,
        "lower": nan,
        "upper": nan,
    }
    found = found.add("ROC AUC macro (over labels)", macro, key="ROC AUC macro")
    for name, r in per_label:
        found = found.add(name, r)
    return found


# ------------------------------------------------------------------- example file


def write_example(
    path: pathlib.Path,
    task: str = "binary",
    dims: int = 2,
    channels: int = 1,
    size: int = 28,
    sizes: tuple = (600, 150, 300),
    num_classes: int | None = None,
    *,
    rng: Rng = Rng(0),
) -> pathlib.Path:
    """A synthetic ``.npz`` with MedMNIST's layout (uint8 images, integer labels), learnable.

    Classes differ by how many bright blobs an image holds (lesion phantoms, 2D) or by
    blob shape (volume phantoms, 3D); multi-label files have one label per blob count.
    """
    if task not in ("binary", "multi-class", "multi-label"):
        raise ConfigError(f"write_example.task must be binary, multi-class or multi-label, got {task!r}")
    k = num_classes or {"binary": 2, "multi-class": 4, "multi-label": 3}[task]
    arrays = {}
    start = 0
    for split, n in zip(SPLITS.values(), sizes):
        images, labels = [], []
        for i in range(start, start + n):
            if dims == 3:
                v = phantoms.volume_phantom(i, rng=rng, size=size)
                img, y = v["image"][0], v["label"]
                labels.append([y])
            else:
                p = phantoms.lesion_phantom(
                    i,
                    rng=rng,
                    size=size,
                    p_lesion=1 - 1 / (k + 1) if task != "binary" else 0.5,
                    max_lesions=min(k, 3) if task != "binary" else 1,
                    radius=(0.08, 0.16),
                )
                img, count = p["image"][0], p["n_lesions"]
                if task == "multi-label":
                    labels.append([int(count >= j + 1) for j in range(k)])
                else:
                    labels.append([min(count, k - 1)])
                if channels == 3:
                    img = np.stack([img, img * 0.9, img * 0.8], axis=-1)
            images.append(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.uint8)
        start += n
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())  # whole or not at all
    return path


OPTIONS = [
    click.option(
        "--npz",
        type=click.Path(path_type=pathlib.Path, dir_okay=False),
        default=None,
        help="The MedMNIST .npz file (e.g. pneumoniamnist.npz).",
    ),
    click.option("--max-per-split", type=int, default=None, help="Use at most this many samples of each split."),
    click.option("--cache/--no-cache", default=True, show_default=True, help="Store the samples in OUT/cache (HDF5)."),
    click.option("--backbone", type=click.Choice(["smallcnn", "resnet18"]), default="smallcnn", show_default=True),
    click.option(
        "--channels",
        type=int,
        multiple=True,
        default=(32, 64, 128),
        show_default=True,
        help="SmallCNN channels per block (repeat the option).",
    ),
    click.option("--width", type=int, default=16, show_default=True, help="ResNet-18 width (64 = standard)."),
    click.option("--dropout", type=float, default=0.1, show_default=True),
    click.option("--weight-decay", type=float, default=1e-4, show_default=True),
    click.option("--aug-p", type=float, default=0.5, show_default=True, help="Per-sample augmentation probability."),
]


@click.command("make-example")
@click.argument("path", type=click.Path(path_type=pathlib.Path, dir_okay=False))
@click.option(
    "--task", type=click.Choice(["binary", "multi-class", "multi-label"]), default="binary", show_default=True
)
@click.option("--dims", type=click.Choice(["2", "3"]), default="2", show_default=True)
@click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True)
@click.option("--size", type=int, default=28, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def make_example(path, task, dims, channels, size, seed):
    """Write a small synthetic .npz with MedMNIST's layout to PATH."""
    check_out(pathlib.Path(path).parent, "PATH")
    try:
        write_example(path, task=task, dims=int(dims), channels=int(channels), size=size, rng=Rng(seed))
    except OSError as e:
        raise RecipeInputError(f"cannot write {path}: {e.strerror or e}; choose a writable path") from None
    click.echo(f"wrote {path}")


# the defaults of the common flags (--epochs, --batch-size, --lr, --workers, --n-boot)
DEFAULTS = {"epochs": 10, "batch_size": 64, "lr": 2e-3, "workers": 0, "n_boot": 2000}

RECIPE = recipe.Recipe(
    name="medmnist",
    doc=__doc__,
    options=OPTIONS,
    defaults=DEFAULTS,
    train=train_phase,
    infer=infer_phase,
    analyze=analyze_phase,
    commands=(make_example,),
)
cli = RECIPE.cli()


if __name__ == "__main__":
    cli()
