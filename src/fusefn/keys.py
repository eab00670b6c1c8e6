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
    "ORIGINAL_AFFINE",
    "ORIGINAL_SHAPE",
    "LABEL",
    "MASK",
    "PATCH_ORIGIN",
    "PATCH_INDICES",
    "PATCH_CLASS",
    "TOTAL_LOSS",
    "HEAD",
    "probs",
    "logits",
    "labels",
]

SAMPLE_ID = "data.sample_id"
"""The sample's id (a string), unique in its source."""

SOURCE = "data.source"
"""The source row the sample was read from (its columns, ``index`` and ``fold``)."""

IMAGE = "data.input.img"
"""The image: C×H×W (2D) or C×D×H×W (3D), channels first."""

AFFINE = "data.input.affine"
"""The image's 4×4 voxel-to-world matrix: world in millimetres, RAS+ (nibabel's convention), voxel axes the
image's trailing spatial axes in order (D, H, W). Every op that changes the voxel grid updates it."""

ORIGINAL_AFFINE = "data.input.original_affine"
"""The affine of the grid the image was read on (the scanner's), kept so predictions can be mapped back."""

ORIGINAL_SHAPE = "data.input.original_shape"
"""The spatial shape of the grid the image was read on, next to :data:`ORIGINAL_AFFINE`."""

LABEL = "data.gt.label"
"""The sample's class label (an int, or a vector for multi-label)."""

MASK = "data.gt.mask"
"""The segmentation label map, on the image's grid."""

PATCH_ORIGIN = "data.patch.origin"
"""Where a patch starts in its volume, in voxels."""

PATCH_INDICES = "data.patch.indices"
"""Where each class lies in a volume: ``{"fg" | "<class value>" | "bg": flat voxel indices}``, written once by
:class:`fusefn.data.ops.ForegroundIndices` and cached with the volume."""

PATCH_CLASS = "data.patch.class"
"""The leaf a patch's centre was drawn from (``"fg"``, ``"bg"``, a class value as text, or ``"any"``)."""

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


def labels(head: str = HEAD) -> str:
    """The key of ``head``'s predicted label map (the argmax of its scores; volume inference writes it)."""
    return f"model.{head}.labels"
