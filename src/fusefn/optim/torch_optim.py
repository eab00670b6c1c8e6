"""Any ``torch.optim`` optimizer as a fusefn transform: its own ``step``, the state kept outside.

:func:`from_torch` wraps an optimizer class (``torch.optim.RAdam``, ``NAdam``, ``Adagrad``,
``RMSprop``, ``SGD``, … or one of your own with the same interface) in the
``init``/``update`` interface of :mod:`fusefn.optim`. Each ``update`` builds the optimizer
over the parameter tensors, hands it the gradients and the per-parameter state it was
given, runs its ``step()`` and returns the state it leaves: the math is that optimizer's
own, so N updates equal N of its steps, and the state is plain tensors a checkpoint keeps.
The state of a parameter is empty until the first update (torch creates it lazily).

>>> import torch
>>> from fusefn import optim
>>> opt = optim.from_torch(torch.optim.RAdam, lr=0.1, weight_decay=0.01)
>>> params = {"w": torch.ones(3)}
>>> state = opt.init(params)
>>> params, state = opt.update({"w": torch.ones(3)}, state, params)
>>> sorted(state["per_param"]["w"])
['exp_avg', 'exp_avg_sq', 'step']

Not compile-safe: building an optimizer is Python that ``torch.compile(fullgraph=True)``
cannot trace, so the update is kept out of the graph (``torch.compiler.disable``): a step
with ``compile=True`` stops with a graph-break error, ``compile="partial"`` runs the update
eagerly after the compiled forward and backward. fusefn's own ``sgd``/``adam``/``adamw`` compile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from fusefn.core import record
from fusefn.errors import ConfigError

from .transforms import GradientTransform, Params, _count, _lr_tensor, _lr_value

__all__ = ["TorchOptimizer", "from_torch"]

# optimizers whose step needs a closure (it re-evaluates the loss): no place for it in update()
_NEEDS_CLOSURE = ("LBFGS",)


def _optimizer_class(instance, attribute, value):
    if not (isinstance(value, type) and issubclass(value, torch.optim.Optimizer)):
        raise ConfigError(f"TorchOptimizer.optimizer must be a torch.optim.Optimizer class, got {value!r}")
    if value.__name__ in _NEEDS_CLOSURE:
        raise ConfigError(f"TorchOptimizer.optimizer: {value.__name__} needs a loss closure; it cannot be wrapped")


def _options(value) -> tuple:
    items = value.items() if isinstance(value, Mapping) else value
    out = tuple(sorted((str(k), tuple(x) if isinstance(x, list) else x) for k, x in items))
    if any(k in ("lr", "params") for k, _ in out):
        raise ConfigError("TorchOptimizer.options: give lr as the lr field; params come with each update")
    return out


@record
class TorchOptimizer(GradientTransform):
    """``optimizer(params, lr=lr, **options)``'s ``step`` as a pure ``update`` (see :func:`from_torch`).

    Fields:
        optimizer: the ``torch.optim.Optimizer`` subclass.
        lr: a float or a :mod:`~fusefn.optim.schedules` schedule; ``lr_scale`` multiplies it.
        options: its other keyword arguments, as sorted ``(name, value)`` pairs.

    State: ``{"count": 0-d tensor, "per_param": {name: that optimizer's state of the parameter}}``.
    """

    optimizer: type = attrs.field(validator=_optimizer_class)
    lr: Any = attrs.field(validator=_lr_value)
    options: tuple = attrs.field(default=(), converter=_options)

    compile_safe = False

    def __attrs_post_init__(self):
        try:  # a bad option fails here, naming the optimizer, rather than at the first step
            lr = float(self.lr) if isinstance(self.lr, (int, float)) else 0.0
            self.optimizer([torch.zeros(1)], lr=lr, **dict(self.options))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"TorchOptimizer: {self.optimizer.__name__}(...) refuses these options: {e}") from None

    def with_options(self, **changes) -> TorchOptimizer:
        """A copy with ``changes`` to its options (e.g. ``weight_decay=0.0``)."""
        return attrs.evolve(self, options={**dict(self.options), **changes})

    def init(self, params: Params) -> dict:
        return {"count": _count(params), "per_param": {k: {} for k in params}}

    def _apply(self, grads, state, params, lr_scale):
        return _torch_step(self, grads, state, params, lr_scale)


@torch.compiler.disable
def _torch_step(opt: TorchOptimizer, grads, state, params, lr_scale):
    # torch.compile never traces this: a fullgraph step stops here with a graph-break error, a partial one runs it eagerly
    names = list(params)
    ps = [params[k] for k in names]
    if not ps:
        return grads, state, params, lr_scale
    count = state["count"]
    lr = float(_lr_tensor(opt.lr, count, lr_scale))
    instance = opt.optimizer(ps, lr=lr, **dict(opt.options))
    per_param = dict(state["per_param"])
    for k, p in zip(names, ps):
        p.grad = grads[k]
        if per_param.get(k):
            instance.state[p] = dict(per_param[k])  # the tensors themselves: the step updates them in place
    try:
        instance.step()
    finally:
        for p in ps:
            p.grad = None
    for k, p in zip(names, ps):
        per_param[k] = dict(instance.state[p]) if p in instance.state else {}
    with torch.no_grad():
        count.add_(1)
    return grads, {"count": count, "per_param": per_param}, params, lr_scale


def from_torch(optimizer: type, *, lr, **options) -> TorchOptimizer:
    """``optimizer`` (a ``torch.optim.Optimizer`` class) as a fusefn transform with its own math.

    ``lr`` is a float or a schedule; ``options`` are the optimizer's other keyword arguments.
    Use it like ``sgd``/``adamw``: in a ``chain``, in :func:`~fusefn.optim.param_groups`, with
    ``update(..., lr_scale=)``. Eager only (see the module docstring).

    >>> import torch
    >>> opt = from_torch(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True)
    >>> opt.options
    (('momentum', 0.9), ('nesterov', True))
    """
    return TorchOptimizer(optimizer=optimizer, lr=lr, options=options)
