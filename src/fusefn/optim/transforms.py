"""Gradient transformations: optimizers (torch's own math), clipping, schedule scaling, and their chain.

Each is a frozen record conforming to :class:`fusefn.protocols.GradientTransformation`:
``init(params) -> state`` and ``update(grads, state, params, lr_scale=None) -> (params, state)``.
``fusefn.chain`` of them is a flattened :class:`Chain` (``fusefn.optim.chain`` is the same function).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch.optim import adam as _torch_adam
from torch.optim import adamw as _torch_adamw
from torch.optim import sgd as _torch_sgd

from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError

from .schedules import Schedule

__all__ = [
    "GradientTransform",
    "Sgd",
    "Adam",
    "AdamW",
    "Chain",
    "ClipByGlobalNorm",
    "ScaleBySchedule",
    "sgd",
    "adam",
    "adamw",
    "clip_by_global_norm",
    "scale_by_schedule",
    "learning_rate",
]

Params = Mapping[str, torch.Tensor]

_UNIT_OPEN = v.and_(v.ge(0), v.lt(1))


def _lr_value(instance, attribute, value):
    # a float or a schedule: no combination of fusefn.validators says "one of two kinds"
    if isinstance(value, Schedule):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must be a float >= 0 or a schedule, got {value!r}"
        )


def _combine(fns) -> Chain:
    flat: list = []
    for t in fns:
        flat.extend(t.transforms if isinstance(t, Chain) else [t])
    return Chain(transforms=tuple(flat))


class GradientTransform:
    """Base of the gradient transformations: ``init(params) -> state``, ``update(grads, state, params)``.

    Subclasses implement ``_apply(grads, state, params, lr_scale) -> (grads, state, params, lr_scale)``:
    gradient transforms return new ``grads``; optimizers return new ``params``. ``fusefn.chain``
    of them is a flattened :class:`Chain` (the ``__chain__`` class attribute says so).
    """

    __slots__ = ()
    __chain__ = staticmethod(_combine)

    def init(self, params: Params) -> dict:
        raise NotImplementedError

    def _apply(self, grads, state, params, lr_scale):
        raise NotImplementedError

    def trainable_params(self, params: Params) -> tuple[str, ...]:
        """The names of the parameters this transform updates; the others need no gradient (frozen)."""
        return tuple(params)

    def update(self, grads: Params, state: dict, params: Params, lr_scale=None) -> tuple[dict, dict]:
        """One step: returns ``(new_params, new_state)``; the inputs' storage is reused (donated).

        ``lr_scale`` (a float or 0-d tensor) multiplies the learning rate, e.g. from
        :class:`ReduceLROnPlateau`. ``grads`` needs the :meth:`trainable_params` only; the
        gradients of frozen parameters, when given, are ignored.
        """
        trained = self.trainable_params(params)
        missing = [k for k in trained if k not in grads]
        if missing:
            raise ConfigError(f"update: no gradient for parameters {sorted(missing)[:5]}")
        if len(trained) != len(grads):
            grads = {k: grads[k] for k in trained}
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
class Sgd(GradientTransform):
    """Stochastic gradient descent with momentum, Nesterov, weight decay (``torch.optim.SGD``'s math).

    The momentum buffer starts at zero; with ``dampening=0`` (the default) this is
    exactly torch's first step, which copies the gradient into the buffer.
    """

    lr: Any = attrs.field(validator=_lr_value)
    momentum: float = attrs.field(default=0.0, validator=v.ge(0))
    dampening: float = attrs.field(default=0.0, validator=v.ge(0))
    weight_decay: float = attrs.field(default=0.0, validator=v.ge(0))
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
    # eager on the CPU, torch's fused kernel (what torch.optim.Adam(W)(fused=True) runs) is much cheaper than the
    # default single-tensor loop (bench/RESULTS.md); for-each kernels elsewhere; compiled code fuses the loop itself
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
class Adam(GradientTransform):
    """Adam (``torch.optim.Adam``'s math; ``weight_decay`` is L2 added to the gradient)."""

    lr: Any = attrs.field(default=1e-3, validator=_lr_value)
    b1: float = attrs.field(default=0.9, validator=_UNIT_OPEN)
    b2: float = attrs.field(default=0.999, validator=_UNIT_OPEN)
    eps: float = attrs.field(default=1e-8, validator=v.gt(0))
    weight_decay: float = attrs.field(default=0.0, validator=v.ge(0))
    amsgrad: bool = False
    maximize: bool = False

    init = _adam_init

    def _apply(self, grads, state, params, lr_scale):
        return _adam_like(self, grads, state, params, lr_scale, decoupled=False)


@record
class AdamW(GradientTransform):
    """AdamW (``torch.optim.AdamW``'s math; decoupled weight decay)."""

    lr: Any = attrs.field(default=1e-3, validator=_lr_value)
    b1: float = attrs.field(default=0.9, validator=_UNIT_OPEN)
    b2: float = attrs.field(default=0.999, validator=_UNIT_OPEN)
    eps: float = attrs.field(default=1e-8, validator=v.gt(0))
    weight_decay: float = attrs.field(default=1e-2, validator=v.ge(0))
    amsgrad: bool = False
    maximize: bool = False

    init = _adam_init

    def _apply(self, grads, state, params, lr_scale):
        return _adam_like(self, grads, state, params, lr_scale, decoupled=True)


@record
class ClipByGlobalNorm(GradientTransform):
    """Scale gradients so their global L2 norm is at most ``max_norm`` (``clip_grad_norm_``'s math)."""

    max_norm: float = attrs.field(validator=v.gt(0))

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
class ScaleBySchedule(GradientTransform):
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


@record
class Chain(GradientTransform):
    """Run ``transforms`` in order; each one's state is kept under its index."""

    transforms: tuple = attrs.field(converter=tuple, validator=v.deep_iterable(v.instance_of(GradientTransform)))

    def init(self, params: Params) -> dict:
        return {str(i): t.init(params) for i, t in enumerate(self.transforms)}

    def trainable_params(self, params: Params) -> tuple[str, ...]:
        names = tuple(params)
        for t in self.transforms:
            keep = set(t.trainable_params(params))
            names = tuple(k for k in names if k in keep)
        return names

    def _apply(self, grads, state, params, lr_scale):
        new_state = dict(state)
        for i, t in enumerate(self.transforms):
            grads, new_state[str(i)], params, lr_scale = t._apply(grads, state[str(i)], params, lr_scale)
        return grads, new_state, params, lr_scale


def _decayed(opt, decay: str):
    """``opt``, or with ``decay="weights"`` the same without weight decay on biases and norms (ParamGroups)."""
    if decay == "all":
        return opt
    if decay == "weights":
        from .groups import no_decay_on_bias_and_norm

        return no_decay_on_bias_and_norm(opt)
    raise ConfigError(f"{type(opt).__name__.lower()}: decay must be 'all' or 'weights', got {decay!r}")


def sgd(
    lr,
    momentum: float = 0.0,
    *,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    decay: str = "all",
) -> GradientTransform:
    """SGD (see :class:`Sgd`); ``decay="weights"`` exempts biases and norm weights from ``weight_decay``."""
    opt = Sgd(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    return _decayed(opt, decay)


def adam(
    lr=1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, weight_decay: float = 0.0, decay: str = "all"
) -> GradientTransform:
    """Adam (see :class:`Adam`); ``decay="weights"`` exempts biases and norm weights from ``weight_decay``."""
    return _decayed(Adam(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay), decay)


def adamw(
    lr=1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, weight_decay: float = 1e-2, decay: str = "all"
) -> GradientTransform:
    """AdamW (see :class:`AdamW`).

    ``decay="weights"``: weight decay on the weights only, not on biases and normalisation
    weights (the usual fine-tuning default; :func:`~fusefn.optim.no_decay_on_bias_and_norm`).

    >>> import torch
    >>> opt = adamw(1e-3, weight_decay=0.05, decay="weights")
    >>> type(opt).__name__, opt.groups[0][1].weight_decay, opt.default.weight_decay
    ('ParamGroups', 0.0, 0.05)
    """
    return _decayed(AdamW(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay), decay)


def clip_by_global_norm(max_norm: float) -> ClipByGlobalNorm:
    """Gradient clipping by global norm (see :class:`ClipByGlobalNorm`)."""
    return ClipByGlobalNorm(max_norm=max_norm)


def scale_by_schedule(schedule: Schedule) -> ScaleBySchedule:
    """Learning-rate multiplier from a schedule (see :class:`ScaleBySchedule`)."""
    return ScaleBySchedule(schedule=schedule)


def learning_rate(opt: GradientTransform, state: dict, lr_scale=None) -> float:
    """The learning rate the next ``update`` of ``opt`` would use (for logs and epoch results).

    Of parameter groups (:class:`~fusefn.optim.ParamGroups`), the first group's that has one.

    >>> from fusefn import chain
    >>> from fusefn.optim import step_decay
    >>> opt = chain(scale_by_schedule(step_decay(1.0, 1, 0.5)), sgd(lr=0.1))
    >>> round(learning_rate(opt, opt.init({"w": torch.zeros(1)})), 6)
    0.1
    """
    found = _find_lr(opt, state, 1.0 if lr_scale is None else float(lr_scale))
    if found is None:
        raise ConfigError(f"no optimizer with a learning rate in {opt!r}")
    return found


def _find_lr(opt, state, scale: float) -> float | None:
    if isinstance(opt, Chain):
        for i, t in enumerate(opt.transforms):
            if isinstance(t, ScaleBySchedule):
                scale *= float(t.schedule(state[str(i)]["count"]))
                continue
            found = _find_lr(t, state[str(i)], scale)
            if found is not None:
                return found
        return None
    subs = getattr(opt, "lr_parts", None)
    if subs is not None:  # parameter groups: (transform, its state) pairs
        for t, s in subs(state):
            found = _find_lr(t, s, scale)
            if found is not None:
                return found
        return None
    if isinstance(getattr(opt, "lr", None), (Schedule, int, float)):
        count = state.get("count") if isinstance(state, Mapping) else None
        base = float(opt.lr(count)) if isinstance(opt.lr, Schedule) else float(opt.lr)
        return base * scale
    return None
