"""fusefn reproduces FuseMedML 0.4.1's published values on the real KNIGHT inputs shipped with the package.

The inputs are FuseMedML's own (Apache-2.0), copied into ``fusefn_recipes/reference/fuse_eval`` so a clone or an
install needs nothing beside it; the last tests check the copies, their licence note, and that nothing reads them
from outside the repository.
"""

import hashlib
import pathlib
import re

import numpy as np
import polars as pl
import pytest

import fusefn_recipes
from fusefn import Rng
from fusefn.metrics import AUCROC, Bootstrap, DeLong, Dice, GroupBy, evaluate
from fusefn_recipes.reference import FUSE_EVAL_FILES, fuse_eval_dir

CLASSES = ("B", "LR", "IR", "HR", "VHR")


def test_binary_auc(fuse_eval_dir):
    auc = evaluate(
        AUCROC(pred="CanAT-score", target="Task1-target"),
        fuse_eval_dir / "example1_predictions.csv",
        target=fuse_eval_dir / "example1_targets.csv",
        id="id",
    )
    assert round(auc, 3) == 0.845


def test_bootstrap_ci_within_monte_carlo_error(fuse_eval_dir):
    metric = Bootstrap(
        AUCROC(pred="CanAT-score", target="Task1-target"), n=10_000, rng=Rng(1234), stratify="Task1-target"
    )
    r = evaluate(
        metric, fuse_eval_dir / "example1_predictions.csv", target=fuse_eval_dir / "example1_targets.csv", id="id"
    )
    assert r["value"] == pytest.approx(0.845, abs=5e-4)
    for key, ref in {"mean": 0.8456, "std": 0.0622, "lower": 0.712, "upper": 0.954}.items():
        assert abs(r[key] - ref) <= 0.005, (key, r[key], ref)


def test_two_folds_concatenated_and_per_fold(fuse_eval_dir):
    files = [fuse_eval_dir / "example2_predictions_fold0.csv", fuse_eval_dir / "example2_predictions_fold1.csv"]
    auc = AUCROC(pred="CanAT-score", target="Task1-target")
    r = evaluate(
        {"all": auc, "per_fold": GroupBy(auc, by="fold")}, files, target=fuse_eval_dir / "example2_targets.csv", id="id"
    )
    assert round(r["all"], 3) == 0.845
    assert [round(v, 3) for v in r["per_fold"]["groups"].values()] == [0.841, 0.837]
    assert round(r["per_fold"]["mean"], 3) == 0.839


def test_multiclass_one_vs_rest(fuse_eval_dir):
    cols = tuple(f"{c}-score" for c in CLASSES)
    r = evaluate(
        AUCROC(pred=cols, target="Task2-target", class_names=CLASSES),
        fuse_eval_dir / "example7_predictions.csv",
        target=fuse_eval_dir / "example1_targets.csv",
        id="id",
    )
    expected = {"B": 0.877, "LR": 0.857, "IR": 0.670, "HR": 0.911, "VHR": 0.723, "macro": 0.808}
    assert {k: round(v, 3) for k, v in r.items()} == expected


def test_delong_matches_r():
    batch = {
        "y": np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
        "p1": np.array([0.1, 0.2, 0.05, 0.3, 0.1, 0.6, 0.6, 0.7, 0.8, 0.99, 0.8, 0.67, 0.5]),
        "p2": np.array([0.3, 0.6, 0.2, 0.1, 0.1, 0.9, 0.23, 0.7, 0.9, 0.4, 0.77, 0.3, 0.89]),
    }
    r = evaluate(DeLong(pred1="p1", pred2="p2", target="y"), batch)
    assert round(r["z"], 3) == 1.672
    assert round(r["p_value"], 5) == 0.09453
    assert round(r["auc1"], 4) == 0.9643
    assert round(r["auc2"], 4) == 0.7381


def test_3d_dice_on_nifti_volumes(fuse_eval_dir):
    nib = pytest.importorskip("nibabel")
    seg = fuse_eval_dir / "semantic_segmentation"

    def volumes():
        for i in range(4):
            pred = np.asarray(nib.load(seg / "predicted" / f"id_{i}.nii.gz").dataobj)
            target = np.asarray(nib.load(seg / "labeled" / f"id_{i}" / "seg.nii.gz").dataobj)
            yield {"pred": pred[None], "target": target[None], "data": {"sample_id": [f"id_{i}"]}}

    dice = Dice(pred="pred", target="target", classes=((1, 2, 3), (2, 3), 2), class_names=("123", "23", "2"))
    r = evaluate(dice, volumes())
    assert round(r["123"], 4) == 0.8741
    assert round(r["23"], 4) == 0.7164
    assert round(r["2"], 4) == 0.7184


def test_reference_tables_have_expected_shape(fuse_eval_dir):
    df = pl.read_csv(fuse_eval_dir / "example1_predictions.csv")
    assert df.height == 60


def test_shipped_copies_are_fusemedmls_files_unchanged():
    folder = fuse_eval_dir()
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    assert sorted(sums) == sorted(FUSE_EVAL_FILES)
    changed = [n for n, d in sums.items() if hashlib.sha256((folder / n).read_bytes()).hexdigest() != d]
    assert not changed, f"reference files differ from FuseMedML's: {changed}"


def test_shipped_with_their_origin_and_licence():
    folder = fuse_eval_dir()
    notice = (folder / "NOTICE").read_text()
    assert "https://github.com/BiomedSciAI/fuse-med-ml" in notice and "fuse/eval/examples/inputs/" in notice
    assert "Apache License, Version 2.0" in notice
    assert (folder / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert "public FuseMedML repository (Apache-2.0)" in (folder / "README.md").read_text()


def test_reference_data_is_package_data(repo_root):
    """Inside fusefn_recipes and named by pyproject's package-data, so `pip install` carries it too."""
    tomllib = pytest.importorskip("tomllib")
    package = pathlib.Path(fusefn_recipes.__file__).parent / "reference"
    assert fuse_eval_dir() == package / "fuse_eval"
    globs = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {str(p.relative_to(package)) for g in globs["fusefn_recipes.reference"] for p in package.glob(g)}
    needed = {f"fuse_eval/{n}" for n in (*FUSE_EVAL_FILES, "NOTICE", "LICENSE", "README.md", "SHA256SUMS")}
    assert not needed - shipped


# spelled in parts so that this file does not match itself
_OUTSIDE = re.compile(
    "|".join([re.escape("peer" + "-data"), re.escape(".." + "/shared"), r"parents?(\[\d+\])?\s*/\s*[\"']shared"])
)


def test_nothing_reads_reference_data_from_outside_the_repository(repo_root):
    """Tests, docs, recipes and benchmarks read the shipped copy: a clone with nothing beside it is complete."""
    provenance = repo_root / "src" / "fusefn_recipes" / "reference" / "fuse_eval"  # its README says where from
    roots = [repo_root / d for d in ("tests", "docs", "src", "bench")]
    files = [repo_root / f for f in ("README.md", "pyproject.toml", "noxfile.py")]
    files += [p for r in roots for p in r.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    offenders = []
    for path in files:
        if provenance in path.parents or path.suffix in {".gz", ".png", ".pt", ".h5", ".npz", ".jsonl", ".pyc"}:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        offenders += [
            f"{path.relative_to(repo_root)}:{i}: {line.strip()}"
            for i, line in enumerate(text.splitlines(), 1)
            if _OUTSIDE.search(line)
        ]
    assert not offenders, "reads data from outside the repository:\n" + "\n".join(offenders)
