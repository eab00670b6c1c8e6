"""The analyzer's bootstrap: every metric of the suite on the same resamples, drawn once, in bounded chunks.

Each chunk of resamples is drawn once and every metric evaluates it (the intervals of one
run are paired, and the draws cost once, not once per metric). The draws are those of
:func:`fusefn.metrics.bootstrap.iter_resample_counts` (stratified by the target), so each
metric's interval is the one :class:`~fusefn.metrics.Bootstrap` gives with the same ``rng``.

**Large binary files** (more than :data:`CELLS_FROM` samples with one score column) are
resampled over *cells* instead of rows: the samples sorted by score are cut into
:data:`SCORE_BINS` quantile bins, and a cell holds the samples of one bin, one class, one
decision at the threshold and one calibration bin. The bootstrap's multiplicities summed
per cell follow, in each class, a multinomial over its cells with the cells' sizes as
weights — drawn directly, so a resample costs the number of cells, not the number of
samples. Decision metrics (accuracy, MCC, the operating point) depend on the cells' totals
only: their resamples have exactly the row bootstrap's distribution. Rank metrics (AUC,
average precision) and calibration also depend on the order within a cell; a cell's samples
are represented by their mean score and each resample is shifted by the full data's exact
value minus its value on the cells (for AUC the part this leaves out is the variance of the
pairs within one cell, about ``1 / SCORE_BINS²`` of the total). 10⁶ predictions with 10,000
resamples then take seconds (see ``bench/bench_analyze.py``).

>>> import numpy as np
>>> from fusefn import Rng
>>> from fusefn.metrics import AUCROC, Bootstrap
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1], 50)
>>> batch = {"pred": rng.normal(size=100) + y, "target": y}
>>> auc = AUCROC(pred="pred", target="target")
>>> boots, _ = resample_suite({"auc": auc}, batch, n=500, rng=Rng(1))
>>> alone = Bootstrap(auc, n=500, rng=Rng(1), stratify="target")
>>> bool(np.quantile(boots["auc"], 0.025) == alone.compute(alone.update(alone.init(), batch))["lower"])
True
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping

import attrs
import numpy as np

from fusefn.core import Rng, record
from fusefn.metrics import ECE, UndefinedMetricWarning
from fusefn.metrics._curves import row_chunks
from fusefn.metrics.bootstrap import JACKKNIFE_EXACT, JACKKNIFE_GROUPS, iter_jackknife_counts, iter_resample_counts

__all__ = ["CELLS_FROM", "SCORE_BINS", "Cells", "Progress", "ProgressLine", "make_cells", "resample_suite"]

CELLS_FROM = 10_000
"""Binary files with more samples than this are resampled over cells (see the module's text)."""

SCORE_BINS = 1024
"""Quantile bins of the score that cells are cut from."""

PRED, TARGET = "pred", "target"  # the keys of the analyzer's batch (fusefn.analyze.inputs)

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each chunk of resamples."""


@record
class Cells:
    """Samples merged into cells: a representative score and class per cell, and each sample's cell.

    ``score`` / ``target``: one value per cell (the mean score of its samples, their class);
    ``size``: samples per cell; ``index``: the cell of each sample.
    """

    score: np.ndarray = attrs.field(eq=False)
    target: np.ndarray = attrs.field(eq=False)
    size: np.ndarray = attrs.field(eq=False)
    index: np.ndarray = attrs.field(eq=False)

    @property
    def batch(self) -> dict:
        return {PRED: self.score, TARGET: self.target}

    def iter_draws(self, n: int, *, rng: Rng) -> Iterator[np.ndarray]:
        """``n`` rows of multiplicities per cell, in chunks: per class, a multinomial over its cells with the
        cells' sizes as weights (the stratified bootstrap's totals per cell). The chunks continue one stream."""
        gen = rng.numpy()
        classes = [np.flatnonzero(self.target == c) for c in np.unique(self.target)]
        for rows in row_chunks(n, self.size.size * 8):
            counts = np.zeros((rows.stop - rows.start, self.size.size), dtype=np.int64)
            for members in classes:
                sizes = self.size[members]
                counts[:, members] = gen.multinomial(int(sizes.sum()), sizes / sizes.sum(), size=counts.shape[0])
            yield counts

    def jackknife(self, *, rng: Rng) -> np.ndarray:
        """``(groups, cells)``: the cells' sizes with one random group of samples left out per row."""
        rows = self.index.size
        groups = JACKKNIFE_GROUPS if rows > JACKKNIFE_EXACT else rows
        group = rng.numpy().permutation(rows) % groups if rows > JACKKNIFE_EXACT else np.arange(rows)
        out = np.bincount(group * self.size.size + self.index, minlength=groups * self.size.size)
        return self.size[None, :] - out.reshape(groups, self.size.size)


def make_cells(
    score: np.ndarray, target: np.ndarray, *, threshold: float = 0.5, n_ece: int = 15, bins: int | None = None
) -> Cells:
    """The :class:`Cells` of binary scores: one quantile bin (of ``bins``, default :data:`SCORE_BINS`), class,
    decision at ``threshold`` and calibration bin (of ECE's ``n_ece``) each.

    >>> c = make_cells(np.array([0.61, 0.62, 0.63, 0.9]), np.array([0, 0, 1, 1]), bins=2)
    >>> c.size.tolist(), c.target.tolist(), c.score.round(3).tolist(), c.index.tolist()
    ([2, 1, 1], [0, 1, 1], [0.615, 0.63, 0.9], [0, 0, 1, 2])
    """
    bins = SCORE_BINS if bins is None else bins
    score = np.asarray(score, dtype=np.float64)
    target = np.asarray(target).astype(np.int64)
    # the bin of a sample's rank; equal scores take the rank of the first of them, so a tie block is never cut
    rank = np.searchsorted(np.sort(score), score, side="left")
    qbin = rank * bins // max(score.size, 1)
    key = qbin * 2 + target
    key = key * 2 + (score >= threshold)
    key = key * 2 + (score >= 0.5)
    conf = np.maximum(score, 1 - score)
    key = key * (n_ece + 1) + np.minimum((conf * n_ece).astype(np.int64), n_ece - 1)
    _, index, size = np.unique(key, return_inverse=True, return_counts=True)
    index = index.reshape(-1)
    total = np.bincount(index, weights=score)
    lo = np.full(size.size, np.inf)
    hi = np.full(size.size, -np.inf)
    np.minimum.at(lo, index, score)
    np.maximum.at(hi, index, score)
    # the mean stays among the cell's own values, so it decides and bins as they do
    rep = np.clip(total / size, lo, hi)
    cls = np.zeros(size.size, dtype=np.int64)
    cls[index] = target
    return Cells(score=rep, target=cls, size=size, index=index)


def _concat(parts: list):
    if isinstance(parts[0], Mapping):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])


def _shift(tree, offset):
    if isinstance(tree, Mapping):
        return {k: _shift(v, offset[k]) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float64) + offset


def _offset(exact, on_cells):
    """Exact value minus the value on the cells, per leaf (0 where either is undefined)."""
    if isinstance(on_cells, Mapping):
        return {
            k: _offset(exact.get(k, np.nan) if isinstance(exact, Mapping) else np.nan, v) for k, v in on_cells.items()
        }
    d = float(exact) - float(np.asarray(on_cells).reshape(-1)[0])
    return d if np.isfinite(d) else 0.0


def _cells_of(metrics: Mapping, batch: Mapping) -> Cells | None:
    pred, target = np.asarray(batch[PRED]), np.asarray(batch[TARGET])
    if pred.ndim != 1 or pred.size <= CELLS_FROM or np.unique(target).size != 2:
        return None
    thresholds = {getattr(m, "threshold", None) for m in metrics.values()} - {None}
    if len(thresholds) > 1 or not all(isinstance(t, float) for t in thresholds):
        return None
    n_ece = {m.n_bins for m in metrics.values() if isinstance(m, ECE)}
    if len(n_ece) > 1:
        return None
    return make_cells(
        pred, target, threshold=thresholds.pop() if thresholds else 0.5, n_ece=n_ece.pop() if n_ece else 15
    )


def resample_suite(
    metrics: Mapping,
    batch: Mapping,
    *,
    n: int,
    rng: Rng,
    jackknife: Collection[str] = (),
    values: Mapping | None = None,
    progress: Progress | None = None,
    strata: np.ndarray | None = None,
) -> tuple[dict, dict]:
    """``(boots, jack)``: each metric's values on ``n`` stratified resamples, and on the jackknife rows of those
    named in ``jackknife`` (what BCa needs), for the analyzer's batch (``pred``, ``target``).

    ``values`` (the metrics' exact values, needed on the cell path) are computed when not given.
    ``strata`` (one value per case) replaces the target as what the resamples keep the counts of: the
    regression, survival and multi-label analyses pass zeros (whole cases resampled, nothing kept fixed);
    the cell path is then not taken.
    """
    cols = {name: m.extract(batch) for name, m in metrics.items()}
    cells = _cells_of(metrics, batch) if strata is None else None
    parts: dict[str, list] = {name: [] for name in metrics}
    done = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if cells is None:
            _, codes = np.unique(np.asarray(batch[TARGET] if strata is None else strata), return_inverse=True)
            chunks = iter_resample_counts(n, codes.reshape(-1), rng=rng)
        else:
            cols = {name: m.extract(cells.batch) for name, m in metrics.items()}
            chunks = cells.iter_draws(n, rng=rng)
        for counts in chunks:
            for name, m in metrics.items():
                parts[name].append(m.resampled(cols[name], counts))
            done += counts.shape[0]
            if progress is not None:
                progress(done, n)
        boots = {name: _concat(p) for name, p in parts.items()}
        jack = {}
        for name in jackknife:
            m = metrics[name]
            if cells is None:
                size = np.asarray(batch[TARGET] if strata is None else strata).shape[0]
                rows = iter_jackknife_counts(size, rng=rng.child("jackknife"))
                jack[name] = _concat([m.resampled(cols[name], c) for c in rows])
            else:
                jack[name] = m.resampled(cols[name], cells.jackknife(rng=rng.child("jackknife")))
        if cells is not None:
            if values is None:
                values = {name: m.compute(m.update(m.init(), batch)) for name, m in metrics.items()}
            for name, m in metrics.items():
                off = _offset(values[name], m.resampled(cols[name], cells.size[None, :]))
                boots[name] = _shift(boots[name], off)
                if name in jack:
                    jack[name] = _shift(jack[name], off)
    return boots, jack


class ProgressLine:
    """A ``progress`` callback writing ``bootstrap: done / total resamples (elapsed, ETA)`` to a stream.

    Silent for the first ``after`` seconds (a short bootstrap prints nothing), then at most
    one line a second; on a terminal the line is rewritten in place.
    """

    def __init__(self, stream, *, after: float = 3.0, clock=time.monotonic):
        self.stream, self.after, self.clock = stream, after, clock
        self.start = clock()
        self.first: tuple[float, int] | None = None
        self.last = -1.0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int) -> None:
        now = self.clock() - self.start
        if self.first is None:  # the rate is measured from the first chunk on: reading the files is not resampling
            self.first = (now, done)
        final = done >= total
        if now < self.after or (now - self.last < 1.0 and not final):
            return
        self.last = now
        t0, d0 = self.first
        rate = (done - d0) / (now - t0) if now > t0 and done > d0 else done / max(now, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        line = f"bootstrap: {done:,} / {total:,} resamples ({now:.0f} s, about {eta:.0f} s left)"
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()
