"""The Cox loss against a direct Breslow formula and scikit-survival's Cox model; the Breslow baseline against sksurv."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn.losses import CoxPH, InvalidTargetError, breslow_baseline, check_targets, cox_partial_nll, cox_survival


def breslow_nll(r: np.ndarray, t: np.ndarray, e: np.ndarray) -> float:
    """The textbook formula, one event at a time: -1/E Σ_events [r_i - log Σ_{t_j >= t_i} exp(r_j)]."""
    terms = [r[i] - np.log(np.exp(r[t >= t[i]]).sum()) for i in np.flatnonzero(e)]
    return -float(np.sum(terms)) / max(len(terms), 1)


def tied_data(seed: int, n: int = 60, p: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    beta = np.array([0.8, -0.5, 0.3])[:p]
    time = np.ceil(rng.exponential(np.exp(-x @ beta)) * 4)  # few distinct values: many ties
    event = rng.random(n) < 0.7
    return x, time, event


@pytest.mark.parametrize("seed", range(5))
def test_value_equals_the_breslow_formula_with_ties(seed):
    _, time, event = tied_data(seed)
    assert len(np.unique(time[event])) < event.sum()  # ties among events
    r = np.random.default_rng(seed + 100).normal(size=len(time))
    got = cox_partial_nll(torch.tensor(r), torch.tensor(time), torch.tensor(event))
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(breslow_nll(r, time, event), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.floats(-5, 5), st.integers(0, 4), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    shift=st.floats(-20, 20),
    seed=st.integers(0, 1000),
)
def test_formula_shift_and_order_invariance(data, shift, seed):
    r, t, e = (np.array(c, dtype=np.float64) for c in zip(*data, strict=True))
    value = float(cox_partial_nll(torch.tensor(r), torch.tensor(t), torch.tensor(e)))
    assert value == pytest.approx(breslow_nll(r, t, e), abs=1e-9)
    # a common shift of every risk cancels in the partial likelihood; the batch's order does not matter
    perm = np.random.default_rng(seed).permutation(len(r))
    moved = cox_partial_nll(torch.tensor(r[perm] + shift), torch.tensor(t[perm]), torch.tensor(e[perm]))
    assert float(moved) == pytest.approx(value, abs=1e-9)


def test_lbfgs_fit_reaches_scikit_survival_coefficients():
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = tied_data(0, n=200)
    ref = CoxPHSurvivalAnalysis(ties="breslow", alpha=0, tol=1e-12, n_iter=200).fit(
        x, Surv.from_arrays(event=event, time=time)
    )
    beta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    xt, tt, et = torch.tensor(x), torch.tensor(time), torch.tensor(event)
    loss = CoxPH(pred="r", time="t", event="e")
    opt = torch.optim.LBFGS(
        [beta], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        value = loss({"r": xt @ beta, "t": tt, "e": et})
        value.backward()
        return value

    opt.step(closure)
    np.testing.assert_allclose(beta.detach().numpy(), ref.coef_, atol=1e-6)


def test_all_censored_batch_is_zero_with_zero_gradient():
    r = torch.randn(5, 1, dtype=torch.float64, requires_grad=True)
    value = CoxPH(pred="r", time="t", event="e")({"r": r, "t": torch.arange(5.0), "e": torch.zeros(5)})
    value.backward()
    assert value.item() == 0.0 and torch.equal(r.grad, torch.zeros_like(r))


def test_gradients_finite_for_extreme_risks_and_weight_scales():
    r = torch.tensor([800.0, -800.0, 0.0, 50.0], requires_grad=True)
    batch = {"r": r, "t": torch.tensor([1.0, 1.0, 2.0, 3.0]), "e": torch.tensor([1, 1, 1, 0])}
    value = CoxPH(pred="r", time="t", event="e", weight=2.0)(batch)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(r.grad).all()
    unweighted = CoxPH(pred="r", time="t", event="e")(batch)
    assert torch.isclose(value, 2 * unweighted)


def test_nan_time_poisons_the_loss_and_check_targets_names_the_sample():
    batch = {
        "r": torch.zeros(3),
        "t": torch.tensor([1.0, float("nan"), 2.0]),
        "e": torch.tensor([1, 1, 0]),
        "data": {"sample_id": ["a", "b", "c"]},
    }
    loss = CoxPH(pred="r", time="t", event="e")
    assert torch.isnan(loss(batch))
    with pytest.raises(InvalidTargetError, match=r"'b'") as info:
        check_targets({"cox": loss}, batch)
    assert info.value.key == "t"


def test_compiles_in_one_graph():
    loss = CoxPH(pred="r", time="t", event="e")

    def value_and_grad(r, t, e):
        return torch.func.grad_and_value(lambda r: loss({"r": r, "t": t, "e": e}))(r)

    compiled = torch.compile(value_and_grad, fullgraph=True, backend="eager")
    x, time, event = tied_data(1)
    r = torch.tensor(x[:, 0])
    args = (r, torch.tensor(time), torch.tensor(event).float())
    (g1, v1), (g2, v2) = compiled(*args), value_and_grad(*args)
    assert torch.allclose(v1, v2) and torch.allclose(g1, g2)


def test_breslow_baseline_and_survival_equal_scikit_survival():
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = tied_data(2, n=120)
    model = CoxPHSurvivalAnalysis(ties="breslow", alpha=0).fit(x, Surv.from_arrays(event=event, time=time))
    risk = x @ model.coef_
    base = breslow_baseline(risk, time, event)
    np.testing.assert_array_equal(base[0].numpy(), np.unique(time[event]))
    # between the times, at them and past the last event (sksurv holds its first value before the first time)
    at = np.concatenate([np.unique(time) + 0.5, np.unique(time)])
    at = at[at < time.max()]
    assert np.all(cox_survival(risk[:7], [0.5], base).numpy() == 1.0)
    expected = np.stack([fn(at) for fn in model.predict_survival_function(x[:7])])
    np.testing.assert_allclose(cox_survival(risk[:7], at, base).numpy(), expected, atol=1e-12)
