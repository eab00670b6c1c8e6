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

import attrs
import click
import numpy as np
import polars as pl
import torch

from fusefn import Rng, augment, keys, nd, optim, recipe, record, train
from fusefn.data import DataSource
from fusefn.errors import SampleError
from fusefn.losses import CrossEntropy
from fusefn.metrics import AUCROC, Bootstrap
from fusefn.models import ClassifierHead, Model, SmallCNN
from fusefn.recipe import Run
from fusefn_recipes import phantoms

__all__ = ["RECIPE", "cli", "MakeCase", "make_model", "source"]

CLINICAL = "data.input.clinical"  # this recipe's own key: the clinical vector [age_z, sex]
SPLITS = ("train", "validation", "test")
COLUMNS = {"probs": keys.probs(), "label": keys.LABEL}


@record
class MakeCase:
    """Static op: case ``case_<index>`` — a faint lesion image, clinical ``[age_z, sex]`` and the label.

    ``age_z`` is (age − 60) / 10, so both clinical inputs are of order one.
    """

    rng: Rng = attrs.field(factory=lambda: Rng(0))
    size: int = 48
    contrast: tuple = (0.1, 0.3)
    signal: float = 1.0

    def __call__(self, sample: Mapping) -> dict:
        sid = nd.get(sample, keys.SAMPLE_ID)
        try:
            index = int(str(sid).rsplit("_", 1)[1])
        except (IndexError, ValueError):
            raise SampleError("expected an id like case_<index>", sample_id=sid, op="MakeCase") from None
        p = phantoms.lesion_phantom(
            index, rng=self.rng, size=self.size, p_lesion=0.5, contrast=self.contrast, max_lesions=1
        )
        c = phantoms.clinical_features(index, p["label"], rng=self.rng, signal=self.signal)
        clinical = torch.tensor([(c["age"] - 60.0) / 10.0, float(c["sex"])], dtype=torch.float32)
        return nd.assoc_many(
            sample, {keys.IMAGE: torch.from_numpy(p["image"]), CLINICAL: clinical, keys.LABEL: p["label"]}
        )


def source(run: Run) -> DataSource:
    """Ids ``case_<index>`` with their ``split`` and ``label``."""
    sizes = {s: run.limit(run.hp[f"n_{s}"], "max_samples") for s in SPLITS}
    n = sum(sizes.values())
    frame = pl.DataFrame(
        {
            "sample_id": [f"case_{i:05d}" for i in range(n)],
            "split": [s for s in SPLITS for _ in range(sizes[s])],
            "label": [int(phantoms.lesion_count(i, rng=run.rng, p_lesion=0.5, max_lesions=1) > 0) for i in range(n)],
        }
    )
    return DataSource.from_frame(frame, name="cases")


def _static(run: Run) -> MakeCase:
    hp = run.hp
    return MakeCase(
        rng=run.rng, size=hp["size"], contrast=(hp["contrast_low"], hp["contrast_high"]), signal=hp["signal"]
    )


def datasets(run: Run) -> dict:
    """The (unbuilt) datasets of the three splits."""
    src, static = source(run), _static(run)
    return {s: recipe.dataset(src.filter(pl.col("split") == s), static) for s in SPLITS}


def cv_task(run: Run) -> recipe.CVTask:
    """For cross_validation: the train and validation splits are the pool, the test split is held out."""
    src = source(run)
    return recipe.CVTask(
        pool=src.filter(pl.col("split") != "test"),
        held_out=src.filter(pl.col("split") == "test"),
        dataset=functools.partial(recipe.dataset, static=_static(run)),
        fit=fit_model,
        output_columns=COLUMNS,
    )


def make_model(channels: tuple, head_layers: tuple, dropout: float, clinical: bool) -> Model:
    """SmallCNN over the image; the head concatenates the clinical vector to the pooled features."""
    tab = {"tabular_inputs": (CLINICAL,), "tabular_features": 2} if clinical else {}
    head = ClassifierHead(name=keys.HEAD, num_classes=2, layers=head_layers, dropout=dropout, **tab)
    return Model(inputs=(keys.IMAGE,), backbone=SmallCNN(in_channels=1, channels=channels), heads=(head,))


def train_phase(run: Run):
    ds = datasets(run)
    return fit_model(run, *recipe.build(ds["train"], ds["validation"]), run.model_dir)


def fit_model(run: Run, train_ds, validation_ds, model_dir):
    """Train on ``train_ds``; the best epoch by validation AUC is kept in ``model_dir``."""
    hp = run.hp
    steps = max(run.limit(hp["epochs"], "max_epochs") * -(-len(train_ds) // hp["batch_size"]), 1)
    return recipe.fit(
        run,
        make_model(tuple(hp["channels"]), tuple(hp["head_layers"]), hp["dropout"], hp["clinical"]),
        {"cls": CrossEntropy(pred=keys.logits(), target=keys.LABEL)},
        optim.adamw(lr=optim.cosine_decay(hp["lr"], decay_steps=steps), weight_decay=hp["weight_decay"]),
        train_ds,
        validation_ds,
        model_dir=model_dir,
        epochs=hp["epochs"],
        metrics=recipe.classification_metrics(),
        augment=augment.default_image_pipeline(keys.IMAGE, p=hp["aug_p"]),
        best=train.BestEpochSource(source="validation.metrics.auc", optimization="max"),
        batch_size=hp["batch_size"],
        workers=hp["workers"],
    )


def infer_phase(run: Run):
    """The test split's predictions, and the validation split's (``infer/validation.parquet``): the analysis
    chooses the decision threshold on the validation split and applies it to the test split."""
    recipe.check_trained(run.model_dir)
    ds = datasets(run)
    test, validation = recipe.build(ds["test"], ds["validation"])
    recipe.infer(run, validation, COLUMNS, output_file=recipe.validation_file(run))
    return recipe.infer(run, test, {**COLUMNS, "clinical": CLINICAL})


def _clinical_only_auc(run: Run, test_x: np.ndarray, test_y: np.ndarray) -> dict:
    """Reference: a logistic regression on the clinical features alone (fit on the training split)."""
    from sklearn.linear_model import LogisticRegression

    (tr,) = recipe.build(datasets(run)["train"])
    x = np.stack([nd.get(tr[i], CLINICAL).numpy() for i in range(len(tr))])
    y = np.asarray([int(nd.get(tr[i], keys.LABEL)) for i in range(len(tr))])
    score = LogisticRegression().fit(x, y).predict_proba(test_x)[:, 1]
    ci = Bootstrap(AUCROC(pred="s", target="y"), n=run.hp["n_boot"], rng=run.rng, stratify="y")
    return ci.compute(ci.update(ci.init(), {"s": score, "y": test_y}))


def analyze_phase(run: Run) -> dict:
    what = "image + clinical" if run.hp["clinical"] else "image only"
    need = ("sample_id", "probs", "label", "clinical")
    found = recipe.classify(run, need=need, class_names=("no lesion", "lesion"), prefix=f"{what}: ")
    ref = _clinical_only_auc(run, np.asarray(found.frame["clinical"].to_list(), dtype=np.float64), found.labels)
    found = found.add("clinical only (logistic regression): ROC AUC", ref, key="clinical only ROC AUC")
    intro = f"{len(found.labels)} test cases; 95 % CIs from {run.hp['n_boot']} stratified bootstrap resamples."
    recipe.publish(run, found, f"Lesion images with clinical features — {what}, test set", intro=intro)
    click.echo(f"{recipe.headline(found, label=f'test ROC AUC ({what})')}; clinical alone {ref['value']:.4f}")
    return found.results


OPTIONS = [
    click.option(
        "--clinical/--no-clinical",
        default=True,
        show_default=True,
        help="Feed age and sex to the head (--no-clinical: the image alone).",
    ),
    click.option("--n-train", type=int, default=600, show_default=True),
    click.option("--n-validation", type=int, default=150, show_default=True),
    click.option("--n-test", type=int, default=300, show_default=True),
    click.option("--size", type=int, default=48, show_default=True, help="Image side."),
    click.option("--contrast-low", type=float, default=0.1, show_default=True, help="Faintest lesion contrast."),
    click.option("--contrast-high", type=float, default=0.3, show_default=True, help="Strongest lesion contrast."),
    click.option(
        "--signal",
        type=float,
        default=1.0,
        show_default=True,
        help="How strongly age/sex depend on the label (0: not at all).",
    ),
    click.option(
        "--channels",
        type=int,
        multiple=True,
        default=(16, 32, 64),
        show_default=True,
        help="SmallCNN channels per block (repeat the option).",
    ),
    click.option("--head-layers", type=int, multiple=True, default=(32,), show_default=True),
    click.option("--dropout", type=float, default=0.1, show_default=True),
    click.option("--weight-decay", type=float, default=1e-4, show_default=True),
    click.option("--aug-p", type=float, default=0.5, show_default=True, help="Probability of each augmentation group."),
]

# the defaults of the common flags (--epochs, --batch-size, --lr, --workers, --n-boot)
DEFAULTS = {"epochs": 10, "batch_size": 32, "lr": 3e-3, "workers": 0, "n_boot": 2000}

RECIPE = recipe.Recipe(
    name="image_clinical",
    doc=__doc__,
    options=OPTIONS,
    defaults=DEFAULTS,
    train=train_phase,
    infer=infer_phase,
    analyze=analyze_phase,
    cv_task=cv_task,
)
cli = RECIPE.cli()

if __name__ == "__main__":
    cli()
