"""Overlap metrics for segmentations and score maps: Dice and IoU, 2D or 3D.

Per volume the state keeps one small joint histogram ``H[target_label, pred_label]``
(soft: summed probabilities), so every class, every group of labels
(e.g. ``(1, 2, 3)`` = "kidney + tumour + cyst") and both averages (per volume, then
mean; or pooled "micro") come from it. The histogram of a hard label map is one
pass over the voxels.

>>> import numpy as np
>>> t = np.array([[[0, 1, 1, 2]]])  # one volume
>>> p = np.array([[[0, 1, 2, 2]]])
>>> d = Dice(pred="p", target="t", classes=(1, 2, (1, 2)))
>>> d.compute(d.update(d.init(), {"p": p, "t": t}))
{'1': 0.6666666666666666, '2': 0.6666666666666666, '1+2': 1.0, 'mean': 0.7777777777777777}
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError, SampleError
from fusefn.metrics._base import (
    MetricBase,
    check_finite,
    key_field,
    key_name,
    read,
    sample_ids,
    undefined,
    validate_key,
)
from fusefn.metrics.surface import _FIELDS as _SURFACE_FIELDS
from fusefn.metrics.surface import (
    _classes,
    _SurfaceRecord,
    assd,
    box_distances,
    check_classes,
    class_masks,
    hd95,
    nsd,
    surface_distances,
    union_box,
)

__all__ = [
    "CASE_METRICS",
    "Dice",
    "Hausdorff95",
    "IoU",
    "VolumeDifference",
    "case_scores",
    "hausdorff95",
    "joint_histogram",
]


def joint_histogram(target: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """``H[t, p]``: voxels with target label ``t`` and predicted label ``p`` (one volume)."""
    if target.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: {target.shape} vs {pred.shape}")
    if num_labels * num_labels <= 256:
        # one byte per voxel; background-only 8-voxel words are skipped as whole uint64s
        code = target.astype(np.uint8)
        code *= np.uint8(num_labels)
        code += pred.astype(np.uint8, copy=False)
        flat = code.ravel(order="K")
        cut = flat.size // 8 * 8
        words = flat[:cut].view(np.uint64)
        busy = flat[:cut].reshape(-1, 8)[np.flatnonzero(words)].ravel()
        hist = np.bincount(busy, minlength=num_labels * num_labels)
        hist += np.bincount(flat[cut:], minlength=num_labels * num_labels)
        hist[0] = flat.size - hist[1:].sum()
    else:
        code = target.astype(np.int64).ravel(order="K") * num_labels + pred.astype(np.int64).ravel(order="K")
        hist = np.bincount(code, minlength=num_labels * num_labels)
    return hist.reshape(num_labels, num_labels).astype(np.float64)


def _stack(hists: list, n: int) -> np.ndarray:
    return np.stack(hists) if hists else np.zeros((0, n, n))


def _pad(h: np.ndarray, n: int) -> np.ndarray:
    if h.shape[-1] >= n:
        return h
    out = np.zeros((*h.shape[:-2], n, n))
    out[..., : h.shape[-2], : h.shape[-1]] = h
    return out


class _Overlap(MetricBase):
    """Shared by Dice and IoU: per-volume joint histograms; state = (V, L, L) float64."""

    __slots__ = ()

    def init(self) -> np.ndarray:
        n = self.num_labels or 0
        return np.zeros((0, n, n))

    def _volume_hists(self, pred: np.ndarray, target: np.ndarray, pk: str, tk: str, ids) -> np.ndarray:
        if target.dtype.kind not in "iub":
            raise SampleError(f"target must be an integer label map, got {target.dtype}", key=tk)
        if target.ndim == pred.ndim and target.ndim >= 3 and target.shape[1] == 1 and pred.shape[1] != 1:
            target = target[:, 0]  # (N, 1, *spatial) label maps next to (N, C, *spatial) scores
        if pred.dtype.kind in "iub":  # hard label maps
            if pred.shape != target.shape:
                raise SampleError(f"prediction shape {pred.shape} != target shape {target.shape}", key=pk)
            lo = min(int(pred.min(initial=0)), int(target.min(initial=0)))
            if lo < 0:
                raise SampleError("label maps hold a negative label", key=pk if pred.min() < 0 else tk)
            n = self.num_labels or max(int(pred.max(initial=0)), int(target.max(initial=0))) + 1
            return _stack([joint_histogram(t, p, n) for t, p in zip(target, pred)], n)
        check_finite(pred, pk, ids)
        if pred.shape == target.shape:  # a binary probability map
            if (pred.min(initial=0) < 0) or (pred.max(initial=0) > 1):
                raise SampleError(
                    "a float prediction is read as probabilities in [0, 1]; pass integer label maps for hard labels",
                    key=pk,
                )
            probs = np.stack([1 - pred, pred], axis=1)
        elif pred.ndim == target.ndim + 1 and pred.shape[:1] + pred.shape[2:] == target.shape:
            probs = pred
        else:
            raise SampleError(
                f"prediction shape {pred.shape} matches neither the target {target.shape} nor (N, C, *target spatial)",
                key=pk,
            )
        c = probs.shape[1]
        n = max(self.num_labels or 0, c, int(target.max(initial=0)) + 1)
        if not self.soft:
            hard = probs.argmax(axis=1) if c > 2 or pred.shape != target.shape else (pred >= self.threshold)
            return _stack([joint_histogram(t, p, n) for t, p in zip(target, hard.astype(np.int64))], n)
        out = np.zeros((target.shape[0], n, n))
        for vol in range(target.shape[0]):
            flat_t = target[vol].ravel()
            for ch in range(c):
                out[vol, :, ch] = np.bincount(flat_t, weights=probs[vol, ch].ravel(), minlength=n)[:n]
        return out

    def extract(self, batch: Mapping) -> dict[str, np.ndarray]:
        pk, tk = key_name(self.pred), key_name(self.target)
        pred, target = read(batch, self.pred), read(batch, self.target)
        if pred.shape[0] != target.shape[0]:
            raise SampleError(f"{pred.shape[0]} predictions but {target.shape[0]} targets", key=pk)
        ids = sample_ids(batch, pred.shape[0])
        return {"hist": self._volume_hists(pred, target, pk, tk, ids)}

    def accumulate(self, state: np.ndarray, cols: Mapping) -> np.ndarray:
        return self.merge(state, cols["hist"])

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        n = max(a.shape[-1], b.shape[-1])
        return np.concatenate([_pad(a, n), _pad(b, n)])

    def _groups(self, n: int) -> list[tuple[str, tuple]]:
        entries = self.classes if self.classes is not None else tuple(range(1, n))
        out = []
        for i, e in enumerate(entries):
            group = (e,) if isinstance(e, int) else e
            name = self.class_names[i] if self.class_names else "+".join(map(str, group))
            out.append((name, tuple(g for g in group if g < n)))
        if self.class_names and len(self.class_names) != len(entries):
            raise ConfigError(f"class_names has {len(self.class_names)} names for {len(entries)} classes")
        return out

    def _sums(self, hist: np.ndarray) -> dict[str, np.ndarray]:
        """Per group: (…, 3) intersection, predicted, target sums."""
        out = {}
        for name, g in self._groups(hist.shape[-1]):
            g = list(g)
            inter = hist[..., g, :][..., :, g].sum(axis=(-2, -1))
            pred = hist[..., :, g].sum(axis=(-2, -1))
            tgt = hist[..., g, :].sum(axis=(-2, -1))
            out[name] = np.stack([inter, pred, tgt], axis=-1)
        return out

    def _score(self, s: np.ndarray) -> np.ndarray:
        inter, pred, tgt = s[..., 0], s[..., 1], s[..., 2]
        den = pred + tgt if self._kind == "dice" else pred + tgt - inter
        num = 2 * inter if self._kind == "dice" else inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)

    def compute(self, state: np.ndarray) -> dict:
        if state.shape[0] == 0:
            return {"mean": undefined(f"{type(self).__name__}: no samples seen")}
        out: dict = {}
        per_volume = {}
        for name, s in self._sums(state).items():
            if self.average == "micro":
                v = float(self._score(s.sum(axis=0)))
            else:
                vols = self._score(s)
                per_volume[name] = vols.tolist()
                v = float(np.nanmean(vols)) if (~np.isnan(vols)).any() else float("nan")
            if np.isnan(v):
                v = undefined(f"{type(self).__name__} of {name!r} is undefined: empty in target and prediction")
            out[name] = v
        vals = [v for v in out.values() if not np.isnan(v)]
        out["mean"] = float(np.mean(vals)) if vals else float("nan")
        if self.per_volume and per_volume:
            out["volumes"] = per_volume
        return out

    def resampled(self, cols: Mapping, counts: np.ndarray) -> dict:
        w = counts.astype(np.float64)
        out = {}
        for name, s in self._sums(cols["hist"]).items():
            if self.average == "micro":
                out[name] = self._score(np.einsum("bv,vk->bk", w, s))
            else:
                vols = self._score(s)
                ok = ~np.isnan(vols)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[name] = (w @ np.where(ok, vols, 0.0)) / (w @ ok)
        stacked = np.stack(list(out.values()))
        with np.errstate(invalid="ignore"):
            out["mean"] = np.nanmean(np.where(np.isnan(stacked), np.nan, stacked), axis=0)
        return out


_FIELDS_DOC = """
    Args:
        pred: integer label maps (N, *spatial), probability maps (N, C, *spatial), or a
            binary probability map (N, *spatial).
        target: integer label maps (N, *spatial).
        classes: labels to score; an entry may be a tuple of labels scored as one mask
            (default: every label but 0).
        class_names: names of ``classes`` in the result (default "1", "1+2", …).
        average: ``"volume"`` (score per volume, then mean; volumes empty in both are skipped)
            or ``"micro"`` (pooled over volumes).
        soft: use probabilities instead of thresholded / argmax labels.
        threshold: for a binary probability map when not ``soft``.
        num_labels: number of labels when known (fixes the state size).
        per_volume: also return each volume's score under ``"volumes"``.
"""


@record
class _OverlapRecord(_Overlap):
    pred: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    target: str | tuple = attrs.field(converter=key_field, validator=validate_key)
    classes: tuple | None = attrs.field(default=None, converter=_classes, validator=v.optional(check_classes))
    class_names: tuple | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    average: str = attrs.field(default="volume", validator=v.in_(("volume", "micro")))
    soft: bool = False
    threshold: float = 0.5
    num_labels: int | None = None
    per_volume: bool = False


@record
class Dice(_OverlapRecord):
    __doc__ = "Dice coefficient 2|P∩T| / (|P| + |T|) per class or label group.\n" + _FIELDS_DOC
    _kind = "dice"


@record
class IoU(_OverlapRecord):
    __doc__ = "Intersection over union |P∩T| / |P∪T| per class or label group.\n" + _FIELDS_DOC
    _kind = "iou"


def hausdorff95(pred: np.ndarray, target: np.ndarray, spacing=None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the surfaces of two boolean masks (MONAI's definition).

    The larger of the two directed 95th percentiles (surface voxel to nearest surface voxel of the
    other mask), in units of ``spacing``. NaN when both masks are empty, ``inf`` when one is.
    """
    return hd95(surface_distances(pred, target, spacing))


@record
class Hausdorff95(_SurfaceRecord):
    """95th-percentile Hausdorff distance per class or label group, per volume then averaged.

    MONAI's ``HausdorffDistanceMetric(percentile=95)``; state: the per-volume distances, (V, K).
    Volumes where a mask is empty (NaN / ``inf``) are left out of the average (NaN with a
    warning when none remains).

    >>> import numpy as np
    >>> t = np.zeros((1, 8, 8), int); t[0, 2:5, 2:5] = 1
    >>> p = np.zeros((1, 8, 8), int); p[0, 2:5, 3:6] = 1
    >>> h = Hausdorff95(pred="p", target="t", classes=(1,))
    >>> h.compute(h.update(h.init(), {"p": p, "t": t}))
    {'1': 1.0, 'mean': 1.0}
    """

    __doc__ += _SURFACE_FIELDS
    _column = "hd95"

    def _volume(self, p, t, sp):
        return hd95(surface_distances(p, t, sp))


def _voxel_volume(spacing, affine) -> float:
    if affine is not None:
        a = np.asarray(affine, dtype=np.float64)
        n = a.shape[-1] - 1
        return float(abs(np.linalg.det(a[:n, :n])))
    return float(np.prod(spacing)) if spacing is not None else 1.0


@record
class VolumeDifference(_SurfaceRecord):
    """Predicted minus reference volume per class (mm³, or relative to the reference), per volume then averaged.

    The voxel volume is ``|det|`` of the affine's linear part (or the product of ``spacing``).
    ``relative``: ``(V_pred - V_ref) / V_ref``, NaN for a volume with an empty reference.

    >>> import numpy as np
    >>> t = np.zeros((1, 4, 4), int); t[0, :2, :2] = 1
    >>> p = np.zeros((1, 4, 4), int); p[0, :2, :3] = 1
    >>> m = VolumeDifference(pred="p", target="t", classes=(1,), spacing=(2.0, 0.5))
    >>> m.compute(m.update(m.init(), {"p": p, "t": t}))
    {'1': 2.0, 'mean': 2.0}
    """

    __doc__ += _SURFACE_FIELDS
    relative: bool = False
    _column = "volume_diff"

    def _geometry(self, batch: Mapping, n: int) -> list:
        if self.affine is None:
            return [_voxel_volume(self.spacing, None)] * n
        aff = read(batch, self.affine)
        aff = np.broadcast_to(aff, (n, *aff.shape)) if aff.ndim == 2 else aff
        return [_voxel_volume(None, a) for a in aff]

    def _volume(self, p, t, voxel):
        vp, vt = float(p.sum()) * voxel, float(t.sum()) * voxel
        if not self.relative:
            return vp - vt
        return (vp - vt) / vt if vt > 0 else float("nan")


# ---------------------------------------------------------------------------- every metric of one case

CASE_METRICS = ("dice", "iou", "hd95", "assd", "nsd", "volume_pred", "volume_ref", "volume_diff", "volume_diff_rel")
"""What :func:`case_scores` returns per class: overlap, surface distances (mm), volumes (mm³) and their difference."""


def _group_mask(labels: np.ndarray, group: tuple[int, ...], present: np.ndarray) -> np.ndarray:
    """The mask of ``group`` in a label map whose labels present are ``present`` (booleans per label)."""
    here = [x for x in group if x < present.size and present[x]]
    others = np.flatnonzero(present).tolist()
    if 0 not in group and len(here) == len(others) - (1 if present[0] else 0):  # every foreground label
        return labels != 0
    if len(here) == 1:
        return labels == here[0]
    return class_masks(labels, [group])[0]


def case_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    classes,
    *,
    spacing=None,
    voxel_volume: float | None = None,
    tolerance: float = 1.0,
    percentile: float = 95.0,
    workers: int = 1,
) -> dict[str, dict[str, float]]:
    """Every metric of :data:`CASE_METRICS` for each class of one predicted / reference label-map pair.

    Raw definitions (MONAI's for the distances): both masks empty → Dice, IoU, HD95, ASSD, NSD NaN;
    one empty → Dice, IoU, NSD 0 and HD95, ASSD ``inf``; ``volume_diff_rel`` NaN when the reference is empty.
    Only the bounding box of the non-zero voxels is visited per class, each surface once; classes whose
    masks are identical in this case (labels absent from both maps) share one computation.

    Args:
        classes: labels or tuples of labels (merged into one mask), as for :class:`Dice`.
        spacing: mm per voxel axis (default 1). voxel_volume: mm³ per voxel (default the product of ``spacing``).
        tolerance: NSD tolerance τ in mm. percentile: of the Hausdorff distance.
        workers: threads: label groups with different masks are computed side by side, a single one
            searches its surfaces with them (``-1``: every core).

    >>> t = np.zeros((6, 6), int); t[1:4, 1:4] = 1; t[2, 2] = 2
    >>> p = t.copy(); p[4, 1:4] = 1
    >>> r = case_scores(p, t, (1, (1, 2)), spacing=(1.0, 1.0))
    >>> round(r["1+2"]["dice"], 4), r["1+2"]["hd95"], r["1+2"]["volume_diff"]
    (0.8571, 1.0, 3.0)
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
    groups = [(c,) if isinstance(c, int) else tuple(c) for c in _classes(tuple(classes))]
    names = ["+".join(map(str, g)) for g in groups]
    voxel = float(np.prod(spacing)) if voxel_volume is None and spacing is not None else (voxel_volume or 1.0)
    whole = tuple(slice(None) for _ in pred.shape)
    box = whole if any(0 in g for g in groups) else union_box(pred, ref, margin=1)
    if box is None:  # nothing but background in either map
        pc = rc = np.zeros((1,) * pred.ndim, dtype=np.int64)
    else:
        pc, rc = pred[box], ref[box]
    n = max(int(pc.max(initial=0)), int(rc.max(initial=0)), max(max(g) for g in groups)) + 1
    if any(a.dtype.kind != "u" and a.dtype != bool and int(a.min(initial=0)) < 0 for a in (pc, rc)):
        raise ValueError("label maps hold a negative label")
    hist = joint_histogram(rc, pc, n)
    scale = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if scale.shape != (pred.ndim,):
        raise ValueError(f"spacing {tuple(scale)} does not give one value per axis of a {pred.ndim}D label map")
    in_pred, in_ref = hist.sum(axis=0) > 0, hist.sum(axis=1) > 0
    # a group's masks are its labels present in each map: groups with the same present labels share them
    keys = [(tuple(x for x in g if in_pred[x]), tuple(x for x in g if in_ref[x])) for g in groups]
    todo = {k: g for k, g in zip(keys, groups) if k[0] or k[1]}

    def distances(g):
        pm, rm = _group_mask(pc, g, in_pred), _group_mask(rc, g, in_ref)
        return box_distances(pm, rm, scale, workers=1 if len(todo) > 1 else workers)

    if workers != 1 and len(todo) > 1:  # NumPy and the KD-tree searches release the GIL: one thread per group
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(todo) if workers < 1 else min(workers, len(todo))) as pool:
            done = dict(zip(todo, pool.map(distances, todo.values())))
    else:
        done = {k: distances(g) for k, g in todo.items()}
    out = {}
    for name, g, key in zip(names, groups, keys):
        inter = hist[list(g)][:, list(g)].sum()
        vp, vr = hist[:, list(g)].sum(), hist[list(g), :].sum()
        dist = done.get(key, (np.zeros(0), np.zeros(0)))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = {
                "dice": float(2 * inter / (vp + vr)) if vp + vr else float("nan"),
                "iou": float(inter / (vp + vr - inter)) if vp + vr else float("nan"),
                "hd95": hd95(dist, percentile),
                "assd": assd(dist),
                "nsd": nsd(dist, tolerance),
                "volume_pred": float(vp) * voxel,
                "volume_ref": float(vr) * voxel,
                "volume_diff": float(vp - vr) * voxel,
                "volume_diff_rel": float((vp - vr) / vr) if vr else float("nan"),
            }
    return out
