"""Explaining a failed loss: which samples' targets hold values the loss cannot take (host-side, after the fact).

>>> import torch
>>> from fusefn.losses import CrossEntropy
>>> ce = CrossEntropy(pred="p", target="t")
>>> b = {"p": torch.zeros(3, 2), "t": torch.tensor([1.0, float("nan"), 5.0]), "data": {"sample_id": ["a", "b", "c"]}}
>>> try:
...     check_targets({"ce": ce}, b, step="train step 0")
... except InvalidTargetError as e:
...     print(str(e)[:62])
sample ['b', 'c'], op train step 0, loss 'ce', key 't': 2 of 3
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from fusefn import keys, nd
from fusefn._types import is_tensor
from fusefn.errors import SampleError
from fusefn.losses._common import TORCH_IGNORE
from fusefn.losses.classification import CrossEntropy, Focal, Loss
from fusefn.losses.segmentation import SegmentationCrossEntropy, SoftDice, dice_labels
from fusefn.losses.survival import CoxPH

__all__ = ["InvalidTargetError", "check_targets"]


class InvalidTargetError(SampleError):
    """A loss's target holds values the loss cannot take; names the samples, the key, the loss and the step."""

    def __init__(self, message: str, *, sample_id=None, key: str | None = None, loss: str = "?", step: str = "step"):
        super().__init__(message, sample_id=sample_id, op=f"{step}, loss {loss!r}", key=key)
        self.loss, self.step = loss, step

    def at(self, step: str, tail: str = "") -> InvalidTargetError:
        """The same error said of ``step`` (e.g. with the epoch and batch added), its message ending in ``tail``."""
        return InvalidTargetError(self.reason + tail, sample_id=self.sample_id, key=self.key, loss=self.loss, step=step)


def _label_spec(loss, batch: Mapping) -> tuple[bool, int | None, int | None]:
    """``(class labels?, number of classes or None, ignored label or None)`` of ``loss``'s target."""
    pred_key = getattr(loss, "pred", None)
    pred = nd.get(batch, pred_key, default=None) if isinstance(pred_key, str) else None
    target = nd.get(batch, loss.target)
    classes = int(pred.shape[1]) if is_tensor(pred) and pred.dim() > 1 else None
    if isinstance(loss, CrossEntropy):
        return True, classes, loss.ignore_index
    if isinstance(loss, SegmentationCrossEntropy):
        return True, classes, TORCH_IGNORE
    if isinstance(loss, Focal):
        multi = is_tensor(pred) and pred.dim() == target.dim() + 1 and pred.numel() != target.numel()
        return bool(multi and classes and classes > 1), classes, None
    if isinstance(loss, SoftDice):
        return bool(is_tensor(pred) and dice_labels(target, pred)), classes, None
    if isinstance(loss, Loss) and loss.fn in (F.cross_entropy, F.nll_loss):
        ignore = dict(loss.kwargs).get("ignore_index", TORCH_IGNORE)
        return not (is_tensor(pred) and target.shape == pred.shape), classes, ignore
    return False, None, None


def _bad_values(t: torch.Tensor, labels: bool, classes: int | None, ignore: int | None) -> tuple[torch.Tensor, str]:
    """``(bad mask per sample, what valid values are)`` for a target (N, …) on the host."""
    flat = t.detach().cpu().reshape(t.shape[0] if t.dim() else 1, -1)
    if flat.dtype == torch.bool:
        flat = flat.long()
    bad = ~torch.isfinite(flat) if flat.is_floating_point() else torch.zeros_like(flat, dtype=torch.bool)
    if not labels:
        return bad, "finite numbers"
    if flat.is_floating_point():
        bad |= torch.nan_to_num(flat) != torch.round(torch.nan_to_num(flat))
    ok = flat >= 0
    if classes is not None:
        ok &= flat < classes
    if ignore is not None:
        ok |= flat == ignore
    bad |= ~ok
    span = f"[0, {classes})" if classes is not None else ">= 0"
    return bad, f"integer class labels in {span}" + (f" (or {ignore}, ignored)" if ignore is not None else "")


def _as_tensor(batch: Mapping, key: str) -> torch.Tensor:
    t = nd.get(batch, key)
    return t if is_tensor(t) else torch.as_tensor(t)


def _checks(loss, batch: Mapping):
    """``(key, bad mask per sample, what valid values are)`` for each target key of ``loss`` found in ``batch``."""
    if isinstance(loss, CoxPH):
        for key in (loss.time, loss.event):
            if nd.contains(batch, key):
                yield key, *_bad_values(_as_tensor(batch, key), False, None, None)
        return
    key = getattr(loss, "target", None)
    if not isinstance(key, str) or not nd.contains(batch, key):
        return
    t = _as_tensor(batch, key)
    bad, valid = _bad_values(t, *_label_spec(loss, batch))
    mask = getattr(loss, "mask", None)
    if isinstance(mask, str) and nd.contains(batch, mask):
        # a missing label (mask 0) may hold anything: the loss never reads it
        known = _as_tensor(batch, mask).detach().cpu().reshape(bad.shape) > 0
        bad &= known
    yield key, bad, valid


def check_targets(losses: Mapping[str, Callable], batch: Mapping, *, step: str = "step") -> None:
    """Raise :class:`InvalidTargetError` when a loss's target in ``batch`` holds values the loss cannot take.

    Host-side and unhurried: run it after a loss failed or came out non-finite, to say why.
    ``batch`` is the step's output (predictions give the number of classes) or its input;
    ``step`` names where (e.g. ``"train step 12 (epoch 1, batch 3)"``). Losses without a
    ``target`` key are skipped (:class:`~fusefn.losses.CoxPH`: its ``time`` and ``event`` keys are
    checked); values are checked as class labels for the class-label losses and
    ``Loss(fn=F.cross_entropy | F.nll_loss)``, as finite numbers for the others (known labels
    only where the loss has a ``mask``).
    """
    ids = nd.get(batch, keys.SAMPLE_ID, default=None)
    for name, loss in losses.items():
        for key, bad, valid in _checks(loss, batch):
            rows = torch.nonzero(bad.any(dim=1)).flatten().tolist()
            if not rows:
                continue
            flat = _as_tensor(batch, key).detach().cpu().reshape(bad.shape)
            seen = {(ids[r] if ids is not None and r < len(ids) else f"#{r}"): flat[r][bad[r]][0].item() for r in rows}
            shown = ", ".join(f"{sid!r}: {value}" for sid, value in list(seen.items())[:5])
            raise InvalidTargetError(
                f"{len(rows)} of {bad.shape[0]} samples have target values the loss cannot take ({shown}"
                f"{', …' if len(rows) > 5 else ''}); it needs {valid}: fix the labels, or map them in the "
                "pipeline (ToLabel)",
                sample_id=list(seen)[:20],
                key=key,
                loss=name,
                step=step,
            )
