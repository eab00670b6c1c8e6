"""Ensemble: several models on the same batch, probabilities averaged, majority vote reported.

Trained members are put together with :meth:`Ensemble.stack` (or read from their model
directories with ``fusefn.train.load_ensemble``).

>>> import torch
>>> from fusefn import Rng
>>> from fusefn.models import Model, MLP, ClassifierHead, init, apply
>>> m = Model(inputs="data.x", backbone=MLP(in_channels=3, layers=(4,)), heads=(ClassifierHead(name="cls", num_classes=2),))
>>> ens = Ensemble(members=(m, m))
>>> params, buffers = init(ens, rng=Rng(0))
>>> out, _ = apply(ens, params, buffers, {"data": {"x": torch.ones(5, 3)}})
>>> sorted(out["model"]["cls"]), out["model"]["cls"]["vote"].shape
(['logits', 'probs', 'vote'], torch.Size([5]))
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from fusefn import keys, nd
from fusefn import validators as v
from fusefn.core import Rng, record
from fusefn.errors import ConfigError
from fusefn.models._convert import as_tuple
from fusefn.models._layers import salt, traced_child
from fusefn.models._record import ModelRecord
from fusefn.models._skeleton import prepare, skeleton_field

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
        # member i's dropout stream is the child ("member", i) of the ensemble's, so
        # identical members never share a mask
        self.sites = tuple(salt(f"member.{i}") for i in range(len(members)))

    def forward(self, batch, rng=None):
        outs = [m(batch, None if rng is None else traced_child(rng, site)) for m, site in zip(self.members, self.sites)]
        new = {}
        for h in self.heads:
            probs = torch.stack([nd.get(o, keys.probs(h)) for o in outs])
            logits = torch.stack([nd.get(o, keys.logits(h)) for o in outs])
            new[keys.probs(h)] = probs.mean(0)
            new[keys.logits(h)] = logits.mean(0)
            new[f"model.{h}.vote"] = majority_vote(probs)
        return nd.assoc_many(batch, new)


_MEMBERS = v.deep_iterable(
    v.wrap(attrs.validators.instance_of(ModelRecord), "must hold model records (Model, Multistream, Wrapper, Ensemble)")
)


@record(cache_hash=True)
class Ensemble(ModelRecord):
    """Run every member on the batch; for each head in ``heads`` write the mean ``probs`` and
    ``logits`` over members and the majority ``vote`` (``model.<head>.vote``, int64).

    ``heads`` defaults to the head names of the first member. Parameters are named
    ``members.<i>.<member's names>``; :meth:`stack` puts trained members together.
    """

    members: tuple = attrs.field(converter=tuple, validator=[v.min_len(1), _MEMBERS])
    heads: tuple = attrs.field(default=(), converter=as_tuple)
    _skeletons = skeleton_field()

    def __attrs_post_init__(self):
        if not self.head_names():
            raise ConfigError("Ensemble.heads must name the heads to combine: the first member has no heads")
        for i, m in enumerate(self.members):
            written = set(m.writes())
            for h in self.head_names():
                if {keys.probs(h), keys.logits(h)} - written:
                    raise ConfigError(f"Ensemble.members[{i}] does not write {keys.probs(h)} and {keys.logits(h)}")
        prepare(self)

    def head_names(self) -> tuple[str, ...]:
        return self.heads or self.members[0].head_names()

    @property
    def ties_weights(self) -> bool:
        return any(m.ties_weights for m in self.members)

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
        return _EnsembleModule(self, [m.build_skeleton() for m in self.members])

    def fresh_tensors(self, *, rng: Rng) -> tuple[dict, dict]:
        params, buffers = {}, {}
        for i, m in enumerate(self.members):
            p, b = m.init(rng=rng.child("member", i))
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
