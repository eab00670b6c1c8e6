"""Reduce the learning rate when a metric stops improving, as a pure fold over epoch results."""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from fusefn import keys
from fusefn import validators as v
from fusefn.core import record

__all__ = ["ReduceLROnPlateau"]

_UNIT_OPEN = v.and_(v.ge(0), v.lt(1))


@record
class ReduceLROnPlateau:
    """Multiply the lr by ``factor`` when ``source`` stops improving (``torch``'s ReduceLROnPlateau rules).

    A pure, ordered fold over the epochs' values of ``source``: ``init() -> state``,
    ``update(state, value) -> state`` and ``compute(state) -> scale``, the multiplier to pass
    as ``update(..., lr_scale=)`` (also ``state["scale"]``). It is not a
    :class:`fusefn.protocols.Reducer`: its answer depends on the order of the epochs, so two
    states cannot be merged.

    >>> r = ReduceLROnPlateau(patience=1, factor=0.5)
    >>> s = r.init()
    >>> for loss in (1.0, 1.0, 1.0, 1.0):
    ...     s = r.update(s, loss)
    >>> r.compute(s)
    0.5
    """

    source: str = attrs.field(default=f"validation.{keys.TOTAL_LOSS}", validator=v.key)
    mode: str = attrs.field(default="min", validator=v.in_(("min", "max")))
    factor: float = attrs.field(default=0.1, validator=_UNIT_OPEN)
    patience: int = attrs.field(default=10, validator=v.ge(0))
    threshold: float = attrs.field(default=1e-4, validator=v.ge(0))
    threshold_mode: str = attrs.field(default="rel", validator=v.in_(("rel", "abs")))
    cooldown: int = attrs.field(default=0, validator=v.ge(0))
    min_scale: float = attrs.field(default=0.0, validator=v.ge(0))
    eps: float = attrs.field(default=1e-8, validator=v.ge(0))

    def init(self) -> dict:
        return {"best": math.inf if self.mode == "min" else -math.inf, "num_bad": 0, "cooldown": 0, "scale": 1.0}

    def _better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            bound = best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold
            return a < bound
        bound = best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold
        return a > bound

    def update(self, state: Mapping, value: float) -> dict:
        value = float(value)
        s = dict(state)
        if self._better(value, s["best"]):
            s["best"], s["num_bad"] = value, 0
        else:
            s["num_bad"] += 1
        if s["cooldown"] > 0:
            s["cooldown"] -= 1
            s["num_bad"] = 0
        if s["num_bad"] > self.patience:
            new = max(s["scale"] * self.factor, self.min_scale)
            if s["scale"] - new > self.eps:
                s["scale"] = new
            s["cooldown"] = self.cooldown
            s["num_bad"] = 0
        return s

    def compute(self, state: Mapping) -> float:
        """The lr multiplier after the epochs folded into ``state``."""
        return state["scale"]
