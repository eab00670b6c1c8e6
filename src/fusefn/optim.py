"""Optimizers as ``init``/``update`` pairs over flat parameter dicts, with torch's own math.

An optimizer is a frozen record; its state lives outside it (optax-style)::

    state = opt.init(params)
    params, state = opt.update(grads, state, params)

``params`` and ``grads`` are flat dicts ``name -> Tensor`` (what
``fusefn.models.init`` returns). The update math is torch's own:
:func:`torch.optim.adamw.adamw`, :func:`torch.optim.adam.adam` and
:func:`torch.optim.sgd.sgd` are called on the tensors of the dicts, so N steps
here equal N steps of ``torch.optim.AdamW``/``SGD`` to float rounding. Eager on
the CPU, Adam and AdamW run torch's fused kernel (bit for bit ``torch.optim.AdamW(
..., fused=True)``), several times cheaper per step than torch's default loop over
tensors. Like JAX buffer donation, ``update`` writes the new values into the
storage of ``params`` and of the state it is given; the caller must not use the
old ones afterwards. That is what saves a copy of the parameters per step.

Learning rates are floats or *schedules*: records that map a step tensor to an
lr tensor, so a compiled step sees a tensor whose value changes and never
recompiles. ``chain`` runs gradient transforms (clipping, schedule scaling)
before the optimizer; :class:`ReduceLROnPlateau` is a pure reducer over epoch
results whose output is a multiplier handed to ``update(..., lr_scale=)``.

>>> import torch
>>> params = {"w": torch.ones(3)}
>>> opt = chain(clip_by_global_norm(1.0), sgd(lr=0.5))
>>> state = opt.init(params)
>>> params, state = opt.update({"w": torch.full((3,), 10.0)}, state, params)
>>> params["w"]  # clipped gradient has norm 1, so each entry moves by 0.5/sqrt(3)
tensor([0.7113, 0.7113, 0.7113])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch.optim import adam as _torch_adam
from torch.optim import adamw as _torch_adamw
from torch.optim import sgd as _torch_sgd

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
    "Sgd",
    "Adam",
    "AdamW",
    "Chain",
    "ClipByGlobalNorm",
    "ScaleBySchedule",
    "sgd",
    "adam",
    "adamw",
    "chain",
    "clip_by_global_norm",
    "scale_by_schedule",
    "learning_rate",
    "ReduceLROnPlateau",
]

Params = Mapping[str, torch.Tensor]

# --------------------------------------------------------------------------- checks


def _positive(instance, attribute, value):
    if not value > 0:
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be > 0, got {value!r}")


def _non_negative(instance, attribute, value):
    if not value >= 0:
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be >= 0, got {value!r}")


def _unit_interval(instance, attribute, value):
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be in [0, 1), got {value!r}")


def _lr_value(instance, attribute, value):
    if isinstance(value, Schedule):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must be a float >= 0 or a schedule, got {value!r}"
        )


def _as_float_tensor(step) -> torch.Tensor:
    if isinstance(step, torch.Tensor):
        return step.to(torch.float32)
    return torch.tensor(float(step), dtype=torch.float32)


# ------------------------------------------------------------------------ schedules


class Schedule:
    """Marker base of schedules: ``schedule(step_tensor) -> lr_tensor``, pure."""


@record
class Constant(Schedule):
    """``value`` at every step."""

    value: float = attrs.field(validator=_non_negative)

    def __call__(self, step) -> torch.Tensor:
        return torch.full_like(_as_float_tensor(step), self.value)


@record
class CosineDecay(Schedule):
    """Cosine from ``init_value`` to ``alpha * init_value`` over ``decay_steps``, then flat.

    >>> s = cosine_decay(1.0, decay_steps=10)
    >>> [round(float(s(torch.tensor(t))), 3) for t in (0, 5, 10, 20)]
    [1.0, 0.5, 0.0, 0.0]
    """

    init_value: float = attrs.field(validator=_non_negative)
    decay_steps: int = attrs.field(validator=_positive)
    alpha: float = attrs.field(default=0.0, validator=_non_negative)

    def __call__(self, step) -> torch.Tensor:
        t = torch.clamp(_as_float_tensor(step), max=float(self.decay_steps)) / self.decay_steps
        cos = 0.5 * (1.0 + torch.cos(math.pi * t))
        return self.init_value * ((1.0 - self.alpha) * cos + self.alpha)


@record
class LinearWarmup(Schedule):
    """Linear from ``init_value`` to ``peak_value`` over ``warmup_steps``, then ``peak_value``."""

    peak_value: float = attrs.field(validator=_non_negative)
    warmup_steps: int = attrs.field(validator=_positive)
    init_value: float = attrs.field(default=0.0, validator=_non_negative)

    def __call__(self, step) -> torch.Tensor:
        frac = torch.clamp(_as_float_tensor(step) / self.warmup_steps, max=1.0)
        return self.init_value + (self.peak_value - self.init_value) * frac


@record
class WarmupCosine(Schedule):
    """Linear warm-up to ``peak_value`` then cosine decay to ``end_value`` at ``decay_steps``.

    >>> s = warmup_cosine(1.0, warmup_steps=2, decay_steps=6)
    >>> [round(float(s(torch.tensor(t))), 3) for t in range(7)]
    [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0]
    """

    peak_value: float = attrs.field(validator=_non_negative)
    warmup_steps: int = attrs.field(validator=_non_negative)
    decay_steps: int = attrs.field(validator=_positive)
    end_value: float = attrs.field(default=0.0, validator=_non_negative)

    def __attrs_post_init__(self):
        if self.decay_steps <= self.warmup_steps:
            raise ConfigError(
                f"WarmupCosine.decay_steps ({self.decay_steps}) must exceed warmup_steps ({self.warmup_steps})"
            )

    def __call__(self, step) -> torch.Tensor:
        t = _as_float_tensor(step)
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

    init_value: float = attrs.field(validator=_non_negative)
    step_size: int = attrs.field(validator=_positive)
    gamma: float = attrs.field(default=0.1, validator=_positive)

    def __call__(self, step) -> torch.Tensor:
        k = torch.floor(_as_float_tensor(step) / self.step_size)
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


# ---------------------------------------------------------------------- transforms


class _Transform:
    """Shared protocol: ``init(params) -> state`` and ``update(grads, state, params) -> (params, state)``.

    Subclasses implement ``_apply(grads, state, params, lr_scale) -> (grads, state, params, lr_scale)``:
    gradient transforms return new ``grads``; optimizers return new ``params``.
    """

    def init(self, params: Params) -> dict:
        raise NotImplementedError

    def _apply(self, grads, state, params, lr_scale):
        raise NotImplementedError

    def update(self, grads: Params, state: dict, params: Params, lr_scale=None) -> tuple[dict, dict]:
        """One step: returns ``(new_params, new_state)``; the inputs' storage is reused (donated).

        ``lr_scale`` (a float or 0-d tensor) multiplies the learning rate, e.g. from
        :class:`ReduceLROnPlateau`.
        """
        missing = set(params) - set(grads)
        if missing:
            raise ConfigError(f"update: no gradient for parameters {sorted(missing)[:5]}")
        _, state, params, _ = self._apply(dict(grads), state, dict(params), lr_scale)
        return params, state


def _lr_tensor(lr, count: torch.Tensor, lr_scale):
    """The learning rate of this step: a tensor, or a float when nothing in it is a tensor (cheaper eager)."""
    if isinstance(lr, Schedule):
        value = lr(count)
    elif isinstance(lr_scale, torch.Tensor) or torch.compiler.is_compiling():
        value = torch.full_like(count, float(lr))
    else:
        value = float(lr)
    if lr_scale is not None:
        value = value * lr_scale
    return value


def _as_tensor_like(value, ref: torch.Tensor) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.full_like(ref, float(value))


def _capturable(params: list[torch.Tensor]) -> bool:
    """Whether torch's kernels can take a tensor lr without a host sync.

    Under ``torch.compile`` they always can; eager, only on accelerators.
    On an eager CPU the lr is turned into a float, which is what ``torch.optim`` does.
    """
    if torch.compiler.is_compiling():
        return True
    return bool(params) and params[0].device.type != "cpu"


_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _fusable(params: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
    """Whether torch's fused CPU Adam kernel takes these tensors (dense, CPU, one float dtype per pair)."""
    return bool(params) and all(
        p.device.type == "cpu" and p.dtype in _FUSED_DTYPES and g.dtype == p.dtype and not g.is_sparse
        for p, g in zip(params, grads)
    )


def _names(params: Params) -> list[str]:
    return list(params)


def _zeros_like_all(params: Params) -> dict:
    return {k: torch.zeros_like(v, memory_format=torch.preserve_format) for k, v in params.items()}


def _steps(params: Params) -> dict:
    # torch's kernels count steps per parameter (they increment each tensor they are given)
    return {k: torch.zeros((), dtype=torch.float32, device=v.device) for k, v in params.items()}


def _count(params: Params) -> torch.Tensor:
    device = next(iter(params.values())).device if params else "cpu"
    return torch.zeros((), dtype=torch.float32, device=device)


@record
class Sgd(_Transform):
    """Stochastic gradient descent with momentum, Nesterov, weight decay (``torch.optim.SGD``'s math).

    The momentum buffer starts at zero; with ``dampening=0`` (the default) this is
    exactly torch's first step, which copies the gradient into the buffer.
    """

    lr: Any = attrs.field(validator=_lr_value)
    momentum: float = attrs.field(default=0.0, validator=_non_negative)
    dampening: float = attrs.field(default=0.0, validator=_non_negative)
    weight_decay: float = attrs.field(default=0.0, validator=_non_negative)
    nesterov: bool = False
    maximize: bool = False

    def __attrs_post_init__(self):
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError("Sgd.nesterov needs momentum > 0 and dampening == 0")

    def init(self, params: Params) -> dict:
        state = {"count": _count(params)}
        if self.momentum != 0:
            state["momentum"] = _zeros_like_all(params)
        return state

    def _apply(self, grads, state, params, lr_scale):
        names = _names(params)
        ps = [params[k] for k in names]
        lr = _lr_tensor(self.lr, state["count"], lr_scale)
        bufs = [state["momentum"][k] for k in names] if self.momentum != 0 else [None] * len(ps)
        with torch.no_grad():
            _torch_sgd.sgd(
                ps,
                [grads[k] for k in names],
                bufs,
                foreach=None,
                weight_decay=self.weight_decay,
                momentum=self.momentum,
                # a tensor lr keeps a compiled step from recompiling; eager, torch wants a number
                lr=lr if torch.compiler.is_compiling() else float(lr),
                dampening=self.dampening,
                nesterov=self.nesterov,
                maximize=self.maximize,
            )
            state["count"].add_(1)
        return grads, state, params, lr_scale


def _adam_like(self, grads, state, params, lr_scale, *, decoupled: bool):
    names = _names(params)
    ps = [params[k] for k in names]
    count = state["count"]
    lr = _lr_tensor(self.lr, count, lr_scale)
    compiling = torch.compiler.is_compiling()
    capturable = _capturable(ps)
    gs = [grads[k] for k in names]
    # eager on the CPU, torch's fused kernel (what torch.optim.Adam(W)(fused=True) runs) costs a fifth of the
    # default single-tensor loop per step; for-each kernels elsewhere; compiled code fuses the loop itself
    fused = not compiling and not capturable and _fusable(ps, gs)
    kernel = _torch_adamw.adamw if decoupled else _torch_adam.adam
    with torch.no_grad():
        kernel(
            ps,
            gs,
            [state["exp_avg"][k] for k in names],
            [state["exp_avg_sq"][k] for k in names],
            [state["max_exp_avg_sq"][k] for k in names] if self.amsgrad else [],
            [state["step"][k] for k in names],
            foreach=not compiling and not fused,
            fused=fused,
            capturable=capturable,
            amsgrad=self.amsgrad,
            beta1=self.b1,
            beta2=self.b2,
            lr=_as_tensor_like(lr, count) if capturable else float(lr),
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=self.maximize,
        )
        count.add_(1)
    return grads, state, params, lr_scale


def _adam_init(self, params: Params) -> dict:
    state = {
        "count": _count(params),
        "step": _steps(params),
        "exp_avg": _zeros_like_all(params),
        "exp_avg_sq": _zeros_like_all(params),
    }
    if self.amsgrad:
        state["max_exp_avg_sq"] = _zeros_like_all(params)
    return state


@record
class Adam(_Transform):
    """Adam (``torch.optim.Adam``'s math; ``weight_decay`` is L2 added to the gradient)."""

    lr: Any = attrs.field(default=1e-3, validator=_lr_value)
    b1: float = attrs.field(default=0.9, validator=_unit_interval)
    b2: float = attrs.field(default=0.999, validator=_unit_interval)
    eps: float = attrs.field(default=1e-8, validator=_positive)
    weight_decay: float = attrs.field(default=0.0, validator=_non_negative)
    amsgrad: bool = False
    maximize: bool = False

    init = _adam_init

    def _apply(self, grads, state, params, lr_scale):
        return _adam_like(self, grads, state, params, lr_scale, decoupled=False)


@record
class AdamW(_Transform):
    """AdamW (``torch.optim.AdamW``'s math; decoupled weight decay)."""

    lr: Any = attrs.field(default=1e-3, validator=_lr_value)
    b1: float = attrs.field(default=0.9, validator=_unit_interval)
    b2: float = attrs.field(default=0.999, validator=_unit_interval)
    eps: float = attrs.field(default=1e-8, validator=_positive)
    weight_decay: float = attrs.field(default=1e-2, validator=_non_negative)
    amsgrad: bool = False
    maximize: bool = False

    init = _adam_init

    def _apply(self, grads, state, params, lr_scale):
        return _adam_like(self, grads, state, params, lr_scale, decoupled=True)


@record
class ClipByGlobalNorm(_Transform):
    """Scale gradients so their global L2 norm is at most ``max_norm`` (``clip_grad_norm_``'s math)."""

    max_norm: float = attrs.field(validator=_positive)

    def init(self, params: Params) -> dict:
        return {}

    def _apply(self, grads, state, params, lr_scale):
        names = list(grads)
        gs = [grads[k] for k in names]
        total = torch.nn.utils.get_total_norm(gs, 2.0)
        coef = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
        clipped = torch._foreach_mul(gs, coef)
        return dict(zip(names, clipped)), state, params, lr_scale


@record
class ScaleBySchedule(_Transform):
    """Multiply the learning rate of the optimizer that follows in the chain by ``schedule(count)``."""

    schedule: Any = attrs.field(validator=attrs.validators.instance_of(Schedule))

    def init(self, params: Params) -> dict:
        return {"count": _count(params)}

    def _apply(self, grads, state, params, lr_scale):
        factor = self.schedule(state["count"])
        lr_scale = factor if lr_scale is None else lr_scale * factor
        with torch.no_grad():
            state["count"].add_(1)
        return grads, state, params, lr_scale


def _transforms(instance, attribute, value):
    for i, t in enumerate(value):
        if not isinstance(t, _Transform):
            raise ConfigError(f"Chain.transforms[{i}] is not an optimizer transform: {t!r}")


@record
class Chain(_Transform):
    """Run ``transforms`` in order; each one's state is kept under its index."""

    transforms: tuple = attrs.field(converter=tuple, validator=_transforms)

    def init(self, params: Params) -> dict:
        return {str(i): t.init(params) for i, t in enumerate(self.transforms)}

    def _apply(self, grads, state, params, lr_scale):
        new_state = dict(state)
        for i, t in enumerate(self.transforms):
            grads, new_state[str(i)], params, lr_scale = t._apply(grads, state[str(i)], params, lr_scale)
        return grads, new_state, params, lr_scale


def sgd(lr, momentum: float = 0.0, *, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> Sgd:
    """SGD (see :class:`Sgd`)."""
    return Sgd(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)


def adam(lr=1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, weight_decay: float = 0.0) -> Adam:
    """Adam (see :class:`Adam`)."""
    return Adam(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def adamw(lr=1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, weight_decay: float = 1e-2) -> AdamW:
    """AdamW (see :class:`AdamW`)."""
    return AdamW(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def chain(*transforms: _Transform) -> Chain:
    """Compose transforms (clipping, schedule scaling, then one optimizer); nested chains are flattened."""
    flat: list = []
    for t in transforms:
        flat.extend(t.transforms if isinstance(t, Chain) else [t])
    return Chain(transforms=tuple(flat))


def clip_by_global_norm(max_norm: float) -> ClipByGlobalNorm:
    """Gradient clipping by global norm (see :class:`ClipByGlobalNorm`)."""
    return ClipByGlobalNorm(max_norm=max_norm)


def scale_by_schedule(schedule: Schedule) -> ScaleBySchedule:
    """Learning-rate multiplier from a schedule (see :class:`ScaleBySchedule`)."""
    return ScaleBySchedule(schedule=schedule)


def learning_rate(opt: _Transform, state: dict, lr_scale=None) -> float:
    """The learning rate the next ``update`` of ``opt`` would use (for logs and epoch results).

    >>> opt = chain(scale_by_schedule(step_decay(1.0, 1, 0.5)), sgd(lr=0.1))
    >>> round(learning_rate(opt, opt.init({"w": torch.zeros(1)})), 6)
    0.1
    """
    scale = 1.0 if lr_scale is None else float(lr_scale)
    items = [(opt, state)] if not isinstance(opt, Chain) else [(t, state[str(i)]) for i, t in enumerate(opt.transforms)]
    for t, s in items:
        if isinstance(t, ScaleBySchedule):
            scale *= float(t.schedule(s["count"]))
        elif isinstance(t, (Sgd, Adam, AdamW)):
            base = float(t.lr(s["count"])) if isinstance(t.lr, Schedule) else float(t.lr)
            return base * scale
    raise ConfigError(f"no optimizer with a learning rate in {opt!r}")


# ------------------------------------------------------------------ plateau reducer


@record
class ReduceLROnPlateau:
    """Multiply the lr by ``factor`` when ``source`` stops improving (``torch``'s ReduceLROnPlateau rules).

    A pure reducer over epoch results: ``init() -> state``, ``update(state, value) -> state``;
    ``state["scale"]`` is the multiplier to pass as ``lr_scale``.

    >>> r = ReduceLROnPlateau(patience=1, factor=0.5)
    >>> s = r.init()
    >>> for loss in (1.0, 1.0, 1.0, 1.0):
    ...     s = r.update(s, loss)
    >>> s["scale"]
    0.5
    """

    source: str = "validation.losses.total_loss"
    mode: str = attrs.field(default="min", validator=attrs.validators.in_(("min", "max")))
    factor: float = attrs.field(default=0.1, validator=_unit_interval)
    patience: int = attrs.field(default=10, validator=_non_negative)
    threshold: float = attrs.field(default=1e-4, validator=_non_negative)
    threshold_mode: str = attrs.field(default="rel", validator=attrs.validators.in_(("rel", "abs")))
    cooldown: int = attrs.field(default=0, validator=_non_negative)
    min_scale: float = attrs.field(default=0.0, validator=_non_negative)
    eps: float = attrs.field(default=1e-8, validator=_non_negative)

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
