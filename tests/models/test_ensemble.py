"""Ensemble: one member equals the model; mean probabilities; majority vote."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import Rng, nd
from fusefn.models import (
    MLP,
    ClassifierHead,
    Ensemble,
    Model,
    SegmentationHead,
    SmallCNN,
    Wrapper,
    apply,
    init,
    majority_vote,
    summary,
)


def _model(num_classes=3):
    return Model(
        backbone=SmallCNN(in_channels=1, channels=(4, 8)),
        heads=(
            ClassifierHead(name="cls", num_classes=num_classes),
            SegmentationHead(name="seg", num_classes=2),
        ),
    )


def _batch():
    return {"data": {"input": {"img": torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))}}}


def test_ensemble_of_one_equals_the_model():
    model = _model()
    params, buffers = init(model, rng=Rng(5))
    ens, ep, eb = Ensemble.stack([(model, params, buffers)])
    for train in (False, True):
        ref, ref_buffers = apply(model, params, buffers, _batch(), train=train)
        out, new_buffers = apply(ens, ep, eb, _batch(), train=train)
        for h in ("cls", "seg"):
            assert torch.equal(nd.get(out, f"model.{h}.probs"), nd.get(ref, f"model.{h}.probs"))
            assert torch.equal(nd.get(out, f"model.{h}.logits"), nd.get(ref, f"model.{h}.logits"))
            assert torch.equal(nd.get(out, f"model.{h}.vote"), nd.get(ref, f"model.{h}.probs").argmax(1))
        assert all(torch.equal(new_buffers[f"members.0.{k}"], t) for k, t in ref_buffers.items())


def test_ensemble_means_probs_and_votes():
    a, b = _model(), _model()
    members = [(a, *init(a, rng=Rng(1))), (b, *init(b, rng=Rng(2))), (a, *init(a, rng=Rng(3)))]
    ens, params, buffers = Ensemble.stack(members)
    out, _ = apply(ens, params, buffers, _batch())
    outs = [apply(m, p, bu, _batch())[0] for m, p, bu in members]
    probs = torch.stack([nd.get(o, "model.cls.probs") for o in outs])
    torch.testing.assert_close(nd.get(out, "model.cls.probs"), probs.mean(0))
    assert torch.equal(nd.get(out, "model.cls.vote"), torch.mode(probs.argmax(2), 0).values)
    assert "member 2 head 'seg'" in summary(ens)


def test_majority_vote_ties_and_binary():
    p = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]]])  # one vote each: tie goes to class 0
    assert majority_vote(p).tolist() == [0]
    binary = torch.tensor([[[0.7]], [[0.6]], [[0.1]]])
    assert majority_vote(binary).tolist() == [1]


def test_ensemble_init_and_stack_of_saved_members(tmp_path):
    m = Model(
        inputs="data.x", backbone=MLP(in_channels=3, layers=(4,)), heads=(ClassifierHead(name="cls", num_classes=2),)
    )
    ens = Ensemble(members=(m, m))
    params, _ = init(ens, rng=Rng(0))
    assert not torch.equal(params["members.0.backbone.linears.0.weight"], params["members.1.backbone.linears.0.weight"])
    saved = {}
    for i in range(2):
        p, b = init(m, rng=Rng(i))
        saved[str(tmp_path / str(i))] = (m, p, b)
    ens2, p2, _ = Ensemble.stack([saved[d] for d in saved])
    assert ens2 == ens
    assert torch.equal(p2["members.1.heads.cls.out.weight"], saved[str(tmp_path / "1")][1]["heads.cls.out.weight"])


def test_ensemble_of_wrappers():
    w = Wrapper(
        module=torch.nn.Linear,
        kwargs={"in_features": 3, "out_features": 2},
        inputs="data.x",
        outputs="model.cls.logits",
        activation="softmax",
    )
    ens = Ensemble(members=(w, w), heads=("cls",))
    params, buffers = init(ens, rng=Rng(0))
    x = torch.rand(4, 3)
    out, _ = apply(ens, params, buffers, {"data": {"x": x}})
    probs = [
        torch.softmax(x @ params[f"members.{i}.net.weight"].T + params[f"members.{i}.net.bias"], 1) for i in (0, 1)
    ]
    torch.testing.assert_close(nd.get(out, "model.cls.probs"), (probs[0] + probs[1]) / 2)


@settings(max_examples=50, deadline=None)
@given(
    votes=st.lists(st.lists(st.integers(0, 3), min_size=3, max_size=3), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_majority_vote_counts_and_ignores_member_order(votes, seed):
    labels = torch.tensor(votes)  # members × samples
    probs = torch.nn.functional.one_hot(labels, 4).float() * 0.7 + 0.075
    perm = torch.randperm(len(votes), generator=torch.Generator().manual_seed(seed))
    got = majority_vote(probs)
    assert torch.equal(got, majority_vote(probs[perm]))
    for j in range(3):
        counts = [sum(1 for row in votes if row[j] == c) for c in range(4)]
        assert got[j].item() == counts.index(max(counts))  # most votes, lowest class on ties
