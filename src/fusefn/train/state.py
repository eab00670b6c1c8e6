"""TrainState: everything a training run needs to continue exactly where it stopped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from fusefn import validators as v
from fusefn.core import Rng

__all__ = ["TrainState", "init_state", "tree_to", "tree_clone"]


@attrs.frozen(kw_only=True)
class TrainState:
    """The whole state of a run; a new one is returned by every step (the old one is donated).

    Fields:
        params, buffers: flat dicts ``name -> Tensor`` (``fusefn.models.init``).
        opt_state: the optimizer's state (``fusefn.optim``).
        step: optimizer steps taken so far.
        epoch: epochs completed.
        rng: the run's :class:`fusefn.Rng`; every stream (shuffling, dropout, augmentation) derives from it.
        batch_in_epoch: batches of epoch ``epoch`` already consumed (the sampler position; 0 between epochs).
        lr_scale: learning-rate multiplier from a plateau reducer.
        scheduler_state: state of the plateau reducer, if any.
        best: best-epoch history, ``{source: {"value": float, "epoch": int}}``.
        history: one ``epoch_results`` dict per epoch run so far (epoch 0 = pre-training validation).
        loss_scale: fp16 dynamic loss-scaling state, if any.
        partial: metric/loss accumulators of an interrupted epoch (Ctrl-C), else ``None``.
        ema: the moving average of the weights (:class:`fusefn.train.EMA`), ``{"params", "buffers",
            "count"}``, or ``None``; when present, evaluation runs it (:meth:`eval_weights`).
    """

    params: dict = attrs.field(eq=False)
    buffers: dict = attrs.field(eq=False, factory=dict)
    opt_state: dict = attrs.field(eq=False, factory=dict)
    step: int = 0
    epoch: int = 0
    rng: Rng = attrs.field(factory=lambda: Rng(0), validator=v.instance_of(Rng))
    batch_in_epoch: int = 0
    lr_scale: float = 1.0
    scheduler_state: dict | None = None
    best: dict = attrs.field(factory=dict)
    history: tuple = ()
    loss_scale: dict | None = attrs.field(default=None, eq=False)
    partial: Any = attrs.field(default=None, eq=False)
    ema: dict | None = attrs.field(default=None, eq=False)

    def eval_weights(self) -> tuple[dict, dict]:
        """``(params, buffers)`` that evaluation and inference use: the moving average's when there is one."""
        if self.ema is not None:
            return self.ema["params"], self.ema["buffers"]
        return self.params, self.buffers

    def replace(self, **changes) -> TrainState:
        """A copy with ``changes`` (``attrs.evolve``)."""
        return attrs.evolve(self, **changes)


def tree_to(tree: Any, device) -> Any:
    """``tree`` (dicts/lists/tuples of tensors) with every tensor moved to ``device``."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device, non_blocking=True)
    if isinstance(tree, dict) or isinstance(tree, Mapping):  # noqa: SIM101  (the dict test is the fast path)
        return {k: tree_to(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_to(v, device) for v in tree)
    return tree


def tree_clone(tree: Any) -> Any:
    """A deep copy of the tensors of ``tree`` (what a caller keeps before donating a state)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, Mapping):
        return {k: tree_clone(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_clone(v) for v in tree)
    return tree


def init_state(model, optimizer, *, rng: Rng = Rng(0), init=None, device="cpu") -> TrainState:
    """A fresh :class:`TrainState`: parameters from ``init(model, rng=rng)`` (default ``fusefn.models.init``).

    >>> from fusefn import Rng, optim
    >>> def init(model, *, rng):
    ...     return {"w": torch.zeros(2)}, {}
    >>> s = init_state("toy", optim.sgd(lr=0.1), rng=Rng(3), init=init)
    >>> s.step, s.rng, sorted(s.opt_state)
    (0, Rng(seed=3), ['count'])
    """
    if init is None:
        from fusefn import models

        init = models.init
    params, buffers = init(model, rng=rng)
    params = tree_to(params, device)
    buffers = tree_to(buffers, device)
    return TrainState(params=params, buffers=buffers, opt_state=optimizer.init(params), rng=rng)
