"""from_torch: any torch.optim optimizer through init/update, N steps equal to N of its own steps."""

import pytest
import torch

from fusefn import optim
from fusefn.core import from_config, to_config
from fusefn.errors import ConfigError

N = 25

CASES = [
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (torch.optim.RAdam, {"lr": 1e-2, "weight_decay": 0.01}),
    (torch.optim.RAdam, {"lr": 1e-2, "weight_decay": 0.01, "decoupled_weight_decay": True}),
    (torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    (torch.optim.RMSprop, {"lr": 1e-2, "momentum": 0.5, "centered": True}),
    (torch.optim.NAdam, {"lr": 1e-2, "weight_decay": 0.01}),
    (torch.optim.Adamax, {"lr": 1e-2}),
    (torch.optim.Adadelta, {"lr": 1.0, "rho": 0.8}),
    (torch.optim.Rprop, {"lr": 1e-2}),
    (torch.optim.ASGD, {"lr": 1e-2, "t0": 5}),
]


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g)}
    return params, torch.randn(16, 6, generator=g), torch.randn(16, 4, generator=g)


def _loss(p, x, y):
    return ((x @ p["w"] + p["b"] - y) ** 2).mean()


def _run_torch(cls, kw, n=N, scales=None):
    params, x, y = _problem()
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = cls(list(ps.values()), **kw)
    for i in range(n):
        if scales is not None:
            for group in opt.param_groups:
                group["lr"] = kw["lr"] * scales[i]
        opt.zero_grad()
        _loss(ps, x, y).backward()
        opt.step()
    return {k: v.detach() for k, v in ps.items()}


def _run_fusefn(opt, n=N, scales=None):
    params, x, y = _problem()
    state = opt.init(params)
    for i in range(n):
        grads = torch.func.grad(_loss)(params, x, y)
        params, state = opt.update(grads, state, params, lr_scale=None if scales is None else scales[i])
    return params, state


def _close(a, b, tol=1e-6):
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=tol, rtol=tol)


@pytest.mark.parametrize(("cls", "kw"), CASES, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CASES)])
def test_n_steps_equal_the_torch_optimizer(cls, kw):
    kw = dict(kw)
    ours, state = _run_fusefn(optim.from_torch(cls, **kw))
    theirs = _run_torch(cls, kw)
    _close(ours, theirs)
    start, _, _ = _problem()
    assert not torch.allclose(ours["w"], start["w"])  # it moved
    assert int(state["count"]) == N


def test_lr_scale_and_schedules_scale_the_learning_rate():
    scales = [0.1 ** (i // 10) for i in range(N)]
    ours, _ = _run_fusefn(optim.from_torch(torch.optim.NAdam, lr=1e-2), scales=scales)
    theirs = _run_torch(torch.optim.NAdam, {"lr": 1e-2}, scales=scales)
    _close(ours, theirs)
    sched = optim.step_decay(1e-2, 10, 0.1)  # the same lr sequence, as a schedule
    by_schedule, _ = _run_fusefn(optim.from_torch(torch.optim.NAdam, lr=sched))
    _close(by_schedule, theirs)


def test_state_is_outside_and_the_update_is_resumable():
    opt = optim.from_torch(torch.optim.RAdam, lr=1e-2)
    params, x, y = _problem()
    state = opt.init(params)
    assert state["per_param"] == {"w": {}, "b": {}}
    for _ in range(5):
        params, state = opt.update(torch.func.grad(_loss)(params, x, y), state, params)
    # a second run from a copy of the state (as a resumed checkpoint) goes on exactly the same
    from fusefn.train import tree_clone

    p2, s2 = tree_clone(params), tree_clone(state)
    for _ in range(5):
        params, state = opt.update(torch.func.grad(_loss)(params, x, y), state, params)
        p2, s2 = opt.update(torch.func.grad(_loss)(p2, x, y), s2, p2)
    _close(params, p2, tol=0)
    assert not any(p.grad is not None for p in params.values())


def test_groups_of_torch_optimizers_and_no_decay_on_bias():
    opt = optim.no_decay_on_bias_and_norm(optim.from_torch(torch.optim.RAdam, lr=1e-2, weight_decay=0.1))
    ours, _ = _run_fusefn(opt)
    params, x, y = _problem()
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = torch.optim.RAdam(
        [{"params": [ps["w"]]}, {"params": [ps["b"]], "weight_decay": 0.0}], lr=1e-2, weight_decay=0.1
    )
    for _ in range(N):
        ref.zero_grad()
        _loss(ps, x, y).backward()
        ref.step()
    _close(ours, {k: v.detach() for k, v in ps.items()})


def test_bad_configs_fail_at_construction():
    with pytest.raises(ConfigError, match="Optimizer class"):
        optim.from_torch(torch.nn.Linear, lr=0.1)
    with pytest.raises(ConfigError, match="LBFGS"):
        optim.from_torch(torch.optim.LBFGS, lr=0.1)
    with pytest.raises(ConfigError, match="refuses"):
        optim.from_torch(torch.optim.RAdam, lr=0.1, momentum=0.9)
    with pytest.raises(ConfigError, match="lr"):
        optim.from_torch(torch.optim.RAdam, lr=-1.0)


def test_round_trips_config_and_reports_its_learning_rate():
    opt = optim.from_torch(torch.optim.RMSprop, lr=1e-2, alpha=0.9)
    # a config names the class; from_config imports it only when the caller trusts it
    with pytest.raises(ConfigError, match="not a fusefn component"):
        from_config(to_config(opt))
    assert from_config(to_config(opt), allowed=[torch.optim.RMSprop]) == opt
    assert optim.learning_rate(opt, opt.init({"w": torch.zeros(1)}), 0.5) == pytest.approx(5e-3)
