"""Batched, reproducible augmentation of 2D and 3D images, masks, points and boxes.

Each augmentation is a frozen record (a :class:`fusefn.protocols.Augmentation`) with two
pure parts: ``sample(batch_size, *, rng, device=None, shapes=None) -> params`` draws every
random value as tensors from the one :class:`fusefn.Rng` it is given, and
``apply(batch, params) -> batch`` transforms the whole batch with no randomness
(``torch.compile``-able). ``aug(batch, rng=...)`` does both; ``sample_like(batch, rng=...)``
reads the batch size, device and shapes from a batch.

Random values are drawn on the device the params are asked for (``sample_like``: the
batch's), so no random tensor crosses the bus. An op touches only the samples its ``p``
selects, so their number changes from batch to batch: compile with
``torch.compile(pipe.apply, fullgraph=True, dynamic=True)`` to avoid a recompile per count.
``fusefn.chain`` of augmentations is a :class:`Pipeline` (``augment.chain`` is the same function).

>>> import torch
>>> from fusefn import Rng, augment
>>> pipe = augment.default_image_pipeline("data.input.img")
>>> batch = {"data": {"input": {"img": torch.rand(8, 1, 32, 32)}}}
>>> out = pipe(batch, rng=Rng(0))
>>> out["data"]["input"]["img"].shape
torch.Size([8, 1, 32, 32])
"""

from fusefn.core import chain

from ._common import Augmentation
from .affine import Affine, compose_affine_params, rotation_matrix
from .blur import GaussianBlur
from .crop import RandomCrop, RandomResizedCrop
from .cutout import Cutout
from .elastic import Elastic
from .intensity import GaussianNoise, Intensity
from .pipeline import Pipeline, default_image_pipeline, default_volume_pipeline, light_image_pipeline

__all__ = [
    "Affine",
    "Augmentation",
    "Cutout",
    "Elastic",
    "GaussianBlur",
    "GaussianNoise",
    "Intensity",
    "Pipeline",
    "RandomCrop",
    "RandomResizedCrop",
    "chain",
    "compose_affine_params",
    "default_image_pipeline",
    "default_volume_pipeline",
    "light_image_pipeline",
    "rotation_matrix",
]
