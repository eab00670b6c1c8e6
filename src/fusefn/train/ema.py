"""An exponential moving average of the weights, updated inside the train step and used for evaluation.

``EMA(decay=0.999)`` in :class:`~fusefn.train.StepSettings` (or ``make_train_step(..., ema=)``)
keeps ``TrainState.ema = {"params", "buffers", "count"}``: after every optimizer update
``ema ← decay·ema + (1 − decay)·weights``, in place, in the same (compiled) step; the decay is a
tensor, so the warm-up never recompiles. The eval step then runs the averaged weights
(:func:`~fusefn.train.make_eval_step`), so validation metrics, the ``best_*`` checkpoints and
``infer`` see them; checkpoints keep the average and a resumed run goes on with it.

>>> import torch
>>> ema = EMA(decay=0.5)
>>> s = ema.init({"w": torch.zeros(2)}, {})
>>> s = ema.update(s, {"w": torch.ones(2)}, {})
>>> s = ema.update(s, {"w": torch.ones(2)}, {})
>>> s["params"]["w"].tolist(), int(s["count"])
([0.75, 0.75], 2)
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch

from fusefn import validators as v
from fusefn.core import record

__all__ = ["EMA"]


@record
class EMA:
    """The moving average of the parameters (and floating buffers) that evaluation uses.

    Fields:
        decay: the weight of the past, in (0, 1); 0.999 averages over about the last 1000 steps.
        warmup: use ``min(decay, (1 + t) / (10 + t))`` at update ``t`` (TensorFlow's
            ``ExponentialMovingAverage(num_updates=)``), so early, random weights fade fast.
        buffers: average the floating buffers too (batch-norm running statistics, as timm's
            ``ModelEma``); ``False`` copies them. Integer buffers are always copied.
    """

    decay: float = attrs.field(default=0.999, validator=v.and_(v.gt(0), v.lt(1)))
    warmup: bool = attrs.field(default=False, validator=v.instance_of(bool))
    buffers: bool = attrs.field(default=True, validator=v.instance_of(bool))

    def init(self, params: Mapping, buffers: Mapping) -> dict:
        """The average before any update: a copy of the weights."""
        clone = lambda d: {k: t.detach().clone() for k, t in d.items()}  # noqa: E731
        device = next(iter(params.values())).device if params else "cpu"
        return {"params": clone(params), "buffers": clone(buffers), "count": torch.zeros((), device=device)}

    def decay_at(self, count: torch.Tensor) -> torch.Tensor:
        """The decay of the update after ``count`` updates (a tensor: a compiled step never sees a new constant)."""
        if not self.warmup:
            return torch.full_like(count, self.decay)
        return torch.clamp((1 + count) / (10 + count), max=self.decay)

    def update(self, ema: Mapping, params: Mapping, buffers: Mapping) -> dict:
        """``ema`` moved towards ``params``/``buffers``; its tensors are updated in place (donated)."""
        count = ema["count"]
        weight = 1 - self.decay_at(count)
        avg_p, avg_b = ema["params"], ema["buffers"]
        with torch.no_grad():
            names = [k for k in avg_p if k in params]
            _lerp([avg_p[k] for k in names], [params[k] for k in names], weight)
            floats = [k for k in avg_b if k in buffers and self.buffers and avg_b[k].is_floating_point()]
            _lerp([avg_b[k] for k in floats], [buffers[k] for k in floats], weight)
            for k in avg_b:
                if k in buffers and k not in floats:
                    avg_b[k].copy_(buffers[k])
            count.add_(1)
        return {"params": avg_p, "buffers": avg_b, "count": count}


def _lerp(avg: list, new: list, weight: torch.Tensor) -> None:
    if not avg:
        return
    if not torch.compiler.is_compiling() and avg[0].device.type == "cpu":
        torch._foreach_lerp_(avg, new, float(weight))  # one kernel launch for all; a float is free to read on the CPU
        return
    for a, b in zip(avg, new):  # a tensor weight: no host sync; compiled, the loop fuses
        a.lerp_(b.to(a.dtype), weight.to(a.dtype))
