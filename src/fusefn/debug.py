"""Debug modes a recipe switches with one flag (FuseMedML's ``FuseUtilsDebug``).

* ``default`` — the real run.
* ``fast`` — a smoke run: few samples, no worker processes, one or two epochs.
* ``debug`` — the real data, but no worker processes (so breakpoints and
  tracebacks work) and verbose console logging.

>>> mode("fast").max_epochs
2
>>> mode("default").max_samples is None
True
>>> apply_limit(mode("fast"), 1000, "max_samples")
64
"""

from __future__ import annotations

import logging

import attrs

from fusefn.core import record
from fusefn.errors import ConfigError

__all__ = ["DebugMode", "MODES", "mode", "apply_limit"]


@record
class DebugMode:
    """Limits a debug mode puts on a run; ``None`` means no limit."""

    name: str
    max_samples: int | None = None
    num_workers: int | None = None
    max_epochs: int | None = None
    console_level: int = logging.INFO
    detect_anomaly: bool = False


MODES = {
    "default": DebugMode(name="default"),
    "fast": DebugMode(name="fast", max_samples=64, num_workers=0, max_epochs=2),
    "debug": DebugMode(name="debug", num_workers=0, console_level=logging.DEBUG, detect_anomaly=True),
}


def mode(name: str | DebugMode) -> DebugMode:
    """The :class:`DebugMode` called ``name`` (one of ``default``, ``fast``, ``debug``)."""
    if isinstance(name, DebugMode):
        return name
    try:
        return MODES[name]
    except KeyError:
        raise ConfigError(f"unknown debug mode {name!r}; choose one of {', '.join(MODES)}") from None


def apply_limit(m: DebugMode, value: int, field: str) -> int:
    """``value`` capped by the mode's limit ``field`` (e.g. ``"max_epochs"``)."""
    limit = getattr(m, attrs.fields_dict(DebugMode)[field].name)
    return value if limit is None else min(value, limit)
