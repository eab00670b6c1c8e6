"""Where each class of a label map lies, computed once in the static pipeline: the patch sampler's centres.

:class:`ForegroundIndices` stores, per class and for the background, the flat indices of the
voxels (raster order over the label's spatial axes) as one int32 array each (int64 past 2³¹
voxels), under ``out_key``: ``<out_key>.fg`` and ``<out_key>.bg`` for a binary split (label ≠ 0),
``<out_key>.<class>`` and ``<out_key>.bg`` when ``classes`` are named. The cache stores each as a
variable-length array per sample (its ``ragged/`` group), so nothing is padded.

Memory: 4 bytes per stored index. A 256×256×160 volume has 10.5 M voxels, so storing every
background voxel would cost 42 MB per volume (as much as the float32 image; MONAI's
``FgBgToIndicesd`` keeps int64, 84 MB). ``max_per_class`` (default 2¹⁸) keeps at most that many
indices per class, a uniform random subset drawn from ``rng.child(sample_id)`` (so the op stays
deterministic and cacheable; ``max_per_class`` draws with replacement, deduplicated, so a few percent
fewer): at most 1 MiB per class and volume. ``max_per_class=None`` keeps all.

>>> import numpy as np
>>> mask = np.zeros((1, 4, 4, 4), np.uint8); mask[0, 1, 2, 3] = 1; mask[0, 0, 0, 1] = 2
>>> s = ForegroundIndices()({"data": {"sample_id": "a", "gt": {"mask": mask}}})
>>> s["data"]["patch"]["indices"]["fg"].tolist(), len(s["data"]["patch"]["indices"]["bg"])
([1, 27], 62)
>>> s = ForegroundIndices(classes=(1, 2))({"data": {"sample_id": "a", "gt": {"mask": mask}}})
>>> {k: v.tolist() for k, v in s["data"]["patch"]["indices"].items() if k != "bg"}
{'1': [27], '2': [1]}
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from fusefn import keys, nd
from fusefn import validators as v
from fusefn.core import Rng, record
from fusefn.data.ops._base import fail, get, sample_id
from fusefn.errors import ConfigError

__all__ = ["ForegroundIndices", "INDICES", "FOREGROUND", "BACKGROUND", "class_name"]

INDICES = keys.PATCH_INDICES
"""Where :class:`ForegroundIndices` writes (proposed as ``fusefn.keys.PATCH_INDICES``)."""
FOREGROUND = "fg"
"""The leaf of the voxels whose label is not 0 (binary split)."""
BACKGROUND = "bg"
"""The leaf of the voxels whose label is 0 (and, with ``image_key``, whose image is above the threshold)."""


def class_name(value) -> str:
    """The leaf name of class ``value``: its text (``1 -> "1"``); ``"fg"`` and ``"bg"`` stay as they are."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"a class is an int label value, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def _classes(value):
    if value is None:
        return None
    out = tuple(value) if not isinstance(value, (int, np.integer)) else (value,)
    return tuple(int(c) for c in out)


def _check_classes(instance, attribute, value):
    if value is not None and (not value or 0 in value or len(set(value)) != len(value)):
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must be distinct non-zero label values "
            f"(0 is the background), got {value!r}"
        )


def _index_dtype(size: int):
    return np.int32 if size < 2**31 else np.int64


@record
class ForegroundIndices:
    """Store the flat voxel indices of each class (and of the background) of ``label_key`` under ``out_key``.

    Args:
        label_key: an integer label map; leading axes of size 1 (a channel) are ignored, so the
            indices are over the spatial voxels (the grid the sampler cuts patches from).
        classes: label values stored one leaf each (``<out_key>.<value>``); ``None``: one
            foreground leaf ``fg`` for every voxel whose label is not 0.
        out_key: where the leaves go (default :data:`INDICES`).
        max_per_class: at most this many indices per leaf, a uniform random subset, sorted (``None``: all).
        image_key, image_threshold: with an image, background voxels are only those whose image
            is above the threshold (e.g. inside the body of a CT, as MONAI's ``image_threshold``);
            the image must have the label's spatial shape (a leading channel axis is reduced with ``any``).
        rng: the subset of a sample is drawn from ``rng.child(sample_id)``.
    """

    label_key: str = attrs.field(default=keys.MASK, validator=v.key)
    classes: tuple | None = attrs.field(default=None, converter=_classes, validator=_check_classes)
    out_key: str = attrs.field(default=INDICES, validator=v.key)
    max_per_class: int | None = attrs.field(default=1 << 18, validator=v.optional(v.and_(v.instance_of(int), v.ge(1))))
    image_key: str | None = attrs.field(default=None, validator=v.optional(v.key))
    image_threshold: float = 0.0
    rng: Rng = attrs.field(factory=lambda: Rng(0), validator=v.instance_of(Rng))

    def _label(self, sample):
        lab = np.asarray(_numpy(get(sample, self, self.label_key)))
        if lab.dtype.kind not in "biu" and (lab.dtype.kind != "f" or not np.all(lab == np.round(lab))):
            raise fail(sample, self, self.label_key, f"label map must hold integer values, got dtype {lab.dtype}")
        while lab.ndim > 1 and lab.shape[0] == 1:
            lab = lab[0]
        return lab

    def _body(self, sample, spatial: tuple):
        img = np.asarray(_numpy(get(sample, self, self.image_key)))
        if img.shape[-len(spatial) :] != spatial or img.ndim > len(spatial) + 1:
            raise fail(sample, self, self.image_key, f"image of shape {img.shape} is not on the label's grid {spatial}")
        body = img > self.image_threshold
        return body.any(axis=0) if body.ndim > len(spatial) else body

    def __call__(self, sample: Mapping) -> dict:
        lab = self._label(sample)
        flat = lab.reshape(-1)
        dtype = _index_dtype(flat.size)
        background = flat == 0
        if self.image_key is not None:
            background &= self._body(sample, lab.shape).reshape(-1)
        leaves = {BACKGROUND: background}
        if self.classes is None:
            leaves[FOREGROUND] = ~(flat == 0)
        else:
            for c in self.classes:
                leaves[class_name(c)] = flat == c
        draw = None
        out = {}
        for name, where in leaves.items():
            idx = np.flatnonzero(where)
            if self.max_per_class is not None and len(idx) > self.max_per_class:
                draw = draw or self.rng.child(str(sample_id(sample))).numpy()
                # drawn with replacement, then deduplicated: a uniform subset, O(max_per_class) not O(len(idx))
                idx = idx[np.unique(draw.integers(0, len(idx), self.max_per_class))]
            out[name] = idx.astype(dtype, copy=False)
        return nd.assoc(sample, self.out_key, out)


def _numpy(x):
    # a torch tensor from an earlier op: its NumPy view (on the CPU)
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x
