"""Batched, reproducible augmentation of 2D and 3D images, masks, points and boxes.

Each augmentation is a frozen record with two pure parts: ``sample(generator, batch_size,
*, device, shapes) -> params`` draws every random value as tensors from an explicit
``torch.Generator``, and ``apply(batch, params) -> batch`` transforms the whole batch
with no randomness (``torch.compile``-able). ``aug(batch, generator)`` does both.

Random values are drawn where the generator lives: on a GPU, pass a generator on the
batch's device (``Rng(seed).child(epoch, rank).generator(device)``), or the noise is
drawn on the host and copied. An op touches only the samples its ``p`` selects, so
their number changes from batch to batch: compile with
``torch.compile(pipe.apply, fullgraph=True, dynamic=True)`` to avoid a recompile per count.

>>> import torch
>>> from fusefn import augment
>>> pipe = augment.default_image_pipeline("data.input.img")
>>> batch = {"data": {"input": {"img": torch.rand(8, 1, 32, 32)}}}
>>> out = pipe(batch, torch.Generator().manual_seed(0))
>>> out["data"]["input"]["img"].shape
torch.Size([8, 1, 32, 32])
"""

from ._common import Augmentation
from .affine import Affine, compose_affine_params, rotation_matrix
from .blur import GaussianBlur
from .crop import RandomCrop, RandomResizedCrop
from .cutout import Cutout
from .elastic import Elastic
from .intensity import GaussianNoise, Intensity
from .pipeline import Pipeline, chain, default_image_pipeline, default_volume_pipeline, light_image_pipeline

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
