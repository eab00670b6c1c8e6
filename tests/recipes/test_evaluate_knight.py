"""evaluate_knight reproduces the figures FuseMedML publishes on the KNIGHT files."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from fusefn_recipes import evaluate_knight as ek
from fusefn_recipes.reference import fuse_eval_dir


def _run(tmp_path, fuse_eval_dir, *extra):
    out = tmp_path / "knight"
    r = CliRunner().invoke(ek.cli, ["all", "--out", str(out), "--data", str(fuse_eval_dir), *extra])
    assert r.exit_code == 0, r.output
    return r, json.loads((out / "report" / "metrics.json").read_text())["fusefn"], out


def test_published_values(tmp_path, fuse_eval_dir):
    r, ours, out = _run(tmp_path, fuse_eval_dir, "--n-boot", "2000", "--no-dice")
    assert round(ours["binary.auc"], 3) == 0.845
    for k in ("fold0", "fold1", "pooled"):
        assert round(ours[f"folds.{k}"], 3) == ek.PUBLISHED[f"folds.{k}"]
    for c in (*ek.CLASS_NAMES, "macro"):
        assert round(ours[f"multiclass.{c}"], 3) == pytest.approx(ek.PUBLISHED[f"multiclass.{c}"], abs=1e-9)
    # 2,000 resamples: Monte-Carlo error about 2x that of FuseMedML's 10,000
    for k, tol in (("mean", 0.006), ("std", 0.006), ("lower", 0.02), ("upper", 0.012)):
        assert ours[f"binary.ci.{k}"] == pytest.approx(ek.PUBLISHED[f"binary.ci.{k}"], abs=tol)
    if "delong.z" in ours:
        assert ours["delong.z"] == pytest.approx(1.672, abs=1e-3)
        assert ours["delong.p"] == pytest.approx(0.09453, abs=1e-5)
    report = (out / "report" / "report.md").read_text()
    assert "| ROC AUC, task 1 | 0.845 |" in report and ("analysis/roc.png" in report or "roc_binary.png" in report)
    assert (out / "report" / "roc_binary.png").stat().st_size > 0
    assert "0.8456" in r.output
    assert "Decision threshold of task 1: 0.5, fixed" in report


def test_roc_figure_gives_the_ci_and_the_operating_point(tmp_path, fuse_eval_dir):
    from fusefn.data.visualize import figure_caption

    _, ours, out = _run(tmp_path, fuse_eval_dir, "--n-boot", "500", "--no-dice")
    caption = figure_caption(out / "report" / "roc_binary.png")
    lo, hi = ours["binary.ci.lower"], ours["binary.ci.upper"]
    assert f"AUC 0.845 (95% CI {lo:.3f}–{hi:.3f})" in caption  # the CI of the report's table
    assert "operating point at the threshold 0.5" in caption


def test_full_ci_matches_fusemedml_within_monte_carlo_error(tmp_path, fuse_eval_dir):
    _, ours, _ = _run(tmp_path, fuse_eval_dir, "--no-dice")
    for k, tol in (("mean", 0.005), ("std", 0.005), ("lower", 0.01), ("upper", 0.01)):
        assert ours[f"binary.ci.{k}"] == pytest.approx(ek.PUBLISHED[f"binary.ci.{k}"], abs=tol)


@pytest.mark.slow
def test_dice_of_the_nifti_volumes(tmp_path, fuse_eval_dir):
    pytest.importorskip("nibabel")
    if not hasattr(ek.metrics, "Dice"):
        pytest.skip("fusefn.metrics.Dice not exported yet")
    _, ours, _ = _run(tmp_path, fuse_eval_dir, "--n-boot", "100")
    for k in ("label_1_2_3", "label_2_3", "label_2"):
        assert ours[f"dice.{k}"] == pytest.approx(ek.PUBLISHED[f"dice.{k}"], abs=5e-5)


def test_default_data_is_the_copy_shipped_with_the_package(tmp_path):
    """No --data: the recipe reads fusefn_recipes/reference/fuse_eval, so it runs from a bare clone or an install."""
    out = tmp_path / "knight"
    r = CliRunner().invoke(ek.cli, ["analyze", "--out", str(out), "--n-boot", "200", "--no-dice"])
    assert r.exit_code == 0, r.output
    ours = json.loads((out / "report" / "metrics.json").read_text())["fusefn"]
    assert round(ours["binary.auc"], 3) == 0.845
    assert ek.default_data_dir() == fuse_eval_dir()


def test_old_spellings_still_work_with_a_warning(tmp_path):
    """--n-resamples and --ci-seed are --n-boot and --seed now, as in every recipe."""
    out = tmp_path / "knight"
    args = ["analyze", "--out", str(out), "--no-dice"]
    r = CliRunner().invoke(ek.cli, [*args, "--n-resamples", "150", "--ci-seed", "7"])
    assert r.exit_code == 0, r.output
    assert "--n-resamples is deprecated; use --n-boot" in r.stderr and "--ci-seed is deprecated; use --seed" in r.stderr
    old = json.loads((out / "report" / "metrics.json").read_text())
    assert old["n_resamples"] == 150
    r = CliRunner().invoke(ek.cli, [*args, "--n-boot", "150", "--seed", "7"])
    assert r.exit_code == 0 and "deprecated" not in r.stderr
    assert json.loads((out / "report" / "metrics.json").read_text()) == old  # the same bootstrap
    assert "seed 7, 150 resamples" in (out / "report" / "report.md").read_text()
    r = CliRunner().invoke(ek.cli, [*args, "--n-boot", "150", "--n-resamples", "100"])
    assert r.exit_code == 2 and "give --n-boot" in r.stderr
    assert "--n-resamples" not in CliRunner().invoke(ek.cli, ["analyze", "-h"]).output  # hidden


def test_the_default_seed_keeps_the_quoted_figures():
    assert ek.RECIPE.defaults["seed"] == 1234  # the bootstrap seed of the figures in the module's text


def test_missing_shipped_data_is_one_clear_line(tmp_path, monkeypatch):
    def missing():
        raise FileNotFoundError("/site-packages/fusefn_recipes/reference/fuse_eval: reference data is missing")

    monkeypatch.setattr(ek, "fuse_eval_dir", missing)
    r = CliRunner().invoke(ek.cli, ["analyze", "--out", str(tmp_path / "o"), "--no-dice"])
    assert r.exit_code == 2
    assert "reference data is missing; or pass --data DIR" in r.output


def test_missing_data_dir_is_one_clear_line(tmp_path):
    r = CliRunner().invoke(ek.cli, ["analyze", "--out", str(tmp_path / "o"), "--data", str(tmp_path)])
    assert r.exit_code == 2
    assert "example1_predictions.csv not found" in r.output


@pytest.mark.slow
def test_runs_as_a_script(tmp_path, repo_root, fuse_eval_dir):
    cmd = [
        sys.executable,
        str(repo_root / "recipes" / "evaluate_knight.py"),
        "all",
        "--out",
        str(tmp_path),
        "--debug",
        "fast",
        "--no-dice",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "multiclass.macro" in r.stdout
