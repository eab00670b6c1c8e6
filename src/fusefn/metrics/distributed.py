"""Combine metric states across processes (DataLoader shards, DDP ranks) with ``merge``."""

from __future__ import annotations

from functools import reduce

__all__ = ["gather"]


def gather(metric, state, group=None):
    """``metric.merge`` of every rank's ``state``, returned on every rank.

    Without an initialized ``torch.distributed`` process group this is the identity,
    so the same code runs on one process.

    >>> from fusefn.metrics import Accuracy
    >>> m = Accuracy(pred="p", target="y")
    >>> s = m.update(m.init(), {"p": [1, 0], "y": [1, 1]})
    >>> m.compute(gather(m, s))
    0.5
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return state
    states = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, state, group=group)
    return reduce(metric.merge, states)
