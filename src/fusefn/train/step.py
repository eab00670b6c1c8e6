"""The pure training and evaluation steps: apply, losses, gradients (torch.func), optimizer update.

``make_train_step(model, losses, optimizer, ...)`` returns
``train_step(state, batch) -> (state, batch_out)``. The step reads nothing but
its arguments, so it can be compiled whole (``compile=True``). Like JAX buffer
donation it writes the new parameters and optimizer state into the storage of
the state it was given: the caller must not use the old state afterwards
(:func:`fusefn.train.tree_clone` first if it needs to).

Gradients come from ``torch.func.grad_and_value`` in the compiled step and from
``torch.autograd.grad`` on detached leaves in the eager one (same kernels, less
per-op overhead); both leave their inputs untouched.

Gradient accumulation (``accumulate=k``): the step then takes a sequence of k
mini-batches, and the update uses the **mean** of their gradients, so a virtual
batch of k mini-batches of size b trains like one batch of k·b (for losses that
are means over the batch), unlike FuseMedML, which summed them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fusefn import keys, nd
from fusefn.core import Rng
from fusefn.errors import ConfigError, FusefnError
from fusefn.train.state import TrainState

__all__ = ["make_train_step", "make_eval_step", "total_loss", "NonFiniteLossError", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16", "fp16")
_MASK63 = (1 << 63) - 1


class NonFiniteLossError(FusefnError):
    """The loss became NaN or infinite; names the step and the sample ids of the batch."""


def total_loss(losses: Mapping[str, Callable], batch: Mapping) -> tuple[torch.Tensor, dict]:
    """``(sum of losses, {name: value})`` (``fusefn.losses.total``)."""
    from fusefn.losses import total  # after the first call a dict lookup: cheap per step

    return total(losses, batch)


def _default_apply():
    from fusefn import models

    return models.apply


def _with_losses(out: dict, total: torch.Tensor, parts: Mapping) -> dict:
    items = {f"losses.{k}": _detached(v) for k, v in parts.items()}
    items[keys.TOTAL_LOSS] = _detached(total)
    return nd.assoc_many(out, items)


def _detached(tree, ref=None):
    """``tree`` with the tensors that belong to an autograd graph detached, sharing everything else.

    Sub-trees that are the very objects of ``ref`` (the input batch, which the step
    did not make) are kept as they are without a walk: cheap enough to run every step.
    """
    if isinstance(tree, torch.Tensor):
        return tree.detach() if tree.requires_grad else tree
    if not isinstance(tree, dict):
        return tree
    out = None
    for k, v in tree.items():
        if ref is not None and ref.get(k) is v:
            continue
        d = _detached(v, ref.get(k) if isinstance(ref, dict) else None)
        if d is not v:
            if out is None:
                out = dict(tree)
            out[k] = d
    return tree if out is None else out


def _autocast(precision: str, device_type: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type, dtype=dtype)


def _device_of(params: Mapping) -> torch.device:
    for v in params.values():
        return v.device
    return torch.device("cpu")


def _dropout_bases():
    """``rng -> rng.child("dropout").seed``, remembering the last run's (deriving costs more than a step's bookkeeping)."""
    last: dict = {}

    def base(rng: Rng) -> int:
        if rng not in last:
            last.clear()
            last[rng] = rng.child("dropout").seed
        return last[rng]

    return base


def _step_rng(base: int, step: int, micro: int, accumulate: int) -> torch.Tensor:
    # a distinct counter per mini-batch; the models hash it with the site and element index
    # (counter-based), so consecutive counters give independent masks
    return torch.tensor((base + step * accumulate + micro) & _MASK63, dtype=torch.int64)


def make_train_step(
    model,
    losses: Mapping[str, Callable],
    optimizer,
    *,
    apply: Callable | None = None,
    compile: bool = False,
    precision: str = "fp32",
    accumulate: int = 1,
    distributed: bool | None = None,
):
    """Build ``train_step(state, batch) -> (state, batch_out)``.

    Args:
        model: the model record; ``apply(model, params, buffers, batch, train=True, rng=)``
            gives ``(batch_out, new_buffers)`` (default ``fusefn.models.apply``). ``rng`` is the
            dropout stream of the mini-batch, a 0-d int64 tensor (the traced form of an ``Rng``):
            a custom ``apply`` must accept it.
        losses: ``{name: loss}``, each ``loss(batch) -> scalar``; their sum is ``losses.total_loss``.
        optimizer: a ``fusefn.optim`` transform.
        compile: ``torch.compile`` the whole step (gradients and update) once.
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + dynamic loss scaling).
        accumulate: mini-batches per update; the step then takes a sequence of them and
            returns a list of outputs; gradients are averaged.
        distributed: all-reduce (average) gradients over the process group; default: whether one is initialised.

    Returns:
        the step; ``batch_out`` is the model output plus ``losses.<name>`` and ``losses.total_loss`` (detached).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"make_train_step: precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"make_train_step: accumulate must be an int >= 1, got {accumulate!r}")
    apply = apply or _default_apply()
    dropout_base = _dropout_bases()
    from fusefn.losses import total as loss_total

    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()

    def grads_of(params, buffers, batch, rng, scale):
        device_type = _device_of(params).type

        def objective(p):
            with _autocast(precision, device_type):
                out, new_buffers = apply(model, p, buffers, batch, train=True, rng=rng)
                tot, parts = loss_total(losses, out)
            tot = tot.float()
            return tot * scale if scale is not None else tot, (tot, out, new_buffers, parts)

        if compile:
            # the batch reaching here holds tensors only (see _split_tensors), as torch.func's aux requires
            grads, (_, (tot, out, new_buffers, parts)) = torch.func.grad_and_value(objective, has_aux=True)(params)
        else:
            grads, tot, out, new_buffers, parts = _autograd_grads(objective, params, batch)
        return grads, new_buffers, _with_losses(out, tot, parts)

    def accumulate_grads(params, buffers, batches, rngs, scale):
        total = None
        outs = []
        for batch, rng in zip(batches, rngs):
            g, buffers, out = grads_of(params, buffers, batch, rng, scale)
            total = g if total is None else {k: total[k] + g[k] for k in total}
            outs.append(out)
        n = len(batches)
        if n > 1 or scale is not None:
            div = n if scale is None else n * scale
            total = {k: v / div for k, v in total.items()}
        return total, buffers, outs

    def full(params, buffers, opt_state, lr_scale, batches, rngs):
        grads, buffers, outs = accumulate_grads(params, buffers, batches, rngs, None)
        params, opt_state = optimizer.update(grads, opt_state, params, lr_scale=lr_scale)
        return params, buffers, opt_state, outs

    def update(params, opt_state, lr_scale, grads):
        return optimizer.update(grads, opt_state, params, lr_scale=lr_scale)

    if compile:
        full_c = torch.compile(full)
        grads_c = torch.compile(accumulate_grads)
        update_c = torch.compile(update)
    else:
        full_c, grads_c, update_c = full, accumulate_grads, update

    def train_step(state: TrainState, batch):
        try:
            return run_step(state, batch)
        except (FusefnError, torch.OutOfMemoryError):
            raise
        except Exception as e:  # explained only after it failed: the step itself pays nothing
            forward = functools.partial(_forward_only, apply, model, state.params, state.buffers)
            _explain(losses, _as_list(batch), f"train step {state.step + 1}", e, forward)
            raise

    def run_step(state: TrainState, batch):
        batches = _as_batches(batch, accumulate)
        if compile:
            batches, extras = zip(*(_split_tensors(b) for b in batches))
        else:
            extras = [None] * len(batches)
        base = dropout_base(state.rng)
        rngs = [_step_rng(base, state.step, i, accumulate) for i in range(len(batches))]
        lr_scale = _lr_scale_value(state, compile or _device_of(state.params).type != "cpu")
        if precision != "fp16" and not distributed:
            params, buffers, opt_state, outs = full_c(
                state.params, state.buffers, state.opt_state, lr_scale, batches, rngs
            )
            loss_scale = state.loss_scale
        else:
            ls = (state.loss_scale or _init_loss_scale()) if precision == "fp16" else None
            scale = ls["scale"] if ls is not None else None
            grads, buffers, outs = grads_c(state.params, state.buffers, batches, rngs, scale)
            if distributed:
                grads = _all_reduce_mean(grads)
            skip = False
            if ls is not None:
                finite = torch.stack([torch.isfinite(g).all() for g in grads.values()]).all()
                if distributed:
                    finite = _all_reduce_min(finite)
                skip = not bool(finite)
                ls = _next_loss_scale(ls, skip)
            if skip:
                params, opt_state = state.params, state.opt_state
            else:
                params, opt_state = update_c(state.params, state.opt_state, lr_scale, grads)
            loss_scale = ls
        new = state.replace(
            params=params, buffers=buffers, opt_state=opt_state, step=state.step + 1, loss_scale=loss_scale
        )
        outs = [nd.assoc_many(o, e) if e else o for o, e in zip(outs, extras)]
        return new, (outs if accumulate > 1 else outs[0])

    train_step.compiled = compile
    train_step.losses = dict(losses)  # what the loop's finite check explains a NaN with (check_targets)
    return train_step


def _as_list(batch) -> list:
    return [batch] if isinstance(batch, Mapping) else list(batch) if isinstance(batch, Sequence) else []


def _forward_only(apply, model, params, buffers, batch):
    with torch.no_grad():
        return apply(model, params, buffers, batch, train=False)[0]


def _explain(losses: Mapping, batches: Sequence, where: str, error: Exception, forward: Callable) -> None:
    """Raise :class:`~fusefn.losses.InvalidTargetError` (from ``error``) when a batch's targets explain the failure.

    The model's output gives the number of classes; when the model fails too, the batch alone
    still shows NaN, fractional and negative labels. Returns when nothing explains it.
    """
    from fusefn.losses import InvalidTargetError, check_targets

    for b in batches:
        if not isinstance(b, Mapping):
            continue
        try:
            out = forward(b)
        except Exception:
            out = b
        try:
            check_targets(losses, out, step=where)
        except InvalidTargetError as bad:
            raise bad from error
        except Exception:  # e.g. a CUDA context a device-side assert broke: the original error stands
            return


def _autograd_grads(objective, params: Mapping, batch: Mapping | None = None):
    """What ``torch.func.grad_and_value(objective, has_aux=True)(params)`` gives, by reverse-mode autograd.

    The eager step uses this: functorch wraps every op of the forward pass, an overhead
    per op that weighs on small models (bench/RESULTS.md), while the gradients are the
    same backward kernels either way. Parameters enter as detached
    leaves sharing their storage (no copy); the inputs are not modified.
    """
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        value, (tot, out, new_buffers, parts) = objective(leaves)
    gs = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    grads = {k: g if g is not None else torch.zeros_like(leaves[k]) for k, g in zip(leaves, gs)}
    # the losses are detached once, where they are put into the output (_with_losses)
    return grads, tot, _detached(out, batch), _detached(new_buffers), parts


def _split_tensors(batch: Mapping) -> tuple[dict, dict]:
    """``(tensor part, other leaves)``: sample ids and strings stay out of the compiled step (no guards on them)."""
    flat = nd.flatten(batch)
    tensors = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == len(flat):
        return batch, {}
    return nd.unflatten(tensors), {k: v for k, v in flat.items() if not isinstance(v, torch.Tensor)}


def _as_batches(batch, accumulate: int) -> list:
    if accumulate == 1:
        if not isinstance(batch, Mapping):
            raise ConfigError("train_step: expected one batch_dict (accumulate=1)")
        return [batch]
    # fewer than `accumulate` is allowed: the tail of an epoch; the mean is over what was given
    if isinstance(batch, Mapping) or not isinstance(batch, Sequence) or not 1 <= len(batch) <= accumulate:
        raise ConfigError(f"train_step: with accumulate={accumulate} pass a sequence of {accumulate} batch_dicts")
    return list(batch)


def _lr_scale_value(state: TrainState, as_tensor: bool):
    # a tensor keeps a compiled step from recompiling when the scale changes; eager CPU kernels want a number
    if not as_tensor:
        return float(state.lr_scale)
    return torch.tensor(float(state.lr_scale), dtype=torch.float32, device=_device_of(state.params))


def _init_loss_scale() -> dict:
    return {"scale": torch.tensor(2.0**16), "good_steps": 0}


def _next_loss_scale(ls: dict, overflow: bool, growth_interval: int = 2000) -> dict:
    # the rules of torch.amp.GradScaler: halve on overflow, double after growth_interval good steps
    if overflow:
        return {"scale": ls["scale"] * 0.5, "good_steps": 0}
    good = ls["good_steps"] + 1
    if good >= growth_interval:
        return {"scale": ls["scale"] * 2.0, "good_steps": 0}
    return {"scale": ls["scale"], "good_steps": good}


def _all_reduce_mean(grads: Mapping[str, torch.Tensor]) -> dict:
    import torch.distributed as dist

    world = dist.get_world_size()
    names = list(grads)
    flat = torch.cat([grads[k].reshape(-1) for k in names])
    dist.all_reduce(flat)
    flat = flat / world
    out, i = {}, 0
    for k in names:
        n = grads[k].numel()
        out[k] = flat[i : i + n].view_as(grads[k])
        i += n
    return out


def _all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    y = x.to(torch.float32).clone()
    dist.all_reduce(y, op=dist.ReduceOp.MIN)
    return y > 0


def make_eval_step(
    model, losses: Mapping[str, Callable] | None = None, *, apply=None, precision: str = "fp32", compile: bool = False
):
    """Build ``eval_step(state, batch) -> batch_out`` (no gradients; buffers unchanged).

    ``state`` is a :class:`TrainState` or a ``(params, buffers)`` pair. Losses are
    computed when given and their keys are found in the output. ``compile`` runs the
    forward pass through ``torch.compile`` (non-tensor leaves such as sample ids stay outside).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"make_eval_step: precision must be one of {PRECISIONS}, got {precision!r}")
    apply = apply or _default_apply()

    def forward(params, buffers, batch):
        with torch.no_grad(), _autocast(precision, _device_of(params).type):
            out, _ = apply(model, params, buffers, batch, train=False)
            if losses:
                tot, parts = total_loss(losses, out)
                out = _with_losses(out, tot.float(), parts)
        return out

    forward_c = torch.compile(forward) if compile else forward

    def eval_step(state: Any, batch: Mapping) -> dict:
        params, buffers = (state.params, state.buffers) if isinstance(state, TrainState) else state
        try:
            if not compile:
                return forward(params, buffers, batch)
            tensors, extras = _split_tensors(batch)
            out = forward_c(params, buffers, tensors)
        except (FusefnError, torch.OutOfMemoryError):
            raise
        except Exception as e:
            if losses:
                _explain(
                    losses, [batch], "eval step", e, functools.partial(_forward_only, apply, model, params, buffers)
                )
            raise
        return nd.assoc_many(out, extras) if extras else out

    eval_step.losses = dict(losses or {})
    return eval_step
