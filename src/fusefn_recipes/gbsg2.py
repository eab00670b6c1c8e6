"""Survival on a real clinical trial: the German Breast Cancer Study Group 2 (686 patients) → recurrence-free survival.

The GBSG2 trial data (Schumacher et al., 1994) ship with scikit-survival (``pip install
'fusefn[survival]'``), so nothing is downloaded: age, menopausal status, hormonal therapy,
tumour size and grade, positive lymph nodes, progesterone and oestrogen receptors, and the
time to recurrence or death with its event flag (299 events, 387 censored). The
recipe writes the table to ``OUT/data/gbsg2.parquet`` (categories coded as numbers, skewed
counts and receptors as ``log1p``, times in years) and reads it back as any user table: a
:class:`~fusefn.data.DataSource` with 5 folds stratified by event (fold 0 test, 1
validation, 2–4 train), per-sample ops reading a row and standardizing it with statistics of
the training folds, an MLP with a one-output risk head trained with the Cox partial
likelihood (:class:`fusefn.losses.CoxPH`, Breslow ties), the best epoch by validation
Harrell's C. ``infer`` writes the risk scores of the test fold (and of the training folds,
``infer/train_predictions.parquet``); ``analyze`` estimates the Breslow baseline hazard on the
training folds to turn test risks into survival curves, then ``fusefn.analyze.analyze(task="survival")``
gives Harrell's and Uno's C, the time-dependent AUC at half-yearly times, the integrated
Brier score, and Kaplan–Meier curves of the low- and high-risk halves with the log-rank test.

Figure reached (measured, default run, seed 0, 138 test patients with 60 events, 2,000 bootstrap resamples):
Harrell's C 0.695 [0.626, 0.761], Uno's C 0.637 [0.561, 0.714], time-dependent AUC 0.820 / 0.712 / 0.697 at
1 / 3 / 5 years, integrated Brier score (0.5–5 years) 0.172 [0.147, 0.198], log-rank p = 0.004 between the
predicted risk halves; 22 s of CPU time on 2 cores.

    python -m fusefn_recipes.gbsg2 all --out runs/gbsg2
"""

from __future__ import annotations

import pathlib

import click
import numpy as np
import polars as pl

from fusefn import keys, optim, recipe, train
from fusefn.analyze import analyze
from fusefn.data import DataSource
from fusefn.data.ops._base import require
from fusefn.losses import CoxPH, breslow_baseline, cox_survival
from fusefn.metrics import HarrellC
from fusefn.models import MLP, Model, RegressionHead
from fusefn.recipe import RecipeInputError, Run
from fusefn_recipes.table_data import FEATURES, feature_pipeline, read_source, write_table

__all__ = ["RECIPE", "cli", "load_frame", "make_model", "datasets", "survival_times"]

TIME = "data.gt.time"  # years to recurrence or death, or to the last follow-up (censored)
EVENT = "data.gt.event"  # 1: recurrence or death observed, 0: censored
RISK = f"model.{keys.HEAD}.pred"  # the risk score: the log relative hazard (higher = earlier event)
N_FOLDS, TEST_FOLD, VALIDATION_FOLD = 5, 0, 1
TRAIN_PREDICTIONS = "infer/train_predictions.parquet"
DAYS_PER_YEAR = 365.25  # the study counts days; the table and the report count years


def load_frame() -> pl.DataFrame:
    """scikit-survival's GBSG2 table as numbers: ``sample_id``, 8 covariates, ``time`` (years), ``event`` (0/1)."""
    datasets = require("sksurv.datasets", "survival", "the gbsg2 recipe (its data ship with scikit-survival)")
    x, y = datasets.load_gbsg2()
    grade = {"I": 1.0, "II": 2.0, "III": 3.0}
    return pl.DataFrame(
        {
            "sample_id": [f"patient_{i:03d}" for i in range(len(y))],
            "age": x["age"].to_numpy(dtype=np.float64),
            "menopause_post": (x["menostat"].astype(str) == "Post").to_numpy(dtype=np.float64),
            "hormone_therapy": (x["horTh"].astype(str) == "yes").to_numpy(dtype=np.float64),
            "tumour_size_mm": x["tsize"].to_numpy(dtype=np.float64),
            "tumour_grade": x["tgrade"].astype(str).map(grade).to_numpy(dtype=np.float64),
            "log_positive_nodes": np.log1p(x["pnodes"].to_numpy(dtype=np.float64)),
            "log_progesterone_receptor": np.log1p(x["progrec"].to_numpy(dtype=np.float64)),
            "log_oestrogen_receptor": np.log1p(x["estrec"].to_numpy(dtype=np.float64)),
            "time": y["time"].astype(np.float64) / DAYS_PER_YEAR,
            "event": y["cens"].astype(np.int64),  # scikit-survival's "cens" field is the event indicator
        }
    )


def _table_path(run: Run) -> pathlib.Path:
    """The table the run reads: ``--table``, or scikit-survival's copy written once to ``OUT/data/gbsg2.parquet``."""
    if run.hp["table"] is not None:
        return run.hp["table"]
    path = run.out / "data" / "gbsg2.parquet"
    if not path.is_file():
        write_table(load_frame(), path)
    return path


def _split(run: Run, path: pathlib.Path) -> tuple[DataSource, tuple]:
    """The table's source with folds stratified by event, and its covariate columns."""
    src = read_source(path, ("sample_id", "time", "event"))
    frame = src.frame
    features = tuple(c for c in frame.columns if c not in ("sample_id", "time", "event", "fold"))
    bad = [c for c in features if not frame[c].dtype.is_numeric()]
    if bad or not features:
        raise RecipeInputError(f"{path}: covariates must be numeric columns, got {bad or 'none'}")
    odd = frame.filter(~pl.col("event").is_in([0, 1]) | (pl.col("time") <= 0) | pl.col("time").is_null())
    if odd.height:
        row = odd.row(0, named=True)
        raise RecipeInputError(
            f"{path}: {row['sample_id']!r} has time {row['time']!r}, event {row['event']!r}; "
            "times must be > 0 and events 0 or 1"
        )
    src = recipe.with_folds(src, N_FOLDS, rng=run.rng, stratify="event", max_samples=run.debug.max_samples)
    return src, features


def datasets(run: Run) -> dict:
    """The (unbuilt) datasets by fold role and the covariate names; standardized on the training folds."""
    path = _table_path(run)
    src, features = _split(run, path)
    train_src = src.fold([f for f in range(N_FOLDS) if f not in (TEST_FOLD, VALIDATION_FOLD)])
    static = feature_pipeline(path, features, {"time": TIME, "event": EVENT}, standardize_on=train_src.frame)
    sources = {"train": train_src, "validation": src.fold(VALIDATION_FOLD), "test": src.fold(TEST_FOLD)}
    return {k: recipe.dataset(s, static) for k, s in sources.items()} | {"features": features}


def make_model(num_features: int, layers: tuple, dropout: float) -> Model:
    """An MLP over the standardized covariates and a one-output head: the risk score at ``model.head_0.pred``."""
    backbone = MLP(in_channels=num_features, layers=layers, dropout=dropout)
    return Model(inputs=(FEATURES,), backbone=backbone, heads=(RegressionHead(name=keys.HEAD, num_outputs=1),))


def train_phase(run: Run):
    """Train on folds 2–4 with the Cox loss; the best epoch by validation Harrell's C is kept."""
    hp, ds = run.hp, datasets(run)
    train_ds, validation_ds = recipe.build(ds["train"], ds["validation"])
    return recipe.fit(
        run,
        make_model(len(ds["features"]), tuple(hp["layers"]), hp["dropout"]),
        {"cox": CoxPH(pred=RISK, time=TIME, event=EVENT)},
        optim.adamw(lr=hp["lr"], weight_decay=hp["weight_decay"]),
        train_ds,
        validation_ds,
        epochs=hp["epochs"],
        metrics={"harrell_c": HarrellC(pred=RISK, time=TIME, event=EVENT)},
        best=train.BestEpochSource(source="validation.metrics.harrell_c", optimization="max"),
        batch_size=hp["batch_size"],
        workers=hp["workers"],
    )


def _risk_column(frame: pl.DataFrame) -> pl.DataFrame:
    r = frame["risk"]
    return frame.with_columns(risk=r.list.first()) if r.dtype == pl.List else frame


def infer_phase(run: Run) -> pl.DataFrame:
    """Risk scores and survival curves of the test fold (``infer/predictions.parquet``).

    The training folds' risks (``infer/train_predictions.parquet``) give the Breslow baseline hazard
    that turns a risk score into ``S(t)`` at :func:`survival_times` (column ``survival``).
    """
    recipe.check_trained(run.model_dir)
    ds = datasets(run)
    test, train_ds = recipe.build(ds["test"], ds["train"])
    columns = {"risk": RISK, "time": TIME, "event": EVENT}
    fitted = _risk_column(recipe.infer(run, train_ds, columns, output_file=run.out / TRAIN_PREDICTIONS))
    write_table(fitted, run.out / TRAIN_PREDICTIONS)
    frame = _risk_column(recipe.infer(run, test, columns, batch_size=256))
    times = survival_times(frame["time"].to_numpy(), frame["event"].to_numpy())
    baseline = breslow_baseline(*(fitted[c].to_numpy() for c in ("risk", "time", "event")))
    surv = cox_survival(frame["risk"].to_numpy(), times, baseline).numpy()
    frame = frame.with_columns(pl.Series("survival", surv.tolist(), dtype=pl.List(pl.Float64)))
    write_table(frame, run.infer_file)
    return frame


def survival_times(time: np.ndarray, event: np.ndarray) -> list[float]:
    """Half-yearly times (years) from 6 months to 5 years within the follow-up of ``time``: from its first time
    (a case must have been seen before) to before its last event (a case must still be event-free after).

    >>> survival_times(np.array([0.3, 1.2, 2.6, 3.1]), np.array([1, 1, 0, 1]))
    [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    """
    grid = np.arange(1, 11) / 2
    last = min(float(time.max()), float(time[event > 0].max()) if (event > 0).any() else 0.0)
    return [float(t) for t in grid if float(time.min()) <= t < last]


def analyze_phase(run: Run) -> dict:
    """Harrell's and Uno's C, time-dependent AUC, integrated Brier score, risk-group Kaplan–Meier → ``report/``."""
    test = recipe.read_inference(run.infer_file, ("sample_id", "risk", "time", "event", "survival"))
    e = test["event"].to_numpy()
    times = survival_times(test["time"].to_numpy(), e)
    if not times:
        raise RecipeInputError(f"{run.infer_file}: no follow-up past 6 months among the test cases; nothing to analyze")
    n_boot = min(run.hp["n_boot"], 200) if run.fast else run.hp["n_boot"]
    res = analyze(
        run.infer_file,
        out=run.report_dir,
        task="survival",
        score="risk",
        time="time",
        event="event",
        times=times,
        survival="survival",
        risk_groups=2,
        ci=n_boot,
        rng=run.rng,
    )
    csv = run.model_dir / "metrics.csv"
    best = ("validation.metrics.harrell_c", "max")
    curves = recipe.curves_figure(csv, run.report_dir / "curves.png", (keys.TOTAL_LOSS, "metrics.harrell_c"), best=best)
    recipe.append_figures(run.report_dir / "report.md", [("training curves", curves)])
    m = recipe.plain(res["metrics"])
    summary = {k: m[k] for k in ("harrell_c", "uno_c", "ibs") if k in m}
    summary["n_samples"], summary["n_events"] = len(test), int(e.sum())
    click.echo(
        "  ".join(
            f"{k} {v['value']:.3f}" + (f" [{v['lower']:.3f}, {v['upper']:.3f}]" if v.get("lower") is not None else "")
            for k, v in summary.items()
            if isinstance(v, dict)
        )
    )
    return summary


OPTIONS = [
    click.option(
        "--table",
        type=click.Path(path_type=pathlib.Path, dir_okay=False, exists=True),
        default=None,
        help="Your own CSV/Parquet table (sample_id, time, event, numeric covariates) [default: GBSG2].",
    ),
    click.option("--weight-decay", type=float, default=1e-3, show_default=True),
    click.option(
        "--layers", type=int, multiple=True, default=(16,), show_default=True, help="MLP widths (repeat the option)."
    ),
    click.option("--dropout", type=float, default=0.1, show_default=True),
]

# the defaults of the common flags (--epochs, --batch-size, --lr, --workers, --n-boot)
DEFAULTS = {"epochs": 60, "batch_size": 64, "lr": 3e-3, "workers": 0, "n_boot": 2000}

RECIPE = recipe.Recipe(
    name="gbsg2",
    doc=__doc__,
    options=OPTIONS,
    defaults=DEFAULTS,
    train=train_phase,
    infer=infer_phase,
    analyze=analyze_phase,
    label_key=EVENT,
)
cli = RECIPE.cli()

if __name__ == "__main__":
    cli()
