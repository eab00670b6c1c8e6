"""Learning-rate schedules: records that map a step tensor to an lr tensor, so a compiled step never recompiles.

>>> import torch
>>> s = warmup_cosine(1.0, warmup_steps=2, decay_steps=6)
>>> [round(float(s(torch.tensor(t))), 3) for t in range(7)]
[0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0]
"""

from __future__ import annotations

import math

import attrs
import torch

from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError

__all__ = [
    "Schedule",
    "Constant",
    "CosineDecay",
    "LinearWarmup",
    "WarmupCosine",
    "StepDecay",
    "constant",
    "cosine_decay",
    "linear_warmup",
    "warmup_cosine",
    "step_decay",
]


def as_float_tensor(step) -> torch.Tensor:
    """``step`` as a float32 tensor (a Python number becomes a 0-d tensor)."""
    if isinstance(step, torch.Tensor):
        return step.to(torch.float32)
    return torch.tensor(float(step), dtype=torch.float32)


class Schedule:
    """Marker base of schedules: ``schedule(step_tensor) -> lr_tensor``, pure."""


@record
class Constant(Schedule):
    """``value`` at every step."""

    value: float = attrs.field(validator=v.ge(0))

    def __call__(self, step) -> torch.Tensor:
        return torch.full_like(as_float_tensor(step), self.value)


@record
class CosineDecay(Schedule):
    """Cosine from ``init_value`` to ``alpha * init_value`` over ``decay_steps``, then flat.

    >>> s = cosine_decay(1.0, decay_steps=10)
    >>> [round(float(s(torch.tensor(t))), 3) for t in (0, 5, 10, 20)]
    [1.0, 0.5, 0.0, 0.0]
    """

    init_value: float = attrs.field(validator=v.ge(0))
    decay_steps: int = attrs.field(validator=v.gt(0))
    alpha: float = attrs.field(default=0.0, validator=v.ge(0))

    def __call__(self, step) -> torch.Tensor:
        t = torch.clamp(as_float_tensor(step), max=float(self.decay_steps)) / self.decay_steps
        cos = 0.5 * (1.0 + torch.cos(math.pi * t))
        return self.init_value * ((1.0 - self.alpha) * cos + self.alpha)


@record
class LinearWarmup(Schedule):
    """Linear from ``init_value`` to ``peak_value`` over ``warmup_steps``, then ``peak_value``."""

    peak_value: float = attrs.field(validator=v.ge(0))
    warmup_steps: int = attrs.field(validator=v.gt(0))
    init_value: float = attrs.field(default=0.0, validator=v.ge(0))

    def __call__(self, step) -> torch.Tensor:
        frac = torch.clamp(as_float_tensor(step) / self.warmup_steps, max=1.0)
        return self.init_value + (self.peak_value - self.init_value) * frac


@record
class WarmupCosine(Schedule):
    """Linear warm-up to ``peak_value`` then cosine decay to ``end_value`` at ``decay_steps``.

    >>> s = warmup_cosine(1.0, warmup_steps=2, decay_steps=6)
    >>> [round(float(s(torch.tensor(t))), 3) for t in range(7)]
    [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0]
    """

    peak_value: float = attrs.field(validator=v.ge(0))
    warmup_steps: int = attrs.field(validator=v.ge(0))
    decay_steps: int = attrs.field(validator=v.gt(0))
    end_value: float = attrs.field(default=0.0, validator=v.ge(0))

    def __attrs_post_init__(self):
        if self.decay_steps <= self.warmup_steps:
            raise ConfigError(
                f"WarmupCosine.decay_steps ({self.decay_steps}) must exceed warmup_steps ({self.warmup_steps})"
            )

    def __call__(self, step) -> torch.Tensor:
        t = as_float_tensor(step)
        warm = self.peak_value * t / max(self.warmup_steps, 1)
        span = self.decay_steps - self.warmup_steps
        frac = torch.clamp((t - self.warmup_steps) / span, min=0.0, max=1.0)
        cos = self.end_value + (self.peak_value - self.end_value) * 0.5 * (1.0 + torch.cos(math.pi * frac))
        return torch.where(t < self.warmup_steps, warm, cos)


@record
class StepDecay(Schedule):
    """``init_value * gamma ** (step // step_size)`` (``torch.optim.lr_scheduler.StepLR``'s law).

    >>> s = step_decay(1.0, step_size=2, gamma=0.1)
    >>> [round(float(s(torch.tensor(t))), 3) for t in range(5)]
    [1.0, 1.0, 0.1, 0.1, 0.01]
    """

    init_value: float = attrs.field(validator=v.ge(0))
    step_size: int = attrs.field(validator=v.gt(0))
    gamma: float = attrs.field(default=0.1, validator=v.gt(0))

    def __call__(self, step) -> torch.Tensor:
        k = torch.floor(as_float_tensor(step) / self.step_size)
        return self.init_value * torch.pow(torch.tensor(self.gamma, dtype=torch.float32, device=k.device), k)


def constant(value: float) -> Constant:
    """A constant schedule."""
    return Constant(value=value)


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> CosineDecay:
    """A cosine decay schedule (see :class:`CosineDecay`)."""
    return CosineDecay(init_value=init_value, decay_steps=decay_steps, alpha=alpha)


def linear_warmup(peak_value: float, warmup_steps: int, init_value: float = 0.0) -> LinearWarmup:
    """A linear warm-up schedule (see :class:`LinearWarmup`)."""
    return LinearWarmup(peak_value=peak_value, warmup_steps=warmup_steps, init_value=init_value)


def warmup_cosine(peak_value: float, warmup_steps: int, decay_steps: int, end_value: float = 0.0) -> WarmupCosine:
    """Warm-up then cosine decay (see :class:`WarmupCosine`)."""
    return WarmupCosine(peak_value=peak_value, warmup_steps=warmup_steps, decay_steps=decay_steps, end_value=end_value)


def step_decay(init_value: float, step_size: int, gamma: float = 0.1) -> StepDecay:
    """Step decay (see :class:`StepDecay`)."""
    return StepDecay(init_value=init_value, step_size=step_size, gamma=gamma)
