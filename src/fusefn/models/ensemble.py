"""Ensemble: several models on the same batch, probabilities averaged, majority vote reported.

>>> import torch
>>> from fusefn.models import Model, MLP, ClassifierHead, init, apply
>>> m = Model(inputs="data.x", backbone=MLP(in_channels=3, layers=(4,)), heads=(ClassifierHead(name="cls", num_classes=2),))
>>> ens = Ensemble(members=(m, m))
>>> params, buffers = init(ens, seed=0)
>>> out, _ = apply(ens, params, buffers, {"data": {"x": torch.ones(5, 3)}})
>>> sorted(out["model"]["cls"]), out["model"]["cls"]["vote"].shape
(['logits', 'probs', 'vote'], torch.Size([5]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from fusefn import nd
from fusefn.core import derive_seed, record
from fusefn.errors import ConfigError
from fusefn.models import _validate as v
from fusefn.models import functional as fn
from fusefn.models._skeleton import make_module, prepare, skeleton_field

__all__ = ["Ensemble", "majority_vote"]


def majority_vote(probs: torch.Tensor) -> torch.Tensor:
    """Most frequent class over members (axis 0) of ``M×N×C×…`` probabilities; ties go to the lower class.

    A single column (``C == 1``) is read as a binary probability thresholded at 0.5.
    """
    if probs.shape[2] == 1:
        labels, num_classes = (probs[:, :, 0] > 0.5).long(), 2
    else:
        labels, num_classes = probs.argmax(2), probs.shape[2]
    counts = F.one_hot(labels, num_classes).sum(0)
    return counts.argmax(-1)


class _EnsembleModule(nn.Module):
    def __init__(self, cfg: Ensemble, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.heads = cfg.head_names()

    def forward(self, batch, rng=None):
        outs = [m(batch, None if rng is None else rng + 7919 * i) for i, m in enumerate(self.members)]
        new = {}
        for h in self.heads:
            probs = torch.stack([nd.get(o, f"model.{h}.probs") for o in outs])
            logits = torch.stack([nd.get(o, f"model.{h}.logits") for o in outs])
            new[f"model.{h}.probs"] = probs.mean(0)
            new[f"model.{h}.logits"] = logits.mean(0)
            new[f"model.{h}.vote"] = majority_vote(probs)
        return nd.assoc_many(batch, new)


def _models(instance, attribute, value):
    for i, m in enumerate(value):
        if not hasattr(m, "build"):
            raise ConfigError(f"Ensemble.members[{i}] is not a model record: {m!r}")


@record(cache_hash=True)
class Ensemble:
    """Run every member on the batch; for each head in ``heads`` write the mean ``probs`` and
    ``logits`` over members and the majority ``vote`` (``model.<head>.vote``, int64).

    ``heads`` defaults to the head names of the first member. Parameters are named
    ``members.<i>.<member's names>``; :meth:`from_checkpoints` builds one from saved runs.
    """

    members: tuple = attrs.field(converter=tuple, validator=[v.non_empty, _models])
    heads: tuple = attrs.field(default=(), converter=v.as_tuple)
    _skeletons = skeleton_field()

    def __attrs_post_init__(self):
        if not self.heads and not getattr(self.members[0], "heads", None):
            raise ConfigError("Ensemble.heads must name the heads to combine: the first member has no heads")
        for i, m in enumerate(self.members):
            written = set(m.writes()) if hasattr(m, "writes") else None
            for h in self.head_names():
                if written is not None and {f"model.{h}.probs", f"model.{h}.logits"} - written:
                    raise ConfigError(f"Ensemble.members[{i}] does not write model.{h}.probs and model.{h}.logits")
        prepare(self)

    def head_names(self) -> tuple[str, ...]:
        return self.heads or tuple(h.name for h in self.members[0].heads)

    @property
    def ties_weights(self) -> bool:
        return any(getattr(m, "ties_weights", False) for m in self.members)

    def writes(self) -> tuple[str, ...]:
        return tuple(f"model.{h}.{k}" for h in self.head_names() for k in ("logits", "probs", "vote"))

    def blocks(self):
        return [
            (f"member {i} {b}", f"members.{i}.{prefix}", desc, writes)
            for i, m in enumerate(self.members)
            for b, prefix, desc, writes in m.blocks()
        ]

    def build(self) -> nn.Module:
        return _EnsembleModule(self, [m.build() for m in self.members])

    def build_skeleton(self) -> nn.Module:
        return _EnsembleModule(self, [make_module(m) for m in self.members])

    def init_tensors(self, seed: int) -> tuple[dict, dict]:
        params, buffers = {}, {}
        for i, m in enumerate(self.members):
            p, b = fn.init(m, derive_seed(seed, "member", i))
            params.update({f"members.{i}.{k}": t for k, t in p.items()})
            buffers.update({f"members.{i}.{k}": t for k, t in b.items()})
        return params, buffers

    @staticmethod
    def stack(members: Sequence[tuple]) -> tuple[Ensemble, dict, dict]:
        """``(ensemble, params, buffers)`` from ``(model, params, buffers)`` triples of trained members."""
        ens = Ensemble(members=tuple(m for m, _, _ in members))
        params = {f"members.{i}.{k}": t for i, (_, p, _) in enumerate(members) for k, t in p.items()}
        buffers = {f"members.{i}.{k}": t for i, (_, _, b) in enumerate(members) for k, t in b.items()}
        return ens, params, buffers

    @staticmethod
    def from_checkpoints(dirs: Sequence, load: Callable | None = None, which="best") -> tuple[Ensemble, dict, dict]:
        """``(ensemble, params, buffers)`` from the model directories of trained runs.

        ``load(dir) -> (model, params, buffers)`` reads one run; by default the
        ``which`` checkpoint (``best``, ``last``, an epoch) of ``fusefn.train``, whose
        model is rebuilt from the config saved with it.
        """
        if load is None:
            load = functools.partial(_load_run, which=which)
        return Ensemble.stack([load(d) for d in dirs])


def _load_run(model_dir, which="best"):
    # imported here: training code depends on models, never the other way round at import time
    from fusefn.train.checkpoint import checkpoint_path, load_checkpoint, rebuild_model

    payload = load_checkpoint(checkpoint_path(model_dir, which))
    state = payload["state"]
    return rebuild_model(payload), dict(state.params), dict(state.buffers)
