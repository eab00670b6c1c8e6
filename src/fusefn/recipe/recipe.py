"""A recipe as a record: its phases and options, turned into a click group or run from Python.

A recipe defines up to three phases ``train(run)``, ``infer(run)``, ``analyze(run)``
taking a :class:`~fusefn.recipe.Run`. :meth:`Recipe.cli` makes the click group ``train |
infer | analyze | all``; every recipe spells a concept with the same flag (:data:`COMMON_FLAGS`):
``--out --seed --debug`` always, ``--device`` when it runs a model, ``--compile --force
--resume`` when it trains; ``--epochs --batch-size --lr --workers --n-boot`` where the recipe
declares their defaults (``Recipe.defaults``); then the recipe's own click options. Their
values reach the phases as ``run.hp``. :meth:`Recipe.run` runs the same phases from Python.

>>> import click, tempfile
>>> def phase(run):
...     click.echo(f"{run.hp['lr']} {run.hp['width']} {run.debug.name} {run.rng.seed}")
...     return run.hp["lr"]
>>> toy = Recipe(name="toy", doc="A toy.", defaults={"lr": 0.1}, options=(click.option("--width", default=4),),
...              train=phase, analyze=phase)
>>> from click.testing import CliRunner
>>> r = CliRunner().invoke(toy.cli(), ["all", "--out", tempfile.mkdtemp(), "--debug", "fast", "--lr", "0.5"])
>>> r.exit_code, r.output.count("0.5 4 fast 0")
(0, 2)
>>> from fusefn import Rng
>>> toy.run("analyze", tempfile.mkdtemp(), rng=Rng(3), lr=0.25)
0.25 4 default 3
0.25
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import warnings
from collections.abc import Callable, Mapping, Sequence
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

__all__ = ["Recipe", "default_hp", "hp_option", "flag_name", "COMMON_FLAGS", "HP_FLAGS", "TRAINING_FLAGS"]

PHASES = ("train", "infer", "analyze")
_HELP = {
    "train": "Train the model; writes OUT/model/.",
    "infer": "Run the trained model on the test set; writes OUT/infer/.",
    "analyze": "Compute metrics with 95 % CIs; writes OUT/report/.",
}

#: The hyper-parameter flags every recipe spells the same way: ``name -> (type, help)``. A recipe shows
#: those it gives a default in ``Recipe.defaults`` (or declares itself with the same name and type).
HP_FLAGS: dict[str, tuple[type, str]] = {
    "epochs": (int, "Training epochs (`--debug fast`: at most 2)."),
    "batch_size": (int, "Samples per training batch."),
    "lr": (float, "Learning rate (the peak of its schedule, where there is one)."),
    "workers": (int, "Data-loading workers (0: in the main process; `--debug`: 0)."),
    "n_boot": (int, "Bootstrap resamples for the 95 % CIs."),
}
#: The hyper-parameters that only mean something to a recipe that trains.
TRAINING_FLAGS = ("epochs", "batch_size", "lr", "workers")
#: Every flag that means the same in every recipe, by parameter name (``--out`` … ``--n-boot``).
COMMON_FLAGS = ("out", "seed", "debug", "device", "compile", "force", "resume", *HP_FLAGS)
_TRAIN_RUN_FLAGS = ("compile", "force", "resume")  # run-level flags of a recipe that trains


def flag_name(name: str) -> str:
    """The command-line spelling of a parameter name: ``batch_size`` → ``--batch-size``.

    >>> flag_name("n_boot")
    '--n-boot'
    """
    return "--" + name.replace("_", "-")


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


def hp_option(name: str, default) -> Callable:
    """The click option of the common hyper-parameter ``name`` (one of :data:`HP_FLAGS`) with ``default``.

    ``default=None`` means "not set here" (``cross_validation`` leaves the recipe it runs its own default).
    """
    kind, text = HP_FLAGS[name]
    if default is None:
        return click.option(flag_name(name), name, type=kind, default=None, help=text + " [default: the recipe's]")
    return click.option(flag_name(name), name, type=kind, default=default, show_default=True, help=text)


def _refuse(recipe: str, why: str) -> Callable:
    def callback(ctx, param, value):
        if value not in (None, False):
            raise click.UsageError(f"{recipe} {why}: {param.opts[0]} has no meaning here", ctx=ctx)

    return callback


def _run_options(recipe: Recipe) -> list:
    """``--out --seed --debug``, ``--device`` for a recipe that runs a model, ``--compile --force --resume`` for one
    that trains; the flags it has no use for are hidden and refused with a sentence saying why."""
    trains, runs_model = recipe.train is not None, recipe.train is not None or recipe.infer is not None
    options = [
        click.option(
            "--out",
            type=click.Path(path_type=pathlib.Path),
            default=pathlib.Path(recipe.out_dir),
            show_default=True,
            help="Output directory: OUT/model, OUT/infer, OUT/report.",
        ),
        click.option(
            "--seed", type=int, default=recipe.defaults.get("seed", 0), show_default=True, help="Seed of the whole run."
        ),
        click.option(
            "--debug",
            "debug_mode",
            type=click.Choice(["default", "fast", "debug"]),
            default="default",
            show_default=True,
            help="`fast`: a smoke run on a few samples; `debug`: no workers, verbose.",
        ),
    ]
    if runs_model:
        options.append(
            click.option("--device", default="auto", show_default=True, help="`auto`, `cpu`, `cuda`, `cuda:1`, …")
        )
    if trains:
        options += [
            click.option(
                "--compile/--no-compile",
                "compile_",
                default=False,
                show_default=True,
                help="torch.compile the train and eval steps.",
            ),
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
        return options
    hidden = [] if runs_model else ["device"]
    for name in [*hidden, *_TRAIN_RUN_FLAGS]:
        flag = name in ("force", "resume", "compile")
        options.append(
            click.option(
                flag_name(name),
                f"refused_{name}",
                is_flag=flag,
                default=False if flag else None,
                hidden=True,
                expose_value=False,
                callback=_refuse(recipe.name, "runs no model" if name == "device" else "trains no model"),
            )
        )
    return options


def _refused_hp(recipe: Recipe, present: set) -> list:
    """Hidden options that refuse, with a sentence, the training flags of a recipe that trains nothing."""
    if recipe.train is not None or recipe.cv_task is not None:
        return []
    return [
        click.option(
            flag_name(name),
            f"refused_{name}",
            default=None,
            hidden=True,
            expose_value=False,
            callback=_refuse(recipe.name, "trains no model"),
        )
        for name in TRAINING_FLAGS
        if name not in present
    ]


def _leading_phases(instance, attribute, value) -> None:
    if tuple(value) != PHASES[: len(value)]:
        raise ConfigError(f"Recipe.all_ranks must be a leading run of {PHASES}, got {tuple(value)!r}")


def _check_defaults(instance, attribute, value: Mapping) -> None:
    unknown = sorted(set(value) - {*HP_FLAGS, "seed"})
    if unknown:
        raise ConfigError(f"Recipe.defaults: unknown {unknown}; the common flags are {sorted({*HP_FLAGS, 'seed'})}")


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
        defaults: the defaults of the common flags the recipe uses (:data:`HP_FLAGS`: ``epochs``,
            ``batch_size``, ``lr``, ``workers``, ``n_boot``; and ``seed``, 0 when not given): each becomes
            its option, spelt as in every recipe (``{"n_boot": 2000}`` → ``--n-boot``, ``run.hp["n_boot"]``).
        aliases: old spellings kept as hidden, deprecated options: ``{"n_resamples": "n_boot"}`` takes
            ``--n-resamples N`` as ``--n-boot N`` with a warning.
        train, infer, analyze: ``run -> result`` phases; ``None`` leaves the command out.
        static_data: ``(cache_dir, *, rng) -> (H5Cache, DataSource)``: the static pipeline of a default
            run and its samples (``fusefn cache build`` and ``fusefn visualize`` need it).
        cv_task: ``run -> CVTask``: what the ``cross_validation`` recipe needs to cross-validate it.
        all_ranks: the phases every rank runs under ``torchrun``: a leading run of train, infer, analyze
            (default ``("train",)``). They run inside one process group (joined once: a group left cannot
            be joined again); the group is left before the first phase not listed, which rank 0 runs alone.
        commands: more click commands of the recipe's group (e.g. one that writes an example input).
        default_out: the default ``--out``.
        infer_name, report_name: where the inference file and the report go under ``--out``
            (every built-in recipe: ``infer/…`` and ``report``).
        image_key, mask_key, label_key: the keys of its samples' image, mask (``None``: no mask) and
            label, declared once: ``fusefn visualize`` draws them.
    """

    name: str
    doc: str = attrs.field(default="", repr=False)
    options: tuple = attrs.field(default=(), converter=tuple, eq=False)
    defaults: Mapping = attrs.field(factory=dict, converter=dict, validator=_check_defaults, eq=False)
    aliases: Mapping = attrs.field(factory=dict, converter=dict, eq=False)
    train: Callable[[Run], Any] | None = attrs.field(default=None, eq=False)
    infer: Callable[[Run], Any] | None = attrs.field(default=None, eq=False)
    analyze: Callable[[Run], Any] | None = attrs.field(default=None, eq=False)
    static_data: Callable | None = attrs.field(default=None, eq=False)
    cv_task: Callable | None = attrs.field(default=None, eq=False)
    all_ranks: tuple = attrs.field(default=("train",), converter=tuple, validator=_leading_phases)
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
        own = set(_params(self.options))
        twice = sorted(own & set(self.defaults))
        if twice:
            raise ConfigError(
                f"Recipe {self.name!r}: {[flag_name(n) for n in twice]} both in options and in defaults; "
                "give their defaults in defaults only"
            )
        known = {*own, *self.defaults, "seed"}
        bad = {old: new for old, new in self.aliases.items() if new not in known or old in known}
        if bad:
            raise ConfigError(f"Recipe {self.name!r}: aliases {bad} must map an unused name to a flag of the recipe")

    @property
    def summary(self) -> str:
        """The first line of the recipe's help text."""
        lines = self.doc.strip().splitlines()
        return lines[0] if lines else ""

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(p for p in PHASES if getattr(self, p) is not None)

    @property
    def out_dir(self) -> str:
        """The default ``--out``: ``default_out`` or ``runs/<name>``."""
        return self.default_out or f"runs/{self.name}"

    def common_flags(self) -> list[str]:
        """The common flags this recipe's commands show, as spelt on the command line (``--out``, …, ``--n-boot``)."""
        own = set(_params(self.options))
        shown = {"out", "seed", "debug", *self.defaults, *(own & set(HP_FLAGS))}
        shown |= {"device"} if self.train or self.infer else set()
        shown |= set(_TRAIN_RUN_FLAGS) if self.train else set()
        return [flag_name(n) for n in COMMON_FLAGS if n in shown]

    def hp_options(self) -> tuple:
        """The click options whose values are ``run.hp``: the common ones of ``defaults``, then the recipe's own."""
        common = [hp_option(n, d) for n, d in self.defaults.items() if n != "seed"]
        return (*common, *self.options)

    def hp(self) -> dict:
        """The recipe's hyper-parameters at their defaults."""
        return default_hp(self.hp_options())

    def params(self) -> dict[str, click.Parameter]:
        """The recipe's click parameters by name (to convert a ``name=value`` string)."""
        return _params(self.hp_options())

    def _unalias(self, hp: Mapping) -> dict:
        hp = dict(hp)
        for old, new in self.aliases.items():
            if old not in hp:
                continue
            if new == "seed":
                raise ConfigError(f"recipe {self.name}: {old} is the run's seed now: pass rng=Rng({hp[old]!r})")
            if new in hp:
                raise ConfigError(f"recipe {self.name}: {old} and {new} are one option; give {new} only")
            warnings.warn(f"recipe {self.name}: {old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)
            hp[new] = hp.pop(old)
        return hp

    def make_run(
        self, out, *, rng: Rng, debug="default", compile=False, device="auto", hp=None, force=False, resume=False
    ) -> Run:
        """The :class:`Run` of this recipe in ``out`` with its default hyper-parameters updated by ``hp``.

        ``force`` / ``resume``: what training does where ``out/model`` holds a run (see :class:`Run`).
        """
        values, hp = self.hp(), self._unalias(hp or {})
        unknown = sorted(set(hp) - set(values))
        if unknown:
            raise ConfigError(f"recipe {self.name}: unknown options {unknown}; it has {sorted(values)}")
        values.update(hp)
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

        Under ``torchrun`` every rank runs the phases of ``all_ranks`` inside one process group; only rank 0
        runs the later ones, outside it (the other ranks return ``{}``).
        """
        from fusefn.train import distributed

        prepare_out(run.out)
        rank = int(os.environ.get("RANK", "0"))
        level = run.debug.console_level if rank == 0 else logging.WARNING
        logger = flog.start(run.out if rank == 0 else None, console_level=level)
        if level >= logging.INFO:
            _one_line_epochs(logger)
        result = None
        group = contextlib.ExitStack()
        try:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(p in self.all_ranks for p in phases):
                group.enter_context(distributed.process_group())
            for phase in phases:
                if phase not in self.all_ranks:
                    group.close()  # rank 0 goes on alone: nothing may wait for the other ranks now
                    if rank != 0:
                        return {}
                run.logger.debug("%s: %s", self.name, phase)
                if phase == "analyze":
                    # the report appears as a whole set, or the previous one stays
                    with staged_report(run) as staged:
                        result = self.analyze(staged)
                    # the headline a phase prints stays the console's last line; the path goes to the debug log
                    run.logger.debug("report: %s", run.report_dir / "report.md")
                else:
                    result = getattr(self, phase)(run)
        finally:
            group.close()
            flog.stop()
        return result

    def run(
        self,
        command: str = "all",
        out=None,
        *,
        rng: Rng | None = None,
        debug="default",
        compile=False,
        device="auto",
        force=False,
        resume=False,
        **hp,
    ) -> Any:
        """Run ``command`` (a phase or ``all``) in ``out`` from Python, as the command line would; errors are raised.

        ``rng`` is the run's stream (``--seed N`` on the command line is ``rng=Rng(N)``; default: the recipe's
        default seed); ``force`` and ``resume`` are ``--force`` and ``--resume``; ``hp`` sets the common
        hyper-parameters and the recipe's own options by parameter name (``epochs=3``, ``n_boot=200``).
        """
        todo = self.phases if command == "all" else (command,)
        if any(p not in self.phases for p in todo):
            raise ConfigError(f"recipe {self.name}: no phase {command!r}; it has {', '.join(self.phases)} and all")
        rng = Rng(self.defaults.get("seed", 0)) if rng is None else rng
        out = out if out is not None else self.out_dir
        run = self.make_run(
            out, rng=rng, debug=debug, compile=compile, device=device, hp=hp, force=force, resume=resume
        )
        return self.execute(run, todo)

    def _alias_options(self) -> list:
        types = {p.name: p.type for p in _probe([*self.hp_options(), click.option("--seed", type=int)]).params}
        return [
            click.option(flag_name(old), old, type=types[new], default=None, hidden=True)
            for old, new in self.aliases.items()
        ]

    def _epilog(self) -> str:
        own = [p.opts[0] for p in _probe(self.options).params if not getattr(p, "hidden", False)]
        text = "Common flags (the same in every recipe, docs/recipes.md): " + ", ".join(self.common_flags())
        return text + (". This recipe's own: " + ", ".join(own) + "." if own else ".")

    def cli(self) -> click.Group:
        """The click group ``train | infer | analyze | all`` of this recipe."""
        group = UserErrorGroup(name=self.name, help=self.doc, context_settings={"help_option_names": ["-h", "--help"]})
        hp_opts = self.hp_options()
        present = set(_params(hp_opts))
        options = [*_run_options(self), *hp_opts, *_refused_hp(self, present), *self._alias_options()]
        epilog = self._epilog()

        def make(cmd: str, todo: tuple[str, ...], help_text: str) -> None:
            def command(**kw):
                kw = self._cli_aliases(kw)
                run = self.make_run(
                    kw.pop("out"),
                    rng=Rng(kw.pop("seed")),
                    debug=kw.pop("debug_mode"),
                    compile=kw.pop("compile_", False),
                    device=kw.pop("device", "cpu"),
                    force=kw.pop("force", False),
                    resume=kw.pop("resume", False),
                    hp=kw,
                )
                return self.execute(run, todo)

            command.__name__ = cmd
            group.command(name=cmd, help=help_text, epilog=epilog)(_apply(options, command))

        for p in self.phases:
            make(p, (p,), _HELP[p])
        make("all", self.phases, "Run " + ", then ".join(self.phases) + ".")
        for extra in self.commands:
            group.add_command(extra)
        return group

    def _cli_aliases(self, kw: dict) -> dict:
        """``kw`` with each deprecated spelling given moved to its flag, and a warning on stderr."""
        ctx = click.get_current_context()
        for old, new in self.aliases.items():
            value = kw.pop(old, None)
            if value is None:
                continue
            if ctx.get_parameter_source(new) == click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"{flag_name(old)} and {flag_name(new)} are one option: give {flag_name(new)}")
            click.echo(f"warning: {flag_name(old)} is deprecated; use {flag_name(new)}", err=True)
            kw[new] = value
        return kw


class _EpochTablesToFiles(logging.Filter):
    """Keeps fit's multi-line epoch tables off the console (the log files keep them): the console has one line
    per epoch (:class:`fusefn.recipe.phases.EpochLine`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not (record.name == "fusefn.train" and msg.startswith("epoch ") and "\n" in msg)


def _one_line_epochs(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.addFilter(_EpochTablesToFiles())
