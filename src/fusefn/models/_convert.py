"""Converters shared by the model records."""

from __future__ import annotations


def as_tuple(value) -> tuple:
    """A tuple of ``value``'s items; a single string becomes a one-item tuple (one key, not its letters)."""
    if isinstance(value, str):
        return (value,)
    return tuple(value)
