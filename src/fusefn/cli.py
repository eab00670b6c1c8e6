"""The ``fusefn`` command line: demo, analyze, recipes.

Every error a user can cause ends with one line on stderr and a non-zero exit
code; the traceback goes to the debug log only.
"""

from __future__ import annotations

import functools
import logging
import pathlib
import pkgutil
import sys

import click

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
@click.option("--out", type=click.Path(path_type=pathlib.Path), default=pathlib.Path("fusefn-demo"), show_default=True,
              help="Output directory (model, inference file, report).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the whole run.")
@click.option("--debug", type=click.Choice(["default", "fast", "debug"]), default="default", show_default=True,
              help="`fast` runs a smoke test on a few samples.")
@click.option("--compile/--no-compile", default=False, show_default=True, help="torch.compile the train step.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def demo(out: pathlib.Path, seed: int, debug: str, compile: bool, device: str) -> None:
    """Train, infer and analyze the hello-world recipe (scikit-learn's digits) end to end."""
    from fusefn_recipes import digits

    results = digits.run_all(out=out, seed=seed, debug=debug, compile=compile, device=device)
    click.echo(f"\ndemo done: {out.resolve()}")
    report = out / "eval" / "report.txt"
    if report.exists():
        click.echo(f"report: {report.resolve()}")
    acc = results.get("accuracy") if isinstance(results, dict) else None
    if acc is not None:
        click.echo(f"test accuracy: {acc:.4f}")


def _recipe_names() -> list[str]:
    import fusefn_recipes

    return sorted(m.name for m in pkgutil.iter_modules(fusefn_recipes.__path__) if not m.name.startswith("_"))


@main.command("recipes")
def recipes_cmd() -> None:
    """List the recipes and what each shows."""
    import importlib

    for name in _recipe_names():
        mod = importlib.import_module(f"fusefn_recipes.{name}")
        first = (mod.__doc__ or "").strip().splitlines()[:1]
        click.echo(f"{name:20s} {first[0] if first else ''}")
    click.echo("\nrun one with: python -m fusefn_recipes.<name> all --out DIR")


@functools.cache
def _register_optional() -> None:
    """Attach commands whose modules are optional at import time."""
    try:
        from fusefn.analyze import analyze_command
    except ImportError:  # pragma: no cover - analyzer missing from a partial install
        return
    main.add_command(analyze_command, name="analyze")


_register_optional()
