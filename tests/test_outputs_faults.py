"""Whole outputs or none (issue 19, item 4): a failed analysis or report leaves the previous complete set.

A failure half-way (a full disk, an error while plotting) must never leave new
``metrics.json`` / ``report.txt`` next to the previous ``report.md`` and figures,
and the error names the path it could not write.
"""

import contextlib
import errno
import os
import subprocess

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

import fusefn.analyze.analysis as analysis
from fusefn import Rng
from fusefn._atomic import SET_MARKER
from fusefn.analyze import analyze
from fusefn.cli import analyze_command
from fusefn.errors import FusefnError
from fusefn.recipe import Run
from fusefn.recipe.report import save_json, staged_report, write_report


def _frame(seed: int, n: int = 400) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    return pl.DataFrame({"id": [f"s{i}" for i in range(n)], "s": 1 / (1 + np.exp(-(rng.normal(size=n) + y))), "y": y})


def _snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _run(frame, out, **kw):
    return analyze(frame, score="s", label="y", ci=50, rng=Rng(0), out=out, **kw)


def test_an_error_while_plotting_leaves_the_previous_set(tmp_path, monkeypatch):
    out = tmp_path / "eval"
    _run(_frame(0), out)
    before = _snapshot(out)
    assert {"metrics.json", "report.txt", "report.md", "roc.png"} <= set(before)

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(analysis, "draw_figures", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        _run(_frame(1), out)  # other data: a mixed folder would show other AUCs in metrics.json
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no temporary left


def test_a_successful_run_replaces_every_file(tmp_path):
    out = tmp_path / "eval"
    _run(_frame(0), out)
    _run(_frame(1), out, plots=False)
    # the previous run's figures are gone: report.md would not embed them, and they show other data
    assert sorted(p.name for p in out.iterdir()) == sorted([SET_MARKER, "metrics.json", "report.txt", "report.md"])


def test_analyze_refuses_an_out_folder_holding_other_files(tmp_path):
    (tmp_path / "preds.csv").write_text("keep me")
    with pytest.raises(FusefnError, match=r"preds\.csv"):
        _run(_frame(0), tmp_path)
    assert (tmp_path / "preds.csv").read_text() == "keep me"


def test_an_out_folder_of_an_older_fusefn_is_replaced(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("metrics.json", "report.txt", "report.md", "roc.png", "curves.png", ".report.md.x1.tmp"):
        (out / name).write_text("OLD RUN")
    _run(_frame(0), out, plots=False)
    assert "OLD RUN" not in (out / "metrics.json").read_text() and not (out / "roc.png").exists()


@contextlib.contextmanager
def _small_disk(path, size: str):
    """A tmpfs of ``size`` at ``path``; skips the test when not root or when mounting fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk, leave: int) -> None:
    """Fill ``disk`` until about ``leave`` bytes are free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * max(0, free - leave))


def test_disk_full_during_analyze_keeps_the_previous_set_and_names_the_path(tmp_path):
    with _small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "eval"
        _run(_frame(0), out)
        before = _snapshot(out)
        _fill(disk, 24 * 1024)  # room for metrics.json and report.txt, not for the figures
        with pytest.raises(OSError) as e:
            _run(_frame(1), out)
        assert e.value.errno == errno.ENOSPC
        assert str(out) in str(e.value)  # the path it could not write
        assert _snapshot(out) == before
        assert sorted(p.name for p in disk.iterdir()) == ["eval", "filler"]


def test_disk_full_in_the_command_is_one_line_naming_the_path(tmp_path):
    with _small_disk(tmp_path / "disk", "1m") as disk:
        pred = tmp_path / "pred.csv"
        _frame(0).write_csv(pred)
        out = disk / "eval"
        args = ["--pred", str(pred), "--score", "s", "--label", "y", "--ci", "50", "--out", str(out)]
        assert CliRunner().invoke(analyze_command, args).exit_code == 0
        before = _snapshot(out)
        _fill(disk, 24 * 1024)
        r = CliRunner().invoke(analyze_command, [*args[:-4], "--ci", "60", "--out", str(out)], standalone_mode=False)
        assert isinstance(r.exception, FusefnError), r.output
        assert "No space left" in str(r.exception) and str(out) in str(r.exception)
        assert _snapshot(out) == before


def test_a_staged_report_is_whole_or_the_previous_one(tmp_path):
    run = Run(name="toy", out=tmp_path)

    def phase(run, auc, fail=False):
        save_json(run.report_dir / "metrics.json", {"auc": auc})
        if fail:
            raise RuntimeError("figure failed")
        write_report(run.report_dir / "report.md", "Toy", [("ROC AUC", auc)])

    with staged_report(run) as staged:
        phase(staged, 0.9)
    before = _snapshot(run.report_dir)
    with pytest.raises(RuntimeError), staged_report(run) as staged:
        phase(staged, 0.5, fail=True)
    assert _snapshot(run.report_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    with staged_report(run) as staged:
        phase(staged, 0.7)
    assert "0.700" in (run.report_dir / "report.md").read_text()


def test_analyze_inside_a_staged_report_is_part_of_the_set(tmp_path, monkeypatch):
    # a recipe's analysis phase (digits): the analyzer's files, then its own figures, in one report folder
    run = Run(name="toy", out=tmp_path, report_name="eval")

    def phase(run, seed):
        _run(_frame(seed), run.report_dir)
        (run.report_dir / "curves.png").write_bytes(b"png %d" % seed)

    for seed in (0, 1):
        with staged_report(run) as staged:
            phase(staged, seed)
    before = _snapshot(run.report_dir)
    assert {"metrics.json", "report.md", "roc.png", "curves.png"} <= set(before)
    monkeypatch.setattr(analysis, "write_markdown", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError), staged_report(run) as staged:
        phase(staged, 2)
    assert _snapshot(run.report_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
