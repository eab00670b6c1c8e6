"""What the loss records share: the weight validator, sample-weighted means, label casts, NaN poisoning."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fusefn import nd
from fusefn import validators as v

WEIGHT = v.ge(0)
TORCH_IGNORE = -100  # torch's default ignore_index: those labels are skipped, not invalid
RESIZE = v.in_(("nearest", "maxpool"))


def kwargs_tuple(value) -> tuple:
    """A ``{name: value}`` mapping (or pairs) as a sorted tuple of pairs: hashable record config."""
    if isinstance(value, Mapping):
        return tuple(sorted(value.items()))
    return tuple(tuple(kv) for kv in value)


def weighted_mean(per_sample: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean of per-element losses per sample, then weighted by ``w`` (N,) across samples."""
    per = per_sample.reshape(per_sample.shape[0], -1).mean(dim=1)
    w = w.to(per.dtype).reshape(-1)
    return (per * w).sum() / w.sum().clamp_min(torch.finfo(per.dtype).tiny)


def reduce(per: torch.Tensor, batch: Mapping, key: str | None) -> torch.Tensor:
    """The mean of ``per``, or its per-sample means weighted by the batch's ``key`` (sample weights)."""
    if key is None:
        return per.mean()
    return weighted_mean(per, torch.as_tensor(nd.get(batch, key), device=per.device))


def class_weights(value, like: torch.Tensor) -> torch.Tensor | None:
    if value is None:
        return None
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def class_labels(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Labels (N, …); a singleton class axis (N, 1, …) next to (N, C, …) logits is dropped."""
    if target.dim() == logits.dim() and target.shape[1] == 1 and logits.shape[1] != 1:
        target = target[:, 0]
    return target


def class_targets(target: torch.Tensor, num_classes: int, ignore_index: int | None = None):
    """``(int64 labels, whether all are valid, or None)``: labels a loss can index with, never a crash.

    Tensor ops only (no host read, no branch on values; compiles in one graph), so a bad
    label poisons the loss to NaN (:func:`poisoned`) for the loop to explain. On CUDA an
    out-of-range label is a device-side assert that kills the process: invalid ones (NaN,
    fractions, out of range) are replaced by 0. On the CPU the kernels check the range
    themselves (an IndexError the train and eval steps explain): only a float label is
    checked, for a fraction that would pass as a class. Integer labels there cost nothing.
    """
    labels = target.long()
    if target.device.type == "cpu":
        return labels, ((labels == target).all() if target.is_floating_point() else None)
    # few kernels: each costs a launch in eager mode (torch.compile fuses them into the loss)
    ok = labels.clamp(0, num_classes - 1) == labels
    if ignore_index is not None:
        ok = ok | (labels == ignore_index)
    if target.is_floating_point():
        ok = ok & (labels == target)  # false for NaN, infinities and fractions
    return torch.where(ok, labels, 0 if ignore_index is None else ignore_index), ok.all()


def poisoned(loss: torch.Tensor, ok: torch.Tensor | None) -> torch.Tensor:
    """``loss``, or NaN when ``ok`` is false: the finite check of the loop then explains it (check_targets)."""
    return loss if ok is None else torch.where(ok, loss, float("nan"))


def as_pred(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``target`` in ``pred``'s dtype, and in its shape when they hold as many values ((N,) against (N, 1))."""
    target = torch.as_tensor(target, device=pred.device).to(pred.dtype)
    return target.reshape(pred.shape) if target.numel() == pred.numel() else target
