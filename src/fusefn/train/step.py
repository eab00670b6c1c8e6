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
from fusefn.train._compile import (
    COMPILE_MODES,
    MEMORY_FORMATS,
    PRECISIONS,
    GraphBreakError,
    _batch_size,
    _call_compiled,
    _check_mode_device,
    _compiled,
    _first_call_on,
    _formatted,
    _LrScale,
    _mark_batch_dynamic,
    _resolved_precision,
    compile_options,
)
from fusefn.train.state import TrainState

__all__ = [
    "make_train_step",
    "make_eval_step",
    "total_loss",
    "NonFiniteLossError",
    "GraphBreakError",
    "PRECISIONS",
    "COMPILE_MODES",
    "MEMORY_FORMATS",
]

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
    precision = _resolved_precision(precision, device_type)
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
    compile: bool | str = False,
    precision: str = "fp32",
    accumulate: int = 1,
    distributed: bool | None = None,
    augment: Callable | None = None,
    memory_format: str = "contiguous",
    cudnn_benchmark: bool = True,
    ema=None,
    backend=None,
):
    """Build ``train_step(state, batch) -> (state, batch_out)``.

    Args:
        model: the model record; ``apply(model, params, buffers, batch, train=True, rng=)``
            gives ``(batch_out, new_buffers)`` (default ``fusefn.models.apply``). ``rng`` is the
            dropout stream of the mini-batch, a 0-d int64 tensor (the traced form of an ``Rng``):
            a custom ``apply`` must accept it.
        losses: ``{name: loss}``, each ``loss(batch) -> scalar``; their sum is ``losses.total_loss``.
        optimizer: a ``fusefn.optim`` transform.
        compile: ``torch.compile`` the whole step (augmentation, forward, losses, gradients and update)
            into one graph: ``True``/``"default"``, ``"reduce-overhead"`` (CUDA graphs), ``"max-autotune"``,
            ``"max-autotune-no-cudagraphs"``; a graph break is a :class:`GraphBreakError`.
            ``"partial"`` allows graph breaks (the untraceable parts run eagerly).
        precision: ``auto`` (bf16 autocast on a CUDA device with bf16, else fp32), ``fp32``, ``bf16``
            (autocast) or ``fp16`` (autocast + dynamic loss scaling).
        accumulate: mini-batches per update; the step then takes a sequence of them and
            returns a list of outputs; gradients are averaged.
        distributed: all-reduce (average) gradients over the process group; default: whether one is initialised.
        augment: a :class:`fusefn.augment.Augmentation` applied to each mini-batch inside the step:
            its params are drawn outside the graph from ``state.rng.child("augment", step, i)`` (the
            stream :func:`~fusefn.train.train_epoch` uses), its ``apply`` runs in the compiled graph.
        memory_format: ``channels_last``: 4-d/5-d floating inputs and weights in channels-last layout
            (faster convolutions on tensor cores).
        cudnn_benchmark: on CUDA, let cuDNN time its algorithms once (``torch.backends.cudnn.benchmark``).
        ema: a :class:`fusefn.train.EMA`: the moving average of the weights, ``state.ema``, updated after
            every optimizer update in the same (compiled) step; started from the weights when the state has
            none. Without it the step leaves ``state.ema`` at ``None``.
        backend: ``torch.compile``'s backend (default inductor); tests pass a counting one.

    Frozen parameters (:func:`fusefn.optim.freeze`, the optimizer's ``trainable_params``) get no gradient:
    the backward pass leaves them out.

    Returns:
        the step; ``batch_out`` is the model output plus ``losses.<name>`` and ``losses.total_loss`` (detached).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"make_train_step: precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"make_train_step: accumulate must be an int >= 1, got {accumulate!r}")
    if memory_format not in MEMORY_FORMATS:
        raise ConfigError(f"make_train_step: memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    if augment is not None and not callable(getattr(augment, "apply_fixed", None)):
        raise ConfigError(
            "make_train_step: augment must be a fusefn.augment.Augmentation (sample_like/apply_fixed); "
            f"got {type(augment).__name__}: pass other callables to train_epoch(augment=...)"
        )
    options = compile_options(compile, "make_train_step")
    compile = options is not None
    build_kw = dict(
        apply=apply,
        compile=options["name"] if compile else False,
        precision=precision,
        accumulate=accumulate,
        distributed=distributed,
        memory_format=memory_format,
        cudnn_benchmark=cudnn_benchmark,
        ema=ema,
        backend=backend,
    )
    if ema is not None and not (callable(getattr(ema, "init", None)) and callable(getattr(ema, "update", None))):
        raise ConfigError(f"make_train_step: ema must be a fusefn.train.EMA, got {type(ema).__name__}")
    apply = apply or _default_apply()
    lr_value = _LrScale()
    started: list = []
    dropout_base = _dropout_bases()
    from fusefn.losses import total as loss_total

    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()

    def grads_of(params, buffers, batch, rng, scale):
        device_type = _device_of(params).type
        trained = optimizer.trainable_params(params)
        fixed = None
        if len(trained) != len(params):
            keep = set(trained)
            fixed = {k: t for k, t in params.items() if k not in keep}

        def objective(p):
            if fixed is not None:  # frozen parameters enter as constants: no gradient is computed for them
                p = {**fixed, **p}
            with _autocast(precision, device_type):
                out, new_buffers = apply(model, p, buffers, batch, train=True, rng=rng)
                tot, parts = loss_total(losses, out)
            tot = tot.float()
            return tot * scale if scale is not None else tot, (tot, out, new_buffers, parts)

        wrt = params if fixed is None else {k: params[k] for k in trained}
        if compile:
            # the batch reaching here holds tensors only (see _split_tensors), as torch.func's aux requires
            grads, (_, (tot, out, new_buffers, parts)) = torch.func.grad_and_value(objective, has_aux=True)(wrt)
        else:
            grads, tot, out, new_buffers, parts = _autograd_grads(objective, wrt, batch)
        return grads, new_buffers, _with_losses(out, tot, parts)

    def augmented(batches, aug_params):
        if augment is None:
            return batches
        if compile:
            return [augment.apply_fixed(b, p) for b, p in zip(batches, aug_params)]
        return [augment.apply(b, p) for b, p in zip(batches, aug_params)]

    def accumulate_grads(params, buffers, batches, rngs, scale, aug_params=None):
        batches = augmented(batches, aug_params)
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

    def full(params, buffers, opt_state, ema_state, lr_scale, batches, rngs, aug_params):
        grads, buffers, outs = accumulate_grads(params, buffers, batches, rngs, None, aug_params)
        params, opt_state = optimizer.update(grads, opt_state, params, lr_scale=lr_scale)
        if ema is not None:
            ema_state = ema.update(ema_state, params, buffers)
        return params, buffers, opt_state, ema_state, outs

    def update(params, buffers, opt_state, ema_state, lr_scale, grads):
        params, opt_state = optimizer.update(grads, opt_state, params, lr_scale=lr_scale)
        if ema is not None:
            ema_state = ema.update(ema_state, params, buffers)
        return params, opt_state, ema_state

    if compile:
        full_c = _compiled(full, options, backend)
        grads_c = _compiled(accumulate_grads, options, backend)
        update_c = _compiled(update, options, backend)
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

    def aug_params_of(state: TrainState, batches) -> list | None:
        if augment is None:
            return None
        out = []
        for i, b in enumerate(batches):
            p = augment.sample_like(b, rng=state.rng.child("augment", state.step, i))
            out.append(augment.fixed_params(p, _batch_size(b)) if compile else p)
        return out

    def run_step(state: TrainState, batch):
        batches = _as_batches(batch, accumulate)
        device = _device_of(state.params)
        if not started:
            _check_mode_device(options, device, "make_train_step")
            _first_call_on(device, cudnn_benchmark)
            started.append(True)
        if memory_format != "contiguous":
            state = state.replace(params=_formatted(state.params, memory_format))
            batches = [_formatted(b, memory_format) for b in batches]
        if ema is not None and state.ema is None:
            state = state.replace(ema=ema.init(state.params, state.buffers))
        if compile:
            batches, extras = zip(*(_split_tensors(b) for b in batches))
        else:
            extras = [None] * len(batches)
        aug_params = aug_params_of(state, batches)
        if compile:
            for b, ap in zip(batches, aug_params or [None] * len(batches)):
                n = _batch_size(b)
                _mark_batch_dynamic(b, n)
                _mark_batch_dynamic(ap, n)
        base = dropout_base(state.rng)
        rngs = [_step_rng(base, state.step, i, accumulate) for i in range(len(batches))]
        lr_scale = lr_value(state, compile or device.type != "cpu")
        where = f"train step {state.step + 1}"
        if precision != "fp16" and not distributed:
            params, buffers, opt_state, ema_state, outs = _call_compiled(
                full_c,
                where,
                state.params,
                state.buffers,
                state.opt_state,
                state.ema if ema is not None else None,
                lr_scale,
                list(batches),
                rngs,
                aug_params,
            )
            loss_scale = state.loss_scale
        else:
            ls = (state.loss_scale or _init_loss_scale()) if precision == "fp16" else None
            scale = ls["scale"] if ls is not None else None
            grads, buffers, outs = _call_compiled(
                grads_c, where, state.params, state.buffers, list(batches), rngs, scale, aug_params
            )
            if distributed:
                grads = _all_reduce_mean(grads)
            skip = False
            if ls is not None:
                finite = torch.stack([torch.isfinite(g).all() for g in grads.values()]).all()
                if distributed:
                    finite = _all_reduce_min(finite)
                skip = not bool(finite)
                ls = _next_loss_scale(ls, skip)
            ema_state = state.ema if ema is not None else None
            if skip:
                params, opt_state = state.params, state.opt_state
            else:
                params, opt_state, ema_state = _call_compiled(
                    update_c, where, state.params, buffers, state.opt_state, ema_state, lr_scale, grads
                )
            loss_scale = ls
        new = state.replace(
            params=params,
            buffers=buffers,
            opt_state=opt_state,
            step=state.step + 1,
            loss_scale=loss_scale,
            ema=ema_state,
        )
        outs = [nd.assoc_many(o, e) if e else o for o, e in zip(outs, extras)]
        return new, (outs if accumulate > 1 else outs[0])

    train_step.compiled = compile
    train_step.losses = dict(losses)  # what the loop's finite check explains a NaN with (check_targets)
    train_step.augment = augment
    fused: dict = {}

    def with_augment(aug) -> Callable:
        """This step with ``aug`` inside it (built once per augmentation; what train_epoch runs)."""
        if aug not in fused:
            fused[aug] = make_train_step(model, losses, optimizer, **{**build_kw, "augment": aug})
        return fused[aug]

    train_step.with_augment = with_augment
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
    model,
    losses: Mapping[str, Callable] | None = None,
    *,
    apply=None,
    precision: str = "fp32",
    compile: bool | str = False,
    memory_format: str = "contiguous",
    backend=None,
):
    """Build ``eval_step(state, batch) -> batch_out`` (no gradients; buffers unchanged).

    ``state`` is a :class:`TrainState` or a ``(params, buffers)`` pair; of a TrainState the
    weights it evaluates are :meth:`~fusefn.train.TrainState.eval_weights`: the moving average
    (``state.ema``) when the run keeps one. Losses are
    computed when given and their keys are found in the output. ``compile`` (as in
    :func:`make_train_step`) runs the forward pass and the losses as one graph (non-tensor
    leaves such as sample ids stay outside; the batch axis is dynamic, so a smaller last
    batch reuses it).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"make_eval_step: precision must be one of {PRECISIONS}, got {precision!r}")
    if memory_format not in MEMORY_FORMATS:
        raise ConfigError(f"make_eval_step: memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    options = compile_options(compile, "make_eval_step")
    compile = options is not None
    apply = apply or _default_apply()
    started: list = []

    def forward(params, buffers, batch):
        with torch.no_grad(), _autocast(precision, _device_of(params).type):
            out, _ = apply(model, params, buffers, batch, train=False)
            if losses:
                tot, parts = total_loss(losses, out)
                out = _with_losses(out, tot.float(), parts)
        return out

    forward_c = _compiled(forward, options, backend) if compile else forward

    def eval_step(state: Any, batch: Mapping) -> dict:
        params, buffers = state.eval_weights() if isinstance(state, TrainState) else state
        if not started:
            _check_mode_device(options, _device_of(params), "make_eval_step")
            started.append(True)
        if memory_format != "contiguous":
            params, batch = _formatted(params, memory_format), _formatted(batch, memory_format)
        try:
            if not compile:
                return forward(params, buffers, batch)
            tensors, extras = _split_tensors(batch)
            _mark_batch_dynamic(tensors, _batch_size(tensors))
            out = _call_compiled(forward_c, "eval step", params, buffers, tensors)
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
    eval_step.compiled = compile
    return eval_step
