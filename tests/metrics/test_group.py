"""GroupBy against computing the metric on each group's rows by hand."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fusefn.metrics import AUCROC, Accuracy, GroupBy


def test_groupby_equals_per_group_metric_and_merges():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 90)
    s = rng.random(90)
    sex = rng.choice(["F", "M", "X"], 90)
    g = GroupBy(AUCROC(pred="s", target="y"), by="sex")
    r = g.compute(g.update(g.init(), {"s": s, "y": y, "sex": sex}))
    ref = {k: roc_auc_score(y[sex == k], s[sex == k]) for k in ("F", "M", "X")}
    assert r["groups"] == pytest.approx(ref, abs=1e-12)
    assert r["mean"] == pytest.approx(np.mean(list(ref.values())))
    assert r["std"] == pytest.approx(np.std(list(ref.values())))
    a = g.update(g.init(), {"s": s[:30], "y": y[:30], "sex": sex[:30]})
    b = g.update(g.init(), {"s": s[30:], "y": y[30:], "sex": sex[30:]})
    assert g.compute(g.merge(a, b)) == r


def test_groupby_dict_metric_mean_per_leaf():
    rng = np.random.default_rng(1)
    y = np.tile([0, 1, 2], 20)
    s = rng.dirichlet(np.ones(3), 60)
    fold = np.repeat([0, 1], 30)
    r = GroupBy(AUCROC(pred="s", target="y"), by="fold")
    out = r.compute(r.update(r.init(), {"s": s, "y": y, "fold": fold}))
    assert set(out["mean"]) == {"0", "1", "2", "macro"}
    acc = GroupBy(Accuracy(pred="s", target="y"), by="fold")
    assert acc.compute(acc.update(acc.init(), {"s": s, "y": y, "fold": fold}))["groups"].keys() == {0, 1}
