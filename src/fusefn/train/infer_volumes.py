"""Volume mode of :func:`~fusefn.train.infer`: sliding windows per case, post-processing, one NIfTI mask per case.

A case (one sample dict of a map-style dataset, never collated) goes through
:func:`~fusefn.train.sliding_window.sliding_window` with the model as predictor (an ensemble's
members averaged window by window, on what ``scores_key`` holds), streamed to a label map
(``output="argmax"``), which is put at ``label_key`` for ``postprocess`` (e.g. a chain of
:mod:`fusefn.data.ops.components` ops). The label map is kept for the ``.h5`` sidecar; with a
``nifti_dir``, it is also mapped back onto the grid the volume was read on
(:func:`fusefn.affine.to_original_grid`, nearest neighbour, from :data:`~fusefn.keys.AFFINE`,
:data:`~fusefn.keys.ORIGINAL_AFFINE` and :data:`~fusefn.keys.ORIGINAL_SHAPE`) and written with
the original affine (:func:`fusefn.data.write.write_nifti`, atomic per file) as
``<safe_name(sample_id)>.nii.gz``. Without the original keys, the mask is written on the grid of
:data:`~fusefn.keys.AFFINE`; without any affine the case fails. A failing case (its loading, its
shape, its post-processing, its file) is recorded with its id and the others finish.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Callable, Sequence

import attrs
import numpy as np
import torch

from fusefn import keys, nd
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.core import record
from fusefn.data.visualize import safe_name
from fusefn.errors import ConfigError, FusefnError
from fusefn.train.batches import epoch_batches, is_map_dataset
from fusefn.train.infer import _AT, _Tolerant, _tolerant_collate
from fusefn.train.loading import load_model
from fusefn.train.sliding_window import sliding_window
from fusefn.train.step import make_eval_step

__all__ = ["SlidingWindowSettings", "LABELS"]

_log = logging.getLogger("fusefn.train")

# keys.labels() once it is defined there; the same string until then
LABELS = keys.labels()
"""Where volume inference puts a case's label map (``model.head_0.labels``) for post-processing and the sidecar."""

MASK_FILE = "mask_file"
"""The column of the written NIfTI file of each case."""


def _ints(value):
    return (int(value),) if isinstance(value, (int, np.integer)) else tuple(int(x) for x in value)


def _floats(value):
    return float(value) if isinstance(value, (int, float)) else tuple(float(x) for x in value)


def _flips(value):
    return tuple((f,) if isinstance(f, int) else tuple(f) for f in value)


@record
class SlidingWindowSettings:
    """How :func:`~fusefn.train.infer` runs a volume: the window layout and the keys it reads and writes.

    Fields as in :func:`~fusefn.train.sliding_window.sliding_window`, plus ``image_key`` (the volume,
    ``C×D×H×W``, fed to the model's input under that key), ``scores_key`` (the model output that is
    blended; logits by default) and ``label_key`` (where the label map goes).

    >>> SlidingWindowSettings(roi=96).roi
    (96,)
    >>> SlidingWindowSettings(roi=(64, 64, 32), overlap=0.5, tta_flips=[0, (1, 2)]).tta_flips
    ((0,), (1, 2))
    """

    roi: tuple = attrs.field(converter=_ints, validator=v.and_(v.min_len(1), v.deep_iterable(v.positive_int)))
    overlap: float | tuple = attrs.field(default=0.25, converter=_floats)
    blend: str = attrs.field(default="gaussian", validator=v.in_(("gaussian", "constant")))
    sigma_scale: float | tuple = attrs.field(default=0.125, converter=_floats)
    batch_size: int = attrs.field(default=4, validator=v.positive_int)
    pad_mode: str | None = attrs.field(
        default="constant", validator=v.optional(v.in_(("constant", "reflect", "replicate", "circular")))
    )
    tta_flips: tuple = attrs.field(default=(), converter=_flips)
    image_key: str = attrs.field(default=keys.IMAGE, validator=v.key)
    scores_key: str = attrs.field(default=keys.logits(), validator=v.key)
    label_key: str = attrs.field(default=LABELS, validator=v.key)

    def window_kwargs(self, spatial: int) -> dict:
        """Keyword arguments of :func:`sliding_window` for a volume of ``spatial`` axes (one roi value repeats)."""
        roi = self.roi * spatial if len(self.roi) == 1 else self.roi
        return dict(
            roi=roi,
            overlap=self.overlap,
            blend=self.blend,
            sigma_scale=self.sigma_scale,
            batch_size=self.batch_size,
            pad_mode=self.pad_mode,
            tta_flips=self.tta_flips,
        )


def _predictor(members: list, settings: SlidingWindowSettings) -> Callable:
    """``windows -> scores``: the mean over the ensemble members of ``scores_key``."""

    def predict(windows: torch.Tensor) -> torch.Tensor:
        total = None
        for eval_step, state in members:
            out = nd.get(eval_step(state, nd.assoc({}, settings.image_key, windows)), settings.scores_key)
            out = out.float()
            total = out if total is None else total + out
        return total / len(members) if len(members) > 1 else total

    return predict


def _first(items: list):
    return items[0]


def _affine(sample, key: str):
    a = nd.get(sample, key, None)
    if a is None:
        return None
    return a.detach().cpu().numpy() if is_tensor(a) else np.asarray(a, dtype=np.float64)


def _write_mask(sample, labels: np.ndarray, path: pathlib.Path) -> None:
    from fusefn.affine import to_original_grid
    from fusefn.data.write import write_nifti

    affine = _affine(sample, keys.AFFINE)
    original = _affine(sample, keys.ORIGINAL_AFFINE)
    shape = nd.get(sample, keys.ORIGINAL_SHAPE, None)
    if affine is None:
        raise ConfigError(f"no affine at {keys.AFFINE!r} to write the mask with (read the volume with its affine)")
    if original is not None and shape is not None:
        shape = tuple(int(s) for s in (shape.tolist() if hasattr(shape, "tolist") else shape))
        labels = to_original_grid(labels, affine, original, shape, mode="nearest")
        affine = original
    write_nifti(path, labels, affine)


def _file_name(nifti_dir: pathlib.Path, used: set, sid) -> pathlib.Path:
    name = safe_name(sid)
    stem, i = name, 0
    while name in used:  # a repeated id
        i += 1
        name = f"{stem}%~{i}"
    used.add(name)
    return nifti_dir / f"{name}.nii.gz"


def run_volumes(
    dirs: Sequence,
    data,
    cols: dict[str, str],
    *,
    checkpoint,
    settings: SlidingWindowSettings,
    postprocess: Callable | None,
    nifti_dir: str | os.PathLike | None,
    device,
    allowed,
    num_workers: int,
    progress: bool = False,
    at: Sequence[int] | None = None,
) -> tuple[list, dict[str, list], list, list]:
    """``(ids, columns, failed, positions)`` of the cases of ``data`` (those at ``at`` when given, as one rank's
    share): the label map at ``settings.label_key``, extra columns, and each row's position in ``data``."""
    if not is_map_dataset(data):
        raise ConfigError("infer: sliding_window needs a map-style dataset of one case per item (not batches)")
    taken = {settings.label_key, MASK_FILE} & set(cols)
    if taken:
        raise ConfigError(f"infer: output column {sorted(taken)[0]!r} is volume inference's own; choose another name")
    members = []
    for d in dirs:
        model, state = load_model(d, checkpoint, device=device, allowed=allowed)
        members.append((make_eval_step(model), state))
    predict = _predictor(members, settings)
    out_dir = pathlib.Path(nifti_dir) if nifti_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    ids: list = []
    failed: list = []
    columns: dict[str, list] = {settings.label_key: [], **{c: [] for c in cols}}
    if out_dir is not None:
        columns[MASK_FILE] = []
    used: set = set()
    positions: list = []
    tolerant = _Tolerant(data, at)
    batches, _ = epoch_batches(tolerant, 0, batch_size=1, collate=_tolerant_collate(_first), workers=num_workers)
    for sample, errors, good in batches:
        failed.extend(errors)
        if sample is None:
            continue
        (pos,) = good
        sid = nd.get(sample, keys.SAMPLE_ID, f"#{pos}")
        try:
            row = _one_case(sample, sid, predict, settings, postprocess, cols, device, progress)
            if out_dir is not None:
                path = _file_name(out_dir, used, sid)
                _write_mask(row.pop("_sample"), row[settings.label_key], path)
                row[MASK_FILE] = str(path)
            else:
                row.pop("_sample")
        except (FusefnError, RuntimeError, ValueError, TypeError, OSError) as e:
            failed.append({"sample_id": sid, "error": f"{type(e).__name__}: {e}", _AT: pos})
            _log.warning("infer: case %r failed: %s", sid, e)
            continue
        ids.append(sid)
        positions.append(pos)
        for c in columns:
            columns[c].append(row[c])
    return ids, columns, failed, positions


def _one_case(sample, sid, predict, settings, postprocess, cols, device, progress) -> dict:
    image = nd.get(sample, settings.image_key)
    image = image if is_tensor(image) else torch.as_tensor(np.ascontiguousarray(image))
    if image.ndim < 2:
        raise ConfigError(f"{settings.image_key!r} must be C×D×H×W (channels first), got shape {tuple(image.shape)}")
    kw = settings.window_kwargs(image.ndim - 1)
    labels = sliding_window(predict, image, device=device, output="argmax", progress=progress, **kw)
    sample = nd.assoc(sample, settings.label_key, labels.numpy())
    if postprocess is not None:
        sample = postprocess(sample)
    labels = nd.get(sample, settings.label_key)
    labels = labels.detach().cpu().numpy() if is_tensor(labels) else np.asarray(labels)
    row = {settings.label_key: labels, "_sample": sample}
    for c, key in cols.items():
        value = nd.get(sample, key)
        row[c] = value.detach().cpu().numpy() if is_tensor(value) else value
    return row
