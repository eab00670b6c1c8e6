"""The `fusefn` command line: every command runs, and user errors are one line with exit code 2."""

import pathlib

import pytest
from click.testing import CliRunner

from fusefn.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--debug", "fast"])
    assert result.exit_code == 0, result.output
    assert "demo done" in result.output and "test accuracy" in result.output
    return out


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ")
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[-1]


def test_demo_writes_model_inference_and_report(demo_dir):
    assert (demo_dir / "report" / "report.txt").is_file()
    assert (demo_dir / "report" / "metrics.json").is_file()
    assert list((demo_dir / "model" / "checkpoints").glob("best_*.pt"))


def test_demo_refuses_an_out_that_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    _one_line_error(CliRunner().invoke(main, ["demo", "--out", str(f), "--debug", "fast"]), str(f))
    assert f.read_text() == "x"


def test_inspect_a_run_folder(demo_dir):
    """The folder the README calls a run (a recipe's --out): its parts, model, best epoch and metrics."""
    r = CliRunner().invoke(main, ["inspect", str(demo_dir)])
    assert r.exit_code == 0, r.output
    out = r.output
    assert f"run {demo_dir}" in out
    for part in ("model/", "infer/", "report/"):
        assert part in out
    assert "model: fusefn.models.model:Model" in out
    assert "best epoch" in out and "by validation.metrics.auc.macro" in out
    assert "metrics (report/metrics.json" in out and "accuracy" in out


def test_analyze_reports_progress_only_when_the_bootstrap_is_long():
    import io

    from fusefn.analyze.resampling import ProgressLine

    t = iter([0.0, 1.0, 2.0, 4.0, 4.5, 6.0, 9.0])
    stream = io.StringIO()
    p = ProgressLine(stream, after=3.0, clock=lambda: next(t))
    for done in (1000, 2000, 3000, 4000, 5000, 6000):
        p(done, 6000)
    lines = stream.getvalue().splitlines()
    # silent for 3 s, then at most a line a second, and always the last one
    assert lines == [
        "bootstrap: 3,000 / 6,000 resamples (4 s, about 4 s left)",
        "bootstrap: 5,000 / 6,000 resamples (6 s, about 1 s left)",
        "bootstrap: 6,000 / 6,000 resamples (9 s, about 0 s left)",
    ]


def test_inspect_model_dir_and_checkpoint(demo_dir):
    r = CliRunner().invoke(main, ["inspect", str(demo_dir / "model")])
    assert r.exit_code == 0, r.output
    assert "epoch" in r.output and "parameters" in r.output and "best validation." in r.output
    ck = next((demo_dir / "model" / "checkpoints").glob("best_*.pt"))
    r = CliRunner().invoke(main, ["inspect", str(ck)])
    assert r.exit_code == 0 and "fusefn.models" in r.output


def test_inspect_errors(tmp_path):
    _one_line_error(CliRunner().invoke(main, ["inspect", str(tmp_path / "none.pt")]), "not found")
    _one_line_error(CliRunner().invoke(main, ["inspect", str(tmp_path)]), "neither a run folder")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    _one_line_error(CliRunner().invoke(main, ["inspect", str(bad)]), "bad.pt")


def test_cache_build_info_verify_clear(tmp_path):
    runner = CliRunner()
    root = tmp_path / "cache"
    r = runner.invoke(main, ["cache", "build", "digits", "--cache-dir", str(root)])
    assert r.exit_code == 0, r.output
    assert "1797 computed" in r.output
    again = runner.invoke(main, ["cache", "build", "digits", "--cache-dir", str(root)])
    assert "1797 reused, 0 computed" in again.output
    info = runner.invoke(main, ["cache", "info", str(root)])
    assert info.exit_code == 0 and "1797 ok" in info.output
    assert runner.invoke(main, ["cache", "verify", str(root), "--deep"]).exit_code == 0
    # a truncated shard is reported and makes verify fail
    shard = next(root.glob("*/shard-*.h5"))
    shard.write_bytes(shard.read_bytes()[:100])
    bad = runner.invoke(main, ["cache", "verify", str(root)])
    assert bad.exit_code == 1 and "truncated" in bad.output
    assert runner.invoke(main, ["cache", "clear", str(root), "--yes"]).exit_code == 0
    assert not list(root.iterdir())


def test_cache_errors(tmp_path):
    _one_line_error(CliRunner().invoke(main, ["cache", "info", str(tmp_path)]), "no cache store")
    _one_line_error(
        CliRunner().invoke(main, ["cache", "build", "no_such_recipe", "--cache-dir", str(tmp_path)]),
        "no_such_recipe",
    )


def test_visualize_recipe_samples_and_inference_file(tmp_path, demo_dir):
    r = CliRunner().invoke(main, ["visualize", "digits", "--out", str(tmp_path), "-n", "4"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "digits_samples.png").stat().st_size > 0
    r = CliRunner().invoke(main, ["visualize", str(demo_dir / "infer" / "test.parquet"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "test_scores.png").stat().st_size > 0
    _one_line_error(CliRunner().invoke(main, ["visualize", str(tmp_path / "x.csv"), "--out", str(tmp_path)]))


def test_recipes_lists_every_recipe():
    r = CliRunner().invoke(main, ["recipes"])
    assert r.exit_code == 0
    for name in ("digits", "evaluate_knight"):
        assert name in r.output


def test_every_command_has_help():
    for args in (["--help"], ["demo", "--help"], ["analyze", "--help"], ["cache", "--help"], ["inspect", "--help"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0 and "Usage" in r.output


def test_analyze_runs_and_its_errors_are_one_line(tmp_path):
    import polars as pl

    pred = tmp_path / "pred.csv"
    pl.DataFrame({"id": list("abcdef"), "s": [0.1, 0.2, 0.7, 0.4, 0.8, 0.9], "y": [0, 0, 0, 1, 1, 1]}).write_csv(pred)
    args = ["analyze", "--pred", str(pred), "--score", "s", "--label", "y", "--ci", "100", "--seed", "3"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out"), "--no-plots"])
    assert r.exit_code == 0, r.output
    assert "seed 3" in r.output and "auc" in r.output and "written:" in r.output
    _one_line_error(
        CliRunner().invoke(main, ["analyze", "--pred", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]),
        "file not found",
    )
    _one_line_error(CliRunner().invoke(main, [*args[:3], "--score", "nope", "--out", str(tmp_path / "o")]), "nope")


_TOY_RECIPE = """
import numpy as np
import polars as pl

from fusefn import keys, nd, recipe, record
from fusefn.data import DataSource, H5Cache


@record
class MakeSquare:
    def __call__(self, sample):
        i = int(nd.get(sample, keys.SAMPLE_ID).rsplit("_", 1)[1])
        return nd.assoc_many(sample, {keys.IMAGE: np.full((1, 6, 6), i, np.float32), keys.LABEL: i % 2})


def static_data(cache_dir, *, rng):
    source = DataSource.from_frame(pl.DataFrame({"sample_id": ["sq_0", "sq_1", "sq_2"]}))
    return H5Cache(root=cache_dir, pipeline=MakeSquare(), workers=0), source


RECIPE = recipe.Recipe(name="toy_squares", doc="Squares of a user's package.", analyze=print, static_data=static_data)
"""


@pytest.fixture
def user_recipe(tmp_path, monkeypatch):
    """A recipe of a user's own installed package: a module and its dist-info declaring the entry point."""
    import importlib

    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_squares_pkg.py").write_text(_TOY_RECIPE)
    info = site / "toy_squares_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-squares-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fusefn.recipes]\ntoy_squares = toy_squares_pkg:RECIPE\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return "toy_squares"


def test_a_registered_recipe_of_another_package_is_accepted(user_recipe, tmp_path):
    r = CliRunner().invoke(main, ["recipes"])
    assert r.exit_code == 0 and user_recipe in r.output and "Squares of a user's package." in r.output
    root = tmp_path / "cache"
    r = CliRunner().invoke(main, ["cache", "build", user_recipe, "--cache-dir", str(root)])
    assert r.exit_code == 0, r.output
    assert "3 computed" in r.output
    r = CliRunner().invoke(main, ["visualize", user_recipe, "--out", str(tmp_path / "png"), "-n", "2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "png" / f"{user_recipe}_samples.png").stat().st_size > 0


def test_a_recipe_without_static_data_cannot_be_cached(tmp_path):
    _one_line_error(
        CliRunner().invoke(main, ["cache", "build", "evaluate_knight", "--cache-dir", str(tmp_path)]),
        "evaluate_knight",
        "static",
    )
