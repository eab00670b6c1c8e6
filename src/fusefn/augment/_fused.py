"""An affine followed by an elastic deformation, as one sampling grid and one resampling.

Run one after the other, :class:`~fusefn.augment.Affine` gives ``y(p) = x(M⁻¹·p)`` and
:class:`~fusefn.augment.Elastic` then ``z(q) = y(q + u(q))``, so ``z(q) = x(M⁻¹·(q + u(q)))``:
the elastic's source positions mapped through the affine's inverse, sampled once with the
affine's padding. The elastic's padding acts on ``y``, that is on ``q + u(q)`` before the
affine: border clamps those positions to the image, reflection folds them back in. An
elastic with zeros padding is not fused: a position just past the edge would read a blend
of the edge and 0, which no single grid reproduces.

The result differs from the two passes by the interpolation error of resampling once
instead of twice (less blur); it is the same where either part is the identity.
:class:`~fusefn.augment.Pipeline` fuses an ``Elastic`` that directly follows an ``Affine``
on the same keys; the params are drawn exactly as for the two ops.

>>> import torch
>>> from fusefn import Rng
>>> from fusefn.augment import Affine, Elastic, chain
>>> pipe = chain(Affine(dims=2, image_keys="img", rotate=(-20, 20)), Elastic(dims=2, image_keys="img"))
>>> len(pipe.sample(2, rng=Rng(0)))  # one stage: one resampling
1
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ._common import keep_unchosen, spread
from ._resample import resample_keys
from .affine import Affine
from .elastic import Elastic

__all__ = ["apply", "apply_fixed", "compose", "composed_grid", "fixed_params", "fusable"]

_OP = "Affine+Elastic"


def fusable(affine, elastic) -> bool:
    """Whether ``elastic`` right after ``affine`` can share its resampling."""
    return (
        isinstance(affine, Affine)
        and isinstance(elastic, Elastic)
        and affine.dims == elastic.dims
        and affine.image_keys == elastic.image_keys
        and affine.mask_keys == elastic.mask_keys
        and elastic.padding in ("border", "reflection")
    )


def compose(affine_params: Mapping, elastic_params: Mapping, batch_size: int) -> dict:
    """One stage's params: the affine's (kept whole, for points and boxes) and the elastic field per sample.

    The field is spread over the batch (zeros, no displacement, where the elastic was not drawn),
    so a sample only the affine chose gets the affine alone.
    """
    apply = affine_params["apply"] | elastic_params["apply"]
    field = spread(elastic_params["field"], elastic_params["index"], batch_size)
    return {"apply": apply, "index": torch.nonzero(apply).flatten(), "affine": affine_params, "field": field}


def fixed_params(params: Mapping, batch_size: int) -> dict:
    """:meth:`Augmentation.fixed_params` of a fused stage: every sample, the field is already batch-wide."""
    out = dict(params)
    out["index"] = torch.arange(batch_size, device=params["index"].device)
    return out


def composed_grid(elastic: Elastic, inverse: torch.Tensor, field: torch.Tensor, spatial: tuple, dtype) -> torch.Tensor:
    """The ``grid_sample`` grid of ``x(M⁻¹·(q + u(q)))`` for ``n`` samples (``inverse``: ``n×(d+1)×(d+1)``)."""
    d = elastic.dims
    pos = elastic.positions(field, spatial, dtype)  # n×d×spatial, centred pixels
    for k, size in enumerate(spatial):
        if elastic.padding == "reflection":
            pos[:, k] = _reflect(pos[:, k], size)
        else:
            pos[:, k].clamp_(-(size - 1) / 2, (size - 1) / 2)
    n = pos.shape[0]
    # the affine's rows scaled to normalised units; a few fused multiply-adds per grid channel, since a
    # matmul with an inner size of d is far slower than elementwise passes on CPU
    scale = torch.tensor([2.0 / s for s in spatial], dtype=inverse.dtype, device=inverse.device)
    theta = (inverse[:, :d, :] * scale[None, :, None]).to(dtype)
    # channels first, each written in contiguous passes
    grid = torch.empty((n, d, *spatial), dtype=dtype, device=pos.device)
    view = (n,) + (1,) * d
    for j in range(d):
        c = d - 1 - j  # grid_sample wants the last axis first
        acc = grid[:, j].copy_(theta[:, c, d].view(view).expand(n, *spatial))
        for k in range(d):
            acc.addcmul_(pos[:, k], theta[:, c, k].view(view))
    grid = grid.movedim(1, -1)
    # the 3D kernel reads a strided grid as fast; the vectorised 2D one wants the coordinates interleaved
    return grid.contiguous() if d == 2 else grid


def _reflect(c: torch.Tensor, size: int) -> torch.Tensor:
    # grid_sample's reflection with align_corners=False: mirror at the outer pixel edges, then clip to the centres
    c = (c + size / 2).abs()
    flips = torch.floor(c / size)
    extra = torch.fmod(c, size)
    c = torch.where(torch.remainder(flips, 2) == 0, extra, size - extra) - size / 2
    return c.clamp(-(size - 1) / 2, (size - 1) / 2)


def apply(affine: Affine, elastic: Elastic, batch: Mapping, params: Mapping, owned: frozenset):
    """``(batch, owned)`` after the fused stage: one resampling of images and masks, points by the affine."""
    index = params["index"]
    inverse, field = params["affine"]["inverse"], params["field"]

    def grid_fn(spatial, dtype, sl):
        idx = index[sl]
        return composed_grid(elastic, inverse.index_select(0, idx), field.index_select(0, idx), spatial, dtype)

    out, owned = resample_keys(
        batch,
        owned,
        op=_OP,
        dims=affine.dims,
        image_keys=affine.image_keys,
        mask_keys=affine.mask_keys,
        index=index,
        grid_fn=grid_fn,
        padding=affine.padding,
    )
    return affine.map_coords(batch, out, params["affine"], owned)


def apply_fixed(affine: Affine, elastic: Elastic, batch: Mapping, params: Mapping) -> dict:
    """:meth:`Augmentation.apply_fixed` of a fused stage (params from :func:`fixed_params`)."""
    out, _ = apply(affine, elastic, batch, params, frozenset())
    return keep_unchosen(batch, out, affine.image_keys + affine.mask_keys, params["apply"])
