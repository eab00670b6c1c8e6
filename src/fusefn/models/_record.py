"""The base of fusefn's model records: :class:`~fusefn.protocols.ModelSpec`'s ``init``/``apply`` over cached skeletons.

:class:`Model`, :class:`Multistream`, :class:`Wrapper` and :class:`Ensemble` derive from
:class:`ModelRecord`: each says how to build its ``nn.Module`` (``build``), which keys it
writes and which blocks it has; ``init`` and ``apply`` are written once, here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fusefn.core import Rng
from fusefn.errors import ConfigError, FusefnError, MissingKeyError
from fusefn.models._layers import init_tensors
from fusefn.models._skeleton import run
from fusefn.models._weights import load_weights

__all__ = ["ModelRecord", "check_record", "UnportableModelWarning", "main_references", "warn_if_unportable"]


def check_record(model, where: str) -> None:
    """Raise ``ConfigError`` unless ``model`` is one of fusefn's model records."""
    if not isinstance(model, ModelRecord):
        raise ConfigError(f"{where}: not a model record (Model, Multistream, Wrapper, Ensemble): {model!r}")


class ModelRecord:
    """A model record whose tensors live outside it; the skeletons are built when the record is constructed.

    A subclass is an attrs record with a ``_skeletons = skeleton_field()`` field that calls
    ``prepare(self)`` in ``__attrs_post_init__``, and defines ``build``, ``writes`` and ``blocks``.
    """

    __slots__ = ()

    ties_weights = False
    """Whether one parameter may appear under two names (then ``apply`` uses ``functional_call``'s alias handling)."""

    def build(self) -> nn.Module:  # pragma: no cover - every record defines it
        """The ``nn.Module`` whose ``forward(batch, rng)`` returns the batch with this model's keys."""
        raise NotImplementedError

    def writes(self) -> tuple[str, ...]:  # pragma: no cover - every record defines it
        """The batch keys ``apply`` adds."""
        raise NotImplementedError

    def blocks(self) -> list:  # pragma: no cover - every record defines it
        """``(block, parameter prefix, description, keys written)`` per block, for summaries."""
        raise NotImplementedError

    def head_names(self) -> tuple[str, ...]:
        """The names of the heads whose ``probs``/``logits`` this model writes."""
        return tuple(h.name for h in self.heads)

    def weight_files(self) -> list:
        """``(block, prefix, path, skip)`` for every block with a local weights file, loaded by ``init``."""
        return []

    def build_skeleton(self) -> nn.Module:
        """A fresh skeleton, built on ``meta`` so it holds no memory."""
        with torch.device("meta"):
            return self.build()

    def fresh_tensors(self, *, rng: Rng) -> tuple[dict, dict]:
        """Newly initialised CPU ``(params, buffers)``, before any weights file is loaded."""
        return init_tensors(self._skeletons.eval, rng.child("models.init").generator())

    def init(self, *, rng: Rng, device: torch.device | str | None = None) -> tuple[dict, dict]:
        """Fresh ``(params, buffers)``, two flat dicts ``name -> Tensor``.

        Deterministic for ``rng`` (drawn from a ``torch.Generator`` derived from it, never the
        global generator); blocks with a ``weights`` file are then loaded from that local file.
        """
        if not isinstance(rng, Rng):
            raise ConfigError(f"{type(self).__name__}.init: rng must be a fusefn.Rng (e.g. Rng(0)), got {rng!r}")
        params, buffers = self.fresh_tensors(rng=rng)
        for block, prefix, path, skip in self.weight_files():
            params, buffers = load_weights(params, buffers, path, block=block, prefix=prefix, skip=skip)
        if device is not None:
            params = {k: t.to(device) for k, t in params.items()}
            buffers = {k: t.to(device) for k, t in buffers.items()}
        return params, buffers

    def apply(
        self,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        batch: Mapping,
        *,
        train: bool = False,
        rng: Rng | torch.Tensor | None = None,
    ) -> tuple[dict, dict]:
        """Run the model on ``batch``; returns ``(batch with the model's keys added, new buffers)``.

        Pure: ``params``, ``buffers`` and ``batch`` are not modified. With ``train=True``
        batch norm uses batch statistics and the returned buffers hold the updated running
        statistics; with ``train=False`` the buffers come back unchanged. ``rng`` seeds
        dropout in training (models with dropout require it then): an :class:`~fusefn.Rng`, or
        its traced form ``rng.tensor()``, a 0-d int64 tensor, which is what a compiled step
        passes so its graph does not specialise on the seed. Both give the same masks.
        """
        if isinstance(rng, Rng):
            rng = rng.tensor()
        holder = self._skeletons
        module = holder.train if train else holder.eval
        if len(params) + len(buffers) != holder.n_tensors:
            _explain_mismatch(self, module, params, buffers)
        if train and buffers:
            # batch norm updates its running statistics in place: give it copies
            buffers = {k: t.clone() for k, t in buffers.items()}
        if holder.tie_weights or torch.compiler.is_compiling():
            # dynamo knows functional_call; tied weights need its alias handling
            out = torch.func.functional_call(module, (params, buffers), (batch, rng), tie_weights=holder.tie_weights)
        else:
            try:
                out = run(module, holder.train_slots if train else holder.eval_slots, params, buffers, (batch, rng))
            except KeyError as e:
                problem = None if isinstance(e, MissingKeyError) else _mismatch(self, module, params, buffers)
                if problem is not None:
                    raise problem from None
                raise
        return out, buffers


def _mismatch(model, module, params, buffers) -> FusefnError | None:
    want_p, want_b = set(dict(module.named_parameters())), set(dict(module.named_buffers()))
    if set(params) == want_p and set(buffers) == want_b:
        return None
    missing = sorted((want_p | want_b) - (set(params) | set(buffers)))
    extra = sorted((set(params) | set(buffers)) - (want_p | want_b))
    misplaced = sorted((set(params) & want_b) | (set(buffers) & want_p))

    def show(names):
        return f"{names[:5]}{' …' if len(names) > 5 else ''}"

    return FusefnError(
        f"apply({type(model).__name__}): params/buffers do not fit the model: missing {show(missing)}, "
        f"unexpected {show(extra)}, in the wrong dict {show(misplaced)}"
    )


def _explain_mismatch(model, module, params, buffers):
    problem = _mismatch(model, module, params, buffers)
    raise problem or FusefnError(f"apply({type(model).__name__}): a name appears in both params and buffers")


class UnportableModelWarning(UserWarning):
    """A model's config names a class or function another process cannot import (one defined in ``__main__``)."""


_MAIN_MODULES = ("__main__", "__mp_main__")


def main_references(config) -> list[str]:
    """The ``module:qualname`` paths in a config (:func:`fusefn.core.to_config`) that live in a script's ``__main__``.

    >>> main_references({"__type__": "fusefn.models:Wrapper", "module": {"__ref__": "__main__:Net"}})
    ['__main__:Net']
    """
    found: list[str] = []
    if isinstance(config, dict):
        for k, value in config.items():
            if k in ("__ref__", "__type__") and isinstance(value, str) and value.partition(":")[0] in _MAIN_MODULES:
                found.append(value)
            else:
                found += main_references(value)
    elif isinstance(config, list):
        for value in config:
            found += main_references(value)
    return found


def unportable_message(paths) -> str:
    """Why a model naming ``paths`` (in ``__main__``) cannot be loaded elsewhere, and the fix."""
    names = ", ".join(p.partition(":")[2] for p in paths)
    return (
        f"the model uses {names}, defined in the script that runs (module __main__): another process (infer, "
        f"load_model, a notebook) cannot import it by name. Fix: move {names} to a module of your own (e.g. "
        f"my_project/nets.py) and import it from there; or, to load in a script that defines it too, pass "
        f"allowed=[{names}]"
    )


def warn_if_unportable(model) -> bool:
    """Warn (:class:`UnportableModelWarning`) when ``model``'s config names a class defined in ``__main__``.

    Returns whether it warned. A model that cannot be saved as config at all is left to ``to_config``'s error.
    """
    import warnings

    from fusefn.core import to_config

    try:
        paths = main_references(to_config(model))
    except FusefnError:
        return False
    if paths:
        warnings.warn(
            "saving a model that cannot be loaded elsewhere: " + unportable_message(paths),
            UnportableModelWarning,
            stacklevel=3,
        )
    return bool(paths)
