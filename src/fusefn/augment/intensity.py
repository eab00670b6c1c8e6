"""Random intensity changes: gamma, multiply, add, contrast (one fused pass) and Gaussian noise.

>>> import torch
>>> aug = Intensity(image_keys="img", multiply=(2.0, 2.0), clip=None)
>>> from fusefn import Rng
>>> aug({"img": torch.ones(2, 1, 3, 3)}, rng=Rng(0))["img"].unique()
tensor([2.])
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError, SampleError

from ._common import (
    Augmentation,
    as_range,
    as_tuple,
    check_image,
    chunk_slices,
    chunked,
    consecutive,
    gate,
    get_key,
    keys_tuple,
    large_samples,
    output_buffer,
    put,
    range_validator,
    runs,
    scaled_normal,
    take,
    to_device,
    uniform,
)

__all__ = ["GaussianNoise", "Intensity"]


def _std_range(instance, attribute, value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v.ge(0)(instance, attribute, value)
        return
    range_validator(lower=0.0, allow_none=False)(instance, attribute, value)


_KEYS = v.and_(v.min_len(1), v.keys)


@record
class Intensity(Augmentation):
    """Per-sample gamma, multiply, add and contrast, in that order, after clipping the input and each step.

    Each factor is drawn from its ``(low, high)`` range (``None`` leaves that step out).
    Contrast scales the distance to the per-sample, per-channel mean. The steps run in
    place on one copy of the active samples, so the whole group is a handful of
    elementwise passes without temporaries.

    Args:
        image_keys: float tensors ``N×C×…`` of any spatial rank.
        gamma: exponent range; needs ``clip`` (gamma acts on ``(x − low)/(high − low)``).
        multiply, add, contrast: factor ranges.
        clip: ``(low, high)`` bounds applied after each step, or ``None``.
        p: probability that a sample is changed.
    """

    image_keys: tuple = attrs.field(converter=keys_tuple, validator=_KEYS)
    gamma: tuple | None = attrs.field(default=None, converter=as_tuple, validator=range_validator(lower=0.0))
    multiply: tuple | None = attrs.field(default=None, converter=as_tuple, validator=range_validator())
    add: tuple | None = attrs.field(default=None, converter=as_tuple, validator=range_validator())
    contrast: tuple | None = attrs.field(default=None, converter=as_tuple, validator=range_validator())
    clip: tuple | None = attrs.field(default=(0.0, 1.0), converter=as_tuple, validator=range_validator())
    p: float = attrs.field(default=1.0, validator=v.unit_interval)

    def __attrs_post_init__(self):
        if self.gamma is not None and self.clip is None:
            raise ConfigError(f"{type(self).__name__}.gamma needs clip=(low, high): gamma is defined on that range")
        if self.clip is not None and self.clip[0] == self.clip[1]:
            raise ConfigError(f"{type(self).__name__}.clip must have low < high, got {self.clip!r}")

    def all_keys(self) -> tuple:
        return self.image_keys

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> dict:
        """``apply``/``index`` plus one float32 factor per sample for each configured step."""
        params = gate(generator, batch_size, self.p)
        for name in ("gamma", "multiply", "add", "contrast"):
            bounds = getattr(self, name)
            if bounds is not None:
                params[name] = uniform(generator, batch_size, bounds, dtype=torch.float32)
        return to_device(params, device)

    def _apply(self, batch: Mapping, params: Mapping, owned: frozenset):
        op = type(self).__name__
        xs = {k: get_key(batch, k, op) for k in self.image_keys}
        for k, x in xs.items():
            check_image(x, op=op, key=k, dims=None)
        index = params["index"]
        if index.shape[0] == 0:
            return batch, owned
        updates = {}
        for k, x in xs.items():
            if chunked(x):
                # chunk by chunk, each changed while in cache: the first step reads the input's rows and writes
                # the output's (views when the chunk's samples are consecutive), the others work in place
                out = output_buffer(x, index, k in owned)
                for sl in chunk_slices(index.shape[0], x):
                    idx = index[sl]
                    start = consecutive(idx)
                    if start is None:
                        out.index_copy_(0, idx, self._kernel(x.index_select(0, idx), params, idx))
                    else:
                        dst, src = out.narrow(0, start, idx.shape[0]), x.narrow(0, start, idx.shape[0])
                        self._kernel(dst, params, idx, src=None if k in owned else src)
                updates[k] = out
            else:
                sub = take(x, index)
                y = sub.clone() if (sub is x and k not in owned) else sub
                updates[k] = put(x, index, self._kernel(y, params, index), k in owned)
        return nd.assoc_many(batch, updates), owned | frozenset(updates)

    def _kernel(self, y: torch.Tensor, params: Mapping, index: torch.Tensor, src=None) -> torch.Tensor:
        """The steps on ``y`` in place; with ``src``, the first step reads ``src`` (``y``'s shape) instead."""
        shape = (-1,) + (1,) * (y.ndim - 1)

        def factor(name):
            return params[name].index_select(0, index).to(y.dtype).view(shape)

        lo, hi = self.clip if self.clip is not None else (None, None)
        src = y if src is None else src
        if self.clip is not None:
            torch.clamp(src, lo, hi, out=y)
        elif src is not y:
            y.copy_(src)
        if self.gamma is not None:
            if (lo, hi) != (0.0, 1.0):
                y.sub_(lo).div_(hi - lo)
            y.pow_(factor("gamma"))
            if (lo, hi) != (0.0, 1.0):
                y.mul_(hi - lo).add_(lo)
        if self.multiply is not None:
            y.mul_(factor("multiply"))
            if self.clip is not None:
                y.clamp_(lo, hi)
        if self.add is not None:
            y.add_(factor("add"))
            if self.clip is not None:
                y.clamp_(lo, hi)
        if self.contrast is not None:
            c = factor("contrast")
            mean = y.mean(dim=tuple(range(2, y.ndim)), keepdim=True)
            # (y - mean)·c + mean as one multiply and one add
            y.mul_(c).add_(mean * (1 - c))
            if self.clip is not None:
                y.clamp_(lo, hi)
        return y


@record
class GaussianNoise(Augmentation):
    """Additive Gaussian noise with a per-sample standard deviation drawn from ``std``.

    The noise of all active samples is drawn by ``sample`` (already scaled), so ``apply`` is
    a single in-place add; ``sample`` therefore needs the per-sample ``shapes`` of the keys
    (``sample_like``/``__call__`` read them from the batch). On the CPU, samples of at least
    65,536 values draw from generators of their own, seeded from the op's stream, on every
    thread (``_common.scaled_normal``); smaller ones are drawn in one call.

    Args:
        image_keys: float tensors ``N×C×…``.
        std: a standard deviation, or a ``(low, high)`` range drawn per sample.
        p: probability that a sample gets noise.
    """

    _active_fields = ("noise",)

    image_keys: tuple = attrs.field(converter=keys_tuple, validator=_KEYS)
    std: float | tuple = attrs.field(default=0.03, converter=as_tuple, validator=_std_range)
    p: float = attrs.field(default=1.0, validator=v.unit_interval)

    def all_keys(self) -> tuple:
        return self.image_keys

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> dict:
        """``apply``/``index`` and ``noise``: ``{key: n_active×C×…}`` float32, std already applied."""
        op = type(self).__name__
        missing = [k for k in self.image_keys if not shapes or k not in shapes]
        if missing:
            raise ConfigError(f"{op}.sample needs shapes={{key: per-sample shape}} for {missing}")
        params = gate(generator, batch_size, self.p)
        std = uniform(generator, batch_size, as_range(self.std), dtype=torch.float32)
        n = int(params["index"].shape[0])
        sub_std = std.index_select(0, params["index"])
        noise = {}
        for k in self.image_keys:
            noise[k] = scaled_normal(generator, n, tuple(shapes[k]), sub_std)
        params.update(std=std, noise=noise)
        return to_device(params, device)

    def _apply(self, batch: Mapping, params: Mapping, owned: frozenset):
        op = type(self).__name__
        index = params["index"]
        updates = {}
        for k in self.image_keys:
            x = get_key(batch, k, op)
            check_image(x, op=op, key=k, dims=None)
            if index.shape[0] == 0:
                continue
            z = params["noise"][k].to(x.dtype)
            if z.shape[1:] != x.shape[1:]:
                got = tuple(x.shape[1:])
                raise SampleError(f"noise was drawn for shape {tuple(z.shape[1:])}, got {got}", op=op, key=k)
            if index.shape[0] == x.shape[0]:
                updates[k] = x.add_(z) if k in owned else x + z
            elif chunked(x) and large_samples(x):
                # one plain add per run of consecutive samples: index_add_ runs a scalar scatter loop
                out = output_buffer(x, index, k in owned)
                for pos, start, length in runs(index):
                    torch.add(x.narrow(0, start, length), z.narrow(0, pos, length), out=out.narrow(0, start, length))
                updates[k] = out
            else:
                updates[k] = x.index_add_(0, index, z) if k in owned else x.index_add(0, index, z)
        return nd.assoc_many(batch, updates), owned | frozenset(updates)
