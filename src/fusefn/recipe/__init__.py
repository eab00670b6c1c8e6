"""Recipes: a short script per worked example, built from a :class:`Run`, three phases and a report.

A recipe is a :class:`Recipe` record: its name, help text, click options and the phases
``train(run)``, ``infer(run)``, ``analyze(run)``. ``Recipe.cli()`` turns it into a click group
``train | infer | analyze | all`` with the flags every recipe spells the same way (:data:`COMMON_FLAGS`:
``--out --seed --debug --device --compile --force --resume`` and, with the defaults the recipe gives them
in ``Recipe.defaults``, ``--epochs --batch-size --lr --workers --n-boot``) and the recipe's own options;
``Recipe.run(...)`` runs the same from Python. Every run writes ``model/``, ``infer/`` and ``report/``. A phase gets a :class:`Run` (the output
directory and its layout, the run's :class:`~fusefn.Rng`, the debug mode, the device, the
hyper-parameters ``run.hp``) and calls the pieces here:

* data: :func:`with_folds`, :func:`dataset` and :func:`build` (rank 0 first under ``torchrun``);
* train: :func:`fit` — :func:`fusefn.train.fit` with the run's seed, device and limits, bars on a terminal
  and one line per epoch with the time left (:class:`EpochLine`);
* infer: :func:`infer` — the best checkpoint(s) over a dataset into ``run.infer_file``;
* analyze: :func:`classify`, :class:`Findings`, :func:`publish`, and the report helpers
  (:func:`write_report`, :func:`save_json`, :func:`roc_figure`, :func:`curves_figure`, :func:`write_text`).

Recipes are found through the entry-point group ``fusefn.recipes`` (:func:`find`, :func:`names`),
so an installed package can add its own; see ``docs/recipes.md``.
"""

from fusefn.recipe.analysis import VALIDATION_NAME, Findings, classify, headline, publish, validation_file
from fusefn.recipe.phases import (
    CVTask,
    EpochLine,
    build,
    check_trained,
    classification_metrics,
    dataset,
    eta_text,
    fit,
    infer,
    per_fold_head,
    with_folds,
)
from fusefn.recipe.recipe import (
    COMMON_FLAGS,
    HP_FLAGS,
    TRAINING_FLAGS,
    Recipe,
    default_hp,
    flag_name,
    hp_option,
)
from fusefn.recipe.registry import GROUP, find, names
from fusefn.recipe.report import (
    append_figures,
    best_epoch,
    classification_report,
    curves_figure,
    format_ci,
    load_json,
    plain,
    read_inference,
    readable_key,
    roc_figure,
    run_best,
    save_json,
    staged_report,
    write_report,
    write_text,
)
from fusefn.recipe.run import OutputError, RecipeInputError, Run, prepare_out, resolve_device

__all__ = [
    "VALIDATION_NAME",
    "validation_file",
    "Recipe",
    "Run",
    "RecipeInputError",
    "OutputError",
    "prepare_out",
    "resolve_device",
    "default_hp",
    "hp_option",
    "flag_name",
    "COMMON_FLAGS",
    "HP_FLAGS",
    "TRAINING_FLAGS",
    "GROUP",
    "find",
    "names",
    "dataset",
    "build",
    "with_folds",
    "per_fold_head",
    "fit",
    "infer",
    "check_trained",
    "classification_metrics",
    "CVTask",
    "EpochLine",
    "eta_text",
    "Findings",
    "classify",
    "publish",
    "headline",
    "write_text",
    "staged_report",
    "plain",
    "append_figures",
    "format_ci",
    "write_report",
    "save_json",
    "load_json",
    "read_inference",
    "roc_figure",
    "curves_figure",
    "best_epoch",
    "readable_key",
    "run_best",
    "classification_report",
]
