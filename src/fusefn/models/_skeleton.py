"""The per-record cache of ``nn.Module`` skeletons that ``apply`` runs through ``functional_call``."""

from __future__ import annotations

import copy

import attrs
import torch
from torch import nn


@attrs.define(slots=False)
class Skeletons:
    """Holder of a model record's two skeletons (train and eval mode).

    Lives in an ``init=False, eq=False`` field of the record, so the record still
    compares, hashes, saves and fingerprints by its configuration only (attrs sees no
    fields here). Filled when the record is constructed, so ``torch.compile`` reads it
    as a constant and never traces a module being built.
    """

    def __repr__(self) -> str:
        return "Skeletons()"


def skeleton_field():
    """The field every model record declares as ``_skeletons = skeleton_field()``."""
    return attrs.field(init=False, eq=False, repr=False, factory=Skeletons)


def prepare(model) -> None:
    """Build ``model``'s skeletons into its cache; called from the records' ``__attrs_post_init__``."""
    holder = model._skeletons
    # a record constructed inside torch.func.grad must not build its modules under the transform
    with torch._C._DisableFuncTorch():
        module = model.build_skeleton()
        holder.eval = copy.deepcopy(module).train(False)
        holder.train = module.train(True)
    holder.n_tensors = len(dict(module.named_parameters())) + len(dict(module.named_buffers()))
    holder.tie_weights = bool(model.ties_weights)
    holder.train_slots = _slots(holder.train)
    holder.eval_slots = _slots(holder.eval)


def _slots(module: nn.Module) -> tuple:
    """``(params, buffers)``: per tensor name, the dict that holds it inside ``module`` and its key."""
    out = []
    for kind in ("_parameters", "_buffers"):
        slots = []
        for mname, m in module.named_modules():
            for attr, t in getattr(m, kind).items():
                if t is not None:
                    slots.append((f"{mname}.{attr}" if mname else attr, getattr(m, kind), attr))
        out.append(tuple(slots))
    return tuple(out)


def run(module: nn.Module, slots: tuple, params, buffers, args: tuple):
    """``module(*args)`` with ``params``/``buffers`` in place of its own tensors, restored afterwards.

    What ``torch.func.functional_call`` does, minus its per-call name resolution: the
    dicts and keys were found once in :func:`prepare`. Not for modules with tied weights.
    """
    param_slots, buffer_slots = slots
    saved = []
    try:
        for name, d, key in param_slots:
            saved.append((d, key, d[key]))
            d[key] = params[name]
        for name, d, key in buffer_slots:
            saved.append((d, key, d[key]))
            d[key] = buffers[name]
        return module(*args)
    finally:
        for d, key, t in saved:
            d[key] = t
