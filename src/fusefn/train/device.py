"""Device selection: ``"auto"`` picks the free-est GPU (or the local rank's under torchrun), else the CPU."""

from __future__ import annotations

import logging
import os

import torch

from fusefn.errors import ConfigError

__all__ = ["select_device"]

_log = logging.getLogger("fusefn.train")


def select_device(device: str | torch.device = "auto") -> torch.device:
    """The device to train on.

    ``"auto"``: under torchrun, ``cuda:<LOCAL_RANK>`` when GPUs exist; otherwise the
    visible GPU with the most free memory (FuseMedML's ``choose_and_enable_multiple_gpus``
    picked GPUs that nothing else used); the CPU when there is no GPU.
    Any other value is passed to ``torch.device`` and checked.

    >>> select_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"device {device!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for but CUDA is not available; use --device cpu or auto")
        return dev
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = os.environ.get("LOCAL_RANK")
    if local is not None:
        return torch.device(f"cuda:{int(local) % torch.cuda.device_count()}")
    best, best_free = 0, -1
    for i in range(torch.cuda.device_count()):
        try:
            free, _ = torch.cuda.mem_get_info(i)
        except RuntimeError:
            continue
        if free > best_free:
            best, best_free = i, free
    _log.debug("device auto: cuda:%d (%.1f GiB free)", best, best_free / 2**30)
    return torch.device(f"cuda:{best}")
