"""Parameter groups and freezing: a transform per group of parameters, chosen by name pattern.

:class:`ParamGroups` is optax's ``multi_transform`` with torch's vocabulary: each parameter
(a flattened name such as ``backbone.layer1.0.conv1.weight``) falls into exactly one group,
chosen by ``fnmatch`` patterns or a selector record, and the group's transform (its own
learning rate, weight decay, or a whole other optimizer) updates it. :class:`Frozen` parameters
get no update, no optimizer state and no gradient (the train step leaves them out of the
backward pass: :meth:`~fusefn.optim.GradientTransform.trainable_params`).

>>> import torch
>>> from fusefn import optim
>>> params = {"backbone.w": torch.ones(2, 2), "backbone.b": torch.ones(2), "head.w": torch.ones(2, 2)}
>>> opt = optim.freeze(optim.sgd(lr=0.5), "backbone.*")
>>> state = opt.init(params)
>>> grads = {"head.w": torch.ones(2, 2)}  # frozen parameters need no gradient
>>> params, state = opt.update(grads, state, params)
>>> params["backbone.w"][0, 0].item(), params["head.w"][0, 0].item()
(1.0, 0.5)
>>> optim.freeze(optim.sgd(lr=0.5), "encoder.*").init(params)
Traceback (most recent call last):
...
fusefn.errors.ConfigError: ParamGroups.groups: pattern 'encoder.*' (group 0) matches no parameter; ...
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import attrs
import torch

from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError

from .torch_optim import TorchOptimizer
from .transforms import Adam, AdamW, GradientTransform, Params, Sgd

__all__ = ["ParamGroups", "Frozen", "BiasAndNorm", "param_groups", "freeze", "frozen", "no_decay_on_bias_and_norm"]

_DEFAULT = "default"


@record
class BiasAndNorm:
    """Selects biases and normalisation weights: parameters with at most one axis or named ``*.bias``.

    That is timm's rule (``param_groups_weight_decay``): batch/layer/group-norm scales and
    shifts, biases and 0-d scalars are 1-D or less. ``also``: more ``fnmatch`` patterns to
    select (e.g. ``"*.pos_embed"``, ``"*.cls_token"`` of a ViT).
    """

    also: tuple = attrs.field(default=(), converter=tuple, validator=v.deep_iterable(v.instance_of(str)))

    def __call__(self, name: str, tensor: torch.Tensor) -> bool:
        return tensor.dim() <= 1 or name.endswith(".bias") or any(fnmatch.fnmatchcase(name, p) for p in self.also)


def _selector(value):
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def _check_groups(instance, attribute, value):
    for i, group in enumerate(value):
        if not (isinstance(group, tuple) and len(group) == 2):
            raise ConfigError(f"ParamGroups.groups[{i}] must be a (selector, transform) pair, got {group!r}")
        sel, tx = group
        if isinstance(sel, tuple):
            if not sel or not all(isinstance(p, str) for p in sel):
                raise ConfigError(f"ParamGroups.groups[{i}]: patterns must be non-empty strings, got {sel!r}")
        elif not callable(sel):
            raise ConfigError(f"ParamGroups.groups[{i}]: selector must be patterns or a callable, got {sel!r}")
        if not isinstance(tx, GradientTransform):
            raise ConfigError(f"ParamGroups.groups[{i}]: {tx!r} is not a fusefn.optim transform")


def _groups(value) -> tuple:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((_selector(g[0]), g[1]) if isinstance(g, (list, tuple)) and len(g) == 2 else g for g in items)


@record
class Frozen(GradientTransform):
    """No update and no state: the parameters it is given stay as they are (``optax.set_to_zero`` + no state)."""

    def init(self, params: Params) -> dict:
        return {}

    def trainable_params(self, params: Params) -> tuple[str, ...]:
        return ()

    def _apply(self, grads, state, params, lr_scale):
        return grads, state, params, lr_scale


@record
class ParamGroups(GradientTransform):
    """A transform per group of parameters; every parameter falls into exactly one group.

    Fields:
        groups: ``(selector, transform)`` pairs (or a ``{pattern: transform}`` dict). A selector is
            an ``fnmatch`` pattern on the flattened parameter name (``"backbone.*"``), a tuple of
            them, or a record called as ``selector(name, tensor) -> bool`` (e.g. :class:`BiasAndNorm`).
        default: the transform of the parameters no group selects; ``None``: each must be selected.

    A pattern that matches no parameter, a parameter that two groups select, or (without a
    ``default``) one that none selects is a ConfigError naming it, raised by ``init``.
    The state is ``{"0": state of group 0, …, "default": …}``.
    """

    groups: tuple = attrs.field(converter=_groups, validator=_check_groups)
    default: GradientTransform | None = attrs.field(
        default=None, validator=v.optional(v.instance_of(GradientTransform))
    )

    def _labels(self, params: Params) -> dict[str, str]:
        key = tuple((k, t.dim()) for k, t in params.items())
        return _assign(self, key, tuple(params.values()))

    def _parts(self, params: Params) -> list[tuple[str, GradientTransform, list[str]]]:
        labels = self._labels(params)
        txs = {str(i): tx for i, (_, tx) in enumerate(self.groups)}
        if self.default is not None:
            txs[_DEFAULT] = self.default
        names: dict[str, list[str]] = {k: [] for k in txs}
        for name, label in labels.items():
            names[label].append(name)
        return [(label, txs[label], names[label]) for label in txs]

    def lr_parts(self, state: Mapping) -> list:
        """``(transform, its state)`` of each group, in order, then the default's (what ``learning_rate`` reads)."""
        txs = [(str(i), tx) for i, (_, tx) in enumerate(self.groups)] + [(_DEFAULT, self.default)]
        return [(tx, state[label]) for label, tx in txs if tx is not None and label in state]

    def init(self, params: Params) -> dict:
        return {label: tx.init({k: params[k] for k in ks}) for label, tx, ks in self._parts(params)}

    def trainable_params(self, params: Params) -> tuple[str, ...]:
        out = []
        for _, tx, ks in self._parts(params):
            out.extend(tx.trainable_params({k: params[k] for k in ks}))
        return tuple(out)

    def _apply(self, grads, state, params, lr_scale):
        new_state = dict(state)
        out_params = dict(params)
        out_grads = dict(grads)
        for label, tx, ks in self._parts(params):
            if not ks:
                continue
            sub_p = {k: params[k] for k in ks}
            keep = set(tx.trainable_params(sub_p))
            sub_g = {k: grads[k] for k in ks if k in keep}
            g, new_state[label], p, _ = tx._apply(sub_g, state[label], sub_p, lr_scale)
            out_params.update(p)
            out_grads.update(g)
        return out_grads, new_state, out_params, lr_scale


def _matches(sel, name: str, tensor: torch.Tensor) -> bool:
    if isinstance(sel, tuple):
        return any(fnmatch.fnmatchcase(name, p) for p in sel)
    return bool(sel(name, tensor))


_CACHE: dict = {}


def _assign(pg: ParamGroups, key: tuple, tensors: tuple) -> dict[str, str]:
    """``{name: group label}``; the same names and ranks give the same answer, so it is computed once per model."""
    cache_key = (pg, key)
    found = _CACHE.get(cache_key)
    if found is not None:
        return found
    labels: dict[str, str] = {}
    used: set = set()
    for (name, _), tensor in zip(key, tensors):
        hits = [i for i, (sel, _) in enumerate(pg.groups) if _matches(sel, name, tensor)]
        if len(hits) > 1:
            raise ConfigError(f"ParamGroups.groups: parameter {name!r} is selected by groups {hits}; give it one group")
        if hits:
            labels[name] = str(hits[0])
            used.add(hits[0])
        elif pg.default is not None:
            labels[name] = _DEFAULT
        else:
            raise ConfigError(f"ParamGroups.groups: parameter {name!r} is in no group and there is no default")
    for i, (sel, _) in enumerate(pg.groups):
        if isinstance(sel, tuple):
            for pattern in sel:
                if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in key):
                    shown = ", ".join(name for name, _ in key[:5]) + (", …" if len(key) > 5 else "")
                    raise ConfigError(
                        f"ParamGroups.groups: pattern {pattern!r} (group {i}) matches no parameter; "
                        f"the parameters are named like {shown}"
                    )
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[cache_key] = labels
    return labels


def param_groups(groups, default: GradientTransform | None = None) -> ParamGroups:
    """A transform per group (see :class:`ParamGroups`).

    >>> import torch
    >>> from fusefn import optim
    >>> opt = param_groups({"backbone.*": optim.sgd(lr=0.01)}, default=optim.sgd(lr=0.1))
    >>> p = {"backbone.w": torch.zeros(1), "head.w": torch.zeros(1)}
    >>> p, _ = opt.update({"backbone.w": torch.ones(1), "head.w": torch.ones(1)}, opt.init(p), p)
    >>> round(p["backbone.w"].item(), 6), round(p["head.w"].item(), 6)
    (-0.01, -0.1)
    """
    return ParamGroups(groups=groups, default=default)


def frozen() -> Frozen:
    """The transform of frozen parameters (see :class:`Frozen`)."""
    return Frozen()


def freeze(opt: GradientTransform, *patterns: str) -> ParamGroups:
    """``opt`` on every parameter but those whose names match one of ``patterns`` (``fnmatch``), which stay frozen."""
    if not patterns:
        raise ConfigError("freeze: give at least one name pattern, e.g. freeze(opt, 'backbone.*')")
    return ParamGroups(groups=((tuple(patterns), Frozen()),), default=opt)


def no_decay_on_bias_and_norm(opt: GradientTransform, *, also=()) -> ParamGroups:
    """``opt`` with ``weight_decay=0`` on biases and normalisation weights (:class:`BiasAndNorm`), as is usual.

    ``opt`` is a transform with a ``weight_decay`` field (``sgd``, ``adam``, ``adamw``,
    :func:`~fusefn.optim.from_torch`); the same as ``optim.adamw(..., decay="weights")``.
    """
    sel = BiasAndNorm(also=also)
    if isinstance(opt, TorchOptimizer):
        return ParamGroups(groups=((sel, opt.with_options(weight_decay=0.0)),), default=opt)
    if isinstance(opt, (Sgd, Adam, AdamW)):
        return ParamGroups(groups=((sel, attrs.evolve(opt, weight_decay=0.0)),), default=opt)
    raise ConfigError(f"no_decay_on_bias_and_norm: {type(opt).__name__} has no weight_decay")
