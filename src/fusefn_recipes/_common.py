"""Plumbing the recipes share: common click options, the four phases, report writing.

A recipe defines three functions ``train(run)``, ``infer(run)``, ``analyze(run)``
taking a :class:`Run` (the output directory, seed, debug mode, device, compile flag
and the recipe's own hyper-parameters) and calls :func:`recipe_cli` to get a click
group with the commands ``train``, ``infer``, ``analyze`` and ``all``; each command
takes the common options plus the recipe's options, so every hyper-parameter can
be set from the command line.

>>> import click
>>> def phase(run):
...     click.echo(f"{run.hp['lr']} {run.debug.name}")
>>> cli = recipe_cli("toy", "A toy.", [click.option("--lr", default=0.1)], train=phase, infer=phase, analyze=phase)
>>> from click.testing import CliRunner
>>> import tempfile
>>> r = CliRunner().invoke(cli, ["all", "--out", tempfile.mkdtemp(), "--debug", "fast", "--lr", "0.5"])
>>> r.exit_code, r.output.count("0.5 fast")
(0, 3)
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import click
import numpy as np

from fusefn import debug as fdebug
from fusefn import log as flog
from fusefn._atomic import write_bytes
from fusefn.core import record
from fusefn.data.visualize import save_figure
from fusefn.errors import FusefnError

__all__ = [
    "Run",
    "recipe_cli",
    "resolve_device",
    "write_report",
    "format_ci",
    "save_json",
    "load_json",
    "roc_figure",
    "curves_figure",
    "read_inference",
    "classification_report",
    "check_trained",
    "RecipeInputError",
    "CVTask",
]


class RecipeInputError(FusefnError):
    """A phase's input (trained model, inference file, data file) is missing or malformed."""


@record
class Run:
    """Everything a phase needs: where to write, how to seed, which limits, which device."""

    name: str
    out: pathlib.Path = attrs.field(converter=pathlib.Path)
    seed: int = 0
    debug: fdebug.DebugMode = attrs.field(default=fdebug.mode("default"), converter=fdebug.mode)
    compile: bool = False
    device: str = "cpu"
    hp: Mapping = attrs.field(factory=dict, eq=False)

    @property
    def fast(self) -> bool:
        return self.debug.name == "fast"

    def limit(self, value: int, field: str) -> int:
        """``value`` capped by the debug mode's ``field`` (``max_samples``, ``max_epochs``, ``num_workers``)."""
        return fdebug.apply_limit(self.debug, value, field)

    @property
    def model_dir(self) -> pathlib.Path:
        return self.out / "model"

    @property
    def infer_file(self) -> pathlib.Path:
        return self.out / "infer" / "predictions.parquet"

    @property
    def report_dir(self) -> pathlib.Path:
        return self.out / "report"

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger("fusefn.recipes." + self.name)


@record
class CVTask:
    """What cross_validation.py needs from a recipe: the pool the folds split, a held-out set, how to train.

    Args:
        pool: a DataSource with a ``label`` column (the folds are stratified by it).
        held_out: the DataSource every fold model (and their ensemble) is tested on.
        dataset: ``DataSource -> Dataset`` (the recipe's static pipeline).
        fit: ``(run, train_dataset, validation_dataset, model_dir) -> None``, the recipe's training.
        output_columns: ``{"probs": key, "label": key}`` for inference.
    """

    pool: Any = attrs.field(eq=False)
    held_out: Any = attrs.field(eq=False)
    dataset: Callable = attrs.field(eq=False)
    fit: Callable = attrs.field(eq=False)
    output_columns: Mapping = attrs.field(eq=False)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _common_options(default_out: str) -> list:
    return [
        click.option(
            "--out",
            type=click.Path(path_type=pathlib.Path),
            default=pathlib.Path(default_out),
            show_default=True,
            help="Output directory (model, inference file, report).",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the whole run."),
        click.option(
            "--debug",
            "debug_mode",
            type=click.Choice(["default", "fast", "debug"]),
            default="default",
            show_default=True,
            help="`fast`: a smoke run on a few samples; `debug`: no workers, verbose.",
        ),
        click.option(
            "--compile/--no-compile",
            "compile_",
            default=False,
            show_default=True,
            help="torch.compile the train and eval steps.",
        ),
        click.option("--device", default="auto", show_default=True, help="`auto`, `cpu`, `cuda`, `cuda:1`, …"),
    ]


def _apply(options: Sequence, fn: Callable) -> Callable:
    for opt in reversed(list(options)):
        fn = opt(fn)
    return fn


class _Group(click.Group):
    """Errors a user can cause end as one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FusefnError as e:
            logging.getLogger("fusefn").debug("recipe failed", exc_info=True)
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


def default_hp(options: Sequence) -> dict:
    """The hyper-parameters a recipe runs with when no option is given (``run.hp`` of a default run)."""

    def probe(**kwargs):
        return kwargs

    params = _apply(options, probe).__click_params__
    return {p.name: p.default for p in params}


def recipe_cli(
    name: str,
    doc: str,
    options: Sequence,
    *,
    train: Callable[[Run], Any] | None,
    infer: Callable[[Run], Any] | None,
    analyze: Callable[[Run], Any],
) -> click.Group:
    """A click group ``train | infer | analyze | all`` running the given phases.

    Args:
        name: the recipe's name (default output directory ``runs/<name>``).
        doc: help text of the group (the recipe's docstring).
        options: the recipe's own click options; their values reach the phases as ``run.hp``.
        train, infer, analyze: the phases; ``None`` leaves the command out (e.g. an analysis-only recipe).
    """
    phases = {"train": train, "infer": infer, "analyze": analyze}

    @click.group(name=name, cls=_Group, help=doc, context_settings={"help_option_names": ["-h", "--help"]})
    def group() -> None:
        pass

    def make(cmd: str, todo: tuple[str, ...], help_text: str):
        def command(out, seed, debug_mode, compile_, device, **hp):
            run = Run(
                name=name, out=out, seed=seed, debug=debug_mode, compile=compile_, device=resolve_device(device), hp=hp
            )
            run.out.mkdir(parents=True, exist_ok=True)
            flog.start(run.out, console_level=run.debug.console_level)
            try:
                for phase in todo:
                    run.logger.info("%s: %s", name, phase)
                    phases[phase](run)
            finally:
                flog.stop()

        command.__name__ = cmd
        group.command(name=cmd, help=help_text)(_apply([*_common_options(f"runs/{name}"), *options], command))

    present = tuple(p for p in ("train", "infer", "analyze") if phases[p] is not None)
    helps = {
        "train": "Train the model; writes OUT/model/.",
        "infer": "Run the trained model on the test set; writes OUT/infer/.",
        "analyze": "Compute metrics with 95 % CIs; writes OUT/report/report.md.",
    }
    for p in present:
        make(p, (p,), helps[p])
    make("all", present, "Run " + ", then ".join(present) + ".")
    return group


# --------------------------------------------------------------------------- reports


def format_ci(r: Mapping | float, digits: int = 3) -> tuple[str, str]:
    """(value, "[lower, upper]") strings for a bootstrap result or a plain float."""
    if not isinstance(r, Mapping):
        return f"{float(r):.{digits}f}", ""
    value = f"{r['value']:.{digits}f}"
    if any(math.isnan(r.get(k, float("nan"))) for k in ("lower", "upper")):
        return value, ""
    return value, f"[{r['lower']:.{digits}f}, {r['upper']:.{digits}f}]"


def write_report(
    path: pathlib.Path,
    title: str,
    rows: Sequence[tuple[str, Mapping | float]],
    *,
    intro: str = "",
    figures: Sequence[tuple[str, pathlib.Path]] = (),
    sections: Sequence[tuple[str, str]] = (),
) -> pathlib.Path:
    """Write ``report.md``: a metric table (value, 95 % CI), then sections and embedded PNGs.

    Figure paths are written relative to the report so the folder can be moved.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro.strip(), ""]
    lines += ["| metric | value | 95 % CI |", "| --- | ---: | --- |"]
    for name, r in rows:
        v, ci = format_ci(r)
        lines.append(f"| {name} | {v} | {ci} |")
    lines.append("")
    for head, body in sections:
        lines += [f"## {head}", "", body.strip(), ""]
    for caption, fig in figures:
        if fig is None:  # a figure with nothing to draw (e.g. no metrics CSV yet)
            continue
        rel = pathlib.Path(fig).resolve().relative_to(path.parent.resolve())
        lines += [f"![{caption}]({rel.as_posix()})", ""]
    write_bytes(path, "\n".join(lines).encode())
    return path


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_json(path: pathlib.Path, obj) -> pathlib.Path:
    """Write ``obj`` as indented JSON atomically (NaN → null)."""
    path = pathlib.Path(path)
    write_bytes(path, json.dumps(_jsonable(obj), indent=2).encode())
    return path


def load_json(path: pathlib.Path):
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def roc_figure(path: pathlib.Path, target: np.ndarray, score: np.ndarray, title: str = "ROC") -> pathlib.Path:
    """A PNG of the ROC curve of binary ``score`` against ``target``, AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(target, score)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(target, score):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def check_trained(run: Run) -> None:
    """A one-line error when ``train`` has not run in ``run.out`` yet."""
    from fusefn import train

    try:
        path = train.checkpoint_path(run.model_dir, "best")
    except Exception:
        path = None
    if path is None or not pathlib.Path(path).is_file():
        raise RecipeInputError(f"no trained model in {run.model_dir}: run `train` first (or `all`) with the same --out")


def read_inference(path: pathlib.Path, need: Sequence[str]):
    """The inference Parquet file as a Polars frame; a clear error when missing or lacking ``need``."""
    import polars as pl

    path = pathlib.Path(path)
    if not path.is_file():
        raise RecipeInputError(f"inference file {path} not found: run `infer` first (or `all`) with the same --out")
    frame = pl.read_parquet(path)
    missing = sorted(set(need) - set(frame.columns))
    if missing or frame.height == 0:
        raise RecipeInputError(f"inference file {path} lacks columns {missing} or rows; run `infer` again")
    return frame


_NAMES = {
    "auc": "ROC AUC",
    "average_precision": "average precision",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "mcc": "MCC",
    "ece": "calibration",
    "operating_point": "at the operating point:",
}


def _flatten_results(name: str, value, out: dict) -> None:
    if isinstance(value, Mapping) and "value" not in value:
        for k, v in value.items():
            _flatten_results(f"{name} {k}", v, out)
    elif isinstance(value, (Mapping, int, float)):
        out[name] = value


def classification_report(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    out_dir: pathlib.Path,
    class_names: Sequence[str] | None = None,
    prefix: str = "",
    ids: Sequence | None = None,
) -> tuple[list, dict, list]:
    """Classification metrics with bootstrap CIs and figures, by :func:`fusefn.analyze.analyze`.

    Writes the analyzer's files (metrics.json, report.md, roc.png with a CI band,
    confusion_matrix.png, reliability.png) to ``out_dir``. Returns ``(rows, results,
    figures)`` for :func:`write_report`; ``results`` is keyed like the rows without
    ``prefix`` ("ROC AUC", "accuracy", "ROC AUC macro" when multi-class, …).
    """
    import polars as pl

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    from fusefn.analyze import analyze

    frame = pl.DataFrame({
        "sample_id": list(ids) if ids is not None else [f"s{i}" for i in range(len(labels))],
        "probs": probs.tolist(),
        "label": labels,
    })  # fmt: skip
    names = list(class_names) if class_names is not None else None
    res = analyze(frame, id="sample_id", score="probs", label="label", out=out_dir, ci=n_boot, seed=seed,
                  class_names=names)  # fmt: skip
    results: dict = {}
    for key, value in res["metrics"].items():
        _flatten_results(_NAMES.get(key, key), value, results)
    rows = [(prefix + k, v) for k, v in results.items()]
    out_dir = pathlib.Path(out_dir)
    captions = {
        "roc.png": "ROC curve with its 95 % bootstrap band",
        "confusion_matrix.png": "confusion matrix",
        "reliability.png": "reliability diagram",
    }
    figs = [(c, out_dir / f) for f, c in captions.items() if (out_dir / f).is_file()]
    return rows, results, figs


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(csv_path: pathlib.Path, path: pathlib.Path, keys: Sequence[str]) -> pathlib.Path | None:
    """Training curves (train and validation per epoch) of ``keys`` from fit's ``metrics.csv``; None if absent."""
    import polars as pl

    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
        return None
    frame = pl.read_csv(csv_path)
    keys = [k for k in keys if k in frame.columns]
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for mode in ("train", "validation"):
            part = frame.filter(pl.col("mode") == mode)
            if part.height:
                ax.plot(part["epoch"].to_numpy(), part[key].to_numpy(), marker=".", label=mode)
        ax.set(xlabel="epoch", title=key)
        ax.legend()
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return path
