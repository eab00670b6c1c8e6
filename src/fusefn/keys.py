"""The well-known keys of the batch_dict, defined once.

Data writes ``data.*``, models ``model.*``, losses ``losses.*``. Library code, recipes
and docs use these names rather than spelling the strings again.

>>> from fusefn import keys
>>> keys.IMAGE, keys.LABEL, keys.SAMPLE_ID
('data.input.img', 'data.gt.label', 'data.sample_id')
>>> keys.probs("head_0"), keys.logits("seg")
('model.head_0.probs', 'model.seg.logits')
"""

from __future__ import annotations

__all__ = [
    "SAMPLE_ID",
    "SOURCE",
    "IMAGE",
    "AFFINE",
    "SPACING",
    "LABEL",
    "MASK",
    "PATCH_ORIGIN",
    "TOTAL_LOSS",
    "HEAD",
    "probs",
    "logits",
]

SAMPLE_ID = "data.sample_id"
"""The sample's id (a string), unique in its source."""

SOURCE = "data.source"
"""The source row the sample was read from (its columns, ``index`` and ``fold``)."""

IMAGE = "data.input.img"
"""The image: C×H×W (2D) or C×D×H×W (3D), channels first."""

AFFINE = "data.input.affine"
"""The image's 4×4 voxel-to-world matrix (millimetres)."""

SPACING = "data.input.spacing"
"""The voxel spacing in millimetres, one value per spatial axis."""

LABEL = "data.gt.label"
"""The sample's class label (an int, or a vector for multi-label)."""

MASK = "data.gt.mask"
"""The segmentation label map, on the image's grid."""

PATCH_ORIGIN = "data.patch.origin"
"""Where a patch starts in its volume, in voxels."""

TOTAL_LOSS = "losses.total_loss"
"""The weighted sum of the losses, the value the optimizer minimises."""

HEAD = "head_0"
"""The name of a model's first head when none is given."""


def probs(head: str = HEAD) -> str:
    """The key of ``head``'s probabilities."""
    return f"model.{head}.probs"


def logits(head: str = HEAD) -> str:
    """The key of ``head``'s logits."""
    return f"model.{head}.logits"
