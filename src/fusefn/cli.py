"""The ``fusefn`` command line: demo, analyze, recipes, cache, visualize, inspect.

Every error a user can cause ends with one line on stderr and a non-zero exit
code; the traceback goes to the debug log only.
"""

from __future__ import annotations

import logging
import pathlib
import sys

import click

from fusefn import keys
from fusefn.errors import FusefnError

__all__ = ["main"]


class _Group(click.Group):
    """A click group that turns fusefn errors into one clear line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FusefnError as e:
            logging.getLogger("fusefn").debug("command failed", exc_info=True)
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the train step.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def demo(out: pathlib.Path, seed: int, debug: str, compile: bool, device: str) -> None:
    """Train, infer and analyze the hello-world recipe (scikit-learn's digits) end to end."""
    from fusefn import recipe
    from fusefn.core import Rng

    digits = recipe.find("digits")
    results = digits.run("all", out, rng=Rng(seed), debug=debug, compile=compile, device=device)
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


@main.group()
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
@click.option("--image-key", default=keys.IMAGE, show_default=True)
@click.option("--mask-key", default=keys.MASK, show_default=True)
@click.option("--label-key", default=keys.LABEL, show_default=True)
def visualize(what: str, out: pathlib.Path, num: int, seed: int, cache_dir, image_key, mask_key, label_key) -> None:
    """Draw WHAT to PNG: a recipe's first samples (WHAT = recipe name) or an inference file's scores (.parquet/.csv)."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    if what.endswith((".parquet", ".csv")):
        written = _visualize_inference(pathlib.Path(what), out)
    else:
        from fusefn.data import Dataset, collate
        from fusefn.data import visualize as vis

        with tempfile.TemporaryDirectory() as tmp:
            store, source = _static_data(what, cache_dir or pathlib.Path(tmp), seed)
            ids = source.ids[:num]
            ds = Dataset(source=source.take(ids), cache=store).build()
            batch = collate([ds[i] for i in range(len(ds))])
            written = [
                vis.show_batch(
                    batch, out / f"{what}_samples.png", image_key=image_key, mask_key=mask_key, label_key=label_key
                )
            ]
    for path in written:
        click.echo(f"wrote {path}")


def _visualize_inference(path: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
    """Histograms of the scores in an inference file, split by label when it has one."""
    import numpy as np
    import polars as pl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not path.is_file():
        raise FusefnError(f"inference file not found: {path}")
    try:
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
    except Exception as e:
        raise FusefnError(f"cannot read inference file {path}: {e}") from e
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
    cols = min(len(scores), 4)
    rows = -(-len(scores) // cols)
    fig = Figure(figsize=(4 * cols, 3 * rows), dpi=100)
    FigureCanvasAgg(fig)
    labels = frame[label].to_numpy() if label else None
    for i, (name, values) in enumerate(scores.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        if labels is None:
            ax.hist(values, bins=30)
        else:
            for lab in np.unique(labels):
                ax.hist(values[labels == lab], bins=30, alpha=0.5, label=f"{label}={lab}")
            ax.legend(fontsize=6)
        ax.set_title(name, fontsize=8)
    fig.tight_layout()
    target = out / f"{path.stem}_scores.png"
    fig.savefig(target)
    return [target]


# ------------------------------------------------------------------------------- inspect


@main.command()
@click.argument("path", type=click.Path(path_type=pathlib.Path))
def inspect(path: pathlib.Path) -> None:
    """Describe a checkpoint (epoch, metrics, config) or a model_dir (checkpoints and best epochs).

    The file is read weights-only: inspecting a checkpoint from elsewhere never runs code from it.
    """
    from fusefn.train import load_checkpoint

    if path.is_dir():
        ckdir = path / "checkpoints"
        if not ckdir.is_dir():
            raise FusefnError(
                f"{path} is not a model_dir (no checkpoints/ folder); point at a checkpoint file or a model_dir"
            )
        files = sorted(ckdir.glob("*.pt"))
        if not files:
            raise FusefnError(f"no checkpoint in {ckdir}")
        click.echo(f"model_dir {path}")
        for f in files:
            click.echo(f"  {f.name:45s} {f.stat().st_size / 2**20:7.2f} MiB")
        last = ckdir / "last.pt"
        shown = last if last.exists() else files[-1]
        _describe_checkpoint(load_checkpoint(shown), path=shown)
        return
    _describe_checkpoint(load_checkpoint(path), path=path)


def _describe_checkpoint(payload: dict, path: pathlib.Path) -> None:
    from fusefn import nd

    state = payload["state"]
    n_params = sum(int(v.numel()) for v in state.params.values())
    cfg = payload.get("model_config") or {}
    click.echo(f"checkpoint {path}")
    click.echo(f"  epoch {state.epoch}, step {state.step}, seed {state.rng.seed}, {n_params:,} parameters")
    if isinstance(cfg, dict) and "__type__" in cfg:
        click.echo(f"  model {cfg['__type__']} (fingerprint {payload.get('model_fingerprint')})")
    opt = payload.get("optimizer_config")
    if isinstance(opt, dict) and "__type__" in opt:
        click.echo(f"  optimizer {opt['__type__']}")
    for source, best in sorted(state.best.items()):
        click.echo(f"  best {source}: {best.get('value')} at epoch {best.get('epoch')}")
    if state.history:
        last = state.history[-1]
        flat = {k: v for k, v in nd.flatten(last).items() if isinstance(v, (int, float))}
        click.echo(f"  last epoch results ({len(state.history)} epochs recorded):")
        for k, v in flat.items():
            click.echo(f"    {k:45s} {v:.4f}" if isinstance(v, float) else f"    {k:45s} {v}")


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
@click.option("--id", "id_col", default=None, help="Id column [default: id or sample_id].")
@click.option("--score", multiple=True, help="Score column; repeat for one column per class [default: *.probs].")
@click.option("--label", default=None, help="Target column [default: label or target].")
@click.option("--fold", default=None, help="Fold column for per-fold values [default: fold].")
@click.option("--group", multiple=True, help="Extra column(s) for per-group values.")
@click.option("--class-names", default=None, help="Comma-separated class names.")
@click.option(
    "--ci",
    type=click.IntRange(min=0),
    default=10_000,
    show_default=True,
    help="Bootstrap resamples (0 = no intervals).",
)
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed of the bootstrap resampling.")
@click.option("--level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95, show_default=True)
@click.option("--method", type=click.Choice(["percentile", "basic", "normal"]), default="percentile", show_default=True)
@click.option("--threshold", type=float, default=None, help="Binary operating point [default: 0.5].")
@click.option("--out", type=click.Path(file_okay=False, path_type=pathlib.Path), required=True, help="Output folder.")
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("--skip-invalid", is_flag=True, help="Leave out (and list) samples with NaN scores or no label.")
def analyze_command(
    pred,
    target,
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
    out,
    plots,
    skip_invalid,
) -> None:
    """Metrics with bootstrap CIs of an inference file: metrics.json, report.txt/.md and plots."""
    from fusefn.analyze import analyze
    from fusefn.core import Rng

    names = tuple(n.strip() for n in class_names.split(",")) if class_names else None
    try:
        analyze(
            list(pred),
            target,
            out=out,
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
            plots=plots,
            skip_invalid=skip_invalid,
        )
    except OSError as e:  # a full disk, an unwritable folder: one line; the error names the path, the set is whole
        raise FusefnError(f"analyze: {e}") from e
    click.echo((out / "report.txt").read_text(), nl=False)
    click.echo(f"written: {out / 'metrics.json'}")
