"""Classification metrics against scikit-learn, merge laws, bad input."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from fusefn.core import from_config, to_config
from fusefn.errors import ConfigError, SampleError
from fusefn.metrics import (
    AUCROC,
    MCC,
    Accuracy,
    AveragePrecision,
    BalancedAccuracy,
    ConfusionMatrix,
    PartialAUC,
    ROCCurve,
    UndefinedMetricWarning,
)
from fusefn.metrics.classification import decide

CASES = 500
TOL = 1e-12


def run(metric, batch):
    return metric.compute(metric.update(metric.init(), batch))


def binary_case(rng):
    n = int(rng.integers(2, 80))
    y = rng.integers(0, 2, n)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    # coarse scores make ties common
    levels = int(rng.choice([3, 10, 1000]))
    s = rng.integers(0, levels, n) / levels
    return s, y


def multiclass_case(rng):
    c = int(rng.integers(3, 7))
    n = int(rng.integers(c, 120))
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    rng.shuffle(y)
    levels = int(rng.choice([4, 1000]))
    s = rng.integers(0, levels, (n, c)) / levels + 1e-3
    s = s / s.sum(axis=1, keepdims=True)
    return s, y


def test_binary_ranking_and_decisions_match_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(CASES):
        s, y = binary_case(rng)
        b = {"s": s, "y": y}
        assert abs(run(AUCROC(pred="s", target="y"), b) - skm.roc_auc_score(y, s)) < TOL
        assert abs(run(AveragePrecision(pred="s", target="y"), b) - skm.average_precision_score(y, s)) < TOL
        m = float(rng.choice([0.1, 0.3, 0.5, 0.99]))
        assert abs(run(PartialAUC(pred="s", target="y", max_fpr=m), b) - skm.roc_auc_score(y, s, max_fpr=m)) < TOL
        d = (s >= 0.5).astype(int)
        assert abs(run(Accuracy(pred="s", target="y"), b) - skm.accuracy_score(y, d)) < TOL
        assert abs(run(BalancedAccuracy(pred="s", target="y"), b) - skm.balanced_accuracy_score(y, d)) < TOL
        cm = run(ConfusionMatrix(pred="s", target="y"), b)
        assert cm["matrix"] == skm.confusion_matrix(y, d, labels=[0, 1]).tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = run(MCC(pred="s", target="y"), b)
        ref = skm.matthews_corrcoef(y, d)
        assert (np.isnan(mine) and ref == 0) or abs(mine - ref) < TOL


def test_binary_confusion_stats_match_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(CASES):
        s, y = binary_case(rng)
        thr = float(rng.uniform(0.1, 0.9))
        d = (s >= thr).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = run(ConfusionMatrix(pred="s", target="y", threshold=thr), {"s": s, "y": y})["classes"]["1"]
            prec, rec, f1, _ = skm.precision_recall_fscore_support(y, d, labels=[1], zero_division=np.nan)
        assert np.allclose(
            [out["precision"], out["sensitivity"], out["f1"]], [prec[0], rec[0], f1[0]], atol=TOL, equal_nan=True
        )
        spec = skm.recall_score(1 - y, 1 - d, zero_division=np.nan)
        assert np.allclose(out["specificity"], spec, atol=TOL, equal_nan=True)


def test_multiclass_matches_sklearn_per_class_and_macro():
    rng = np.random.default_rng(2)
    for _ in range(CASES):
        s, y = multiclass_case(rng)
        c = s.shape[1]
        b = {"s": s, "y": y}
        auc = run(AUCROC(pred="s", target="y"), b)
        ap = run(AveragePrecision(pred="s", target="y"), b)
        for k in range(c):
            assert abs(auc[str(k)] - skm.roc_auc_score(y == k, s[:, k])) < TOL
            assert abs(ap[str(k)] - skm.average_precision_score(y == k, s[:, k])) < TOL
        assert abs(auc["macro"] - skm.roc_auc_score(y, s, multi_class="ovr", average="macro")) < TOL
        d = s.argmax(axis=1)
        assert abs(run(Accuracy(pred="s", target="y"), b) - skm.accuracy_score(y, d)) < TOL
        assert abs(run(BalancedAccuracy(pred="s", target="y"), b) - skm.balanced_accuracy_score(y, d)) < TOL
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = run(MCC(pred="s", target="y"), b)
        ref = skm.matthews_corrcoef(y, d)
        assert (np.isnan(mine) and ref == 0) or abs(mine - ref) < TOL
        cm = run(ConfusionMatrix(pred="s", target="y"), b)["matrix"]
        assert cm == skm.confusion_matrix(y, d, labels=list(range(c))).tolist()


def test_class_absent_in_a_fold_gives_nan_with_reason_and_macro_over_defined():
    rng = np.random.default_rng(3)
    for _ in range(CASES):
        s, y = multiclass_case(rng)
        absent = int(rng.integers(0, s.shape[1]))
        keep = y != absent
        s, y = s[keep], y[keep]
        if len(np.unique(y)) < 2:
            continue
        with pytest.warns(UndefinedMetricWarning, match=f"class '{absent}'.*no positive"):
            auc = run(AUCROC(pred="s", target="y"), {"s": s, "y": y})
        assert np.isnan(auc[str(absent)])
        defined = [skm.roc_auc_score(y == k, s[:, k]) for k in range(s.shape[1]) if k != absent]
        assert abs(auc["macro"] - np.mean(defined)) < TOL
        d = s.argmax(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns about y_pred classes missing from y_true
            ref = skm.balanced_accuracy_score(y, d)
        assert abs(run(BalancedAccuracy(pred="s", target="y", num_classes=s.shape[1]), {"s": s, "y": y}) - ref) < TOL


def test_binary_column_and_two_column_matrix_agree_and_tensors_accepted():
    rng = np.random.default_rng(4)
    s, y = rng.random(50), rng.integers(0, 2, 50)
    two = np.stack([1 - s, s], axis=1)
    m = AUCROC(pred="s", target="y")
    assert run(m, {"s": s, "y": y}) == run(m, {"s": two, "y": y})
    assert run(m, {"s": torch.tensor(s, dtype=torch.float64), "y": torch.tensor(y)}) == run(m, {"s": s, "y": y})
    assert run(Accuracy(pred="s", target="y"), {"s": two, "y": y}) == run(
        Accuracy(pred="s", target="y"), {"s": s, "y": y}
    )


def test_partial_auc_tpr_floor_is_area_above_floor():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1); area above tpr .5 = .5 * .5 (from fpr .5 to 1)
    assert run(PartialAUC(pred="s", target="y", min_tpr=0.5), {"s": s, "y": y}) == pytest.approx(0.25)
    perfect = run(PartialAUC(pred="s", target="y", min_tpr=0.8), {"s": y.astype(float), "y": y})
    assert perfect == pytest.approx(0.2)


def test_roc_curve_matches_sklearn_points():
    rng = np.random.default_rng(5)
    for _ in range(50):
        s, y = binary_case(rng)
        c = run(ROCCurve(pred="s", target="y"), {"s": s, "y": y})
        fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(c["fpr"], fpr, atol=TOL)
        np.testing.assert_allclose(c["tpr"], tpr, atol=TOL)
        np.testing.assert_array_equal(c["thresholds"][1:], thr[1:])


def test_decide_operating_points():
    s = np.array([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]])
    assert decide(s).tolist() == [1, 0, 2]
    assert decide(s, ((2, 0.3), (0, 0.45))).tolist() == [1, 2, 2]
    assert decide(np.array([0.2, 0.6]), 0.7).tolist() == [0, 0]
    assert decide(np.array([0, 2, 1])).tolist() == [0, 2, 1]
    with pytest.raises(ConfigError, match="class 5"):
        decide(s, ((5, 0.1),))


METRICS = [
    AUCROC(pred="s", target="y"),
    AveragePrecision(pred="s", target="y"),
    PartialAUC(pred="s", target="y", max_fpr=0.4),
    Accuracy(pred="s", target="y"),
    BalancedAccuracy(pred="s", target="y"),
    MCC(pred="s", target="y"),
    ConfusionMatrix(pred="s", target="y"),
]


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1)), min_size=4, max_size=40),
    cut=st.integers(0, 40),
    which=st.integers(0, len(METRICS) - 1),
)
def test_merge_of_two_halves_equals_update_on_whole(data, cut, which):
    s = np.array([d[0] / 5 for d in data])
    y = np.array([d[1] for d in data])
    y[0], y[1] = 0, 1
    cut = min(cut, len(s))
    m = METRICS[which]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = m.compute(m.update(m.init(), {"s": s, "y": y}))
        a = m.update(m.init(), {"s": s[:cut], "y": y[:cut]})
        b = m.update(m.init(), {"s": s[cut:], "y": y[cut:]})
        merged = m.compute(m.merge(a, b))
    np.testing.assert_equal(merged, whole)


def test_bad_inputs_name_keys_and_ids():
    ids = ["a", "b", "c", "d"]
    y = np.array([0, 1, 0, 1])
    m = AUCROC(pred="s", target="y")
    with pytest.raises(SampleError, match=r"'b'.*key 's'|key 's'.*'b'"):
        m.update(m.init(), {"s": np.array([0.1, np.nan, 0.3, 0.4]), "y": y, "data": {"sample_id": ids}})
    with pytest.raises(SampleError, match="outside the class set"):
        m.update(m.init(), {"s": np.array([0.1, 0.2, 0.3, 0.4]), "y": np.array([0, 1, 2, 1])})
    with pytest.raises(SampleError, match="3 predictions"):
        m.update(m.init(), {"s": np.array([0.1, 0.2, 0.3]), "y": y})
    with pytest.raises(SampleError, match="whole numbers"):
        m.update(m.init(), {"s": np.array([0.1, 0.2, 0.3, 0.4]), "y": np.array([0, 0.5, 0, 1])})
    with pytest.raises(SampleError, match="infinite"):
        Accuracy(pred="s", target="y").update(np.zeros((0, 0), int), {"s": np.array([0.1, np.inf, 0, 0]), "y": y})
    with pytest.warns(UndefinedMetricWarning, match="no positive samples"):
        assert np.isnan(run(m, {"s": np.array([0.1, 0.2]), "y": np.array([0, 0])}))
    with pytest.raises(ConfigError, match="exactly one"):
        PartialAUC(pred="s", target="y")
    with pytest.raises(ConfigError, match="max_fpr"):
        PartialAUC(pred="s", target="y", max_fpr=1.5)


def test_records_round_trip_through_config():
    for m in [*METRICS, AUCROC(pred=("a", "b"), target="y", class_names=("x", "y"))]:
        assert from_config(to_config(m)) == m


def test_stacked_score_columns_equal_matrix():
    rng = np.random.default_rng(6)
    s, y = multiclass_case(rng)
    cols = {f"c{k}": s[:, k] for k in range(s.shape[1])}
    m1 = AUCROC(pred=tuple(cols), target="y")
    m2 = AUCROC(pred="s", target="y")
    r1, r2 = run(m1, {**cols, "y": y}), run(m2, {"s": s, "y": y})
    assert list(r1.values()) == list(r2.values())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=40),
)
def test_auc_by_sorting_equals_the_tie_block_auc_and_scikit_learn(pairs):
    from fusefn.metrics import _curves

    score = np.array([s / 4 for s, _ in pairs], dtype=np.float64)  # few values: many ties
    pos = np.array([p for _, p in pairs])
    order, starts, _ = _curves.tie_blocks(score)
    blocks = _curves.auc(*_curves.block_counts(pos, order, starts))[0]
    fast = _curves.auc_sorted(score, pos)
    if pos.all() or not pos.any():
        assert np.isnan(fast) and np.isnan(blocks)
        return
    assert fast == pytest.approx(blocks, abs=1e-12)
    assert fast == pytest.approx(skm.roc_auc_score(pos, score), abs=1e-12)
