"""Reference data shipped with the recipes: FuseMedML's own evaluation inputs.

:func:`fuse_eval_dir` is the folder of the real KNIGHT kidney-tumour predictions and
targets (CSV) and four predicted / reference 3D kidney label maps (NIfTI) that
FuseMedML's evaluation tests use. They are copied byte for byte from FuseMedML's
public repository (``fuse/eval/examples/inputs/``, Apache-2.0; see ``fuse_eval/NOTICE``
and ``fuse_eval/README.md``, which also lists the values FuseMedML 0.4.1 produces
on them). The tests, the docs and the ``evaluate_knight`` recipe read them from
here, so a clone or an install needs nothing beside it.

>>> from fusefn_recipes.reference import FUSE_EVAL_FILES, fuse_eval_dir
>>> all((fuse_eval_dir() / name).is_file() for name in FUSE_EVAL_FILES)
True
"""

from __future__ import annotations

import pathlib
from importlib import resources

__all__ = ["FUSE_EVAL_FILES", "fuse_eval_dir"]

# every data file of the folder, relative to it (their sha256 sums are in fuse_eval/SHA256SUMS)
FUSE_EVAL_FILES = (
    "example1_predictions.csv",
    "example1_targets.csv",
    "example2_predictions_fold0.csv",
    "example2_predictions_fold1.csv",
    "example2_targets.csv",
    "example7_predictions.csv",
    *(f"semantic_segmentation/predicted/id_{i}.nii.gz" for i in range(4)),
    *(f"semantic_segmentation/labeled/id_{i}/seg.nii.gz" for i in range(4)),
)


def fuse_eval_dir() -> pathlib.Path:
    """The folder holding FuseMedML's KNIGHT evaluation inputs, inside the installed package.

    Raises ``FileNotFoundError`` naming the path when the package was installed without
    its data (or from a zip archive, where the files have no path of their own).
    """
    folder = resources.files(__name__) / "fuse_eval"
    # only a package installed as plain files gives real paths; recipes and tests need them (nibabel, polars)
    if not isinstance(folder, pathlib.Path) or not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: fusefn_recipes' reference data is missing; install fusefn from its source tree or wheel "
            "(the files are package data of fusefn_recipes.reference)"
        )
    return folder
