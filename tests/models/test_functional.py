"""init / apply as pure functions: determinism, purity, gradients, buffers, weights files, summaries."""

import pytest
import torch
import torch.nn.functional as F

from fusefn import Rng, nd
from fusefn.core import fingerprint, from_config, to_config
from fusefn.errors import ConfigError, FusefnError
from fusefn.models import (
    MLP,
    ClassifierHead,
    Ensemble,
    Model,
    Multistream,
    ResNet18,
    SegmentationHead,
    SmallCNN,
    UNet,
    Wrapper,
    apply,
    as_module,
    init,
    param_count,
    skeleton,
    summary,
)


def cnn_model(**head_kwargs):
    return Model(
        backbone=SmallCNN(in_channels=1, channels=(4, 8)),
        heads=(ClassifierHead(name="head_0", num_classes=3, **head_kwargs),),
    )


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "data": {
            "input": {"img": torch.rand(n, 1, 8, 8, generator=g)},
            "gt": {"label": torch.randint(0, 3, (n,), generator=g)},
        }
    }


def _clone_tree(tree):
    return {k: (_clone_tree(v) if isinstance(v, dict) else v.clone()) for k, v in tree.items()}


def _assert_tree_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_tree_equal(a[k], b[k])
        else:
            assert torch.equal(a[k], b[k]), k


def test_init_is_deterministic_and_leaves_global_rng_alone():
    model = cnn_model()
    state = torch.random.get_rng_state()
    p1, b1 = init(model, rng=Rng(7))
    assert torch.equal(state, torch.random.get_rng_state())
    p2, _ = init(model, rng=Rng(7))
    p3, _ = init(model, rng=Rng(8))
    assert p1.keys() == p2.keys()
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert not all(torch.equal(p1[k], p3[k]) for k in p1 if p1[k].numel() > 1 and "conv" in k)
    assert b1["backbone.blocks.0.bn.running_var"].eq(1).all()


@pytest.mark.parametrize("train", [False, True])
def test_apply_does_not_mutate_its_inputs(train):
    model = cnn_model()
    params, buffers = init(model, rng=Rng(0))
    b = batch()
    p0, bu0, ba0 = _clone_tree(params), _clone_tree(buffers), _clone_tree(b)
    out, new_buffers = apply(model, params, buffers, b, train=train)
    _assert_tree_equal(params, p0)
    _assert_tree_equal(buffers, bu0)
    _assert_tree_equal(b, ba0)
    assert "model" not in b
    assert out["data"] is b["data"]  # untouched sub-trees are shared, not copied
    moved = not torch.equal(
        new_buffers["backbone.blocks.0.bn.running_mean"], buffers["backbone.blocks.0.bn.running_mean"]
    )
    assert moved == train


def test_apply_matches_the_stateful_module_and_its_buffer_updates():
    model = cnn_model()
    params, buffers = init(model, rng=Rng(0))
    module = as_module(model, _clone_tree(params), _clone_tree(buffers), train=True)
    b = batch()
    out, new_buffers = apply(model, params, buffers, b, train=True)
    ref = module(b)
    assert torch.equal(nd.get(out, "model.head_0.logits"), nd.get(ref, "model.head_0.logits"))
    state = dict(module.named_buffers())
    for k, t in new_buffers.items():
        assert torch.equal(t, state[k]), k
    # eval mode: running statistics are used and returned unchanged
    out_eval, same = apply(model, params, new_buffers, b, train=False)
    ref_eval = module.eval()(b)
    assert same is new_buffers
    assert torch.allclose(nd.get(out_eval, "model.head_0.logits"), nd.get(ref_eval, "model.head_0.logits"))


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(cnn_model(layers=(5,)), id="cnn"),
        pytest.param(
            Model(backbone=ResNet18(in_channels=1, width=4), heads=(ClassifierHead(name="head_0", num_classes=3),)),
            id="resnet18",
        ),
        pytest.param(
            Model(
                backbone=UNet(in_channels=1, channels=(4, 8)),
                heads=(
                    SegmentationHead(name="seg", num_classes=2),
                    ClassifierHead(name="head_0", num_classes=3, features="model.backbone_encoder"),
                ),
            ),
            id="unet",
        ),
    ],
)
def test_func_grad_equals_backward(model):
    params, buffers = init(model, rng=Rng(3))
    b = batch(n=4, seed=1)
    if model.backbone.__class__.__name__ == "ResNet":
        b = nd.assoc(b, "data.input.img", torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(2)))

    def loss_fn(p):
        out, new_b = apply(model, p, buffers, b, train=True)
        return F.cross_entropy(nd.get(out, "model.head_0.logits"), nd.get(b, "data.gt.label")), new_b

    grads, _ = torch.func.grad(loss_fn, has_aux=True)(params)

    leaves = {k: t.clone().requires_grad_(True) for k, t in params.items()}
    module = as_module(model, leaves, _clone_tree(buffers), train=True)
    loss = F.cross_entropy(nd.get(module(b), "model.head_0.logits"), nd.get(b, "data.gt.label"))
    loss.backward()
    named = dict(module.named_parameters())
    for k, g in grads.items():
        ref = named[k].grad if named[k].grad is not None else torch.zeros_like(g)
        torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-5, msg=k)


def test_records_round_trip_through_config():
    m = Model(
        inputs=("data.input.img", "data.input.mask"),
        backbone=SmallCNN(in_channels=2, channels=(4, 8)),
        heads=(
            ClassifierHead(name="head_0", num_classes=3, layers=(4, 2), tabular_inputs=("data.t",), tabular_features=2),
        ),
    )
    w = Wrapper(module=torch.nn.Conv2d, kwargs={"in_channels": 1, "out_channels": 2, "kernel_size": (3, 3)})
    ms = Multistream(inputs=("a.b", "a.c"), backbones=(MLP(in_channels=2, layers=(3,)),), heads=())
    for record in (m, w, ms, Ensemble(members=(m, m))):
        back = from_config(to_config(record))
        assert back == record
        assert hash(back) == hash(record)
        assert fingerprint(back) == fingerprint(record)
    assert "skeletons" not in str(to_config(m))


def test_dropout_is_seeded_by_rng_and_off_in_eval():
    model = cnn_model(dropout=0.5, layers=(16,))
    params, buffers = init(model, rng=Rng(0))
    b = batch()
    rng = torch.tensor(11)
    a1, _ = apply(model, params, buffers, b, train=True, rng=rng)
    a2, _ = apply(model, params, buffers, b, train=True, rng=torch.tensor(11))
    a3, _ = apply(model, params, buffers, b, train=True, rng=torch.tensor(12))
    key = "model.head_0.logits"
    assert torch.equal(nd.get(a1, key), nd.get(a2, key))
    assert not torch.equal(nd.get(a1, key), nd.get(a3, key))
    with pytest.raises(FusefnError, match="rng="):
        apply(model, params, buffers, b, train=True)
    e1, _ = apply(model, params, buffers, b, train=False)
    e2, _ = apply(model, params, buffers, b, train=False, rng=rng)
    assert torch.equal(nd.get(e1, key), nd.get(e2, key))


def test_an_rng_and_its_traced_form_give_the_same_dropout():
    model = cnn_model(dropout=0.5, layers=(16,))
    params, buffers = init(model, rng=Rng(0))
    key = "model.head_0.logits"
    a, _ = apply(model, params, buffers, batch(), train=True, rng=Rng(11))
    t, _ = apply(model, params, buffers, batch(), train=True, rng=Rng(11).tensor())
    assert torch.equal(nd.get(a, key), nd.get(t, key))


def test_init_takes_an_rng_not_an_int():
    with pytest.raises(ConfigError, match=r"Model\.init: rng must be a fusefn\.Rng"):
        init(cnn_model(), rng=0)
    p1, _ = init(cnn_model())
    p2, _ = init(cnn_model(), rng=Rng(0))
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


def test_ensemble_members_get_child_dropout_streams():
    member = cnn_model(dropout=0.5, layers=(16,))
    ens = Ensemble(members=(member, member))
    p, b = init(member, rng=Rng(0))
    ep = {f"members.{i}.{k}": t for i in (0, 1) for k, t in p.items()}
    eb = {f"members.{i}.{k}": t for i in (0, 1) for k, t in b.items()}
    key = "model.head_0.logits"
    out, _ = apply(ens, ep, eb, batch(), train=True, rng=Rng(4))
    traced, _ = apply(ens, ep, eb, batch(), train=True, rng=Rng(4).tensor())
    assert torch.equal(nd.get(out, key), nd.get(traced, key))
    from fusefn.models._layers import salt, traced_child

    # member i runs on the child stream ("member", i) of the ensemble's: identical members differ
    each = [
        nd.get(apply(member, p, b, batch(), train=True, rng=traced_child(Rng(4).tensor(), salt(f"member.{i}")))[0], key)
        for i in (0, 1)
    ]
    assert not torch.equal(each[0], each[1])
    torch.testing.assert_close(nd.get(out, key), (each[0] + each[1]) / 2)


def test_seeded_dropout_keeps_about_1_minus_p_and_rescales():
    from fusefn.models._layers import SeededDropout

    d = SeededDropout(0.25, "x").train()
    y = d(torch.ones(200_000), torch.tensor(5))
    kept = (y > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.01
    assert torch.allclose(y[y > 0], torch.full_like(y[y > 0], 1 / 0.75))


def test_params_that_do_not_fit_are_named():
    model = cnn_model()
    params, buffers = init(model, rng=Rng(0))
    broken = {k: t for k, t in params.items() if k != "heads.head_0.out.bias"}
    with pytest.raises(FusefnError, match="heads.head_0.out.bias"):
        apply(model, broken, buffers, batch())


def test_weights_file_loads_and_mismatch_names_block_key_and_shapes(tmp_path):
    model = cnn_model()
    params, buffers = init(model, rng=Rng(0))
    state = {k[len("backbone.") :]: t * 0 + 0.5 for k, t in {**params, **buffers}.items() if k.startswith("backbone.")}
    good = tmp_path / "good.pt"
    torch.save(state, good)
    loaded = Model(
        backbone=SmallCNN(in_channels=1, channels=(4, 8), weights=good),
        heads=(ClassifierHead(name="head_0", num_classes=3),),
    )
    p2, b2 = init(loaded, rng=Rng(0))
    assert p2["backbone.blocks.0.conv.weight"].eq(0.5).all()
    assert b2["backbone.blocks.1.bn.running_mean"].eq(0.5).all()
    assert torch.equal(p2["heads.head_0.out.weight"], params["heads.head_0.out.weight"])

    bad = dict(state, **{"blocks.0.conv.weight": torch.zeros(4, 3, 3, 3)})
    torch.save(bad, tmp_path / "bad.pt")
    wrong = Model(backbone=SmallCNN(in_channels=1, channels=(4, 8), weights=tmp_path / "bad.pt"), heads=())
    with pytest.raises(ConfigError) as e:
        init(wrong, rng=Rng(0))
    msg = str(e.value)
    assert "backbone" in msg and "blocks.0.conv.weight" in msg and "(4, 1, 3, 3)" in msg and "(4, 3, 3, 3)" in msg

    missing = Model(backbone=SmallCNN(in_channels=1, channels=(4, 8), weights=tmp_path / "nope.pt"), heads=())
    with pytest.raises(ConfigError, match="does not exist"):
        init(missing, rng=Rng(0))

    extra = dict(state, **{"fc.weight": torch.zeros(2, 2)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ConfigError, match="unexpected key 'fc.weight'"):
        init(
            Model(backbone=SmallCNN(in_channels=1, channels=(4, 8), weights=tmp_path / "extra.pt"), heads=()),
            rng=Rng(0),
        )
    skipped = SmallCNN(in_channels=1, channels=(4, 8), weights=tmp_path / "extra.pt", weights_skip=("fc.",))
    init(Model(backbone=skipped, heads=()), rng=Rng(0))


def test_param_count_and_summary():
    model = cnn_model()
    params, _ = init(model, rng=Rng(0))
    assert param_count(model) == param_count(params) == sum(t.numel() for t in params.values())
    text = summary(model)
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("backbone") and "SmallCNN" in lines[0] and "model.backbone_features" in lines[0]
    assert "head 'head_0'" in lines[1] and "model.head_0.probs" in lines[1]
    assert lines[2] == f"total {param_count(model):,} params"


def test_skeleton_is_cached_on_the_record_and_holds_no_memory():
    model = cnn_model()
    assert skeleton(model, True) is skeleton(model, True)
    assert skeleton(model, True).training and not skeleton(model, False).training
    assert all(p.is_meta for p in skeleton(model).parameters())
    with pytest.raises(ConfigError, match="not a model record"):
        init(SmallCNN(), rng=Rng(0))


def test_vmap_over_stacked_params_equals_a_loop():
    model = cnn_model()
    states = [init(model, rng=Rng(s)) for s in range(3)]
    stacked_p = {k: torch.stack([p[k] for p, _ in states]) for k in states[0][0]}
    stacked_b = {k: torch.stack([b[k] for _, b in states]) for k in states[0][1]}
    b = batch()

    def logits(p, bu):
        return nd.get(apply(model, p, bu, b)[0], "model.head_0.logits")

    out = torch.func.vmap(logits)(stacked_p, stacked_b)
    torch.testing.assert_close(out, torch.stack([logits(p, bu) for p, bu in states]))
