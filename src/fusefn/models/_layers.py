"""Building blocks shared by backbones and heads: dimension-generic layers, seeded dropout, initialisation.

Everything here is an ``nn.Module`` skeleton detail: parameters never live in these
modules at run time (``apply`` swaps them in through ``functional_call``), so the
skeletons are built on the ``meta`` device and :func:`init_tensors` materialises
parameters from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from fusefn.errors import FusefnError

__all__ = [
    "ModelInputError",
    "conv",
    "conv_transpose",
    "batch_norm",
    "max_pool",
    "avg_pool",
    "ConvBNAct",
    "SeededDropout",
    "init_tensors",
    "salt",
    "traced_child",
]


class ModelInputError(FusefnError, ValueError):
    """A batch does not fit a model block: missing key, wrong channel count, wrong number of dims."""


def conv(spatial_dims: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(*args, **kwargs)


def conv_transpose(spatial_dims: int, *args, **kwargs) -> nn.Module:
    return (nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d)(*args, **kwargs)


def batch_norm(spatial_dims: int, *args, **kwargs) -> nn.Module:
    return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(*args, **kwargs)


def max_pool(spatial_dims: int, *args, **kwargs) -> nn.Module:
    return (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(*args, **kwargs)


def avg_pool(spatial_dims: int, *args, **kwargs) -> nn.Module:
    return (nn.AvgPool2d if spatial_dims == 2 else nn.AvgPool3d)(*args, **kwargs)


class ConvBNAct(nn.Module):
    """Convolution (no bias) -> batch norm -> optional ReLU."""

    def __init__(self, spatial_dims, cin, cout, kernel_size, stride=1, padding=0, act=True, bn_kwargs=None):
        super().__init__()
        self.conv = conv(spatial_dims, cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = batch_norm(spatial_dims, cout, **(bn_kwargs or {}))
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return torch.relu(x) if self.act else x


# ------------------------------------------------------------------------ seeded dropout

_M1 = 0x7FEB352D
_M2 = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    # a 32-bit integer finaliser; values stay below 2**32 and multipliers below 2**31, so the
    # int64 products never overflow and the stream is identical on every device
    h = h ^ (h >> 16)
    h = (h * _M1) & _MASK32
    h = h ^ (h >> 15)
    h = (h * _M2) & _MASK32
    return h ^ (h >> 16)


def salt(path: str) -> int:
    """A stable 31-bit integer naming a dropout site, so sites never share a mask."""
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF


def traced_child(rng: torch.Tensor, site: int) -> torch.Tensor:
    """The child stream ``site`` (a :func:`salt`) of the traced rng ``rng``, a 0-d int64 tensor.

    What ``Rng.child`` is for an ``Rng``, computed on the tensor so a compiled step does not
    specialise on the seed: a counter-based hash of ``(rng, site)``.
    """
    return _mix32((rng.to(torch.int64) & _MASK32) ^ site)


class SeededDropout(nn.Module):
    """Dropout whose mask is a counter-based hash of ``(rng, site, element index)``.

    ``F.dropout`` draws from the global generator; this one draws from the int64
    ``rng`` tensor that ``apply`` receives (an ``Rng``'s traced form), so a training step
    is reproducible from its ``Rng`` and compiles without a graph break (the seed is a
    tensor, not a constant).
    """

    def __init__(self, p: float, site: str):
        super().__init__()
        self.p = float(p)
        self.site = salt(site)

    def forward(self, x: torch.Tensor, rng: torch.Tensor | None) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if rng is None:
            raise FusefnError(
                "this model has dropout: pass rng= (a fusefn.Rng, or its traced form Rng.tensor()) to "
                "models.apply when train=True, or set dropout=0.0"
            )
        key = _mix32((rng.to(torch.int64) & _MASK32) ^ self.site)
        idx = torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape)
        u = _mix32(_mix32(idx & _MASK32) ^ key).to(torch.float32) * (1.0 / 4294967296.0)
        keep = (u >= self.p).to(x.dtype)
        return x * keep * (1.0 / (1.0 - self.p))


# ------------------------------------------------------------------------ initialisation


def init_tensors(skeleton: nn.Module, generator: torch.Generator) -> tuple[dict, dict]:
    """Fresh CPU parameters and buffers for ``skeleton`` (which may live on ``meta``).

    Convolutions: He-normal (fan-out); linear layers: uniform(±1/sqrt(fan_in)); norms:
    weight 1, bias 0, running mean 0 / var 1. Drawn in ``named_modules`` order from
    ``generator`` only, so the result depends on the architecture and the generator's seed alone.
    """
    params: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    for mname, module in skeleton.named_modules():
        prefix = f"{mname}." if mname else ""
        for pname, p in module.named_parameters(recurse=False):
            t = torch.empty(p.shape, dtype=p.dtype)
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                if pname == "weight":
                    nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=generator)
                else:
                    t.zero_()
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                t.uniform_(-bound, bound, generator=generator)
            elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                t.fill_(1.0 if pname == "weight" else 0.0)
            else:
                raise TypeError(f"no initialisation rule for parameter {prefix}{pname} of {type(module).__name__}")
            params[prefix + pname] = t
        for bname, b in module.named_buffers(recurse=False):
            if bname == "running_var":
                t = torch.ones(b.shape, dtype=b.dtype)
            else:
                t = torch.zeros(b.shape, dtype=b.dtype)
            buffers[prefix + bname] = t
    return params, buffers
