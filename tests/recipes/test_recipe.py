"""fusefn.recipe: the Run, the Recipe record and its click group, the registry, the report helpers."""

import json
import math

import click
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from fusefn import Rng, recipe
from fusefn.data import DataSource
from fusefn.errors import ConfigError, FusefnError


def _toy(calls: list) -> recipe.Recipe:
    def phase(name):
        def run_phase(run):
            calls.append((name, run.rng, run.hp["width"], run.debug.name, run.device))
            if run.hp["fail"]:
                raise recipe.RecipeInputError(f"{name} cannot run")
            return name

        return run_phase

    options = (click.option("--width", type=int, default=4), click.option("--fail/--no-fail", default=False))
    return recipe.Recipe(
        name="toy", doc="A toy.\n\nMore.", options=options, train=phase("train"), analyze=phase("analyze")
    )


def test_cli_runs_the_phases_in_order_with_one_rng(tmp_path):
    calls = []
    cli = _toy(calls).cli()
    r = CliRunner().invoke(cli, ["all", "--out", str(tmp_path), "--seed", "7", "--width", "9", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert calls == [("train", Rng(7), 9, "default", "cpu"), ("analyze", Rng(7), 9, "default", "cpu")]
    assert sorted(cli.commands) == ["all", "analyze", "train"]  # no infer phase, no infer command
    assert (tmp_path / "fusefn.log").is_file()
    r = CliRunner().invoke(cli, ["train", "--help"])
    assert all(o in r.output for o in ("--out", "--seed", "--debug", "--compile", "--device", "--width"))


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path):
    r = CliRunner().invoke(_toy([]).cli(), ["analyze", "--out", str(tmp_path), "--fail"])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines == ["error: analyze cannot run"]


def test_run_from_python_raises_and_checks_its_arguments(tmp_path):
    calls = []
    toy = _toy(calls)
    assert toy.run("train", tmp_path, rng=Rng(3), device="cpu", width=2) == "train"
    assert calls == [("train", Rng(3), 2, "default", "cpu")]
    assert toy.run("all", tmp_path) == "analyze"
    with pytest.raises(recipe.RecipeInputError, match="cannot run"):
        toy.run("train", tmp_path, fail=True)
    with pytest.raises(ConfigError, match="nope"):
        toy.run("train", tmp_path, nope=1)
    with pytest.raises(ConfigError, match="infer"):
        toy.run("infer", tmp_path)
    taken = tmp_path / "file"
    taken.write_text("x")
    with pytest.raises(recipe.OutputError, match="is a file"):
        toy.run("train", taken)
    assert toy.summary == "A toy." and toy.phases == ("train", "analyze")
    assert toy.hp() == {"width": 4, "fail": False}


def test_a_recipe_needs_a_phase():
    with pytest.raises(ConfigError, match="no phase"):
        recipe.Recipe(name="empty")


def test_run_layout_and_limits(tmp_path):
    run = recipe.Run(name="t", out=tmp_path, debug="fast", infer_name="infer/x.parquet", report_name="eval")
    assert run.model_dir == tmp_path / "model" and run.cache_dir == tmp_path / "cache"
    assert run.infer_file == tmp_path / "infer" / "x.parquet" and run.report_dir == tmp_path / "eval"
    assert run.fast and run.limit(10, "max_epochs") == 2 and run.rng == Rng(0)
    assert recipe.resolve_device("cpu") == "cpu"


def test_registry_finds_the_builtin_recipes_and_names_the_known_ones():
    names = recipe.names()
    for name in ("digits", "breast_cancer", "cross_validation", "evaluate_knight", "lesions2d", "volumes3d"):
        assert name in names
    digits = recipe.find("digits")
    assert isinstance(digits, recipe.Recipe) and digits.static_data is not None
    assert recipe.find("breast_cancer").cv_task is not None
    with pytest.raises(FusefnError, match="no_such_recipe.*digits"):
        recipe.find("no_such_recipe")


def test_an_entry_point_that_is_not_a_recipe_is_refused(monkeypatch):
    from importlib import metadata

    fake = metadata.EntryPoint(name="odd", value="json:dumps", group=recipe.GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [fake] if group == recipe.GROUP else [])
    assert recipe.names() == ["odd"]
    with pytest.raises(FusefnError, match="not a fusefn.recipe.Recipe"):
        recipe.find("odd")


def test_report_table_figures_and_json(tmp_path):
    fig = tmp_path / "figs" / "a.png"
    fig.parent.mkdir()
    fig.write_bytes(b"png")
    rows = [
        ("AUC", {"value": 0.9, "lower": 0.8, "upper": 0.95}),
        ("accuracy", 0.75),
        ("nan ci", {"value": 0.5, "lower": math.nan, "upper": math.nan}),
    ]
    path = recipe.write_report(
        tmp_path / "report.md", "T", rows, intro="hi", figures=[("a", fig), ("none", None)], sections=[("S", "body")]
    )
    text = path.read_text()
    assert "| AUC | 0.900 | [0.800, 0.950] |" in text and "| accuracy | 0.750 |  |" in text
    assert "| nan ci | 0.500 |  |" in text and "![a](figs/a.png)" in text and "none" not in text
    assert "## S" in text and text.startswith("# T\n\nhi")
    recipe.append_figures(path, [("more", fig), ("skipped", None)])
    assert path.read_text().endswith("\n### more\n\n![more](figs/a.png)\n")
    saved = recipe.save_json(tmp_path / "m.json", {"a": np.float32(0.5), "b": (1, math.inf), "c": np.arange(2)})
    assert json.loads(saved.read_text()) == {"a": 0.5, "b": [1, None], "c": [0, 1]}
    assert recipe.load_json(saved)["c"] == [0, 1]
    assert recipe.format_ci({"value": 0.12345, "lower": 0.1, "upper": 0.2}, digits=2) == ("0.12", "[0.10, 0.20]")


def test_read_inference_says_which_phase_to_run(tmp_path):
    path = tmp_path / "p.parquet"
    with pytest.raises(recipe.RecipeInputError, match="run `infer` first"):
        recipe.read_inference(path, ("probs",))
    path.write_bytes(b"not parquet")
    with pytest.raises(recipe.RecipeInputError, match="not a readable Parquet.*run `infer` again"):
        recipe.read_inference(path, ("probs",))
    pl.DataFrame({"sample_id": ["a"]}).write_parquet(path)
    with pytest.raises(recipe.RecipeInputError, match=r"lacks columns \['probs'\]"):
        recipe.read_inference(path, ("sample_id", "probs"))
    pl.DataFrame({"sample_id": [], "probs": []}, schema={"sample_id": pl.String, "probs": pl.Float64}).write_parquet(
        path
    )
    with pytest.raises(recipe.RecipeInputError, match="no rows"):
        recipe.read_inference(path, ("sample_id", "probs"))


def test_findings_are_records_that_grow_by_copy(tmp_path):
    frame = pl.DataFrame({"sample_id": ["a", "b"]})
    found = recipe.Findings(frame=frame, probs=np.zeros((2, 2)), labels=np.array([0, 1]))
    more = found.add("AUC (all)", 0.5, key="auc").figure("f", tmp_path / "f.png").figure("g", None)
    assert found.rows == () and found.results == {} and found.figures == ()
    assert more.rows == (("AUC (all)", 0.5),) and more.results == {"auc": 0.5}
    assert more.figures == (("f", tmp_path / "f.png"),) and more.ids == ["a", "b"]
    assert more.figure("first", tmp_path / "0.png", first=True).figures[0][0] == "first"
    assert recipe.headline(more.add("ROC AUC", {"value": 0.91234, "lower": 0.8, "upper": 1.0})) == (
        "test ROC AUC 0.9123 [0.8000, 1.0000]"
    )


def test_with_folds_keeps_every_fold_in_a_smoke_run():
    frame = pl.DataFrame({"sample_id": [f"s{i:03d}" for i in range(100)], "label": [i % 2 for i in range(100)]})
    src = recipe.with_folds(DataSource.from_frame(frame), 5, rng=Rng(0))
    assert len(src) == 100 and sorted(set(src.frame["fold"].to_list())) == [0, 1, 2, 3, 4]
    small = recipe.with_folds(DataSource.from_frame(frame), 5, rng=Rng(0), max_samples=20)
    counts = small.frame.group_by("fold").len()["len"].to_list()
    assert sorted(counts) == [4] * 5
    assert recipe.with_folds(DataSource.from_frame(frame), 5, rng=Rng(0)).frame.equals(src.frame)


def test_classification_metrics_and_default_hp():
    m = recipe.classification_metrics(class_names=("a", "b"))
    assert set(m) == {"auc", "accuracy"} and m["auc"].class_names == ("a", "b")
    opts = [click.option("--n", type=int, default=3), click.option("--c", type=int, multiple=True, default=(1, 2))]
    assert recipe.default_hp(opts) == {"n": 3, "c": (1, 2)} and recipe.default_hp([]) == {}


def test_check_trained_names_the_folder(tmp_path):
    with pytest.raises(recipe.RecipeInputError, match="run `train` first"):
        recipe.check_trained(tmp_path / "model")


# ------------------------------------------------------------------ runs protected (issue 20, item 3)


def _training_recipe() -> recipe.Recipe:
    """A recipe whose train phase fits a tiny CNN with recipe.fit (what every built-in recipe does)."""
    import torch

    from fusefn import models, optim
    from fusefn.losses import CrossEntropy

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            img = torch.full((1, 8, 8), float(i % 2))
            return {"data": {"sample_id": f"s{i}", "input": {"img": img}, "gt": {"label": torch.tensor(i % 2)}}}

    def train(run):
        model = models.Model(
            backbone=models.SmallCNN(in_channels=1, channels=(4,)),
            heads=(models.ClassifierHead(name="head_0", num_classes=2),),
        )
        ce = CrossEntropy(pred="model.head_0.logits", target="data.gt.label")
        state = recipe.fit(run, model, {"ce": ce}, optim.adamw(lr=run.hp["lr"]), Data(), epochs=2, batch_size=8)
        click.echo(f"trained to epoch {state.epoch} with {len(state.history)} epochs of history")

    return recipe.Recipe(
        name="tiny", doc="Tiny.", options=(click.option("--lr", type=float, default=1e-2),), train=train
    )


def test_train_refuses_a_finished_run_unless_forced_or_resumed(tmp_path):
    cli = _training_recipe().cli()
    args = ["train", "--out", str(tmp_path), "--device", "cpu"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    best = (tmp_path / "model" / "checkpoints" / "best_train.losses.total_loss.pt").read_bytes()
    r = CliRunner().invoke(cli, [*args, "--lr", "0.05"])
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert (
        line.startswith("error: model_dir")
        and "differs: optimizer" in line
        and "--force" in line
        and "--resume" in line
    )
    assert (tmp_path / "model" / "checkpoints" / "best_train.losses.total_loss.pt").read_bytes() == best
    r = CliRunner().invoke(cli, [*args, "--resume"])
    assert r.exit_code == 0 and "trained to epoch 2 with 2 epochs" in r.output  # nothing left to train
    r = CliRunner().invoke(cli, [*args, "--lr", "0.05", "--force"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "model" / "checkpoints" / "best_train.losses.total_loss.pt").read_bytes() != best


def test_recipe_run_from_python_takes_force(tmp_path):
    tiny = _training_recipe()
    tiny.run("train", tmp_path, device="cpu")
    with pytest.raises(FusefnError, match="holds the checkpoints of another run"):
        tiny.run("train", tmp_path, device="cpu")
    tiny.run("train", tmp_path, device="cpu", force=True)


def test_recipes_declare_their_keys():
    from fusefn import keys
    from fusefn_recipes import lesions2d

    assert lesions2d.RECIPE.mask_key == lesions2d.SEG and lesions2d.RECIPE.image_key == keys.IMAGE
    with pytest.raises(ConfigError, match="Recipe.mask_key"):
        recipe.Recipe(name="x", train=lambda run: None, mask_key="data..mask")


# ------------------------------------------------------------------ quoted figures hold (issue 20, item 9)

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _quoted_digits_figure() -> tuple[float, float, float]:
    """The digits figure as docs/recipes.md quotes it: ``test accuracy V [L, U]`` (the README quotes V)."""
    import re

    row = next(
        line for line in (REPO / "docs" / "recipes.md").read_text().splitlines() if line.startswith("| `digits`")
    )
    found = re.search(r"test accuracy (\d\.\d+) \[(\d\.\d+), (\d\.\d+)\]", row)
    assert found, f"docs/recipes.md: no 'test accuracy V [L, U]' in the digits row: {row}"
    readme = (REPO / "README.md").read_text()
    assert f"test accuracy {found.group(1)}" in readme, "README.md and docs/recipes.md quote different digits figures"
    return tuple(float(g) for g in found.groups())


@pytest.mark.slow
def test_the_quoted_digits_figure_is_what_a_default_run_gives(tmp_path):
    # what the README promises: a default run repeats its figure (on 2 CPU threads; docs/faq.md says what it needs)
    import torch

    from fusefn_recipes import digits

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = digits.RECIPE.run("all", tmp_path, device="cpu")
    finally:
        torch.set_num_threads(threads)
    value, lower, upper = _quoted_digits_figure()
    digits_of = len(str(value).split(".")[1])
    assert round(got["accuracy"], digits_of) == value, (got["accuracy"], value)
    assert [round(x, 3) for x in got["accuracy_ci"]] == [lower, upper], (got["accuracy_ci"], lower, upper)


# ------------------------------------------------------------------ common flags (issue 17)


def test_common_flags_come_from_defaults_spelt_once():
    seen = []
    toy = recipe.Recipe(
        name="toy",
        defaults={"epochs": 4, "lr": 0.5, "n_boot": 300, "seed": 11},
        aliases={"n_resamples": "n_boot"},
        train=lambda run: seen.append(run),
    )
    assert toy.hp() == {"epochs": 4, "lr": 0.5, "n_boot": 300}
    assert toy.common_flags()[:3] == ["--out", "--seed", "--debug"] and "--batch-size" not in toy.common_flags()
    with pytest.warns(DeprecationWarning, match="n_resamples is deprecated; use n_boot"):
        run = toy.make_run("/tmp/x", rng=Rng(0), device="cpu", hp={"n_resamples": 50})
    assert run.hp["n_boot"] == 50
    with pytest.raises(ConfigError, match="give n_boot only"):
        toy.make_run("/tmp/x", rng=Rng(0), device="cpu", hp={"n_resamples": 50, "n_boot": 60})
    params = {p.name: p for p in toy.cli().commands["train"].params}
    assert params["seed"].default == 11 and params["epochs"].default == 4 and params["n_resamples"].hidden


def test_bad_defaults_and_aliases_are_refused():
    with pytest.raises(ConfigError, match="unknown \\['epoch'\\]"):
        recipe.Recipe(name="x", train=lambda run: None, defaults={"epoch": 3})
    with pytest.raises(ConfigError, match="both in options and in defaults"):
        recipe.Recipe(
            name="x", train=lambda run: None, defaults={"lr": 1.0}, options=(click.option("--lr", type=float),)
        )
    with pytest.raises(ConfigError, match="aliases"):
        recipe.Recipe(name="x", train=lambda run: None, aliases={"n_resamples": "n_boot"})


def test_the_console_shows_one_line_per_epoch_and_the_log_file_the_table(tmp_path, capsys):
    import logging

    def phase(run):
        logging.getLogger("fusefn.train").info("epoch 1/2 (0.1 s)\n   losses.total_loss 0.5")
        logging.getLogger("fusefn.train").info("epoch 1 of 2: a warning-like one-liner stays")
        run.logger.info("epoch 1/2 (0.1 s, about 0 s left)  train loss 0.5000")

    recipe.Recipe(name="toy", train=phase).run("train", tmp_path, device="cpu")
    err = capsys.readouterr().err
    assert "losses.total_loss" not in err and "a warning-like one-liner stays" in err and "about 0 s left" in err
    assert "losses.total_loss" in (tmp_path / "fusefn.log").read_text()
