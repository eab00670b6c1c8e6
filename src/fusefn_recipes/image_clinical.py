"""Image + clinical data in one classifier: lesion images with the patient's age and sex.

Shows the classifier head with tabular inputs (FuseMedML's head with
``tabular_data_inputs``; fusefn concatenates the clinical vector to the pooled
image features on the channel axis): a static op makes each case — a faint 2D
lesion phantom and synthetic clinical features (age, sex) that carry their own
signal about the label — the image goes through the CNN, the clinical vector
joins after global pooling, one head decides. ``--no-clinical`` trains the same
network on the image alone for comparison; the report also gives the AUC of a
logistic regression on the clinical features alone.

Figure reached (measured, default run, seed 0, 300 test cases): ROC AUC 0.952
[0.929, 0.972] with image + clinical; 0.941 [0.913, 0.965] with the image alone
(``--no-clinical``); 0.770 with the clinical features alone; 81 s on a shared 2-core CPU.

    python recipes/image_clinical.py all --out runs/image_clinical
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import click
import numpy as np
import polars as pl
import torch

from fusefn import augment, nd, optim, train
from fusefn.core import record
from fusefn.data import Dataset, DataSource, collate
from fusefn.errors import SampleError
from fusefn.losses import CrossEntropy
from fusefn.metrics import AUCROC, Accuracy
from fusefn.models import ClassifierHead, Model, SmallCNN
from fusefn_recipes import _phantoms
from fusefn_recipes._common import (
    CVTask,
    Run,
    check_trained,
    classification_report,
    curves_figure,
    read_inference,
    recipe_cli,
    save_json,
    write_report,
)

__all__ = ["cli", "MakeCase", "make_model"]

IMG = "data.input.img"
CLINICAL = "data.input.clinical"
LABEL = "data.gt.label"
SPLITS = ("train", "validation", "test")


@record
class MakeCase:
    """Static op: case ``case_<index>`` — a faint lesion image, clinical ``[age_z, sex]`` and the label.

    ``age_z`` is (age − 60) / 10, so both clinical inputs are of order one.
    """

    seed: int = 0
    size: int = 48
    contrast: tuple = (0.1, 0.3)
    signal: float = 1.0

    def __call__(self, sample: Mapping) -> dict:
        sid = nd.get(sample, "data.sample_id")
        try:
            index = int(str(sid).rsplit("_", 1)[1])
        except (IndexError, ValueError):
            raise SampleError("expected an id like case_<index>", sample_id=sid, op="MakeCase") from None
        p = _phantoms.lesion_phantom(self.seed, index, size=self.size, p_lesion=0.5, contrast=self.contrast,
                                     max_lesions=1)  # fmt: skip
        c = _phantoms.clinical_features(self.seed, index, p["label"], signal=self.signal)
        clinical = torch.tensor([(c["age"] - 60.0) / 10.0, float(c["sex"])], dtype=torch.float32)
        return nd.assoc_many(sample, {IMG: torch.from_numpy(p["image"]), CLINICAL: clinical, LABEL: p["label"]})


def source(run: Run) -> DataSource:
    """Ids ``case_<index>`` with their ``split`` and ``label``."""
    hp = run.hp
    sizes = {s: run.limit(hp[f"n_{s}"], "max_samples") for s in SPLITS}
    n = sum(sizes.values())
    frame = pl.DataFrame({
        "sample_id": [f"case_{i:05d}" for i in range(n)],
        "split": [s for s in SPLITS for _ in range(sizes[s])],
        "label": [int(_phantoms.lesion_count(run.seed, i, 0.5, 1) > 0) for i in range(n)],
    })  # fmt: skip
    return DataSource.from_frame(frame, name="cases")


def _static(run: Run) -> MakeCase:
    hp = run.hp
    return MakeCase(seed=run.seed, size=hp["size"], contrast=(hp["contrast_low"], hp["contrast_high"]),
                    signal=hp["signal"])  # fmt: skip


def _eager_dataset(static, src) -> Dataset:
    return Dataset(source=src, static=static, eager=True)


def datasets(run: Run) -> dict:
    src, static = source(run), _static(run)
    return {s: _eager_dataset(static, src.filter(pl.col("split") == s)) for s in SPLITS}


def cv_task(run: Run) -> CVTask:
    """For cross_validation.py: the train and validation splits are the pool, the test split is held out."""
    src = source(run)
    return CVTask(
        pool=src.filter(pl.col("split") != "test"),
        held_out=src.filter(pl.col("split") == "test"),
        dataset=functools.partial(_eager_dataset, _static(run)),
        fit=fit_model,
        output_columns={"probs": "model.head_0.probs", "label": LABEL},
    )


def make_model(channels: tuple, head_layers: tuple, dropout: float, clinical: bool) -> Model:
    """SmallCNN over the image; the head concatenates the clinical vector to the pooled features."""
    tab = {"tabular_inputs": (CLINICAL,), "tabular_features": 2} if clinical else {}
    head = ClassifierHead(name="head_0", num_classes=2, layers=head_layers, dropout=dropout, **tab)
    return Model(inputs=(IMG,), backbone=SmallCNN(in_channels=1, channels=channels), heads=(head,))


def train_phase(run: Run) -> None:
    ds = datasets(run)
    fit_model(run, ds["train"], ds["validation"], run.model_dir)


def fit_model(run: Run, train_ds, validation_ds, model_dir) -> None:
    """Train on ``train_ds``; the best epoch by validation AUC is kept in ``model_dir``."""
    hp = run.hp
    epochs = run.limit(hp["epochs"], "max_epochs")
    steps = max(epochs * -(-len(train_ds) // hp["batch_size"]), 1)
    train.fit(
        make_model(tuple(hp["channels"]), tuple(hp["head_layers"]), hp["dropout"], hp["clinical"]),
        {"cls": CrossEntropy(pred="model.head_0.logits", target=LABEL)},
        optim.adamw(lr=optim.cosine_decay(hp["lr"], decay_steps=steps), weight_decay=hp["weight_decay"]),
        train_ds,
        validation_ds,
        model_dir=model_dir,
        epochs=epochs,
        metrics={
            "auc": AUCROC(pred="model.head_0.probs", target=LABEL),
            "accuracy": Accuracy(pred="model.head_0.probs", target=LABEL),
        },
        batch_size=hp["batch_size"],
        collate_fn=collate,
        augment=augment.default_image_pipeline(IMG, p=hp["aug_p"]),
        seed=run.seed,
        device=run.device,
        compile=run.compile,
        best_epoch_sources=train.BestEpochSource(source="validation.metrics.auc", optimization="max"),
        callbacks=(train.CsvMetrics(),),
        progress=False,
    )


def infer_phase(run: Run) -> None:
    check_trained(run)
    train.infer(
        run.model_dir,
        datasets(run)["test"],
        output_file=run.infer_file,
        output_columns={"probs": "model.head_0.probs", "label": LABEL, "clinical": CLINICAL},
        checkpoint="best",
        batch_size=128,
        collate_fn=collate,
        device=run.device,
    )


def _clinical_only_auc(run: Run, test_x: np.ndarray, test_y: np.ndarray) -> dict:
    """Reference: a logistic regression on the clinical features alone (fit on the training split)."""
    from sklearn.linear_model import LogisticRegression

    from fusefn.metrics import Bootstrap

    tr = datasets(run)["train"]
    x = np.stack([nd.get(tr[i], CLINICAL).numpy() for i in range(len(tr))])
    y = np.asarray([int(nd.get(tr[i], LABEL)) for i in range(len(tr))])
    score = LogisticRegression().fit(x, y).predict_proba(test_x)[:, 1]
    ci = Bootstrap(AUCROC(pred="s", target="y"), n=run.hp["n_boot"], seed=run.seed, stratify="y")
    return ci.compute(ci.update(ci.init(), {"s": score, "y": test_y}))


def analyze_phase(run: Run) -> dict:
    frame = read_inference(run.infer_file, ("sample_id", "probs", "label", "clinical"))
    probs = np.asarray(frame["probs"].to_list(), dtype=np.float64)
    labels = frame["label"].to_numpy().astype(np.int64)
    clinical = np.asarray(frame["clinical"].to_list(), dtype=np.float64)
    what = "image + clinical" if run.hp["clinical"] else "image only"
    rd = run.report_dir
    rows, results, figs = classification_report(
        probs, labels, n_boot=run.hp["n_boot"], seed=run.seed, out_dir=rd / "analysis", prefix=f"{what}: ",
        class_names=("no lesion", "lesion"), ids=frame["sample_id"].to_list(),
    )  # fmt: skip
    ref = _clinical_only_auc(run, clinical, labels)
    rows.append(("clinical only (logistic regression): ROC AUC", ref))
    results["clinical only ROC AUC"] = ref
    curves = curves_figure(run.model_dir / "metrics.csv", rd / "curves.png", ("losses.total_loss", "metrics.auc"))
    if curves:
        figs.insert(0, ("training curves", curves))
    save_json(rd / "metrics.json", results)
    write_report(
        rd / "report.md",
        f"Lesion images with clinical features — {what}, test set",
        rows,
        intro=f"{len(labels)} test cases; 95 % CIs from {run.hp['n_boot']} stratified bootstrap resamples.",
        figures=figs,
    )
    auc = results["ROC AUC"]
    click.echo(f"test ROC AUC ({what}) {auc['value']:.4f} [{auc['lower']:.4f}, {auc['upper']:.4f}]; "
               f"clinical alone {ref['value']:.4f}")  # fmt: skip
    return results


OPTIONS = [
    click.option("--clinical/--no-clinical", default=True, show_default=True,
                 help="Feed age and sex to the head (--no-clinical: the image alone)."),
    click.option("--n-train", type=int, default=600, show_default=True),
    click.option("--n-validation", type=int, default=150, show_default=True),
    click.option("--n-test", type=int, default=300, show_default=True),
    click.option("--size", type=int, default=48, show_default=True, help="Image side."),
    click.option("--contrast-low", type=float, default=0.1, show_default=True, help="Faintest lesion contrast."),
    click.option("--contrast-high", type=float, default=0.3, show_default=True, help="Strongest lesion contrast."),
    click.option("--signal", type=float, default=1.0, show_default=True,
                 help="How strongly age/sex depend on the label (0: not at all)."),
    click.option("--channels", type=int, multiple=True, default=(16, 32, 64), show_default=True,
                 help="SmallCNN channels per block (repeat the option)."),
    click.option("--head-layers", type=int, multiple=True, default=(32,), show_default=True),
    click.option("--dropout", type=float, default=0.1, show_default=True),
    click.option("--epochs", type=int, default=10, show_default=True),
    click.option("--batch-size", type=int, default=32, show_default=True),
    click.option("--lr", type=float, default=3e-3, show_default=True),
    click.option("--weight-decay", type=float, default=1e-4, show_default=True),
    click.option("--aug-p", type=float, default=0.5, show_default=True, help="Probability of each augmentation group."),
    click.option("--n-boot", type=int, default=2000, show_default=True, help="Bootstrap resamples for the CIs."),
]  # fmt: skip

cli = recipe_cli("image_clinical", __doc__, OPTIONS, train=train_phase, infer=infer_phase, analyze=analyze_phase)

if __name__ == "__main__":
    cli()
