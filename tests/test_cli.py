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
    assert (demo_dir / "eval" / "report.txt").is_file()
    assert (demo_dir / "eval" / "metrics.json").is_file()
    assert list((demo_dir / "model" / "checkpoints").glob("best_*.pt"))


def test_demo_refuses_an_out_that_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    _one_line_error(CliRunner().invoke(main, ["demo", "--out", str(f), "--debug", "fast"]), str(f))
    assert f.read_text() == "x"


def test_inspect_model_dir_and_checkpoint(demo_dir):
    r = CliRunner().invoke(main, ["inspect", str(demo_dir / "model")])
    assert r.exit_code == 0, r.output
    assert "epoch" in r.output and "parameters" in r.output and "best validation." in r.output
    ck = next((demo_dir / "model" / "checkpoints").glob("best_*.pt"))
    r = CliRunner().invoke(main, ["inspect", str(ck)])
    assert r.exit_code == 0 and "fusefn.models" in r.output


def test_inspect_errors(tmp_path):
    _one_line_error(CliRunner().invoke(main, ["inspect", str(tmp_path / "none.pt")]), "not found")
    _one_line_error(CliRunner().invoke(main, ["inspect", str(tmp_path)]), "not a model_dir")
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
