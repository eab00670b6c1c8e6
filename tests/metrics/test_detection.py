"""Box IoU, matching, precision / recall / AP."""

import numpy as np
import pytest

from fusefn.metrics import BoxDetection
from fusefn.metrics.detection import box_iou


def test_box_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 0, 1]])


def test_matching_precision_recall_ap():
    batch = {
        "boxes": [np.array([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]]), np.zeros((0, 4))],
        "scores": [np.array([0.9, 0.8, 0.7]), np.zeros(0)],
        "gt": [np.array([[0, 0, 10, 10]]), np.array([[5, 5, 9, 9]])],
    }
    m = BoxDetection(pred="boxes", scores="scores", target="gt")
    r = m.compute(m.update(m.init(), batch))
    # one true positive (the duplicate does not match twice), 2 targets
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 2)
    assert r["average_precision"] == pytest.approx(0.5)
    half = m.merge(
        m.update(m.init(), {k: v[:1] for k, v in batch.items()}),
        m.update(m.init(), {k: v[1:] for k, v in batch.items()}),
    )
    assert m.compute(half) == r
