"""k-fold cross-validation of another recipe, and the ensemble of its fold models on a held-out set.

Shows how to evaluate a model honestly when data are few: the recipe's pool of
samples is split into k stratified folds; k models are trained, each validated on
the fold it did not see (its best epoch chosen there); their out-of-fold
predictions give per-fold metrics and a pooled metric over every pool sample, each
with a bootstrap CI; then the k models, and their ensemble (mean probability, plus
the majority vote), are tested on the held-out set no model ever saw.

Any registered recipe whose :class:`fusefn.recipe.Recipe` has a ``cv_task`` (see
:class:`fusefn.recipe.CVTask`) can be cross-validated: ``breast_cancer`` (default),
``image_clinical``, ``lesions2d``, ``volumes3d``, or one of your own package. Its hyper-parameters keep their defaults; change them with
``--set name=value`` (e.g. ``--set epochs=30``).

The out-of-fold figures are slightly optimistic (each fold also picks its model's
best epoch); the held-out figures are not.

Figure reached (measured, default run, seed 0, breast_cancer, 5 folds): pooled
out-of-fold ROC AUC 0.998 [0.996, 1.000]; held-out AUC of the fold models 0.983 ± 0.001,
of their ensemble 0.984 [0.958, 1.000] (majority-vote accuracy 0.956); 82 s on a
shared 2-core CPU.

    python recipes/cross_validation.py all --recipe breast_cancer --folds 5 --out runs/cv
"""

from __future__ import annotations

import pathlib

import click
import numpy as np
import polars as pl

from fusefn import Rng, recipe
from fusefn.data import DataSource
from fusefn.errors import ConfigError
from fusefn.metrics import AUCROC, Bootstrap
from fusefn.recipe import Run

__all__ = ["RECIPE", "cli", "recipe_run", "fold_sources"]


def _recipe(name: str) -> recipe.Recipe:
    """The registered recipe ``name``; it must say how to cross-validate it (``Recipe.cv_task``)."""
    able = [n for n in recipe.names() if n != "cross_validation" and recipe.find(n).cv_task is not None]
    if name not in able:
        raise ConfigError(f"--recipe {name!r}: choose one of {', '.join(able)}")
    return recipe.find(name)


def recipe_run(run: Run) -> Run:
    """The :class:`Run` the cross-validated recipe sees: its defaults, then ``--set`` overrides."""
    inner = _recipe(run.hp["recipe"])
    params, hp = inner.params(), {}
    for item in run.hp["set_"]:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in params:
            raise ConfigError(f"--set {item!r}: expected name=value with name one of {', '.join(sorted(params))}")
        p = params[key]
        v = p.type_cast_value(click.Context(click.Command("x")), value.split(",") if p.multiple else value)
        hp[key] = tuple(v) if isinstance(v, list) else v
    return inner.make_run(
        run.out,
        rng=run.rng,
        debug=run.debug,
        compile=run.compile,
        device=run.device,
        hp=hp,
        force=run.force,
        resume=run.resume,
    )


def fold_sources(pool: DataSource, k: int, *, rng: Rng) -> list[tuple[DataSource, DataSource]]:
    """``[(train, validation)]`` for each of ``k`` folds of ``pool``, stratified by its ``label`` column."""
    frame = pool.frame.drop([c for c in ("fold",) if c in pool.frame.columns])
    src = DataSource.from_frame(frame, id_column=pool.id_column).with_folds(k, stratify="label", rng=rng)
    return [(src.fold([j for j in range(k) if j != f]), src.fold(f)) for f in range(k)]


def _fold_dir(run: Run, f: int) -> pathlib.Path:
    return run.out / "folds" / f"fold_{f}"


def _task(run: Run) -> tuple[Run, recipe.CVTask]:
    inner = recipe_run(run)
    return inner, _recipe(run.hp["recipe"]).cv_task(inner)


def train_phase(run: Run) -> None:
    inner, task = _task(run)
    k = run.hp["folds"]
    for f, (tr, va) in enumerate(fold_sources(task.pool, k, rng=run.rng)):
        run.logger.info("fold %d/%d: %d training, %d validation samples", f + 1, k, len(tr), len(va))
        task.fit(inner, *recipe.build(task.dataset(tr), task.dataset(va)), _fold_dir(run, f) / "model")


def infer_phase(run: Run) -> None:
    _, task = _task(run)
    k, cols = run.hp["folds"], task.output_columns
    dirs = [_fold_dir(run, f) / "model" for f in range(k)]
    for d in dirs:
        recipe.check_trained(d)
    (held_out,) = recipe.build(task.dataset(task.held_out))
    for f, (_, va) in enumerate(fold_sources(task.pool, k, rng=run.rng)):
        (va,) = recipe.build(task.dataset(va))
        recipe.infer(run, va, cols, model_dir=dirs[f], output_file=_fold_dir(run, f) / "out_of_fold.parquet")
        recipe.infer(run, held_out, cols, model_dir=dirs[f], output_file=_fold_dir(run, f) / "held_out.parquet")
    recipe.infer(run, held_out, cols, model_dir=dirs, output_file=run.out / "infer" / "ensemble.parquet")


def _scores(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(frame["probs"].to_list(), dtype=np.float64)
    return probs[:, 1], frame["label"].to_numpy().astype(np.int64)


def _auc_ci(score, label, n_boot: int, rng: Rng) -> dict:
    ci = Bootstrap(AUCROC(pred="s", target="y"), n=n_boot, rng=rng, stratify="y")
    return ci.compute(ci.update(ci.init(), {"s": score, "y": label}))


def analyze_phase(run: Run) -> dict:
    k, n_boot, rng = run.hp["folds"], run.hp["n_boot"], run.rng
    need = ("sample_id", "probs", "label")
    oof = [recipe.read_inference(_fold_dir(run, f) / "out_of_fold.parquet", need) for f in range(k)]
    held = [recipe.read_inference(_fold_dir(run, f) / "held_out.parquet", need) for f in range(k)]
    ens = recipe.read_inference(run.out / "infer" / "ensemble.parquet", need)
    rows, results = [], {}
    fold_aucs = []
    for f, frame in enumerate(oof):
        r = _auc_ci(*_scores(frame), n_boot, rng)
        rows.append((f"fold {f}: out-of-fold ROC AUC ({frame.height} samples)", r))
        results[f"fold_{f}.out_of_fold_auc"] = r
        fold_aucs.append(r["value"])
    pooled = pl.concat(oof)
    r = _auc_ci(*_scores(pooled), n_boot, rng)
    rows.append((f"pooled out-of-fold ROC AUC ({pooled.height} samples)", r))
    results["pooled.out_of_fold_auc"] = r
    held_aucs = []
    for f, frame in enumerate(held):
        r = _auc_ci(*_scores(frame), n_boot, rng)
        rows.append((f"fold {f} model: held-out ROC AUC", r))
        results[f"fold_{f}.held_out_auc"] = r
        held_aucs.append(r["value"])
    score, label = _scores(ens)
    r = _auc_ci(score, label, n_boot, rng)
    rows.append((f"ensemble of {k}: held-out ROC AUC ({ens.height} samples)", r))
    results["ensemble.held_out_auc"] = r
    if "probs_vote" in ens.columns:
        vote_acc = float((ens["probs_vote"].to_numpy() == label).mean())
        rows.append(("ensemble majority vote: held-out accuracy", vote_acc))
        results["ensemble.vote_accuracy"] = vote_acc
    results["folds.out_of_fold_auc_mean_std"] = [float(np.mean(fold_aucs)), float(np.std(fold_aucs))]
    results["folds.held_out_auc_mean_std"] = [float(np.mean(held_aucs)), float(np.std(held_aucs))]
    rd = run.report_dir
    roc = recipe.roc_figure(rd / "roc_ensemble.png", label, score, title=f"ensemble of {k} folds")
    recipe.save_json(rd / "metrics.json", results)
    summary = (
        f"Out-of-fold AUC over the folds: mean {np.mean(fold_aucs):.3f}, std {np.std(fold_aucs):.3f}. "
        f"Held-out AUC of the single fold models: mean {np.mean(held_aucs):.3f}, std {np.std(held_aucs):.3f}; "
        f"of their ensemble: {results['ensemble.held_out_auc']['value']:.3f}."
    )
    recipe.write_report(
        rd / "report.md",
        f"{k}-fold cross-validation of {run.hp['recipe']}",
        rows,
        intro=f"95 % CIs from {n_boot} stratified bootstrap resamples. {summary}",
        figures=[("ROC of the ensemble, held-out set", roc)],
    )
    value, ci = recipe.format_ci(results["ensemble.held_out_auc"], digits=4)
    click.echo(f"{summary}\nensemble held-out ROC AUC {value} {ci}")
    return results


OPTIONS = [
    click.option(
        "--recipe",
        default="breast_cancer",
        show_default=True,
        help="The recipe to cross-validate: breast_cancer, image_clinical, lesions2d, volumes3d or any "
        "registered recipe with a cv_task.",
    ),
    click.option("--folds", type=int, default=5, show_default=True, help="Number of folds k."),
    click.option(
        "--set",
        "set_",
        multiple=True,
        metavar="NAME=VALUE",
        help="Override a hyper-parameter of the recipe (repeatable), e.g. --set epochs=30.",
    ),
    click.option("--n-boot", type=int, default=2000, show_default=True, help="Bootstrap resamples for the CIs."),
]

RECIPE = recipe.Recipe(
    name="cross_validation",
    doc=__doc__,
    options=OPTIONS,
    train=train_phase,
    infer=infer_phase,
    analyze=analyze_phase,
)
cli = RECIPE.cli()

if __name__ == "__main__":
    cli()
