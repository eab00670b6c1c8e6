"""Bad inputs to every command: each ends in ONE line on stderr naming the offending thing, exit code 2,
and nothing half-written (issue 20, item 6).

Each case builds its inputs in a fresh folder, runs the command with click's CliRunner and checks:
exit code 2, stderr is a single ``error: ...`` line holding the case's needles, and the folder holds
no file the run created (a recipe's run folder may keep its logs, which record the error).
Tests run as root, so an unwritable output is a path under a regular file, or under /proc.
"""

from __future__ import annotations

import pathlib

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from fusefn.cli import main
from fusefn.cli_errors import UserErrorGroup

GOOD = {"id": list("abcdef"), "s": [0.1, 0.2, 0.7, 0.4, 0.8, 0.9], "y": [0, 0, 0, 1, 1, 1]}


def _csv(d: pathlib.Path, name: str, **cols) -> str:
    pl.DataFrame({**GOOD, **cols}).write_csv(d / name)
    return str(d / name)


def _text(d: pathlib.Path, name: str, text: str | bytes) -> str:
    p = d / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _analyze(pred: str, *more: str, out: str | None = None, d: pathlib.Path) -> list[str]:
    args = ["analyze", "--pred", pred, *more, "--ci", "20", "--no-plots"]
    return [*args, "--out", out or str(d / "out")]


def _file(d: pathlib.Path) -> pathlib.Path:
    f = d / "file.txt"
    f.write_text("a regular file")
    return f


# (case id, inputs -> argv, needles the error line holds)
ANALYZE = [
    (
        "scores-as-strings",
        lambda d: _analyze(
            _csv(d, "p.csv", s=["0.1", "x", "0.7", "0.4", "0.8", "0.9"]), "--score", "s", "--label", "y", d=d
        ),
        ["'s'", "text", "'b'", "'x'"],
    ),
    (
        "logits",
        lambda d: _analyze(_csv(d, "p.csv", s=[-2.0, 1.0, 3.0, -1.0, 0.5, 2.0]), "--score", "s", "--label", "y", d=d),
        ["outside [0, 1]", "--scores logits"],
    ),
    (
        "class-scores-not-summing-to-1",
        lambda d: _analyze(
            _csv(d, "p.csv", a=[0.5] * 6, b=[0.9] * 6), "--score", "a", "--score", "b", "--label", "y", d=d
        ),
        ["sum to 1", "--scores logits"],
    ),
    (
        "decimal-commas-in-a-comma-separated-file",
        lambda d: _analyze(_text(d, "p.csv", "id,s,y\na,0,25,0\nb,0,75,1\n"), "--score", "s", "--label", "y", d=d),
        ["p.csv", "decimal comma"],
    ),
    ("empty-file", lambda d: _analyze(_text(d, "p.csv", b""), d=d), ["p.csv", "empty"]),
    ("binary-file", lambda d: _analyze(_text(d, "p.csv", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), d=d), ["p.csv", "binary"]),
    (
        "parquet-named-csv",
        lambda d: (pl.DataFrame(GOOD).write_parquet(d / "p.csv"), _analyze(str(d / "p.csv"), d=d))[1],
        ["p.csv", "Parquet"],
    ),
    (
        "csv-named-parquet",
        lambda d: _analyze(_text(d, "p.parquet", "id,s,y\na,0.1,0\n"), d=d),
        ["p.parquet", "not a Parquet"],
    ),
    ("wrong-file-type", lambda d: _analyze(_text(d, "p.png", b"\x89PNG"), d=d), ["p.png", "unknown table format"]),
    (
        "duplicate-ids",
        lambda d: _analyze(_csv(d, "p.csv", id=list("abcdea")), "--score", "s", "--label", "y", d=d),
        ["duplicate ids", "'a'"],
    ),
    (
        "label-outside-the-classes",
        lambda d: _analyze(_csv(d, "p.csv", y=[0, 0, 0, 1, 1, 2]), "--score", "s", "--label", "y", d=d),
        ["'y'", "'f'", "outside the classes"],
    ),
    (
        "labels-as-text",
        lambda d: _analyze(
            _csv(d, "p.csv", y=["no", "no", "no", "yes", "yes", "yes"]), "--score", "s", "--label", "y", d=d
        ),
        ["label column 'y'", "text"],
    ),
    (
        "missing-score-column",
        lambda d: _analyze(_csv(d, "p.csv"), "--score", "nope", "--label", "y", d=d),
        ["nope", "columns: id, s, y"],
    ),
    ("missing-label-column", lambda d: _analyze(_csv(d, "p.csv"), "--score", "s", "--label", "nope", d=d), ["nope"]),
    ("missing-prediction-file", lambda d: _analyze(str(d / "none.csv"), d=d), ["none.csv", "not found"]),
    (
        "missing-target-file",
        lambda d: _analyze(_csv(d, "p.csv"), "--target", str(d / "t.csv"), "--score", "s", "--label", "y", d=d),
        ["t.csv", "not found"],
    ),
    (
        "target-without-id-column",
        lambda d: _analyze(
            _csv(d, "p.csv"), "--target", _text(d, "t.csv", "key,y2\na,1\n"), "--score", "s", "--label", "y2", d=d
        ),
        ["no id column 'id'"],
    ),
    (
        "partial-predictions",
        lambda d: _analyze(
            _text(d, "p.csv", "id,s\na,0.1\nb,0.9\n"),
            "--target",
            _text(d, "t.csv", "id,y\na,0\nb,1\nc,1\n"),
            "--score",
            "s",
            "--label",
            "y",
            d=d,
        ),
        ["'c'", "--allow-partial"],
    ),
    (
        "nan-score",
        lambda d: _analyze(
            _text(d, "p.csv", "id,s,y\na,0.1,0\nb,NaN,1\nc,0.7,1\n"), "--score", "s", "--label", "y", d=d
        ),
        ["'b'", "NaN"],
    ),
    (
        "class-names-count",
        lambda d: _analyze(_csv(d, "p.csv"), "--score", "s", "--label", "y", "--class-names", "a,b,c", d=d),
        ["3 class names", "2 classes"],
    ),
    (
        "raw-scores-without-threshold",
        lambda d: _analyze(
            _csv(d, "p.csv", s=[-2.0, 1.0, 3.0, -1.0, 0.5, 2.0]), "--score", "s", "--label", "y", "--scores", "raw", d=d
        ),
        ["--threshold"],
    ),
    (
        "out-under-a-file",
        lambda d: _analyze(_csv(d, "p.csv"), "--score", "s", "--label", "y", out=str(_file(d) / "sub"), d=d),
        ["--out", "file.txt", "not a folder"],
    ),
    (
        "out-in-proc",
        lambda d: _analyze(_csv(d, "p.csv"), "--score", "s", "--label", "y", out="/proc/fusefn-out", d=d),
        ["--out", "/proc"],
    ),
    (
        "out-is-a-file",
        lambda d: _analyze(_csv(d, "p.csv"), "--score", "s", "--label", "y", out=str(_file(d)), d=d),
        ["file.txt"],
    ),
    (
        "out-holding-other-files",
        lambda d: (
            ((d / "out").mkdir(), (d / "out" / "mine.csv").write_text("x")),
            _analyze(_csv(d, "p.csv"), "--score", "s", "--label", "y", d=d),
        )[1],
        ["mine.csv"],
    ),
    ("pred-is-a-folder", lambda d: _analyze(str(d), d=d), ["--pred", "directory"]),
    ("ci-negative", lambda d: [*_analyze(_csv(d, "p.csv"), d=d), "--ci", "-1"], ["--ci"]),
    (
        "threshold-not-a-number",
        lambda d: [*_analyze(_csv(d, "p.csv"), d=d), "--threshold", "half"],
        ["--threshold", "half"],
    ),
    ("unknown-option", lambda d: [*_analyze(_csv(d, "p.csv"), d=d), "--bootstrap", "9"], ["--bootstrap"]),
    ("unknown-scores-kind", lambda d: [*_analyze(_csv(d, "p.csv"), d=d), "--scores", "odds"], ["--scores", "odds"]),
]

OTHERS = [
    ("cache-info-missing", lambda d: ["cache", "info", str(d / "nowhere")], ["nowhere", "does not exist"]),
    ("cache-info-not-a-store", lambda d: ["cache", "info", str(d)], ["no cache store"]),
    ("cache-build-unknown-recipe", lambda d: ["cache", "build", "no_such", "--cache-dir", str(d / "c")], ["no_such"]),
    (
        "cache-build-dir-under-a-file",
        lambda d: ["cache", "build", "digits", "--cache-dir", str(_file(d) / "c")],
        ["file.txt"],
    ),
    ("cache-clear-missing-arg", lambda d: ["cache", "clear"], ["PATH"]),
    (
        "visualize-out-under-a-file",
        lambda d: ["visualize", _csv(d, "p.csv"), "--out", str(_file(d) / "png")],
        ["--out", "file.txt"],
    ),
    ("visualize-missing-file", lambda d: ["visualize", str(d / "none.csv"), "--out", str(d / "png")], ["none.csv"]),
    (
        "visualize-no-score-columns",
        lambda d: ["visualize", _text(d, "p.csv", "id,name\na,x\n"), "--out", str(d / "png")],
        ["no score columns"],
    ),
    (
        "visualize-binary-csv",
        lambda d: ["visualize", _text(d, "p.csv", b"\0\1\2\3"), "--out", str(d / "png")],
        ["p.csv", "binary"],
    ),
    ("visualize-unknown-recipe", lambda d: ["visualize", "no_such", "--out", str(d / "png")], ["no_such"]),
    ("inspect-missing", lambda d: ["inspect", str(d / "run")], ["run", "not found"]),
    ("inspect-not-a-checkpoint", lambda d: ["inspect", _text(d, "model.pt", "not a checkpoint")], ["model.pt"]),
    ("inspect-empty-folder", lambda d: ["inspect", str(d)], ["neither a run folder"]),
    ("demo-out-is-a-file", lambda d: ["demo", "--out", str(_file(d)), "--debug", "fast"], ["file.txt"]),
    ("demo-out-under-a-file", lambda d: ["demo", "--out", str(_file(d) / "run"), "--debug", "fast"], ["file.txt"]),
    ("demo-bad-debug-mode", lambda d: ["demo", "--debug", "fastest"], ["--debug", "fastest"]),
    ("unknown-command", lambda d: ["analyse"], ["analyse"]),
]


def _snapshot(d: pathlib.Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def _check(result, needles, before: set[str], d: pathlib.Path, allowed=()):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    new = {p for p in _snapshot(d) - before if not any(pathlib.PurePath(p).match(a) for a in allowed)}
    assert not new, f"left behind: {sorted(new)}"


@pytest.mark.parametrize(("build", "needles"), [c[1:] for c in ANALYZE + OTHERS], ids=[c[0] for c in ANALYZE + OTHERS])
def test_a_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, build, needles):
    argv = build(tmp_path)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(main, argv)
    _check(result, needles, before, tmp_path)


def test_there_are_at_least_30_bad_inputs():
    assert len(ANALYZE) + len(OTHERS) + len(RECIPES) >= 30


# ------------------------------------------------------------------------------ recipes


def _bc_csv(d: pathlib.Path, **change) -> str:
    cols = {"sample_id": [f"p{i}" for i in range(8)], "label": [0, 1] * 4, "f1": np.arange(8.0).tolist()}
    pl.DataFrame({**cols, **change}).write_csv(d / "table.csv")
    return str(d / "table.csv")


RECIPES = [
    (
        "medmnist-npz-is-a-csv",
        "medmnist",
        lambda d: ["train", "--npz", _csv(d, "data.csv"), "--out", str(d / "run")],
        ["data.csv", "not a NumPy .npz", "zip"],
    ),
    ("medmnist-npz-missing", "medmnist", lambda d: ["train", "--out", str(d / "run")], ["--npz"]),
    (
        "medmnist-npz-wrong-layout",
        "medmnist",
        lambda d: (np.savez(d / "x.npz", a=np.zeros(3)), ["train", "--npz", str(d / "x.npz"), "--out", str(d / "run")])[
            1
        ],
        ["x.npz", "missing"],
    ),
    ("medmnist-example-under-a-file", "medmnist", lambda d: ["make-example", str(_file(d) / "x.npz")], ["file.txt"]),
    (
        "breast-cancer-csv-missing-columns",
        "breast_cancer",
        lambda d: ["train", "--csv", _csv(d, "t.csv"), "--out", str(d / "run")],
        ["t.csv", "sample_id"],
    ),
    (
        "breast-cancer-csv-label-outside",
        "breast_cancer",
        lambda d: ["train", "--csv", _bc_csv(d, label=[0, 1, 2, 1, 0, 1, 0, 1]), "--out", str(d / "run")],
        ["'p2'", "0 or 1"],
    ),
    (
        "breast-cancer-csv-strings",
        "breast_cancer",
        lambda d: ["train", "--csv", _bc_csv(d, f1=["1.5", "x"] * 4), "--out", str(d / "run")],
        ["f1", "text"],
    ),
    (
        "breast-cancer-csv-duplicate-ids",
        "breast_cancer",
        lambda d: ["train", "--csv", _bc_csv(d, sample_id=["p0"] * 8), "--out", str(d / "run")],
        ["duplicate", "'p0'"],
    ),
    (
        "breast-cancer-csv-empty",
        "breast_cancer",
        lambda d: ["train", "--csv", _text(d, "t.csv", b""), "--out", str(d / "run")],
        ["t.csv", "empty"],
    ),
    (
        "breast-cancer-out-under-a-file",
        "breast_cancer",
        lambda d: ["all", "--out", str(_file(d) / "run"), "--debug", "fast"],
        ["file.txt"],
    ),
    (
        "digits-analyze-before-infer",
        "digits",
        lambda d: ["analyze", "--out", str(d / "run")],
        ["inference file", "infer"],
    ),
]

# the recipes' error boundary is fusefn.recipe's group: these need it to be UserErrorGroup (usage errors, OSError)
_NEEDS_BOUNDARY = {"medmnist-example-under-a-file"}


@pytest.mark.parametrize(("recipe", "build", "needles"), [c[1:] for c in RECIPES], ids=[c[0] for c in RECIPES])
def test_a_bad_recipe_input_is_one_line_exit_2(tmp_path, recipe, build, needles):
    import importlib

    cli = importlib.import_module(f"fusefn_recipes.{recipe}").cli
    case = next(c[0] for c in RECIPES if c[1] == recipe and c[2] is build)
    if case in _NEEDS_BOUNDARY and not isinstance(cli, UserErrorGroup):
        pytest.skip("needs fusefn.recipe's group to be fusefn.cli_errors.UserErrorGroup (requested)")
    argv = build(tmp_path)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(cli, argv)
    # a run folder keeps its logs (they record the error); nothing else may appear
    _check(result, needles, before, tmp_path, allowed=("run", "run/*.log"))


def test_a_semicolon_csv_with_decimal_commas_is_analyzed(tmp_path):
    """What a spreadsheet in a comma-decimal locale saves: read as numbers, not an error."""
    text = "id;s;y\n" + "".join(f"{i};{s};{y}\n" for i, s, y in zip(*GOOD.values())).replace(".", ",")
    pred = _text(tmp_path, "excel.csv", text)
    r = CliRunner().invoke(
        main,
        [
            "analyze",
            "--pred",
            pred,
            "--score",
            "s",
            "--label",
            "y",
            "--ci",
            "0",
            "--no-plots",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "auc" in r.output and "0.8889" in r.output
