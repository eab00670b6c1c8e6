"""Exceptions a user can cause, each naming what is involved (sample id, key, field)."""

from __future__ import annotations


class FusefnError(Exception):
    """Base of every error fusefn raises on purpose; the CLI prints it as one line."""


class ConfigError(FusefnError, ValueError):
    """A component was built with a bad configuration value."""


class MissingKeyError(FusefnError, KeyError):
    """A dotted key is absent from a nested dict.

    Subclasses ``KeyError`` so ``except KeyError`` still works; ``str()`` gives the
    readable message instead of ``KeyError``'s quoted repr.
    """

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return self.message


class SampleError(FusefnError):
    """Processing one sample failed; names the sample id, the op and the key."""

    def __init__(self, message: str, *, sample_id=None, op: str | None = None, key: str | None = None):
        parts = []
        if sample_id is not None:
            parts.append(f"sample {sample_id!r}")
        if op is not None:
            parts.append(f"op {op}")
        if key is not None:
            parts.append(f"key {key!r}")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.sample_id = sample_id
        self.op = op
        self.key = key
        self.reason = message


__all__ = ["FusefnError", "ConfigError", "MissingKeyError", "SampleError"]
