"""Tabular data: the Wisconsin diagnostic breast-cancer table (569 patients, 30 features) → malignant or benign.

Shows fusefn on a table instead of images: a Polars source with a stratified 5-fold
split (fold 0 test, fold 1 validation, folds 2–4 train), per-sample ops that read a
table row and standardize it with statistics of the training folds only, a batched
tabular augmentation (feature jitter and feature dropout, drawn from an explicit
``Rng`` like every fusefn augmentation), an MLP backbone with a classifier head,
and ROC AUC with a 10,000-resample bootstrap CI on the test fold. The decision threshold is chosen on
the validation fold's predictions (Youden's J) and applied to the test fold.

The table ships with scikit-learn, so nothing is downloaded; point ``--csv`` at your
own table (an id column ``sample_id``, a 0/1 ``label`` column, numeric features) to
run the same recipe on it.

Figure reached (measured, default run, seed 0): test-fold ROC AUC 0.982
[0.952, 1.000], accuracy 0.947, sensitivity 0.930, specificity 0.958 at the validation fold's
threshold 0.319 (114 test patients); 38 s on a shared 2-core CPU.

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

from fusefn import Rng, chain, keys, nd, optim, recipe, record, train
from fusefn import validators as v
from fusefn.data import DataSource
from fusefn.data.tables import read_table
from fusefn.errors import ConfigError, FusefnError, SampleError
from fusefn.losses import CrossEntropy
from fusefn.models import MLP, ClassifierHead, Model
from fusefn.recipe import RecipeInputError, Run

__all__ = ["RECIPE", "cli", "load_table", "ReadFeatures", "Standardize", "TabularAugment", "make_model"]

FEATURES = "data.input.features"  # this recipe's own key: the standardized feature vector
COLUMNS = {"probs": keys.probs(), "label": keys.LABEL}


# ------------------------------------------------------------------------------ data


def load_table(csv: pathlib.Path | None = None) -> pl.DataFrame:
    """``sample_id``, ``label`` (1 = malignant) and the feature columns; scikit-learn's copy by default."""
    if csv is not None:
        try:
            frame = read_table(csv)
        except FusefnError as e:
            raise RecipeInputError(f"--csv {e}") from None
        missing = {"sample_id", "label"} - set(frame.columns)
        if missing:
            raise RecipeInputError(f"--csv {csv}: missing columns {sorted(missing)} (has {', '.join(frame.columns)})")
        text = [c for c in frame.columns if c != "sample_id" and not frame[c].dtype.is_numeric()]
        if text:
            raise RecipeInputError(
                f"--csv {csv}: column(s) {text} hold text, not numbers (e.g. {frame[text[0]][0]!r}); "
                "features and label must be numbers"
            )
        bad = frame.filter(~pl.col("label").is_in([0, 1]))
        if bad.height:
            raise RecipeInputError(
                f"--csv {csv}: label of {bad['sample_id'][0]!r} is {bad['label'][0]!r}; labels must be 0 or 1"
            )
        dup = frame.filter(pl.col("sample_id").is_duplicated())
        if dup.height:
            raise RecipeInputError(f"--csv {csv}: duplicate sample_id {dup['sample_id'][0]!r}")
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
    features_key: str = attrs.field(default=FEATURES, validator=v.key)
    label_key: str = attrs.field(default=keys.LABEL, validator=v.key)
    _rows: dict = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        x = self.table.select(self.features).to_numpy().astype(np.float32)
        y = self.table["label"].to_numpy().astype(np.int64)
        rows = {sid: (x[i], y[i]) for i, sid in enumerate(self.table["sample_id"].to_list())}
        object.__setattr__(self, "_rows", rows)

    def __call__(self, sample: Mapping) -> dict:
        sid = nd.get(sample, keys.SAMPLE_ID)
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
    std: tuple = attrs.field(converter=tuple, validator=v.deep_iterable(v.gt(0)))
    key: str = attrs.field(default=FEATURES, validator=v.key)

    def __attrs_post_init__(self):
        if len(self.mean) != len(self.std):
            raise ConfigError(f"Standardize: {len(self.mean)} means for {len(self.std)} stds")

    @classmethod
    def fit(cls, x: np.ndarray, key: str = FEATURES) -> Standardize:
        return cls(mean=x.mean(0).tolist(), std=np.maximum(x.std(0), 1e-6).tolist(), key=key)

    def __call__(self, sample: Mapping) -> dict:
        x = nd.get(sample, self.key)
        mean = torch.tensor(self.mean, dtype=x.dtype)
        std = torch.tensor(self.std, dtype=x.dtype)
        return nd.assoc(sample, self.key, (x - mean) / std)


@record
class TabularAugment:
    """Batched tabular augmentation (an :class:`fusefn.Augmentation`): Gaussian feature jitter and feature dropout.

    Like the image augmentations, ``sample(batch_size, rng=...)`` draws every random value and
    ``apply(batch, params)`` is pure; ``p`` is the per-sample probability of augmenting at all.
    On standardized features, a dropped feature is set to 0 (the mean).
    """

    key: str = attrs.field(default=FEATURES, validator=v.key)
    std: float = attrs.field(default=0.1, validator=v.ge(0))
    drop: float = attrs.field(default=0.05, validator=v.unit_interval)
    p: float = attrs.field(default=0.5, validator=v.unit_interval)

    def sample(self, batch_size: int, *, rng: Rng, device=None, shapes=None) -> dict:
        """``shapes`` is ``{key: (num_features,)}``."""
        if shapes is None or self.key not in shapes:
            raise ConfigError(f"TabularAugment.sample needs shapes={{{self.key!r}: (num_features,)}}")
        g, shape = rng.generator(device or "cpu"), (batch_size, int(shapes[self.key][-1]))
        return {
            "active": torch.rand(batch_size, 1, generator=g, device=g.device) < self.p,
            "noise": torch.randn(shape, generator=g, device=g.device) * self.std,
            "keep": torch.rand(shape, generator=g, device=g.device) >= self.drop,
        }

    def sample_like(self, batch: Mapping, *, rng: Rng) -> dict:
        x = nd.get(batch, self.key)
        return self.sample(x.shape[0], rng=rng, device=x.device, shapes={self.key: tuple(x.shape[1:])})

    def apply(self, batch: Mapping, params: Mapping) -> dict:
        x = nd.get(batch, self.key)
        aug = (x + params["noise"].to(x.dtype)) * params["keep"].to(x.dtype)
        return nd.assoc(batch, self.key, torch.where(params["active"], aug, x))

    def __call__(self, batch: Mapping, *, rng: Rng) -> dict:
        return self.apply(batch, self.sample_like(batch, rng=rng))


def make_model(num_features: int, layers: tuple, dropout: float) -> Model:
    """MLP backbone over the standardized features + a 2-class head writing ``model.head_0.probs``."""
    backbone = MLP(in_channels=num_features, layers=layers, dropout=dropout)
    return Model(inputs=(FEATURES,), backbone=backbone, heads=(ClassifierHead(name=keys.HEAD, num_classes=2),))


def _table(run: Run) -> tuple[pl.DataFrame, tuple, DataSource]:
    """The table, its feature columns and a source of its ids with stratified folds."""
    frame = load_table(run.hp["csv"])
    features = tuple(c for c in frame.columns if c not in ("sample_id", "label", "fold"))
    src = DataSource.from_frame(frame.select("sample_id", "label"))
    n_folds = run.hp["n_folds"]
    return frame, features, recipe.with_folds(src, n_folds, rng=run.rng, max_samples=run.debug.max_samples)


def _static(frame: pl.DataFrame, features: tuple, ids) -> object:
    """Read a row, standardize it with the statistics of ``ids`` only: nothing leaks from the other samples."""
    rows = frame.filter(pl.col("sample_id").is_in(ids)).select(features).to_numpy()
    return chain(ReadFeatures(table=frame, features=features), Standardize.fit(rows))


def datasets(run: Run) -> dict:
    """The (unbuilt) datasets: folds 2… train, fold 1 validation, fold 0 test; standardized on the training folds."""
    frame, features, src = _table(run)
    train_src = src.fold([f for f in range(run.hp["n_folds"]) if f not in (0, 1)])
    static = _static(frame, features, train_src.ids)
    sources = {"train": train_src, "validation": src.fold(1), "test": src.fold(0)}
    return {k: recipe.dataset(s, static) for k, s in sources.items()} | {"num_features": len(features)}


def cv_task(run: Run) -> recipe.CVTask:
    """For cross_validation: folds 1… are the pool the k folds split, fold 0 the held-out test set."""
    frame, features, src = _table(run)
    pool = src.fold(list(range(1, run.hp["n_folds"])))
    # the k folds share the pool's standardization; the held-out set never feeds it
    static = _static(frame, features, pool.ids)
    return recipe.CVTask(
        pool=pool,
        held_out=src.fold(0),
        dataset=functools.partial(recipe.dataset, static=static),
        fit=functools.partial(fit_model, num_features=len(features)),
        output_columns=COLUMNS,
    )


# ---------------------------------------------------------------------------- phases


def fit_model(run: Run, train_ds, validation_ds, model_dir: pathlib.Path, num_features: int = 30):
    """Train the MLP on ``train_ds``, keep the best epoch by validation AUC in ``model_dir``."""
    hp = run.hp
    return recipe.fit(
        run,
        make_model(num_features, tuple(hp["layers"]), hp["dropout"]),
        {"cls": CrossEntropy(pred=keys.logits(), target=keys.LABEL)},
        optim.adamw(lr=hp["lr"], weight_decay=hp["weight_decay"]),
        train_ds,
        validation_ds,
        model_dir=model_dir,
        epochs=hp["epochs"],
        metrics=recipe.classification_metrics(),
        augment=TabularAugment(std=hp["aug_std"], drop=hp["aug_drop"], p=hp["aug_p"]),
        best=train.BestEpochSource(source="validation.metrics.auc", optimization="max"),
        batch_size=hp["batch_size"],
        workers=hp["workers"],
    )


def train_phase(run: Run):
    ds = datasets(run)
    train_ds, validation_ds = recipe.build(ds["train"], ds["validation"])
    return fit_model(run, train_ds, validation_ds, run.model_dir, ds["num_features"])


def infer_phase(run: Run):
    """The test fold's predictions, and the validation fold's (``infer/validation.parquet``): the analysis
    chooses the decision threshold on the validation fold and applies it to the test fold."""
    recipe.check_trained(run.model_dir)
    ds = datasets(run)
    test, validation = recipe.build(ds["test"], ds["validation"])
    recipe.infer(run, validation, COLUMNS, batch_size=256, output_file=recipe.validation_file(run))
    return recipe.infer(run, test, COLUMNS, batch_size=256)


def analyze_phase(run: Run) -> dict:
    found = recipe.classify(run, class_names=("benign", "malignant"))
    intro = (
        f"{len(found.labels)} test patients ({int(found.labels.sum())} malignant); "
        f"95 % CIs from {run.hp['n_boot']} stratified bootstrap resamples."
    )
    recipe.publish(run, found, "Breast cancer (Wisconsin diagnostic) — test fold", intro=intro)
    click.echo(recipe.headline(found))
    return found.results


OPTIONS = [
    click.option(
        "--csv",
        type=click.Path(path_type=pathlib.Path, dir_okay=False, exists=True),
        default=None,
        help="Your own table (sample_id, label, features) [default: scikit-learn's copy].",
    ),
    click.option("--n-folds", type=int, default=5, show_default=True, help="Folds: 0 = test, 1 = validation."),
    click.option("--weight-decay", type=float, default=1e-4, show_default=True),
    click.option(
        "--layers", type=int, multiple=True, default=(64, 32), show_default=True, help="MLP widths (repeat the option)."
    ),
    click.option("--dropout", type=float, default=0.1, show_default=True),
    click.option("--aug-std", type=float, default=0.1, show_default=True, help="Feature jitter std."),
    click.option("--aug-drop", type=float, default=0.05, show_default=True, help="Feature dropout probability."),
    click.option("--aug-p", type=float, default=0.5, show_default=True, help="Per-sample augmentation probability."),
]

# the defaults of the common flags (--epochs, --batch-size, --lr, --workers, --n-boot)
DEFAULTS = {"epochs": 60, "batch_size": 32, "lr": 1e-3, "workers": 0, "n_boot": 10_000}

RECIPE = recipe.Recipe(
    name="breast_cancer",
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
