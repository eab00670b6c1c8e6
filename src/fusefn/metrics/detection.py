"""Bounding-box detection: IoU matching, precision / recall at an IoU threshold, average precision.

Boxes are ``(x1, y1, x2, y2)``. Per image, detections are matched greedily in
descending score to the unmatched target box of highest IoU (≥ ``iou_threshold``).
The state keeps each detection's score and whether it matched, plus the number of
target boxes.

>>> import numpy as np
>>> batch = {"boxes": [np.array([[0, 0, 10, 10], [20, 20, 30, 30]])], "scores": [np.array([0.9, 0.4])],
...          "gt": [np.array([[1, 1, 10, 10]])]}
>>> m = BoxDetection(pred="boxes", scores="scores", target="gt")
>>> r = m.compute(m.update(m.init(), batch))
>>> r["precision"], r["recall"], r["average_precision"]
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError, SampleError
from fusefn.metrics._base import MetricBase, to_numpy, undefined

__all__ = ["BoxDetection", "box_iou"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (M, 4) and ``b`` (K, 4): an (M, K) array."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, thr: float) -> np.ndarray:
    """1 for each detection matched to a target box, in the order of ``boxes``."""
    tp = np.zeros(len(boxes), dtype=np.int64)
    if len(boxes) == 0 or len(gt) == 0:
        return tp
    iou = box_iou(boxes, gt)
    free = np.ones(len(gt), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(free, iou[i], -1.0)
        j = int(cand.argmax())
        if cand[j] >= thr:
            tp[i], free[j] = 1, False
    return tp


@record
class BoxDetection(MetricBase):
    """Detection precision / recall at ``score_threshold`` and average precision at ``iou_threshold``.

    Args:
        pred: key of a per-image sequence of (M, 4) boxes.
        scores: key of a per-image sequence of (M,) confidences (None: all 1).
        target: key of a per-image sequence of (K, 4) target boxes.
    """

    pred: str = attrs.field(validator=v.key)
    target: str = attrs.field(validator=v.key)
    scores: str | None = attrs.field(default=None, validator=v.optional(v.key))
    iou_threshold: float = attrs.field(default=0.5, validator=v.and_(v.gt(0), v.le(1)))
    score_threshold: float = 0.5

    def init(self) -> dict:
        return {"score": np.zeros(0), "tp": np.zeros(0, dtype=np.int64), "num_targets": np.zeros((), np.int64)}

    def extract(self, batch: Mapping) -> dict:
        boxes = nd.get(batch, self.pred)
        gts = nd.get(batch, self.target)
        confs = nd.get(batch, self.scores) if self.scores else [None] * len(boxes)
        if not (len(boxes) == len(gts) == len(confs)):
            raise SampleError(
                f"{len(boxes)} prediction images, {len(gts)} target images, {len(confs)} score lists", key=self.pred
            )
        all_s, all_tp, n_gt = [], [], 0
        for i, (b, g, s) in enumerate(zip(boxes, gts, confs)):
            b = to_numpy(b, self.pred).reshape(-1, 4).astype(np.float64)
            g = to_numpy(g, self.target).reshape(-1, 4).astype(np.float64)
            s = np.ones(len(b)) if s is None else to_numpy(s, self.scores).reshape(-1).astype(np.float64)
            if len(s) != len(b):
                raise SampleError(f"image {i}: {len(b)} boxes but {len(s)} scores", key=self.scores)
            if not (np.isfinite(b).all() and np.isfinite(s).all() and np.isfinite(g).all()):
                raise SampleError(f"image {i}: NaN or infinite box coordinates or scores", key=self.pred)
            all_s.append(s)
            all_tp.append(_match(b, s, g, self.iou_threshold))
            n_gt += len(g)
        return {
            "score": np.concatenate(all_s) if all_s else np.zeros(0),
            "tp": np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=np.int64),
            "num_targets": np.asarray(n_gt, dtype=np.int64),
        }

    def accumulate(self, state: Mapping, cols: Mapping) -> dict:
        return self.merge(state, cols)

    def merge(self, a: Mapping, b: Mapping) -> dict:
        return {
            "score": np.concatenate([a["score"], b["score"]]),
            "tp": np.concatenate([a["tp"], b["tp"]]),
            "num_targets": a["num_targets"] + b["num_targets"],
        }

    def compute(self, state: Mapping) -> dict:
        n_gt, tp, score = int(state["num_targets"]), state["tp"], state["score"]
        keep = score >= self.score_threshold
        n_det = int(keep.sum())
        precision = float(tp[keep].sum() / n_det) if n_det else undefined("detection precision: no detections")
        if n_gt == 0:
            recall = ap = undefined("detection recall / AP: no target boxes")
        else:
            recall = float(tp[keep].sum() / n_gt)
            order = np.argsort(-score, kind="stable")
            ctp = np.cumsum(tp[order])
            prec = ctp / np.arange(1, len(order) + 1)
            rec = ctp / n_gt
            # all-point interpolation: precision envelope, summed over recall steps
            env = np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec
            steps = np.diff(np.concatenate([[0.0], rec]))
            ap = float((steps * env).sum())
        return {
            "precision": precision,
            "recall": recall,
            "average_precision": ap,
            "num_detections": n_det,
            "num_targets": n_gt,
        }

    def resampled(self, cols, counts):
        raise ConfigError("BoxDetection cannot be bootstrapped per detection; bootstrap images with your own loop")
