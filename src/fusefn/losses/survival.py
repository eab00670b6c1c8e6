"""Cox proportional-hazards loss (Breslow ties) on risk scores, and the Breslow baseline that turns risks into survival.

A survival head outputs one *risk score* per patient (the log relative hazard, higher =
earlier event); the targets are two keys, the time of event or censoring and the event
indicator (1 = event observed, 0 = censored). :class:`CoxPH` is the negative Cox partial
log-likelihood with Breslow's handling of tied times, averaged over the batch's events:

    loss = -1/E · Σ_{i: event} [ r_i - log Σ_{j: t_j >= t_i} exp(r_j) ]

Written on torch's own ops rather than on torchsurv's ``neg_partial_log_likelihood``: that
one reads values on the host and branches on them (``.item()``, ``torch.unique``, Python
``if`` on ties), which breaks a compiled step's graph, builds its Breslow terms in float32,
averages over distinct event times rather than events, and returns a constant cut from the
graph when no event is seen. Here a sort, a reverse ``logcumsumexp`` and a ``searchsorted``
(the risk set of a tied time starts at the first of the ties) give the same value in any
dtype, differentiable, in one graph.

A batch with no event (every patient censored) has no term: its loss is 0, with zero
gradient, so a small batch of censored patients neither fails nor pulls the model.
Risk sets are the batch's: the loss of a mini-batch is that of the batch's own Cox model
(large batches, or the whole training set, estimate the full-data likelihood best).

>>> import torch
>>> batch = {"risk": torch.tensor([[0.5], [0.0], [-0.5]]), "t": torch.tensor([1.0, 1.0, 2.0]),
...          "e": torch.tensor([1, 1, 0])}
>>> round(float(CoxPH(pred="risk", time="t", event="e")(batch)), 4)
0.9303
>>> float(CoxPH(pred="risk", time="t", event="e")({**batch, "e": torch.zeros(3)}))
0.0
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.losses._common import WEIGHT, poisoned

__all__ = ["CoxPH", "cox_partial_nll", "breslow_baseline", "cox_survival"]


def _tensor(x, device=None) -> torch.Tensor:
    """A tensor as it is (moved to ``device``), or a copy of host data (a read-only Parquet column included)."""
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    return torch.tensor(x, device=device)


def _columns(risk, time, event) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    risk = _tensor(risk).reshape(-1)
    time = _tensor(time, risk.device).reshape(-1)
    event = _tensor(event, risk.device).reshape(-1).to(risk.dtype)
    return risk, time, event


def cox_partial_nll(risk, time, event) -> torch.Tensor:
    """Negative Cox partial log-likelihood of ``risk`` (N,) or (N, 1), Breslow ties, mean over events (0 without one).

    ``time`` (N,) is the time of event or censoring, ``event`` (N,) 1 where the event was observed.
    A NaN or infinite time makes the loss NaN (the training loop's finite check then names the samples).
    """
    risk, time, event = _columns(risk, time, event)
    order = torch.argsort(time)
    r, t, e = risk[order], time[order].contiguous(), event[order]
    # log Σ_{j >= i} exp(r_j) over the time-sorted batch; a tie group's risk set starts at its first member
    tail = torch.logcumsumexp(r.flip(0), dim=0).flip(0)
    # clamped: a NaN time sorts last and searches past the end (the loss is NaN then anyway)
    first = torch.searchsorted(t, t, right=False).clamp_max(t.numel() - 1)
    log_risk_set = tail.gather(0, first)
    nll = (e * (log_risk_set - r)).sum() / e.sum().clamp_min(1)
    return poisoned(nll, torch.isfinite(time).all())


@record
class CoxPH:
    """The Cox partial-likelihood loss (:func:`cox_partial_nll`) of the risk score ``pred``, times ``weight``.

    Args:
        pred: key of the risk scores (N,) or (N, 1) (a regression head's output; higher = earlier event).
        time: key of the times of event or censoring (N,).
        event: key of the event indicators (N,): 1 observed, 0 censored.
    """

    pred: str = attrs.field(validator=v.key)
    time: str = attrs.field(validator=v.key)
    event: str = attrs.field(validator=v.key)
    weight: float = attrs.field(default=1.0, validator=WEIGHT)

    def __call__(self, batch: Mapping) -> torch.Tensor:
        risk = nd.get(batch, self.pred)
        return cox_partial_nll(risk, nd.get(batch, self.time), nd.get(batch, self.event)) * self.weight


def breslow_baseline(risk, time, event) -> tuple[torch.Tensor, torch.Tensor]:
    """Breslow's estimate of the baseline cumulative hazard: ``(event times, H0 at each)``, from a fitted model's risks.

    ``H0(t) = Σ_{t_k <= t} d_k / Σ_{j: t_j >= t_k} exp(r_j)`` over the distinct event times ``t_k``
    (``d_k`` events there), computed on the data the model was trained on (scikit-survival's
    ``BreslowEstimator``). :func:`cox_survival` turns it into survival curves of new patients.

    >>> times, h0 = breslow_baseline([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1, 0, 1])
    >>> times.tolist(), [round(x, 4) for x in h0.tolist()]
    ([1.0, 3.0], [0.3333, 1.3333])
    """
    risk, time, event = _columns(risk, time, event)
    risk, time, event = risk.double(), time.double(), event.double()
    order = torch.argsort(time)
    r, t, e = risk[order], time[order].contiguous(), event[order]
    at_risk = torch.exp(r).flip(0).cumsum(0).flip(0)
    uniq = torch.unique(t[e > 0])
    first = torch.searchsorted(t, uniq, right=False)
    deaths = torch.zeros_like(uniq).index_add_(0, torch.searchsorted(uniq, t[e > 0]), e[e > 0])
    return uniq, torch.cumsum(deaths / at_risk[first], 0)


def cox_survival(risk, times, baseline: tuple) -> torch.Tensor:
    """Survival probabilities ``S(t | r) = exp(-H0(t) · exp(r))`` (N, len(times)) of risks ``r`` at ``times``.

    ``baseline`` is :func:`breslow_baseline`'s ``(event times, H0)``; ``H0`` is a step function
    (0 before the first event time, constant after the last).

    >>> base = breslow_baseline([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1, 0, 1])
    >>> cox_survival([0.0], [0.5, 1.5, 3.0], base).numpy().round(4).tolist()
    [[1.0, 0.7165, 0.2636]]
    """
    event_times, h0 = (_tensor(x).to(torch.float64) for x in baseline)
    risk = _tensor(risk).to(torch.float64).reshape(-1, 1)
    times = _tensor(times).to(torch.float64).reshape(-1)
    idx = torch.searchsorted(event_times.contiguous(), times, right=True)
    h = torch.cat([torch.zeros(1, dtype=torch.float64), h0])[idx]
    return torch.exp(-h[None, :] * torch.exp(risk))
