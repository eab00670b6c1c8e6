"""Tabular data: the Wisconsin diagnostic breast-cancer table (569 patients, 30 features) → malignant or benign.

Shows fusefn on a table instead of images: a Polars source with a stratified 5-fold
split (fold 0 test, fold 1 validation, folds 2–4 train), per-sample ops that read a
table row and standardize it with statistics of the training folds only, a batched
tabular augmentation (feature jitter and feature dropout, drawn from an explicit
generator like every fusefn augmentation), an MLP backbone with a classifier head,
and ROC AUC with a 10,000-resample bootstrap CI on the test fold.

The table ships with scikit-learn, so nothing is downloaded; point ``--csv`` at your
own table (an id column ``sample_id``, a 0/1 ``label`` column, numeric features) to
run the same recipe on it.

Figure reached (measured, default run, seed 0): test-fold ROC AUC 0.983
[0.954, 1.000], accuracy 0.947 (114 test patients); 38 s on a shared 2-core CPU.

    python recipes/breast_cancer.py all --out runs/breast_cancer
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping

import attrs
import click
import numpy as np
import polars as pl
import torch

from fusefn import chain, nd, optim, train
from fusefn.core import record
from fusefn.data import Dataset, DataSource, collate
from fusefn.errors import ConfigError, SampleError
from fusefn.losses import CrossEntropy
from fusefn.metrics import AUCROC, Accuracy
from fusefn.models import MLP, ClassifierHead, Model
from fusefn_recipes._common import (
    CVTask,
    RecipeInputError,
    Run,
    check_trained,
    classification_report,
    curves_figure,
    read_inference,
    recipe_cli,
    save_json,
    write_report,
)

__all__ = ["cli", "load_table", "ReadFeatures", "Standardize", "TabularAugment", "make_model"]

FEATURES_KEY = "data.input.features"
LABEL_KEY = "data.gt.label"


# ------------------------------------------------------------------------------ data


def load_table(csv: pathlib.Path | None = None) -> pl.DataFrame:
    """``sample_id``, ``label`` (1 = malignant) and the feature columns; scikit-learn's copy by default."""
    if csv is not None:
        frame = pl.read_csv(csv)
        missing = {"sample_id", "label"} - set(frame.columns)
        if missing:
            raise RecipeInputError(f"--csv {csv}: missing columns {sorted(missing)}")
        return frame
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    cols = {name.replace(" ", "_"): d.data[:, i] for i, name in enumerate(d.feature_names)}
    # scikit-learn codes malignant as 0; the positive class here is the disease
    label = (d.target == 0).astype(np.int64)
    return pl.DataFrame({"sample_id": [f"patient_{i:03d}" for i in range(len(label))], "label": label, **cols})


@record
class ReadFeatures:
    """Per-sample op: the feature vector and label of the sample's row of ``table``."""

    table: pl.DataFrame = attrs.field(eq=False, repr=False)
    features: tuple = attrs.field(converter=tuple)
    features_key: str = FEATURES_KEY
    label_key: str = LABEL_KEY
    _rows: dict = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        x = self.table.select(self.features).to_numpy().astype(np.float32)
        y = self.table["label"].to_numpy().astype(np.int64)
        rows = {sid: (x[i], y[i]) for i, sid in enumerate(self.table["sample_id"].to_list())}
        object.__setattr__(self, "_rows", rows)

    def __call__(self, sample: Mapping) -> dict:
        sid = nd.get(sample, "data.sample_id")
        if sid not in self._rows:
            raise SampleError("no such row in the table", sample_id=sid, op="ReadFeatures", key="sample_id")
        x, y = self._rows[sid]
        if not np.isfinite(x).all():
            raise SampleError("NaN or infinite feature value", sample_id=sid, op="ReadFeatures", key=self.features_key)
        return nd.assoc_many(sample, {self.features_key: torch.from_numpy(x.copy()), self.label_key: int(y)})


@record
class Standardize:
    """Per-sample op: ``(x - mean) / std`` per feature, with statistics fixed at construction (training folds)."""

    mean: tuple = attrs.field(converter=tuple)
    std: tuple = attrs.field(converter=tuple)
    key: str = FEATURES_KEY

    def __attrs_post_init__(self):
        if len(self.mean) != len(self.std):
            raise ConfigError(f"Standardize: {len(self.mean)} means for {len(self.std)} stds")
        if any(not s > 0 for s in self.std):
            raise ConfigError("Standardize.std must be > 0 for every feature")

    @classmethod
    def fit(cls, x: np.ndarray, key: str = FEATURES_KEY) -> Standardize:
        return cls(mean=x.mean(0).tolist(), std=np.maximum(x.std(0), 1e-6).tolist(), key=key)

    def __call__(self, sample: Mapping) -> dict:
        x = nd.get(sample, self.key)
        mean = torch.tensor(self.mean, dtype=x.dtype)
        std = torch.tensor(self.std, dtype=x.dtype)
        return nd.assoc(sample, self.key, (x - mean) / std)


@record
class TabularAugment:
    """Batched tabular augmentation: Gaussian jitter of every feature and random feature dropout.

    Like the image augmentations: ``sample(generator, batch_size)`` draws every random
    value, ``apply(batch, params)`` is pure; ``p`` is the per-sample probability of
    augmenting at all. On standardized features, a dropped feature is set to 0 (the mean).
    """

    key: str = FEATURES_KEY
    std: float = 0.1
    drop: float = 0.05
    p: float = 0.5

    def __attrs_post_init__(self):
        for name in ("drop", "p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"TabularAugment.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.std < 0:
            raise ConfigError(f"TabularAugment.std must be >= 0, got {self.std}")

    def sample(self, generator: torch.Generator, batch_size: int, *, num_features: int, device=None) -> dict:
        dev = generator.device if device is None else device
        shape = (batch_size, num_features)
        return {
            "active": torch.rand(batch_size, 1, generator=generator, device=dev) < self.p,
            "noise": torch.randn(shape, generator=generator, device=dev) * self.std,
            "keep": torch.rand(shape, generator=generator, device=dev) >= self.drop,
        }

    def apply(self, batch: Mapping, params: Mapping) -> dict:
        x = nd.get(batch, self.key)
        aug = (x + params["noise"].to(x.dtype)) * params["keep"].to(x.dtype)
        return nd.assoc(batch, self.key, torch.where(params["active"], aug, x))

    def __call__(self, batch: Mapping, generator: torch.Generator) -> dict:
        x = nd.get(batch, self.key)
        return self.apply(batch, self.sample(generator, x.shape[0], num_features=x.shape[1], device=x.device))


def make_model(num_features: int, layers: tuple, dropout: float) -> Model:
    """MLP backbone over the standardized features + a 2-class head writing ``model.head_0.probs``."""
    return Model(
        inputs=(FEATURES_KEY,),
        backbone=MLP(in_channels=num_features, layers=layers, dropout=dropout),
        heads=(ClassifierHead(name="head_0", num_classes=2),),
    )


def _data(run: Run):
    frame = load_table(run.hp["csv"])
    features = tuple(c for c in frame.columns if c not in ("sample_id", "label", "fold"))
    src = DataSource.from_frame(frame.select("sample_id", "label")).with_folds(
        run.hp["n_folds"], stratify="label", seed=run.seed
    )
    if run.debug.max_samples is not None:
        per = max(run.debug.max_samples // run.hp["n_folds"], 4)
        src = DataSource.from_frame(src.frame.group_by("fold", maintain_order=True).head(per).sort("sample_id"))
    train_src = src.fold([f for f in range(run.hp["n_folds"]) if f not in (0, 1)])
    # standardize with the training folds' statistics only: nothing leaks from validation or test
    rows = frame.filter(pl.col("sample_id").is_in(train_src.ids))
    static = chain(ReadFeatures(table=frame, features=features), Standardize.fit(rows.select(features).to_numpy()))

    def ds(s):
        return Dataset(source=s, static=static, eager=True)

    return {"train": ds(train_src), "validation": ds(src.fold(1)), "test": ds(src.fold(0)), "n": len(features)}


# ---------------------------------------------------------------------------- phases


def fit_model(run: Run, train_ds, validation_ds, model_dir: pathlib.Path, num_features: int = 30) -> None:
    """Train the MLP on ``train_ds``, keep the best epoch by validation AUC in ``model_dir``."""
    hp = run.hp
    train.fit(
        make_model(num_features, tuple(hp["layers"]), hp["dropout"]),
        {"cls": CrossEntropy(pred="model.head_0.logits", target=LABEL_KEY)},
        optim.adamw(lr=hp["lr"], weight_decay=hp["weight_decay"]),
        train_ds,
        validation_ds,
        model_dir=model_dir,
        epochs=run.limit(hp["epochs"], "max_epochs"),
        metrics={
            "auc": AUCROC(pred="model.head_0.probs", target=LABEL_KEY),
            "accuracy": Accuracy(pred="model.head_0.probs", target=LABEL_KEY),
        },
        batch_size=hp["batch_size"],
        collate_fn=collate,
        augment=TabularAugment(std=hp["aug_std"], drop=hp["aug_drop"], p=hp["aug_p"]),
        seed=run.seed,
        device=run.device,
        compile=run.compile,
        best_epoch_sources=train.BestEpochSource(source="validation.metrics.auc", optimization="max"),
        callbacks=(train.CsvMetrics(),),
        progress=False,
    )


def train_phase(run: Run) -> None:
    data = _data(run)
    fit_model(run, data["train"], data["validation"], run.model_dir, data["n"])


def cv_task(run: Run) -> CVTask:
    """For cross_validation.py: folds 1–4 are the pool the k folds split, fold 0 the held-out test set."""
    frame = load_table(run.hp["csv"])
    features = tuple(c for c in frame.columns if c not in ("sample_id", "label", "fold"))
    src = DataSource.from_frame(frame.select("sample_id", "label")).with_folds(
        run.hp["n_folds"], stratify="label", seed=run.seed
    )
    if run.debug.max_samples is not None:
        per = max(run.debug.max_samples // run.hp["n_folds"], 4)
        src = DataSource.from_frame(src.frame.group_by("fold", maintain_order=True).head(per).sort("sample_id"))
    pool = src.fold(list(range(1, run.hp["n_folds"])))
    # statistics of the whole pool: the k folds share one standardization, the held-out set never feeds it
    rows = frame.filter(pl.col("sample_id").is_in(pool.ids))
    static = chain(ReadFeatures(table=frame, features=features), Standardize.fit(rows.select(features).to_numpy()))
    return CVTask(
        pool=pool,
        held_out=src.fold(0),
        dataset=functools.partial(_eager_dataset, static),
        fit=functools.partial(fit_model, num_features=len(features)),
        output_columns={"probs": "model.head_0.probs", "label": LABEL_KEY},
    )


def _eager_dataset(static, src) -> Dataset:
    return Dataset(source=src, static=static, eager=True)


def infer_phase(run: Run) -> None:
    check_trained(run)
    train.infer(
        run.model_dir,
        _data(run)["test"],
        output_file=run.infer_file,
        output_columns={"probs": "model.head_0.probs", "label": LABEL_KEY},
        checkpoint="best",
        batch_size=256,
        collate_fn=collate,
        device=run.device,
    )


def analyze_phase(run: Run) -> dict:
    frame = read_inference(run.infer_file, ("sample_id", "probs", "label"))
    probs = np.asarray(frame["probs"].to_list(), dtype=np.float64)
    labels = frame["label"].to_numpy().astype(np.int64)
    rd = run.report_dir
    rows, results, figs = classification_report(
        probs, labels, n_boot=run.hp["n_boot"], seed=run.seed, out_dir=rd / "analysis",
        class_names=("benign", "malignant"), ids=frame["sample_id"].to_list(),
    )  # fmt: skip
    curves = curves_figure(run.model_dir / "metrics.csv", rd / "curves.png", ("losses.total_loss", "metrics.auc"))
    if curves:
        figs.insert(0, ("training curves", curves))
    save_json(rd / "metrics.json", results)
    write_report(
        rd / "report.md",
        "Breast cancer (Wisconsin diagnostic) — test fold",
        rows,
        intro=f"{len(labels)} test patients ({int(labels.sum())} malignant); "
        f"95 % CIs from {run.hp['n_boot']} stratified bootstrap resamples.",
        figures=figs,
    )
    auc = results["ROC AUC"]
    click.echo(f"test ROC AUC {auc['value']:.4f} [{auc['lower']:.4f}, {auc['upper']:.4f}]")
    return results


OPTIONS = [
    click.option("--csv", type=click.Path(path_type=pathlib.Path, dir_okay=False, exists=True), default=None,
                 help="Your own table (sample_id, label, features) [default: scikit-learn's copy]."),
    click.option("--n-folds", type=int, default=5, show_default=True, help="Folds: 0 = test, 1 = validation."),
    click.option("--epochs", type=int, default=60, show_default=True),
    click.option("--batch-size", type=int, default=32, show_default=True),
    click.option("--lr", type=float, default=1e-3, show_default=True),
    click.option("--weight-decay", type=float, default=1e-4, show_default=True),
    click.option("--layers", type=int, multiple=True, default=(64, 32), show_default=True,
                 help="MLP widths (repeat the option)."),
    click.option("--dropout", type=float, default=0.1, show_default=True),
    click.option("--aug-std", type=float, default=0.1, show_default=True, help="Feature jitter std."),
    click.option("--aug-drop", type=float, default=0.05, show_default=True, help="Feature dropout probability."),
    click.option("--aug-p", type=float, default=0.5, show_default=True, help="Per-sample augmentation probability."),
    click.option("--n-boot", type=int, default=10_000, show_default=True, help="Bootstrap resamples for the CIs."),
]  # fmt: skip

cli = recipe_cli("breast_cancer", __doc__, OPTIONS, train=train_phase, infer=infer_phase, analyze=analyze_phase)

if __name__ == "__main__":
    cli()
