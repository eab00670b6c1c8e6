"""Every public metric is a fusefn.protocols.Reducer and obeys its merge law; wrappers need the Metric protocol."""

import inspect
import warnings

import numpy as np
import pytest

from fusefn import Rng, metrics
from fusefn.errors import ConfigError
from fusefn.protocols import Reducer

# each public metric class built with the fewest arguments it accepts
MINIMAL = {
    "MAE": lambda: metrics.MAE(pred="s", target="s2"),
    "MSE": lambda: metrics.MSE(pred="s", target="s2"),
    "RMSE": lambda: metrics.RMSE(pred="s", target="s2"),
    "R2": lambda: metrics.R2(pred="s", target="s2"),
    "Pearson": lambda: metrics.Pearson(pred="s", target="s2"),
    "Spearman": lambda: metrics.Spearman(pred="s", target="s2"),
    "MultiLabelAUC": lambda: metrics.MultiLabelAUC(pred=("s", "s2"), target=("y", "y")),
    "MultiLabelAveragePrecision": lambda: metrics.MultiLabelAveragePrecision(pred=("s", "s2"), target=("y", "y")),
    "MultiLabelSensitivity": lambda: metrics.MultiLabelSensitivity(pred=("s", "s2"), target=("y", "y")),
    "MultiLabelSpecificity": lambda: metrics.MultiLabelSpecificity(pred=("s", "s2"), target=("y", "y")),
    "HarrellC": lambda: metrics.HarrellC(pred="s2", time="s", event="y"),
    "UnoC": lambda: metrics.UnoC(pred="s2", time="s", event="y"),
    "CumulativeDynamicAUC": lambda: metrics.CumulativeDynamicAUC(pred="s2", time="s", event="y", times=(0.5,)),
    "IntegratedBrierScore": lambda: metrics.IntegratedBrierScore(
        pred=("s2", "s2"), time="s", event="y", times=(0.4, 0.6)
    ),
    "KaplanMeier": lambda: metrics.KaplanMeier(time="s", event="y", times=(0.5,)),
    "LogRank": lambda: metrics.LogRank(group="g", time="s", event="y"),
    "YoudenJ": lambda: metrics.YoudenJ(pred="s", target="y"),
    "SensitivityAtSpecificity": lambda: metrics.SensitivityAtSpecificity(pred="s", target="y", specificity=0.8),
    "SpecificityAtSensitivity": lambda: metrics.SpecificityAtSensitivity(pred="s", target="y", sensitivity=0.8),
    "ASSD": lambda: metrics.ASSD(pred="lab", target="t", classes=(1,)),
    "SurfaceDice": lambda: metrics.SurfaceDice(pred="lab", target="t", classes=(1,)),
    "VolumeDifference": lambda: metrics.VolumeDifference(pred="lab", target="t", classes=(1,)),
    "AUCROC": lambda: metrics.AUCROC(pred="s", target="y"),
    "AveragePrecision": lambda: metrics.AveragePrecision(pred="s", target="y"),
    "PartialAUC": lambda: metrics.PartialAUC(pred="s", target="y", max_fpr=0.5),
    "ROCCurve": lambda: metrics.ROCCurve(pred="s", target="y"),
    "Accuracy": lambda: metrics.Accuracy(pred="s", target="y"),
    "BalancedAccuracy": lambda: metrics.BalancedAccuracy(pred="s", target="y"),
    "MCC": lambda: metrics.MCC(pred="s", target="y"),
    "ConfusionMatrix": lambda: metrics.ConfusionMatrix(pred="s", target="y"),
    "ECE": lambda: metrics.ECE(pred="s", target="y"),
    "DeLong": lambda: metrics.DeLong(pred1="s", pred2="s2", target="y"),
    "McNemar": lambda: metrics.McNemar(pred1="s", pred2="s2", target="y"),
    "Dice": lambda: metrics.Dice(pred="lab", target="t"),
    "IoU": lambda: metrics.IoU(pred="lab", target="t"),
    "Hausdorff95": lambda: metrics.Hausdorff95(pred="lab", target="t", classes=(1,)),
    "BoxDetection": lambda: metrics.BoxDetection(pred="boxes", target="gt"),
    "Bootstrap": lambda: metrics.Bootstrap(metrics.AUCROC(pred="s", target="y"), n=20, rng=Rng(3)),
    "GroupBy": lambda: metrics.GroupBy(metrics.Accuracy(pred="s", target="y"), by="g"),
}


def _public_metric_classes() -> set[str]:
    out = set()
    for name in metrics.__all__:
        obj = getattr(metrics, name)
        if inspect.isclass(obj) and not issubclass(obj, Warning) and obj is not metrics.Metric:
            out.add(name)
    return out


def _batch(seed: int, n: int = 12) -> dict:
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    t = rng.integers(0, 3, (n, 6, 6))
    size = np.array([0, 0, 5, 5])
    boxes = [rng.integers(0, 20, (k, 2)).repeat(2, axis=1) + size for k in rng.integers(0, 3, n)]
    return {
        "s": (rng.random(n) + 0.3 * y).clip(0, 1).round(2),
        "s2": rng.random(n).round(2),
        "y": y,
        "g": rng.integers(0, 3, n),
        "lab": np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, 3, t.shape)),
        "t": t,
        "boxes": boxes,
        "gt": [b[:1] + 1 for b in boxes],
    }


def _close(x, y):
    if isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            _close(x[k], y[k])
    elif isinstance(x, (list, np.ndarray)) and np.asarray(x, dtype=object).dtype == object:
        for a, b in zip(x, y, strict=True):
            _close(a, b)
    else:
        np.testing.assert_allclose(np.asarray(x, dtype=float), np.asarray(y, dtype=float), rtol=1e-12, atol=1e-15)


def test_the_table_lists_every_public_metric_class():
    assert set(MINIMAL) == _public_metric_classes()


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_every_metric_is_a_reducer_and_obeys_the_merge_law(name):
    m = MINIMAL[name]()
    assert isinstance(m, Reducer)
    assert isinstance(m, metrics.Metric)
    data = _batch(seed=len(name))
    cut = 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = m.compute(m.update(m.init(), data))
        a = m.update(m.init(), {k: v[:cut] for k, v in data.items()})
        b = m.update(m.init(), {k: v[cut:] for k, v in data.items()})
        _close(m.compute(m.merge(a, b)), whole)


def test_wrappers_need_a_metric():
    class Halfway:  # a Reducer without the per-sample columns a wrapper resamples or splits
        def init(self):
            return 0

        def update(self, state, batch):
            return state

        def merge(self, a, b):
            return a + b

        def compute(self, state):
            return state

    assert isinstance(Halfway(), Reducer) and not isinstance(Halfway(), metrics.Metric)
    with pytest.raises(ConfigError, match=r"Bootstrap\.metric"):
        metrics.Bootstrap(Halfway())
    with pytest.raises(ConfigError, match=r"GroupBy\.metric"):
        metrics.GroupBy(Halfway(), by="g")
