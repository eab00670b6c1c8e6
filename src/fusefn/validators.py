"""attrs validators that raise :class:`~fusefn.ConfigError` naming ``Record.field``.

Each is the ``attrs.validators`` one of the same name, wrapped once so a bad
configuration value reads as a fusefn error a user can act on.

>>> import attrs
>>> from fusefn import record, validators as v
>>> @record
... class Blur:
...     sigma: float = attrs.field(default=1.0, validator=v.gt(0))
>>> Blur(sigma=-1.0)
Traceback (most recent call last):
...
fusefn.errors.ConfigError: Blur.sigma must be > 0, got -1.0
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import attrs

from fusefn.errors import ConfigError

__all__ = [
    "wrap",
    "ge",
    "gt",
    "le",
    "lt",
    "in_",
    "min_len",
    "instance_of",
    "is_callable",
    "deep_iterable",
    "optional",
    "and_",
    "number",
    "positive_int",
    "non_negative_int",
    "unit_interval",
    "probability",
    "key",
    "keys",
]


def _where(instance, attribute) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def wrap(validator: Callable, message: str) -> Callable:
    """``validator`` raising ``ConfigError("<Record>.<field> <message>, got <value>")`` instead of its own error."""

    def check(instance, attribute, value):
        try:
            validator(instance, attribute, value)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{_where(instance, attribute)} {message}, got {value!r}") from e

    check.__name__ = getattr(validator, "__name__", "check")
    check.__qualname__ = check.__name__
    return check


def number(instance, attribute, value):
    """A real number that is not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{_where(instance, attribute)} must be a number, got {value!r}")


def _compare(name: str, bound, op: str) -> Callable:
    inner = attrs.validators.and_(number, getattr(attrs.validators, name)(bound))
    return wrap(inner, f"must be {op} {bound}")


def ge(bound) -> Callable:
    """A number ``>= bound``."""
    return _compare("ge", bound, ">=")


def gt(bound) -> Callable:
    """A number ``> bound``."""
    return _compare("gt", bound, ">")


def le(bound) -> Callable:
    """A number ``<= bound``."""
    return _compare("le", bound, "<=")


def lt(bound) -> Callable:
    """A number ``< bound``."""
    return _compare("lt", bound, "<")


def in_(options) -> Callable:
    """One of ``options``."""
    return wrap(attrs.validators.in_(tuple(options)), f"must be one of {tuple(options)!r}")


def min_len(n: int) -> Callable:
    """A sized value with at least ``n`` items."""
    return wrap(attrs.validators.min_len(n), "must not be empty" if n == 1 else f"must have at least {n} items")


def instance_of(*types) -> Callable:
    """An instance of one of ``types``."""
    names = " or ".join(t.__name__ for t in types)
    return wrap(attrs.validators.instance_of(types), f"must be a {names}")


def is_callable(instance, attribute, value):
    """A callable."""
    if not callable(value):
        raise ConfigError(f"{_where(instance, attribute)} must be callable, got {value!r}")


def deep_iterable(member: Callable, iterable: Callable | None = None) -> Callable:
    """Every item passes ``member`` (and the container ``iterable``); errors name the item's index."""

    def check(instance, attribute, value):
        if iterable is not None:
            iterable(instance, attribute, value)
        for i, item in enumerate(value):
            try:
                member(instance, attribute, item)
            except ConfigError as e:
                raise ConfigError(f"{_where(instance, attribute)}[{i}]: {e}") from None

    return check


def optional(validator: Callable) -> Callable:
    """``None``, or a value that passes ``validator``."""

    def check(instance, attribute, value):
        if value is not None:
            validator(instance, attribute, value)

    return check


def and_(*validators: Callable) -> Callable:
    """Every one of ``validators``, in order."""

    def check(instance, attribute, value):
        for v in validators:
            v(instance, attribute, value)

    return check


def positive_int(instance, attribute, value):
    """An int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{_where(instance, attribute)} must be an int >= 1, got {value!r}")


def non_negative_int(instance, attribute, value):
    """An int >= 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"{_where(instance, attribute)} must be an int >= 0, got {value!r}")


unit_interval = and_(ge(0), le(1))
"""A number in [0, 1]."""

probability = unit_interval
"""A number in [0, 1]."""


def key(instance, attribute, value):
    """A dotted batch_dict key: a non-empty string with no empty part."""
    if not isinstance(value, str) or not value or any(p == "" for p in value.split(".")):
        raise ConfigError(f"{_where(instance, attribute)} must be a dotted batch_dict key, got {value!r}")


keys = deep_iterable(key)
"""A sequence of dotted batch_dict keys."""
