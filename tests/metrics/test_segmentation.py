"""Dice / IoU: against direct mask arithmetic, soft maps, micro average, merge, bad input."""

import warnings

import numpy as np
import pytest

from fusefn.core import from_config, to_config
from fusefn.errors import SampleError
from fusefn.metrics import Dice, IoU, UndefinedMetricWarning
from fusefn.metrics.segmentation import joint_histogram


def run(metric, batch):
    return metric.compute(metric.update(metric.init(), batch))


def dice_ref(p, t):
    den = p.sum() + t.sum()
    return np.nan if den == 0 else 2 * (p & t).sum() / den


def test_joint_histogram_equals_bincount_for_any_layout():
    rng = np.random.default_rng(0)
    for shape in [(7,), (5, 9), (3, 4, 13)]:
        t = rng.integers(0, 4, shape)
        p = rng.integers(0, 4, shape)
        ref = np.bincount((t * 4 + p).ravel(), minlength=16).reshape(4, 4)
        np.testing.assert_array_equal(joint_histogram(t, p, 4), ref)
        np.testing.assert_array_equal(joint_histogram(np.asfortranarray(t), np.asfortranarray(p), 4), ref)
        np.testing.assert_array_equal(joint_histogram(t, p, 20)[:4, :4], ref)  # the wide (non-byte) path


@pytest.mark.parametrize("dims", [2, 3])
def test_dice_and_iou_per_volume_and_micro_match_mask_arithmetic(dims):
    rng = np.random.default_rng(dims)
    shape = (5, 6, 7) if dims == 2 else (5, 4, 6, 7)
    t = rng.integers(0, 4, shape)
    p = np.where(rng.random(shape) < 0.7, t, rng.integers(0, 4, shape))
    groups = {"1+2+3": (1, 2, 3), "2+3": (2, 3), "2": (2,)}
    d = run(Dice(pred="p", target="t", classes=tuple(groups.values())), {"p": p, "t": t})
    i = run(IoU(pred="p", target="t", classes=tuple(groups.values()), average="micro"), {"p": p, "t": t})
    for name, g in groups.items():
        pm, tm = np.isin(p, g), np.isin(t, g)
        assert d[name] == pytest.approx(np.nanmean([dice_ref(a, b) for a, b in zip(pm, tm)]), abs=1e-12)
        assert i[name] == pytest.approx((pm & tm).sum() / (pm | tm).sum(), abs=1e-12)


def test_default_classes_are_foreground_labels_and_mean():
    t = np.array([[0, 1, 1, 2]])
    r = run(Dice(pred="p", target="t"), {"p": t.copy(), "t": t})
    assert r == {"1": 1.0, "2": 1.0, "mean": 1.0}


def test_soft_and_probability_maps():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 3, (2, 8, 8))
    logits = rng.normal(size=(2, 3, 8, 8))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    soft = run(Dice(pred="p", target="t", soft=True, classes=(1, 2)), {"p": probs, "t": t})
    for c in (1, 2):
        ref = np.mean(
            [2 * (probs[v, c] * (t[v] == c)).sum() / (probs[v, c].sum() + (t[v] == c).sum()) for v in range(2)]
        )
        assert soft[str(c)] == pytest.approx(ref, abs=1e-12)
    hard = run(Dice(pred="p", target="t", classes=(1, 2)), {"p": probs, "t": t})
    assert run(Dice(pred="p", target="t", classes=(1, 2)), {"p": probs, "t": t[:, None]}) == hard
    ref_hard = run(Dice(pred="p", target="t", classes=(1, 2)), {"p": probs.argmax(1), "t": t})
    assert hard == ref_hard
    binary = rng.random((2, 8, 8))
    tb = (t > 0).astype(int)
    r = run(Dice(pred="p", target="t", classes=(1,), threshold=0.3), {"p": binary, "t": tb})
    assert r["1"] == pytest.approx(np.mean([dice_ref(binary[v] >= 0.3, tb[v] == 1) for v in range(2)]))


def test_merge_of_halves_equals_whole_and_config_round_trip():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 3, (6, 9, 9))
    p = rng.integers(0, 4, (6, 9, 9))
    for avg in ("volume", "micro"):
        m = Dice(pred="p", target="t", average=avg, per_volume=avg == "volume")
        a = m.update(m.init(), {"p": p[:2], "t": t[:2]})
        b = m.update(m.init(), {"p": p[2:], "t": t[2:]})
        assert m.compute(m.merge(a, b)) == run(m, {"p": p, "t": t})
        assert from_config(to_config(m)) == m


def test_empty_class_and_bad_input():
    t = np.zeros((1, 4, 4), int)
    with pytest.warns(UndefinedMetricWarning, match="empty"):
        r = run(Dice(pred="p", target="t", classes=(1,)), {"p": t.copy(), "t": t})
    assert np.isnan(r["1"])
    with pytest.raises(SampleError, match="shape"):
        Dice(pred="p", target="t").update(Dice(pred="p", target="t").init(), {"p": t[:, :2], "t": t})
    with pytest.raises(SampleError, match="NaN"):
        Dice(pred="p", target="t").update(np.zeros((0, 0, 0)), {"p": np.full((1, 4, 4), np.nan), "t": t})
    with pytest.raises(SampleError, match="probabilities"):
        Dice(pred="p", target="t").update(np.zeros((0, 0, 0)), {"p": np.full((1, 4, 4), 2.0), "t": t})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(Dice(pred="p", target="t", classes=(0,)), {"p": t.copy(), "t": t})


def test_hausdorff95_matches_brute_force_surface_distances():
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    from fusefn.metrics import Hausdorff95

    rng = np.random.default_rng(4)
    t = np.zeros((2, 12, 12, 12), int)
    p = np.zeros_like(t)
    t[:, 3:9, 3:9, 2:10] = 1
    p[0, 4:10, 3:8, 2:9] = 1
    p[1] = ndimage.binary_dilation(t[1] == 1, iterations=1) & (rng.random(t[1].shape) < 0.9)
    spacing = (1.0, 0.5, 2.0)
    h = Hausdorff95(pred="p", target="t", classes=(1,), spacing=spacing)
    r = h.compute(h.update(h.init(), {"p": p, "t": t}))

    def surf(m):
        m = m.astype(bool)
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0)) * np.array(spacing)

    ref = []
    for v in range(2):
        d = cdist(surf(p[v]), surf(t[v]))
        ref.append(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))
    assert r["1"] == pytest.approx(np.mean(ref), rel=1e-6)  # the percentile in float32, as MONAI takes it
