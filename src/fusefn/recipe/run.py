"""The run of a recipe: where it writes, its random stream, its debug limits and device.

>>> import tempfile
>>> run = Run(name="toy", out=tempfile.mkdtemp(), debug="fast")
>>> run.limit(1000, "max_samples"), run.model_dir.name, run.rng
(64, 'model', Rng(seed=0))
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping

import attrs

from fusefn import debug as fdebug
from fusefn.core import Rng, record
from fusefn.errors import FusefnError

__all__ = ["Run", "RecipeInputError", "OutputError", "prepare_out", "resolve_device"]


class RecipeInputError(FusefnError):
    """A phase's input (trained model, inference file, data file) is missing or malformed."""


class OutputError(FusefnError):
    """The output directory cannot be used."""


@record
class Run:
    """Everything a phase needs: where to write, its random stream, which limits, which device.

    Args:
        name: the recipe's name (its logger is ``fusefn.recipes.<name>``).
        out: the run directory; every phase reads and writes under it.
        rng: the run's random stream (the recipe's ``--seed``, converted once).
        debug: a :mod:`fusefn.debug` mode or its name (``fast`` caps samples and epochs).
        hp: the recipe's own hyper-parameters (its click options by parameter name).
        force: train even where ``model_dir`` holds another run's checkpoints (they are replaced).
        resume: train on from the last checkpoint of ``model_dir`` (its run goes on).
        infer_name, report_name: the inference file and the report folder, relative to ``out``.
    """

    name: str
    out: pathlib.Path = attrs.field(converter=pathlib.Path)
    rng: Rng = attrs.field(factory=lambda: Rng(0))
    debug: fdebug.DebugMode = attrs.field(default=fdebug.mode("default"), converter=fdebug.mode)
    compile: bool = False
    device: str = "cpu"
    hp: Mapping = attrs.field(factory=dict, eq=False)
    force: bool = False
    resume: bool = False
    infer_name: str = "infer/predictions.parquet"
    report_name: str = "report"

    @property
    def fast(self) -> bool:
        return self.debug.name == "fast"

    def limit(self, value: int, field: str) -> int:
        """``value`` capped by the debug mode's ``field`` (``max_samples``, ``max_epochs``, ``num_workers``)."""
        return fdebug.apply_limit(self.debug, value, field)

    @property
    def model_dir(self) -> pathlib.Path:
        return self.out / "model"

    @property
    def cache_dir(self) -> pathlib.Path:
        return self.out / "cache"

    @property
    def infer_file(self) -> pathlib.Path:
        return self.out / self.infer_name

    @property
    def report_dir(self) -> pathlib.Path:
        return self.out / self.report_name

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger("fusefn.recipes." + self.name)


def prepare_out(out: pathlib.Path) -> pathlib.Path:
    """Create the run directory ``out``; a clear :class:`OutputError` when it cannot be used."""
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a directory (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create --out {out}: {e.strerror or e}; choose a writable directory") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out} is not writable; choose a writable directory")
    return out


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
