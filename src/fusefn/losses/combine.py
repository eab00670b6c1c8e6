"""A named set of losses: their sum (the value the optimizer minimises) and each one, written into the batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from fusefn import keys, nd
from fusefn.errors import ConfigError

__all__ = ["total", "apply"]


def total(losses: Mapping[str, Callable], batch: Mapping) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of the (already weighted) losses and each one by name."""
    if not losses:
        raise ConfigError("total: no losses given")
    parts = {name: loss(batch) for name, loss in losses.items()}
    values = list(parts.values())
    out = values[0]
    for x in values[1:]:
        out = out + x
    return out, parts


def apply(losses: Mapping[str, Callable], batch: Mapping) -> dict:
    """``batch`` with ``losses.<name>`` and ``keys.TOTAL_LOSS`` set (a new dict; the input is untouched)."""
    t, parts = total(losses, batch)
    return nd.assoc_many(batch, {**{f"losses.{k}": x for k, x in parts.items()}, keys.TOTAL_LOSS: t})
