"""The ``fusefn`` command line: demo, analyze, analyze-seg, compare, recipes, cache, visualize, inspect.

Every error a user can cause ends with one line on stderr and exit code 2, and
leaves nothing half-written (:mod:`fusefn.cli_errors`); the traceback goes to the
debug log only.
"""

from __future__ import annotations

import pathlib
import sys

import click

from fusefn.analyze.compare_cli import compare_command
from fusefn.analyze.segmentation import segmentation_command
from fusefn.cli_errors import UserErrorGroup, check_out
from fusefn.cli_options import bootstrap_options
from fusefn.errors import FusefnError
from fusefn.recipe.recipe import hp_option  # the common flags, spelt as in every recipe (no torch imported)

__all__ = ["main"]


@click.group(cls=UserErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fusefn")
def main() -> None:
    """fusefn: functional deep learning for medical images.

    Start with `fusefn demo`, then copy a recipe (`fusefn recipes`) that looks
    like your problem.
    """


@main.command()
@click.option(
    "--out",
    type=click.Path(path_type=pathlib.Path),
    default=pathlib.Path("fusefn-demo"),
    show_default=True,
    help="Output directory (model, inference file, report).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the whole run.")
@click.option(
    "--debug",
    type=click.Choice(["default", "fast", "debug"]),
    default="default",
    show_default=True,
    help="`fast` runs a smoke test on a few samples.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the train step.")
@click.option("--force", is_flag=True, help="Overwrite the run already in OUT (otherwise a different run there stops).")
@click.option("--resume", is_flag=True, help="Go on training the run in OUT/model from its last checkpoint.")
@hp_option("epochs", None)
@hp_option("batch_size", None)
@hp_option("lr", None)
@hp_option("workers", None)
@hp_option("n_boot", None)
def demo(out: pathlib.Path, seed: int, debug: str, compile: bool, device: str, force: bool, resume: bool, **hp) -> None:
    """Train, infer and analyze the hello-world recipe (scikit-learn's digits) end to end.

    The flags are those of every recipe (docs/recipes.md); left out, the digits recipe's defaults hold.
    """
    from fusefn import recipe
    from fusefn.core import Rng

    digits = recipe.find("digits")
    given = {k: v for k, v in hp.items() if v is not None}
    results = digits.run(
        "all", out, rng=Rng(seed), debug=debug, compile=compile, device=device, force=force, resume=resume, **given
    )
    click.echo(f"\ndemo done: {out.resolve()}")
    report = out / digits.report_name / "report.md"
    if report.exists():
        click.echo(f"report: {report.resolve()}")
    acc = results.get("accuracy") if isinstance(results, dict) else None
    if acc is not None:
        click.echo(f"test accuracy: {acc:.4f}")


@main.command("recipes")
def recipes_cmd() -> None:
    """List the recipes (the entry points ``fusefn.recipes`` of every installed package) and what each shows."""
    from fusefn import recipe

    for name in recipe.names():
        click.echo(f"{name:20s} {recipe.find(name).summary}")
    click.echo("\nrun one with: python -m fusefn_recipes.<name> all --out DIR (the built-in ones)")


# ------------------------------------------------------------------------ recipes hooks


def _static_data(name: str, cache_dir: pathlib.Path, seed: int):
    """``(H5Cache, DataSource)`` of the recipe registered as ``name``: its ``Recipe.static_data`` hook."""
    from fusefn import recipe
    from fusefn.core import Rng

    found = recipe.find(name)
    if found.static_data is None:
        raise FusefnError(f"recipe {name!r} has no static pipeline to cache (its Recipe.static_data is None)")
    return found.static_data(cache_dir, rng=Rng(seed))


# --------------------------------------------------------------------------------- cache


@main.group(cls=UserErrorGroup)
def cache() -> None:
    """Build, describe, check or delete HDF5 sample caches (one store per static-pipeline fingerprint)."""


def _stores(path: pathlib.Path) -> list[pathlib.Path]:
    from fusefn.data import is_store

    if not path.exists():
        raise FusefnError(f"{path} does not exist")
    if is_store(path):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and is_store(p))
    if not found:
        raise FusefnError(f"no cache store in {path} (a store is a folder holding store.json)")
    return found


@cache.command("build")
@click.argument("recipe")
@click.option("--cache-dir", type=click.Path(path_type=pathlib.Path), required=True, help="Root of the stores.")
@click.option("--seed", type=int, default=0, show_default=True, help="The recipe's seed (it may shape the source).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: the recipe's).")
@click.option(
    "--deep/--shallow",
    default=True,
    show_default=True,
    help="First check every stored row's checksums (reads the whole store); --shallow checks tables only.",
)
def cache_build(recipe: str, cache_dir: pathlib.Path, seed: int, workers: int | None, deep: bool) -> None:
    """Build RECIPE's static pipeline into --cache-dir (resumable: only missing samples are computed; damaged
    shards are rebuilt)."""
    import attrs

    store, source = _static_data(recipe, cache_dir, seed)
    if workers is not None:
        store = attrs.evolve(store, workers=workers)
    report = store.build(source, deep=deep)
    click.echo(str(report))
    click.echo(f"store: {store.path}")
    if report.failed:
        sys.exit(1)


@cache.command("info")
@click.argument("path", type=click.Path(path_type=pathlib.Path))
def cache_info(path: pathlib.Path) -> None:
    """Describe the store at PATH, or every store under PATH."""
    from fusefn.data import store_info

    for store in _stores(path):
        info = store_info(store)
        counts = ", ".join(f"{v} {k}" for k, v in sorted(info["samples"].items())) or "empty"
        click.echo(
            f"{store}\n  samples: {counts}; outputs: {info['outputs']}; shards: {info['shards']}; "
            f"{info['bytes'] / 2**20:.1f} MiB"
        )
        pipeline = info["store"].get("pipeline")
        if pipeline:
            click.echo(f"  pipeline: {pipeline}")
        for shard, why in info["damaged"].items():
            click.echo(f"  damaged: {shard}: {why}")


@cache.command("verify")
@click.argument("path", type=click.Path(path_type=pathlib.Path))
@click.option("--deep", is_flag=True, help="Also check every shard's CRC32 (reads all the data).")
def cache_verify(path: pathlib.Path, deep: bool) -> None:
    """Check the store(s) at PATH; exit code 1 if any problem is found."""
    from fusefn.data import verify_store

    bad = 0
    for store in _stores(path):
        problems = verify_store(store, deep=deep)
        bad += len(problems)
        click.echo(f"{store}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            click.echo(f"  {p}")
    if bad:
        click.echo("rebuild with `fusefn cache build` (damaged shards are set aside and recomputed)", err=True)
        sys.exit(1)


@cache.command("clear")
@click.argument("path", type=click.Path(path_type=pathlib.Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--wait", is_flag=True, help="Wait for a build of the store to end instead of refusing.")
def cache_clear(path: pathlib.Path, yes: bool, wait: bool) -> None:
    """Delete the store at PATH, or every store under PATH (never one a build is writing: see --wait)."""
    from fusefn.data.cache import clear_store

    stores = _stores(path)
    if not yes:
        click.confirm(f"delete {len(stores)} store(s) under {path}?", abort=True)
    for store in stores:
        clear_store(store, wait=wait)  # under the build lock: a running build refuses it (one line) or is waited for
        click.echo(f"deleted {store}")


# ----------------------------------------------------------------------------- visualize


@main.command()
@click.argument("what")
@click.option("--out", type=click.Path(path_type=pathlib.Path), required=True, help="Folder for the PNG files.")
@click.option("-n", "--num", type=int, default=16, show_default=True, help="Samples to draw.")
@click.option("--seed", type=int, default=0, show_default=True, help="The recipe's seed.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=pathlib.Path),
    default=None,
    help="Cache root for a recipe's samples (default: a temporary folder).",
)
@click.option("--image-key", default=None, help="Image key (default: the recipe's Recipe.image_key).")
@click.option("--mask-key", default=None, help="Mask key to overlay (default: the recipe's Recipe.mask_key).")
@click.option("--label-key", default=None, help="Label key (default: the recipe's Recipe.label_key).")
def visualize(what: str, out: pathlib.Path, num: int, seed: int, cache_dir, image_key, mask_key, label_key) -> None:
    """Draw WHAT to PNG: a recipe's first samples (WHAT = recipe name) or an inference file's scores (.parquet/.csv)."""
    import tempfile

    check_out(out)
    if what.endswith((".parquet", ".csv")):
        written = _visualize_inference(pathlib.Path(what), out)
    else:
        from fusefn import recipe
        from fusefn.core import Rng
        from fusefn.data import visualize as vis

        with tempfile.TemporaryDirectory() as tmp:
            keys_ = {"image_key": image_key, "mask_key": mask_key, "label_key": label_key}
            path = vis.show_recipe_samples(
                recipe.find(what), out, num=num, rng=Rng(seed), cache_dir=cache_dir or pathlib.Path(tmp), **keys_
            )
            written = [path]
    for path in written:
        click.echo(f"wrote {path}")


def _visualize_inference(path: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
    """Histograms of the scores in an inference file, split by label when it has one."""

    import numpy as np
    import polars as pl

    from fusefn.data.tables import read_table

    if not path.is_file():
        raise FusefnError(f"inference file not found: {path}")
    frame = read_table(path)
    label = next((c for c in ("label", "target") if c in frame.columns), None)
    scores = {}
    for name, dtype in frame.schema.items():
        if name in ("sample_id", "id", "fold", label):
            continue
        if isinstance(dtype, (pl.List, pl.Array)) and dtype.inner.is_numeric():
            mat = np.asarray(frame[name].to_list(), dtype=float)
            for c in range(mat.shape[1]):
                scores[f"{name}[{c}]"] = mat[:, c]
        elif dtype.is_float():
            scores[name] = frame[name].to_numpy()
    if not scores:
        raise FusefnError(f"{path} has no score columns (float or list-of-float)")
    from fusefn.data.visualize import show_scores

    labels = frame[label].to_numpy() if label else None
    out.mkdir(parents=True, exist_ok=True)
    return [show_scores(scores, out / f"{path.stem}_scores.png", labels=labels, label_name=label or "label")]


# ------------------------------------------------------------------------------- inspect


@main.command()
@click.argument("path", type=click.Path(path_type=pathlib.Path))
def inspect(path: pathlib.Path) -> None:
    """Describe a run folder (a recipe's --out: parts, config, best epoch, metrics), a model_dir or a checkpoint.

    Checkpoints are read weights-only: inspecting one from elsewhere never runs code from it.
    """
    from fusefn.cli_inspect import describe

    for line in describe(path):
        click.echo(line)


# ------------------------------------------------------------------------------- analyze


@main.command("analyze")
@click.option(
    "--pred",
    "pred",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="Inference file (CSV/Parquet); repeat for one file per fold.",
)
@click.option(
    "--target",
    type=click.Path(dir_okay=False),
    default=None,
    help="Targets file joined on --id (default: --label is a column of --pred).",
)
@click.option(
    "--task",
    type=click.Choice(["auto", "binary", "multiclass", "multilabel", "regression", "survival"]),
    default="auto",
    show_default=True,
    help="What the predictions are; auto: survival with --time/--event, multi-label with several --label columns, "
    "binary or multi-class from the scores otherwise.",
)
@click.option("--id", "id_col", default=None, help="Id column [default: id or sample_id].")
@click.option(
    "--score",
    multiple=True,
    help="Score column; repeat for one column per class or label [default: *.probs]. Regression: the prediction; "
    "survival: the risk score (higher = earlier event).",
)
@click.option(
    "--label",
    multiple=True,
    help="Target column [default: label or target]; multi-label: repeat for one column per label, or a list column.",
)
@click.option("--fold", default=None, help="Fold column for per-fold values [default: fold].")
@click.option("--group", multiple=True, help="Extra column(s) for per-group values.")
@click.option("--class-names", default=None, help="Comma-separated class names.")
@bootstrap_options
@click.option(
    "--operating-point",
    "operating_point",
    multiple=True,
    help="Binary: youden, sens@spec=X or spec@sens=X, reported with CIs; repeat for several.",
)
@click.option(
    "--threshold-from",
    type=click.Path(dir_okay=False),
    default=None,
    help="Binary: validation predictions (same columns, with their own label column: --target is not joined "
    "to them) where the first --operating-point (default youden) is found; its threshold is applied here.",
)
@click.option("--time", "time_col", default=None, help="Survival: time column [default: time].")
@click.option(
    "--event", "event_col", default=None, help="Survival: event column, 1 = event, 0 = censored [default: event]."
)
@click.option(
    "--times",
    default=None,
    help="Survival: comma-separated times of the time-dependent AUC [default: quartiles of the event times].",
)
@click.option("--tau", type=float, default=None, help="Survival: Uno's C counts events before TAU [default: all].")
@click.option(
    "--survival",
    "survival_cols",
    multiple=True,
    help="Survival: predicted S(t) at --times (a list column, or repeat: one column per time), for the integrated "
    "Brier score.",
)
@click.option(
    "--risk-groups",
    default="2",
    show_default=True,
    help="Survival: number of quantile groups of the predicted risk, or comma-separated cut points.",
)
@click.option(
    "--scores",
    "score_kind",
    type=click.Choice(["probabilities", "logits", "raw"]),
    default="probabilities",
    show_default=True,
    help="What the scores are: probabilities (checked), logits (sigmoid/softmax applied), raw (ranks only).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=pathlib.Path), required=True, help="Output folder.")
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("--skip-invalid", is_flag=True, help="Leave out (and list) samples with NaN scores or no label.")
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Evaluate the ids that have a prediction when some targets have none (they are listed in a warning).",
)
def analyze_command(
    pred,
    target,
    task,
    id_col,
    score,
    label,
    fold,
    group,
    class_names,
    ci,
    seed,
    level,
    method,
    threshold,
    operating_point,
    threshold_from,
    time_col,
    event_col,
    times,
    tau,
    survival_cols,
    risk_groups,
    score_kind,
    out,
    plots,
    skip_invalid,
    allow_partial,
) -> None:
    """Metrics with bootstrap CIs of an inference file: metrics.json, report.txt/.md and plots."""
    import warnings

    from fusefn.analyze import analyze
    from fusefn.analyze.resampling import ProgressLine
    from fusefn.core import Rng

    check_out(out)
    names = tuple(n.strip() for n in class_names.split(",")) if class_names else None
    label = label[0] if len(label) == 1 else (tuple(label) or None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = _analyze_or_fail(
            analyze,
            list(pred),
            target,
            out=out,
            task=task,
            id=id_col,
            score=tuple(score) or None,
            label=label,
            fold=fold,
            group=tuple(group) or None,
            class_names=names,
            ci=ci,
            rng=Rng(seed),
            level=level,
            method=method,
            threshold=threshold,
            operating_point=tuple(operating_point) or None,
            threshold_from=threshold_from,
            time=time_col,
            event=event_col,
            times=_floats(times, "--times") if times else None,
            tau=tau,
            survival=tuple(survival_cols) or None,
            risk_groups=_risk_groups(risk_groups),
            plots=plots,
            skip_invalid=skip_invalid,
            strict=not allow_partial,
            scores=score_kind,
            progress=ProgressLine(sys.stderr),
        )
    for w in sorted({str(w.message) for w in caught}):
        click.echo(f"warning: {w}", err=True)
    click.echo((out / "report.txt").read_text(), nl=False)
    click.echo(f"written: {out / 'metrics.json'}")
    if results.get("notes"):
        click.echo(f"{len(results['notes'])} value(s) outside their interval: see the notes (*) above", err=True)


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated numbers", param_hint=option) from None


def _risk_groups(text: str) -> int | list[float]:
    if "," not in text and text.strip().isdigit():
        return int(text)
    return _floats(text, "--risk-groups")


def _analyze_or_fail(analyze, *args, **kwargs) -> dict:
    try:
        return analyze(*args, **kwargs)
    except OSError as e:  # a full disk, an unwritable folder: one line; the error names the path, the set is whole
        raise FusefnError(f"analyze: {e}") from e


# fusefn analyze-seg PRED REF --out --classes --labels --tolerance --percentile --n-boot --seed --allow-missing --no-plots
main.add_command(segmentation_command)
main.add_command(compare_command)
