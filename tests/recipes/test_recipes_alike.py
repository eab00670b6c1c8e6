"""Every recipe alike (issue 17): one flag per concept, ``-h`` everywhere, one layout, runs that talk.

The recipes are read from the registry (the entry points ``fusefn.recipes``) and from the package
``fusefn_recipes``, so a recipe added by anyone — built in or from another installed package — is held
to the same rules without editing this file.
Most checks parse flags only; two small recipes run end to end in ``--debug fast``.
"""

import inspect
import json
import pathlib

import click
import pytest
from click.testing import CliRunner

from fusefn import Rng, recipe
from fusefn.recipe import phases


def _builtin() -> dict[str, recipe.Recipe]:
    """The recipes of the package fusefn_recipes, registered or not (a new one is held to the rules at once)."""
    import importlib
    import pkgutil

    import fusefn_recipes

    found = {}
    for info in pkgutil.iter_modules(fusefn_recipes.__path__):
        try:
            module = importlib.import_module(f"fusefn_recipes.{info.name}")
        except Exception as e:  # reported by its own test rather than breaking the collection of every other
            BROKEN[info.name] = f"{type(e).__name__}: {e}"
            continue
        if isinstance(getattr(module, "RECIPE", None), recipe.Recipe):
            found[module.RECIPE.name] = module.RECIPE
    return found


BROKEN: dict[str, str] = {}
BUILTIN = _builtin()
RECIPES = {**BUILTIN, **{n: recipe.find(n) for n in recipe.names()}}
NAMES = sorted(RECIPES)
TYPES = {"seed": click.INT, "epochs": click.INT, "batch_size": click.INT, "workers": click.INT, "n_boot": click.INT}
TYPES["lr"] = click.FLOAT
# how the same concepts were (or could be) spelt otherwise: none of these may show in a recipe's -h
OTHER_SPELLINGS = (
    "--n-resamples",
    "--resamples",
    "--ci",
    "--n-bootstrap",
    "--bootstrap",
    "--ci-seed",
    "--random-seed",
    "--num-workers",
    "--n-workers",
    "--n-epochs",
    "--num-epochs",
    "--max-epochs",
    "--learning-rate",
    "--bs",
    "--gpu",
    "--output",
    "--out-dir",
    "--output-dir",
    "--overwrite",
)


def _expected(r: recipe.Recipe) -> list[str]:
    """The common flags a recipe must show: what it does decides which."""
    names = ["out", "seed", "debug"]
    if r.train or r.infer:
        names.append("device")
    if r.train:
        names += ["compile", "force", "resume", *recipe.TRAINING_FLAGS]
    if r.analyze:
        names.append("n_boot")
    return [recipe.flag_name(n) for n in recipe.COMMON_FLAGS if n in names]


def _visible(command: click.Command) -> dict[str, click.Parameter]:
    return {opt: p for p in command.params if not getattr(p, "hidden", False) for opt in p.opts}


def test_every_recipe_module_imports():
    assert BROKEN == {}


def test_the_registry_holds_every_recipe():
    assert {"digits", "breast_cancer", "evaluate_knight", "cross_validation", "ct_organs"} <= set(recipe.names())
    missing = sorted(set(BUILTIN) - set(recipe.names()))
    assert not missing, f'add {missing} to [project.entry-points."fusefn.recipes"] in pyproject.toml'


@pytest.mark.parametrize("name", NAMES)
def test_help_everywhere_lists_the_common_flags_and_the_recipes_own(name):
    r = RECIPES[name]
    cli = r.cli()
    res = CliRunner().invoke(cli, ["-h"])
    assert res.exit_code == 0 and all(p in res.output for p in (*r.phases, "all"))
    own = [o for p in r.options for o in _probe_opts(p)]
    for cmd in (*r.phases, "all"):
        res = CliRunner().invoke(cli, [cmd, "-h"])
        assert res.exit_code == 0, res.output
        for flag in [*_expected(r), *own]:
            assert flag in res.output, f"{name} {cmd} -h does not list {flag}"
        assert "Common flags (the same in every recipe" in res.output


def _probe_opts(option) -> list[str]:
    cmd = click.Command("x")
    option(cmd)
    return [o for p in cmd.params if not getattr(p, "hidden", False) for o in p.opts if o.startswith("--")]


@pytest.mark.parametrize("name", NAMES)
def test_one_flag_per_concept_with_the_same_meaning(name):
    r = RECIPES[name]
    for cmd_name, cmd in r.cli().commands.items():
        if cmd_name not in (*r.phases, "all"):
            continue
        shown = _visible(cmd)
        for flag in _expected(r):
            assert flag in shown, f"{name} {cmd_name}: no {flag}"
            param = shown[flag]
            concept = flag[2:].replace("-", "_")
            if concept in TYPES:
                assert param.type == TYPES[concept], f"{name}: {flag} is {param.type}, not {TYPES[concept]}"
        assert [o for o in OTHER_SPELLINGS if o in shown] == [], f"{name}: spell these as the common flags"
        if not r.train:  # a flag with no meaning is not shown
            assert not {"--compile", "--force", "--resume", "--epochs", "--lr"} & set(shown)


def _captured(monkeypatch) -> list:
    runs = []
    monkeypatch.setattr(recipe.Recipe, "execute", lambda self, run, todo: runs.append((run, todo)))
    return runs


@pytest.mark.parametrize("name", NAMES)
def test_the_common_flags_reach_the_run(name, monkeypatch, tmp_path):
    r = RECIPES[name]
    runs = _captured(monkeypatch)
    args = ["all", "--out", str(tmp_path), "--seed", "5", "--debug", "fast"]
    flags = set(_expected(r))
    if "--device" in flags:
        args += ["--device", "cpu"]
    if r.train:
        args += ["--compile", "--force", "--epochs", "3", "--batch-size", "5", "--lr", "0.25", "--workers", "1"]
    if "--n-boot" in flags:
        args += ["--n-boot", "123"]
    res = CliRunner().invoke(r.cli(), args)
    assert res.exit_code == 0, res.output
    (run, todo), *_ = runs
    assert todo == r.phases and run.out == tmp_path and run.rng == Rng(5) and run.debug.name == "fast"
    assert run.report_dir == tmp_path / "report" and run.model_dir == tmp_path / "model"
    if "--device" in flags:
        assert run.device == "cpu"
    if r.train:
        assert run.compile and run.force and not run.resume
        assert (run.hp["epochs"], run.hp["batch_size"], run.hp["lr"], run.hp["workers"]) == (3, 5, 0.25, 1)
        res = CliRunner().invoke(r.cli(), ["train", "--out", str(tmp_path), "--resume"])
        assert res.exit_code == 0, res.output
        assert runs[-1][0].resume and not runs[-1][0].force
    if "--n-boot" in flags:
        assert run.hp["n_boot"] == 123


@pytest.mark.parametrize("name", [n for n in NAMES if RECIPES[n].train is None])
def test_a_flag_without_meaning_is_refused_with_a_sentence(name, tmp_path):
    r = RECIPES[name]
    for flag in ("--epochs", "--resume"):
        extra = [flag] if flag == "--resume" else [flag, "3"]
        res = CliRunner().invoke(r.cli(), [r.phases[-1], "--out", str(tmp_path), *extra])
        assert res.exit_code == 2
        assert f"{name} trains no model: {flag} has no meaning here" in res.stderr


@pytest.mark.parametrize("name", NAMES)
def test_one_output_layout(name):
    r = RECIPES[name]
    assert r.report_name == "report", f"{name} writes its report to {r.report_name}/, not report/"
    assert r.infer_name.startswith("infer/"), f"{name} writes its inference file to {r.infer_name}"


@pytest.mark.parametrize("name", NAMES)
def test_no_recipe_silences_its_run(name):
    """Progress is decided once, in fusefn.recipe (bars on a terminal): a recipe never turns it off."""
    source = inspect.getsource(inspect.getmodule(_phase(RECIPES[name])))
    assert "progress=False" not in source and "TimeStats" not in source


def _phase(r):
    return next(getattr(r, p) for p in r.phases)


def test_fit_shows_bars_on_a_terminal_and_one_line_per_epoch(monkeypatch, tmp_path):
    from fusefn import train

    seen = {}
    monkeypatch.setattr(train, "fit", lambda *a, **kw: seen.update(kw))
    run = recipe.Run(name="toy", out=tmp_path)
    for terminal in (True, False):
        monkeypatch.setattr(phases, "_terminal", lambda terminal=terminal: terminal)
        recipe.fit(run, None, {}, None, [], epochs=1)
        assert seen["progress"] is terminal
        assert any(isinstance(cb, recipe.EpochLine) for cb in seen["callbacks"])


def test_the_epoch_line_has_the_results_the_best_and_the_time_left():
    import types

    history = [{"validation": {"metrics": {"auc": {"0": 0.5, "1": 0.7, "macro": 0.6}}}}]
    res = {
        "epoch": 2,
        "train": {"losses": {"total_loss": 0.5}, "metrics": {"accuracy": 0.8}},
        "validation": {"losses": {"total_loss": 0.4}, "metrics": {"auc": {"0": 0.9, "1": 0.7, "macro": 0.8}}},
    }
    run = types.SimpleNamespace(
        epochs=10,
        timings={"epoch_s": 30.0, "history_s": [30.0, 30.0]},
        state=types.SimpleNamespace(history=(*history, res)),
    )
    line = recipe.EpochLine(best=(("validation.metrics.auc.macro", "max"),)).line(run, 2, res)
    assert line.startswith("epoch 2/10 (30.0 s, about 4 min 00 s left)")
    assert "validation loss 0.4000 auc.macro 0.8000" in line and "auc.0" not in line  # the macro stands for them
    assert line.endswith("; best validation.metrics.auc.macro")
    worse = {**res, "validation": {"metrics": {"auc": {"macro": 0.5}}}}
    run.state.history = (*history, worse)
    assert "best" not in recipe.EpochLine(best=(("validation.metrics.auc.macro", "max"),)).line(run, 2, worse)


@pytest.mark.parametrize("name,extra", [("digits", []), ("breast_cancer", ["--epochs", "2", "--n-boot", "50"])])
def test_fast_runs_write_model_infer_report_and_say_one_line_per_epoch(name, extra, tmp_path):
    r = RECIPES[name]
    res = CliRunner().invoke(r.cli(), ["all", "--out", str(tmp_path), "--debug", "fast", "--device", "cpu", *extra])
    assert res.exit_code == 0, res.output
    top = {p.name for p in tmp_path.iterdir()}
    assert {"model", "infer", "report"} <= top and "eval" not in top
    assert top <= {"model", "infer", "report", "cache", "fusefn.log", "fusefn_debug.log"}
    assert (tmp_path / "report" / "report.md").is_file() and json.loads(
        (tmp_path / "report" / "metrics.json").read_text()
    )
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("epoch ") and "left)" in ln]
    assert [ln.split(" (")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"]
    # the console has the line, the log keeps fit's whole table; no bar was drawn into a non-terminal
    assert "losses.total_loss" not in res.stderr and "\r" not in res.stderr
    assert "losses.total_loss" in pathlib.Path(tmp_path / "fusefn.log").read_text()
    assert f"report: {tmp_path / 'report' / 'report.md'}" in (tmp_path / "fusefn_debug.log").read_text()
