"""fusefn.optim against torch.optim: same math, N steps equal to 1e-6."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import optim
from fusefn.core import from_config, to_config
from fusefn.errors import ConfigError

N_STEPS = 25


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g)}
    x = torch.randn(16, 6, generator=g)
    y = torch.randn(16, 4, generator=g)
    return params, x, y


def _loss(p, x, y):
    return ((x @ p["w"] + p["b"] - y) ** 2).mean()


def _run_torch(make_opt, n=N_STEPS, clip=None, sched=None):
    params, x, y = _problem()
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = make_opt(list(ps.values()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, sched) if sched else None
    for _ in range(n):
        opt.zero_grad()
        _loss(ps, x, y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(ps.values()), clip)
        opt.step()
        if scheduler:
            scheduler.step()
    return {k: v.detach() for k, v in ps.items()}


def _run_fusefn(opt, n=N_STEPS):
    params, x, y = _problem()
    state = opt.init(params)
    for _ in range(n):
        grads = torch.func.grad(_loss)(params, x, y)
        params, state = opt.update(grads, state, params)
    return params, state


def _close(a, b, tol=1e-6):
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=tol, rtol=tol)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adamw_equals_torch(wd):
    ref = _run_torch(lambda p: torch.optim.AdamW(p, lr=3e-2, weight_decay=wd))
    out, _ = _run_fusefn(optim.adamw(lr=3e-2, weight_decay=wd))
    _close(out, ref)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (
            lambda: optim.adamw(lr=3e-2, weight_decay=0.05),
            lambda p: torch.optim.AdamW(p, lr=3e-2, weight_decay=0.05, fused=True),
        ),
        (lambda: optim.Adam(lr=1e-2, amsgrad=True), lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, fused=True)),
    ],
)
def test_eager_cpu_adam_is_torchs_fused_kernel_bit_for_bit(ours, theirs):
    """Eager on the CPU the Adam family runs torch's fused kernel (the cheap one per step): equal, not just close."""
    ref = _run_torch(theirs)
    out, _ = _run_fusefn(ours())
    for k in ref:
        assert torch.equal(out[k], ref[k]), k


def test_adam_amsgrad_equals_torch():
    ref = _run_torch(lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01, amsgrad=True))
    out, _ = _run_fusefn(optim.Adam(lr=1e-2, b1=0.8, b2=0.99, weight_decay=0.01, amsgrad=True))
    _close(out, ref)


@pytest.mark.parametrize(
    "kw",
    [
        {"momentum": 0.0},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    ],
)
def test_sgd_equals_torch(kw):
    ref = _run_torch(lambda p: torch.optim.SGD(p, lr=0.05, **kw))
    out, _ = _run_fusefn(optim.sgd(lr=0.05, **kw))
    _close(out, ref)


def test_chain_clip_equals_clip_grad_norm():
    ref = _run_torch(lambda p: torch.optim.AdamW(p, lr=1e-2), clip=0.1)
    out, _ = _run_fusefn(optim.chain(optim.clip_by_global_norm(0.1), optim.adamw(lr=1e-2)))
    _close(out, ref)


def test_schedule_lr_equals_lambda_lr():
    sched = optim.warmup_cosine(0.05, warmup_steps=5, decay_steps=N_STEPS)
    ref = _run_torch(lambda p: torch.optim.SGD(p, lr=1.0, momentum=0.9), sched=lambda t: float(sched(torch.tensor(t))))
    out, _ = _run_fusefn(optim.sgd(lr=sched, momentum=0.9))
    _close(out, ref)


def test_scale_by_schedule_equals_schedule_in_lr():
    sched = optim.step_decay(1.0, step_size=4, gamma=0.5)
    a, _ = _run_fusefn(optim.chain(optim.scale_by_schedule(sched), optim.adam(lr=1e-2)))
    b, _ = _run_fusefn(optim.adam(lr=optim.step_decay(1e-2, step_size=4, gamma=0.5)))
    _close(a, b)


def test_lr_scale_multiplies_learning_rate():
    a, _ = _run_fusefn(optim.sgd(lr=0.1))
    params, x, y = _problem()
    opt = optim.sgd(lr=0.2)
    state = opt.init(params)
    for _ in range(N_STEPS):
        params, state = opt.update(torch.func.grad(_loss)(params, x, y), state, params, lr_scale=torch.tensor(0.5))
    _close(a, params)


def test_chain_flattens_and_equals_manual_sequence():
    inner = optim.chain(optim.clip_by_global_norm(1.0))
    c = optim.chain(inner, optim.sgd(lr=0.1))
    assert len(c.transforms) == 2
    # manual: clip then sgd
    params, x, y = _problem()
    p2 = {k: v.clone() for k, v in params.items()}
    state = c.init(params)
    g = torch.func.grad(_loss)(params, x, y)
    params, state = c.update(g, state, params)
    clip, sgd = optim.clip_by_global_norm(1.0), optim.sgd(lr=0.1)
    g2, _, _, _ = clip._apply(dict(g), clip.init(p2), p2, None)
    p2, _ = sgd.update(g2, sgd.init(p2), p2)
    _close(params, p2)


def test_learning_rate_reports_schedule():
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(lr=optim.cosine_decay(1.0, 10)))
    _, state = _run_fusefn(opt, n=5)
    assert math.isclose(optim.learning_rate(opt, state), 0.5, rel_tol=1e-6)
    assert math.isclose(optim.learning_rate(opt, state, lr_scale=0.1), 0.05, rel_tol=1e-6)


def test_records_round_trip_config():
    opt = optim.chain(
        optim.clip_by_global_norm(2.0), optim.scale_by_schedule(optim.linear_warmup(1.0, 3)), optim.adamw(lr=1e-3)
    )
    assert from_config(to_config(opt)) == opt


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.sgd(lr=-1.0),
        lambda: optim.adam(b1=1.0),
        lambda: optim.clip_by_global_norm(0.0),
        lambda: optim.sgd(lr=0.1, nesterov=True),
        lambda: optim.warmup_cosine(1.0, warmup_steps=5, decay_steps=5),
        lambda: optim.chain(optim.sgd(lr=0.1), "adam"),
    ],
)
def test_bad_config_raises(make):
    with pytest.raises(ConfigError):
        make()


def test_update_names_missing_gradient():
    opt = optim.sgd(lr=0.1)
    params = {"w": torch.zeros(2), "b": torch.zeros(1)}
    with pytest.raises(ConfigError, match="'b'"):
        opt.update({"w": torch.zeros(2)}, opt.init(params), params)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 200), st.integers(1, 50), st.floats(0.0, 0.9))
def test_cosine_bounds_and_endpoint(t, steps, alpha):
    s = optim.cosine_decay(2.0, steps, alpha=alpha)
    v = float(s(torch.tensor(t)))
    assert 2.0 * alpha - 1e-5 <= v <= 2.0 + 1e-5
    if t >= steps:
        assert math.isclose(v, 2.0 * alpha, abs_tol=1e-5)


def test_step_decay_equals_steplr():
    p = [torch.zeros(1, requires_grad=True)]
    o = torch.optim.SGD(p, lr=0.3)
    ref = torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.2)
    s = optim.step_decay(0.3, 3, 0.2)
    for t in range(10):
        assert math.isclose(o.param_groups[0]["lr"], float(s(torch.tensor(t))), rel_tol=1e-6)
        o.step()
        ref.step()


def test_reduce_on_plateau_equals_torch():
    values = [1.0, 0.9, 0.9, 0.95, 0.91, 0.92, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    p = [torch.zeros(1, requires_grad=True)]
    o = torch.optim.SGD(p, lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=2, cooldown=1)
    r = optim.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1)
    s = r.init()
    for v in values:
        ref.step(v)
        s = r.update(s, v)
        assert math.isclose(o.param_groups[0]["lr"], s["scale"])


@pytest.mark.slow
def test_compiled_update_matches_eager_without_recompiles():
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(lr=optim.warmup_cosine(1e-2, 2, 10)))
    eager, _ = _run_fusefn(opt, n=6)

    params, x, y = _problem()
    state = opt.init(params)

    def step(params, state):
        grads = torch.func.grad(_loss)(params, x, y)
        return opt.update(grads, state, params)

    compiled = torch.compile(step, fullgraph=True)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(6):
            params, state = compiled(params, state)
    _close(params, eager, tol=1e-5)


GRADIENT_TRANSFORMS = {
    "Sgd": optim.sgd(lr=0.1, momentum=0.9),
    "Adam": optim.adam(lr=1e-2),
    "AdamW": optim.adamw(lr=1e-2),
    "ClipByGlobalNorm": optim.clip_by_global_norm(1.0),
    "ScaleBySchedule": optim.scale_by_schedule(optim.cosine_decay(1.0, 10)),
    "Chain": optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(lr=0.1)),
    "ParamGroups": optim.param_groups({"w": optim.adam(1e-3)}, default=optim.sgd(lr=0.1)),
    "Frozen": optim.frozen(),
    "TorchOptimizer": optim.from_torch(torch.optim.RAdam, lr=1e-3),
}


def test_every_public_gradient_transformation_satisfies_the_protocol():
    import inspect

    from fusefn.protocols import GradientTransformation

    public = {
        n
        for n in optim.__all__
        if inspect.isclass(getattr(optim, n)) and issubclass(getattr(optim, n), optim.GradientTransform)
    }
    assert public - {"GradientTransform"} == set(GRADIENT_TRANSFORMS)
    params, x, y = _problem()
    for name, t in GRADIENT_TRANSFORMS.items():
        assert isinstance(t, GradientTransformation), name
        p = {k: v.clone() for k, v in params.items()}
        new, _ = t.update(torch.func.grad(_loss)(p, x, y), t.init(p), p)
        assert set(new) == set(params), name


def test_one_chain_for_gradient_transformations():
    import fusefn

    assert optim.chain is fusefn.chain
    parts = [optim.clip_by_global_norm(0.5), optim.scale_by_schedule(optim.step_decay(1.0, 1, 0.5)), optim.sgd(0.1)]
    c = fusefn.chain(parts[0], fusefn.chain(*parts[1:]))
    assert isinstance(c, optim.Chain) and c == optim.Chain(transforms=tuple(parts))
    # the hand-written fold of the three updates, two steps
    params, x, y = _problem()
    ref = {k: v.clone() for k, v in params.items()}
    state = c.init(params)
    states = [t.init(ref) for t in parts]
    for _ in range(2):
        params, state = c.update(torch.func.grad(_loss)(params, x, y), state, params)
        g, scale = dict(torch.func.grad(_loss)(ref, x, y)), None
        for i, t in enumerate(parts):
            g, states[i], ref, scale = t._apply(g, states[i], ref, scale)
    _close(params, ref)


def test_chain_of_mixed_kinds_raises():
    import fusefn
    from fusefn import augment

    with pytest.raises(ConfigError, match="cannot mix"):
        fusefn.chain(optim.sgd(lr=0.1), augment.GaussianNoise(image_keys="img"))


def test_plateau_is_the_fold_it_claims_to_be():
    from fusefn.protocols import Reducer

    r = optim.ReduceLROnPlateau(patience=0, factor=0.5)
    s = r.init()
    for v in (1.0, 2.0, 3.0):
        s = r.update(s, v)
    assert r.compute(s) == s["scale"] == 0.25
    assert not isinstance(r, Reducer)  # ordered epochs: no merge
    with pytest.raises(ConfigError, match=r"ReduceLROnPlateau\.factor"):
        optim.ReduceLROnPlateau(factor=1.0)
