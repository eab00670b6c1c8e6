"""Parameter groups and freezing against torch.optim with param groups: N steps equal to 1e-6."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import chain, optim
from fusefn.core import from_config, to_config
from fusefn.errors import ConfigError

N = 20


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {
        "backbone.conv.weight": torch.randn(5, 4, generator=g),
        "backbone.bn.weight": 1 + 0.1 * torch.randn(5, generator=g),
        "backbone.bn.bias": 0.1 * torch.randn(5, generator=g),
        "head.weight": torch.randn(3, 5, generator=g),
        "head.bias": torch.randn(3, generator=g),
    }
    x = torch.randn(32, 4, generator=g)
    y = torch.randn(32, 3, generator=g)
    return params, x, y


def _loss(p, x, y):
    h = x @ p["backbone.conv.weight"].T
    h = (h - h.mean(0)) / (h.std(0) + 1e-5) * p["backbone.bn.weight"] + p["backbone.bn.bias"]
    out = torch.tanh(h) @ p["head.weight"].T + p["head.bias"]
    return ((out - y) ** 2).mean()


def _run_fusefn(opt, n=N, lr_scale=None):
    params, x, y = _problem()
    state = opt.init(params)
    for _ in range(n):
        trained = opt.trainable_params(params)
        fixed = dict(params)
        grads = torch.func.grad(lambda q, fixed=fixed: _loss({**fixed, **q}, x, y))({k: params[k] for k in trained})
        params, state = opt.update(grads, state, params, lr_scale=lr_scale)
    return params, state


def _run_torch(groups_of, opt_class, n=N, frozen=()):
    """``groups_of(named leaves) -> torch param groups``; ``frozen`` names get requires_grad False."""
    params, x, y = _problem()
    ps = {k: v.clone().requires_grad_(k not in frozen) for k, v in params.items()}
    opt = opt_class(groups_of(ps))
    for _ in range(n):
        opt.zero_grad()
        _loss(ps, x, y).backward()
        opt.step()
    return {k: v.detach() for k, v in ps.items()}


def _close(a, b, tol=1e-6):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=tol, rtol=tol, msg=lambda m, k=k: f"{k}: {m}")


def test_groups_with_own_lr_and_weight_decay_equal_torch_param_groups():
    ours, _ = _run_fusefn(
        optim.param_groups(
            [("backbone.*", optim.adamw(1e-3, weight_decay=0.1)), ("head.*", optim.adamw(1e-2, weight_decay=0.0))]
        )
    )
    theirs = _run_torch(
        lambda ps: [
            {"params": [v for k, v in ps.items() if k.startswith("backbone.")], "lr": 1e-3, "weight_decay": 0.1},
            {"params": [v for k, v in ps.items() if k.startswith("head.")], "lr": 1e-2, "weight_decay": 0.0},
        ],
        torch.optim.AdamW,
    )
    _close(ours, theirs)


@pytest.mark.parametrize("make", [lambda: optim.adamw(1e-2, weight_decay=0.3, decay="weights")])
def test_decay_on_weights_only_equals_torch_no_decay_group(make):
    ours, _ = _run_fusefn(make())
    no_decay = {"backbone.bn.weight", "backbone.bn.bias", "head.bias"}
    theirs = _run_torch(
        lambda ps: [
            {"params": [v for k, v in ps.items() if k not in no_decay], "weight_decay": 0.3},
            {"params": [v for k, v in ps.items() if k in no_decay], "weight_decay": 0.0},
        ],
        lambda groups: torch.optim.AdamW(groups, lr=1e-2),
    )
    _close(ours, theirs)
    # and it differs from decaying everything (the test can fail)
    everything, _ = _run_fusefn(optim.adamw(1e-2, weight_decay=0.3))
    assert not torch.allclose(everything["head.bias"], ours["head.bias"], atol=1e-4)


def test_sgd_decay_weights_equals_torch():
    ours, _ = _run_fusefn(optim.sgd(0.05, 0.9, weight_decay=0.01, nesterov=True, decay="weights"))
    no_decay = {"backbone.bn.weight", "backbone.bn.bias", "head.bias"}
    theirs = _run_torch(
        lambda ps: [
            {"params": [v for k, v in ps.items() if k not in no_decay], "weight_decay": 0.01},
            {"params": [v for k, v in ps.items() if k in no_decay], "weight_decay": 0.0},
        ],
        lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True),
    )
    _close(ours, theirs)


def test_freeze_equals_requires_grad_false_and_keeps_no_state():
    opt = optim.freeze(optim.adam(1e-2), "backbone.*")
    ours, state = _run_fusefn(opt)
    start, _, _ = _problem()
    frozen = [k for k in start if k.startswith("backbone.")]
    theirs = _run_torch(
        lambda ps: [v for v in ps.values() if v.requires_grad], lambda g: torch.optim.Adam(g, lr=1e-2), frozen=frozen
    )
    _close(ours, theirs)
    for k in frozen:
        assert torch.equal(ours[k], start[k])
    assert state["0"] == {}  # the frozen group has no state
    assert set(state["default"]["exp_avg"]) == {"head.weight", "head.bias"}
    assert opt.trainable_params(start) == ("head.weight", "head.bias")


def test_freeze_ignores_gradients_of_frozen_parameters():
    opt = optim.freeze(optim.sgd(0.1), "head.bias")
    params, _, _ = _problem()
    before = params["head.bias"].clone()
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    params, _ = opt.update(grads, opt.init(params), params)
    assert torch.equal(params["head.bias"], before)


def test_unknown_pattern_is_an_error_naming_it():
    params, _, _ = _problem()
    with pytest.raises(ConfigError, match=r"'encoder\.\*'.*matches no parameter"):
        optim.freeze(optim.sgd(0.1), "encoder.*").init(params)


def test_parameter_in_two_groups_or_none_is_an_error_naming_it():
    params, _, _ = _problem()
    two = optim.param_groups([("head.*", optim.sgd(0.1)), ("*.bias", optim.sgd(0.2))], default=optim.sgd(0.3))
    with pytest.raises(ConfigError, match=r"'head\.bias' is selected by groups \[0, 1\]"):
        two.init(params)
    none = optim.param_groups([("head.*", optim.sgd(0.1))])
    with pytest.raises(ConfigError, match=r"'backbone\.conv\.weight' is in no group"):
        none.init(params)


def test_groups_take_lr_scale_and_a_clip_chain():
    opt = chain(optim.clip_by_global_norm(0.5), optim.param_groups({"backbone.*": optim.sgd(0.1)}, optim.sgd(0.2)))
    half, _ = _run_fusefn(opt, n=3, lr_scale=torch.tensor(0.5))
    same = chain(optim.clip_by_global_norm(0.5), optim.param_groups({"backbone.*": optim.sgd(0.05)}, optim.sgd(0.1)))
    ref, _ = _run_fusefn(same, n=3)
    _close(half, ref)


def test_learning_rate_of_groups_is_the_first_groups():
    opt = optim.param_groups({"backbone.*": optim.sgd(0.01)}, default=optim.sgd(0.1))
    params, _, _ = _problem()
    assert optim.learning_rate(opt, opt.init(params), 0.5) == pytest.approx(0.005)


def test_groups_round_trip_config_and_compare_equal():
    opt = optim.adamw(1e-3, weight_decay=0.05, decay="weights")
    assert from_config(to_config(opt)) == opt
    frz = optim.freeze(optim.sgd(0.1), "backbone.*", "head.bias")
    assert from_config(to_config(frz)) == frz
    with pytest.raises(ConfigError, match="decay"):
        optim.adamw(1e-3, decay="bias")
    with pytest.raises(ConfigError, match="pattern"):
        optim.freeze(optim.sgd(0.1))


@pytest.mark.slow
def test_compiled_groups_update_matches_eager_without_recompiles():
    from torch._dynamo.testing import CompileCounter

    opt = optim.param_groups({"backbone.*": optim.adamw(1e-3)}, default=optim.sgd(0.1, 0.9))
    eager, _ = _run_fusefn(opt, n=4)
    params, x, y = _problem()
    state = opt.init(params)
    counter = CompileCounter()

    @torch.compile(backend=counter, fullgraph=True)
    def step(params, state, grads, scale):
        return opt.update(grads, state, params, lr_scale=scale)

    for _ in range(4):
        grads = torch.func.grad(_loss)(params, x, y)
        params, state = step(params, state, grads, torch.tensor(1.0))
    _close(params, eager, tol=1e-5)
    assert counter.frame_count == 1


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=5, max_size=5))
def test_splitting_into_groups_of_one_transform_changes_nothing(labels):
    """The law of a partition: any split of the parameters over groups running the same transform is that transform."""
    names = list(_problem()[0])
    base = optim.adam(1e-2, weight_decay=0.01)
    groups = {}
    for name, label in zip(names, labels):
        groups.setdefault(label, []).append(name)
    split = optim.param_groups([(tuple(ks), base) for ks in groups.values()])
    ours, _ = _run_fusefn(split, n=5)
    ref, _ = _run_fusefn(base, n=5)
    _close(ours, ref, tol=1e-6)
