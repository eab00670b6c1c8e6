"""A chain of augmentations that samples every op's params up front, then applies them in order.

Consecutive :class:`~fusefn.augment.Affine` ops on the same keys are fused: their
matrices are multiplied at sampling time and the batch is resampled once. An
:class:`~fusefn.augment.Elastic` right after them on the same keys joins that one resampling
(its displacement composed with the affine into one grid, ``augment._fused``).

>>> import torch
>>> from fusefn import Rng
>>> pipe = default_image_pipeline("img")
>>> batch = {"img": torch.rand(4, 1, 16, 16)}
>>> a = pipe(batch, rng=Rng(3))
>>> b = pipe.apply(batch, pipe.sample(4, rng=Rng(3), shapes={"img": (1, 16, 16)}))
>>> torch.equal(a["img"], b["img"])
True
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch

from fusefn import keys
from fusefn import validators as v
from fusefn.core import chain, record
from fusefn.errors import ConfigError

from . import _fused
from ._common import Augmentation
from .affine import Affine, compose_affine_params
from .elastic import Elastic
from .intensity import GaussianNoise, Intensity

__all__ = ["Pipeline", "chain", "default_image_pipeline", "default_volume_pipeline", "light_image_pipeline"]


def _stages(ops: tuple) -> tuple:
    """``(first, last)`` op index of each stage: runs of ops with one fuse key (affines), else single ops.

    An :class:`~fusefn.augment.Elastic` right after a run of affines on the same keys joins their stage.
    """
    out, i = [], 0
    while i < len(ops):
        j = i + 1
        key = ops[i].fuse_key()
        while key is not None and j < len(ops) and ops[j].fuse_key() == key:
            j += 1
        if j < len(ops) and _fused.fusable(ops[i], ops[j]):
            j += 1
        out.append((i, j))
        i = j
    return tuple(out)


def _is_fused(ops: tuple, i: int, j: int) -> bool:
    return j - i > 1 and isinstance(ops[j - 1], Elastic)


@record
class Pipeline(Augmentation):
    """Augmentations applied in order; ``sample`` draws all params first, in op order, from one generator.

    ``fusefn.chain(*augmentations)`` (also reachable as ``fusefn.augment.chain``) builds one and
    flattens nested pipelines.
    """

    ops: tuple = attrs.field(converter=tuple, validator=v.deep_iterable(v.instance_of(Augmentation)))

    def all_keys(self) -> tuple:
        return tuple(dict.fromkeys(k for op in self.ops for k in op.all_keys()))

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> tuple:
        """One params entry per stage (a fused run of affines counts as one stage)."""
        drawn = []
        for op in self.ops:
            drawn.append(op._sample(generator, batch_size, device=device, shapes=shapes))
            shapes = op.out_shapes(shapes)
        params = []
        for i, j in _stages(self.ops):
            fused = _is_fused(self.ops, i, j)
            affines = drawn[i : j - 1] if fused else drawn[i:j]
            p = affines[0]
            for q in affines[1:]:
                p = compose_affine_params(p, q)
            params.append(_fused.compose(p, drawn[j - 1], batch_size) if fused else p)
        return tuple(params)

    def like_keys(self) -> tuple:
        # keys of geometric ops without shapes (points, boxes) still count for size and device
        return self.all_keys()

    def _apply(self, batch: Mapping, params, owned: frozenset):
        for i, j, p in self._staged(params):
            if _is_fused(self.ops, i, j):
                batch, owned = _fused.apply(self.ops[i], self.ops[j - 1], batch, p, owned)
            else:
                batch, owned = self.ops[i]._apply(batch, p, owned)
        return batch, owned

    def _staged(self, params) -> list:
        stages = _stages(self.ops)
        if len(params) != len(stages):
            raise ConfigError(f"Pipeline: got {len(params)} params entries for {len(stages)} stages")
        return [(i, j, p) for (i, j), p in zip(stages, params)]

    def fixed_params(self, params, batch_size: int) -> tuple:
        return tuple(
            _fused.fixed_params(p, batch_size) if _is_fused(self.ops, i, j) else self.ops[i].fixed_params(p, batch_size)
            for i, j, p in self._staged(params)
        )

    def apply_fixed(self, batch: Mapping, params) -> dict:
        for i, j, p in self._staged(params):
            if _is_fused(self.ops, i, j):
                batch = _fused.apply_fixed(self.ops[i], self.ops[j - 1], batch, p)
            else:
                batch = self.ops[i].apply_fixed(batch, p)
        return batch


def default_image_pipeline(key: str = keys.IMAGE, *, mask_keys=(), p: float = 0.5) -> Pipeline:
    """The default 2D augmentation: affine, colour and noise groups, each applied with probability ``p``.

    Affine: rotation U(−30°, 30°), whole-pixel translation in [−10, 10] per axis, vertical and
    horizontal flips each with probability 0.3, scale U(0.9, 1.1). Colour: gamma U(0.9, 1.1),
    multiply U(0.95, 1.05), add U(−0.06, 0.06), contrast U(0.85, 1.15), each clipped to [0, 1].
    Noise: Gaussian with std 0.03.
    """
    return chain(
        Affine(
            dims=2,
            image_keys=key,
            mask_keys=mask_keys,
            rotate=(-30.0, 30.0),
            translate=(-10, 10),
            integer_translate=True,
            flip=(0.3, 0.3),
            scale=(0.9, 1.1),
            p=p,
        ),
        _colour(key, p),
        GaussianNoise(image_keys=key, std=0.03, p=p),
    )


def default_volume_pipeline(key: str = keys.IMAGE, *, mask_keys=(), p: float = 0.5) -> Pipeline:
    """The 3D counterpart of :func:`default_image_pipeline` for ``N×C×D×H×W`` volumes.

    Rotation U(−15°, 15°) about each axis, translation in [−5, 5] voxels per axis, a flip of
    each axis with probability 0.3, scale U(0.9, 1.1); the same colour and noise groups.
    """
    return chain(
        Affine(
            dims=3,
            image_keys=key,
            mask_keys=mask_keys,
            rotate=(-15.0, 15.0),
            translate=(-5, 5),
            integer_translate=True,
            flip=(0.3, 0.3, 0.3),
            scale=(0.9, 1.1),
            p=p,
        ),
        _colour(key, p),
        GaussianNoise(image_keys=key, std=0.03, p=p),
    )


def light_image_pipeline(key: str = keys.IMAGE, *, mask_keys=(), p: float = 0.5) -> Pipeline:
    """A mild 2D augmentation for small images whose orientation matters (digits, letters): no flips.

    Affine: rotation U(−10°, 10°), translation U(−2, 2) px per axis, scale U(0.95, 1.05);
    Gaussian noise with std 0.02; each group applied with probability ``p``.
    """
    return chain(
        Affine(
            dims=2,
            image_keys=key,
            mask_keys=mask_keys,
            rotate=(-10.0, 10.0),
            translate=(-2.0, 2.0),
            scale=(0.95, 1.05),
            p=p,
        ),
        GaussianNoise(image_keys=key, std=0.02, p=p),
    )


def _colour(key: str, p: float) -> Intensity:
    return Intensity(
        image_keys=key,
        gamma=(0.9, 1.1),
        multiply=(0.95, 1.05),
        add=(-0.06, 0.06),
        contrast=(0.85, 1.15),
        clip=(0.0, 1.0),
        p=p,
    )
