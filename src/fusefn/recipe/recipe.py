"""A recipe as a record: its phases and options, turned into a click group or run from Python.

A recipe defines up to three phases ``train(run)``, ``infer(run)``, ``analyze(run)``
taking a :class:`~fusefn.recipe.Run` and its own click options (their values reach
the phases as ``run.hp``). :meth:`Recipe.cli` makes the click group ``train | infer |
analyze | all`` with the common options ``--out --seed --debug --compile --device --force --resume``;
:meth:`Recipe.run` runs the same phases from Python.

>>> import click, tempfile
>>> def phase(run):
...     click.echo(f"{run.hp['lr']} {run.debug.name} {run.rng.seed}")
...     return run.hp["lr"]
>>> toy = Recipe(name="toy", doc="A toy.", options=(click.option("--lr", default=0.1),), train=phase, analyze=phase)
>>> from click.testing import CliRunner
>>> r = CliRunner().invoke(toy.cli(), ["all", "--out", tempfile.mkdtemp(), "--debug", "fast", "--lr", "0.5"])
>>> r.exit_code, r.output.count("0.5 fast 0")
(0, 2)
>>> from fusefn import Rng
>>> toy.run("analyze", tempfile.mkdtemp(), rng=Rng(3), lr=0.25)
0.25 default 3
0.25
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import click

from fusefn import keys
from fusefn import log as flog
from fusefn import validators as v
from fusefn.cli_errors import UserErrorGroup
from fusefn.core import Rng, record
from fusefn.errors import ConfigError
from fusefn.recipe.report import staged_report
from fusefn.recipe.run import Run, prepare_out, resolve_device

__all__ = ["Recipe", "default_hp"]

PHASES = ("train", "infer", "analyze")
_HELP = {
    "train": "Train the model; writes OUT/model/.",
    "infer": "Run the trained model on the test set; writes OUT/infer/.",
    "analyze": "Compute metrics with 95 % CIs; writes the report.",
}


def _apply(options: Sequence, fn: Callable) -> Callable:
    for opt in reversed(list(options)):
        fn = opt(fn)
    return fn


def _probe(options: Sequence) -> click.Command:
    command = click.Command("probe", callback=lambda **kwargs: kwargs)
    for opt in options:
        opt(command)  # a click option decorating a Command appends its parameter
    return command


def _params(options: Sequence) -> dict[str, click.Parameter]:
    return {p.name: p for p in _probe(options).params}


def default_hp(options: Sequence) -> dict:
    """The hyper-parameters a recipe runs with when no option is given (``run.hp`` of a default run)."""
    return _probe(options).main([], standalone_mode=False)


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
        click.option(
            "--force", is_flag=True, default=False, help="Train even where OUT/model holds a run: replace it."
        ),
        click.option(
            "--resume",
            is_flag=True,
            default=False,
            help="Go on training the run in OUT/model from its last checkpoint.",
        ),
    ]


@record
class Recipe:
    """A recipe: its name, help text, options and phases, and the hooks other commands use.

    This is what a package registers under the entry-point group ``fusefn.recipes``
    (``name = "package.module:RECIPE"``); ``fusefn recipes`` lists them, and
    ``fusefn cache build`` / ``fusefn visualize`` use ``static_data``.

    Args:
        name: the recipe's name (default output directory ``runs/<name>``).
        doc: help text; its first line is the recipe's summary.
        options: the recipe's own click options.
        train, infer, analyze: ``run -> result`` phases; ``None`` leaves the command out.
        static_data: ``(cache_dir, *, rng) -> (H5Cache, DataSource)``: the static pipeline of a default
            run and its samples (``fusefn cache build`` and ``fusefn visualize`` need it).
        cv_task: ``run -> CVTask``: what the ``cross_validation`` recipe needs to cross-validate it.
        commands: more click commands of the recipe's group (e.g. one that writes an example input).
        default_out: the default ``--out``.
        infer_name, report_name: where the inference file and the report go under ``--out``.
        image_key, mask_key, label_key: the keys of its samples' image, mask (``None``: no mask) and
            label, declared once: ``fusefn visualize`` draws them.
    """

    name: str
    doc: str = attrs.field(default="", repr=False)
    options: tuple = attrs.field(default=(), converter=tuple, eq=False)
    train: Callable[[Run], Any] | None = attrs.field(default=None, eq=False)
    infer: Callable[[Run], Any] | None = attrs.field(default=None, eq=False)
    analyze: Callable[[Run], Any] | None = attrs.field(default=None, eq=False)
    static_data: Callable | None = attrs.field(default=None, eq=False)
    cv_task: Callable | None = attrs.field(default=None, eq=False)
    commands: tuple = attrs.field(default=(), converter=tuple, eq=False)
    default_out: str | None = None
    infer_name: str = "infer/predictions.parquet"
    report_name: str = "report"
    image_key: str = attrs.field(default=keys.IMAGE, validator=v.key)
    mask_key: str | None = attrs.field(default=None, validator=v.optional(v.key))
    label_key: str | None = attrs.field(default=keys.LABEL, validator=v.optional(v.key))

    def __attrs_post_init__(self):
        if self.analyze is None and self.train is None and self.infer is None:
            raise ConfigError(f"Recipe {self.name!r} has no phase")

    @property
    def summary(self) -> str:
        """The first line of the recipe's help text."""
        lines = self.doc.strip().splitlines()
        return lines[0] if lines else ""

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(p for p in PHASES if getattr(self, p) is not None)

    def hp(self) -> dict:
        """The recipe's hyper-parameters at their defaults."""
        return default_hp(self.options)

    def params(self) -> dict[str, click.Parameter]:
        """The recipe's click parameters by name (to convert a ``name=value`` string)."""
        return _params(self.options)

    def make_run(
        self, out, *, rng: Rng, debug="default", compile=False, device="auto", hp=None, force=False, resume=False
    ) -> Run:
        """The :class:`Run` of this recipe in ``out`` with its default hyper-parameters updated by ``hp``.

        ``force`` / ``resume``: what training does where ``out/model`` holds a run (see :class:`Run`).
        """
        values = self.hp()
        unknown = sorted(set(hp or {}) - set(values))
        if unknown:
            raise ConfigError(f"recipe {self.name}: unknown options {unknown}; it has {sorted(values)}")
        values.update(hp or {})
        return Run(
            name=self.name,
            out=out,
            rng=rng,
            debug=debug,
            compile=compile,
            device=resolve_device(device),
            hp=values,
            force=force,
            resume=resume,
            infer_name=self.infer_name,
            report_name=self.report_name,
        )

    def execute(self, run: Run, phases: Sequence[str]) -> Any:
        """Run ``phases`` in ``run.out`` with the run's log; returns the last phase's result.

        Under ``torchrun`` every rank trains; only rank 0 runs the later phases (the others return ``{}``).
        """
        prepare_out(run.out)
        rank = int(os.environ.get("RANK", "0"))
        flog.start(
            run.out if rank == 0 else None, console_level=run.debug.console_level if rank == 0 else logging.WARNING
        )
        result = None
        try:
            for phase in phases:
                if phase != "train" and rank != 0:
                    return {}
                run.logger.debug("%s: %s", self.name, phase)
                if phase == "analyze":
                    # the report appears as a whole set, or the previous one stays
                    with staged_report(run) as staged:
                        result = self.analyze(staged)
                else:
                    result = getattr(self, phase)(run)
        finally:
            flog.stop()
        return result

    def run(
        self,
        command: str = "all",
        out=None,
        *,
        rng: Rng = Rng(0),
        debug="default",
        compile=False,
        device="auto",
        force=False,
        resume=False,
        **hp,
    ) -> Any:
        """Run ``command`` (a phase or ``all``) in ``out`` from Python, as the command line would; errors are raised.

        ``rng`` is the run's stream (``--seed N`` on the command line is ``rng=Rng(N)``); ``force`` and
        ``resume`` are ``--force`` and ``--resume``; ``hp`` sets the recipe's own options by parameter name.
        """
        todo = self.phases if command == "all" else (command,)
        if any(p not in self.phases for p in todo):
            raise ConfigError(f"recipe {self.name}: no phase {command!r}; it has {', '.join(self.phases)} and all")
        out = out if out is not None else self.default_out or f"runs/{self.name}"
        run = self.make_run(
            out, rng=rng, debug=debug, compile=compile, device=device, hp=hp, force=force, resume=resume
        )
        return self.execute(run, todo)

    def cli(self) -> click.Group:
        """The click group ``train | infer | analyze | all`` of this recipe."""
        group = UserErrorGroup(name=self.name, help=self.doc, context_settings={"help_option_names": ["-h", "--help"]})
        options = [*_common_options(self.default_out or f"runs/{self.name}"), *self.options]

        def make(cmd: str, todo: tuple[str, ...], help_text: str) -> None:
            def command(out, seed, debug_mode, compile_, device, force, resume, **hp):
                run = self.make_run(
                    out,
                    rng=Rng(seed),
                    debug=debug_mode,
                    compile=compile_,
                    device=device,
                    hp=hp,
                    force=force,
                    resume=resume,
                )
                return self.execute(run, todo)

            command.__name__ = cmd
            group.command(name=cmd, help=help_text)(_apply(options, command))

        for p in self.phases:
            make(p, (p,), _HELP[p])
        make("all", self.phases, "Run " + ", then ".join(self.phases) + ".")
        for extra in self.commands:
            group.add_command(extra)
        return group
