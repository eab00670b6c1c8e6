"""attrs validators that raise ConfigError naming ``Record.field``."""

from __future__ import annotations

from fusefn.errors import ConfigError


def _where(instance, attribute) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def positive(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{_where(instance, attribute)} must be a positive int, got {value!r}")


def positive_ints(instance, attribute, value):
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ConfigError(f"{_where(instance, attribute)} must hold positive ints, got {value!r}")


def non_empty(instance, attribute, value):
    if len(value) == 0:
        raise ConfigError(f"{_where(instance, attribute)} must not be empty")


def probability(instance, attribute, value):
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{_where(instance, attribute)} must be in [0, 1), got {value!r}")


def one_of(*choices):
    def check(instance, attribute, value):
        if value not in choices:
            raise ConfigError(f"{_where(instance, attribute)} must be one of {choices!r}, got {value!r}")

    return check


def keys(instance, attribute, value):
    for k in value:
        if not isinstance(k, str) or not k or any(p == "" for p in k.split(".")):
            raise ConfigError(f"{_where(instance, attribute)} must hold dotted batch_dict keys, got {k!r}")


def key(instance, attribute, value):
    keys(instance, attribute, (value,))


def spatial_dims(instance, attribute, value):
    one_of(2, 3)(instance, attribute, value)


def as_tuple(value):
    if isinstance(value, str):
        return (value,)
    return tuple(value)
