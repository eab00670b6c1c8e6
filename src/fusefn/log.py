"""Logging set-up for a run: console, a log file and a verbose debug file.

The counterpart of FuseMedML's ``fuse_logger_start``. Every fusefn module logs to
the ``"fusefn"`` logger (or a child of it); :func:`start` attaches the handlers.

>>> import logging, tempfile
>>> d = tempfile.mkdtemp()
>>> lgr = start(d, console_level=logging.WARNING)
>>> lgr.info("hello")
>>> "hello" in (pathlib.Path(d) / "fusefn.log").read_text()
True
>>> "environment: python" in (pathlib.Path(d) / "fusefn_debug.log").read_text()  # DEBUG: the debug file only
True
>>> "environment" in (pathlib.Path(d) / "fusefn.log").read_text()
False
>>> stop()
"""

from __future__ import annotations

import logging
import pathlib
import sys

__all__ = ["start", "stop", "LOGGER_NAME"]

LOGGER_NAME = "fusefn"
_TAG = "_fusefn_handler"
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def stop() -> None:
    """Detach (and close) the handlers :func:`start` attached; records propagate to the root logger again."""
    lgr = logging.getLogger(LOGGER_NAME)
    for h in list(lgr.handlers):
        if getattr(h, _TAG, False):
            lgr.removeHandler(h)
            h.close()
    lgr.propagate = True


def start(output_dir: str | pathlib.Path | None = None, console_level: int = logging.INFO) -> logging.Logger:
    """Attach console + file handlers to the ``fusefn`` logger and return it.

    Args:
        output_dir: where ``fusefn.log`` (INFO and above, as on the console) and
            ``fusefn_debug.log`` (everything) are written; ``None`` logs to the console only.
        console_level: level for the console (stderr).

    Calling it again replaces the handlers of the previous call, so a recipe can
    call it once per phase.
    """
    stop()
    lgr = logging.getLogger(LOGGER_NAME)
    lgr.setLevel(logging.DEBUG)
    lgr.propagate = False  # our console handler prints; the root logger must not print twice
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(console_level)
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [console]
    if output_dir is not None:
        out = pathlib.Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, level in (("fusefn.log", min(console_level, logging.INFO)), ("fusefn_debug.log", logging.DEBUG)):
            fh = logging.FileHandler(out / name, encoding="utf-8")
            fh.setLevel(level)
            fh.setFormatter(logging.Formatter(_FORMAT))
            handlers.append(fh)
    for h in handlers:
        setattr(h, _TAG, True)
        lgr.addHandler(h)
    # what a bit-for-bit repetition depends on (docs/faq.md), kept in the debug log only
    lgr.debug("environment: %s", _environment())
    return lgr


def _environment() -> str:
    import platform

    parts = [f"python {platform.python_version()}", f"platform {platform.platform()}"]
    for name in ("torch", "numpy", "h5py", "polars"):
        mod = sys.modules.get(name)
        if mod is not None:
            parts.append(f"{name} {getattr(mod, '__version__', '?')}")
    torch = sys.modules.get("torch")
    if torch is not None:
        parts.append(f"torch threads {torch.get_num_threads()}")
    return ", ".join(parts)
