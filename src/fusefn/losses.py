"""Loss records: ``loss(batch_dict) -> scalar tensor``, and their weighted sum.

A loss reads its ``pred`` and ``target`` keys, computes a scalar and multiplies
it by ``weight`` (as FuseMedML's LossDefault). Losses are pure torch code with no
``.item()`` and no Python branch on tensor values, so they run inside
``torch.func.grad`` and ``torch.compile``.

A loss is *not* a :class:`fusefn.protocols.Transform`: it maps a batch to a 0-d tensor,
not to a batch. Its protocol is ``__call__(batch: Mapping, /) -> torch.Tensor`` (a scalar,
already weighted), and any callable of that shape may be used as one. :func:`apply` is the
transform-shaped step: it writes a named set of losses and their sum (``keys.TOTAL_LOSS``)
into the batch.

Class-label losses (:class:`CrossEntropy`, multi-class :class:`Focal`, :class:`SoftDice`,
:class:`SegmentationCrossEntropy`) never index with a label they cannot take (NaN, a
fraction, a class out of range, as a table without ``ToLabel`` gives): such a batch's loss
is NaN, found by the training loop's finite check, and :func:`check_targets` then names the
samples, the key and the loss (:class:`InvalidTargetError`).

>>> import torch
>>> batch = {"model": {"head_0": {"logits": torch.tensor([[2.0, 0.0], [0.0, 1.0]])}},
...          "data": {"gt": {"label": torch.tensor([0, 1])}}}
>>> ce = CrossEntropy(pred="model.head_0.logits", target="data.gt.label")
>>> round(float(ce(batch)), 4)
0.2201
>>> t, parts = total({"cls": ce, "cls2": attrs.evolve(ce, weight=0.5)}, batch)
>>> round(float(t), 4), sorted(parts)
(0.3301, ['cls', 'cls2'])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
import torch
import torch.nn.functional as F

from fusefn import keys, nd
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.core import record
from fusefn.errors import ConfigError, SampleError

__all__ = [
    "Loss",
    "CrossEntropy",
    "BCEWithLogits",
    "Focal",
    "SoftDice",
    "SegmentationCrossEntropy",
    "total",
    "apply",
    "resize_target",
    "ipw_class_weights",
    "check_targets",
    "InvalidTargetError",
]


class InvalidTargetError(SampleError):
    """A loss's target holds values the loss cannot take; names the samples, the key, the loss and the step."""

    def __init__(self, message: str, *, sample_id=None, key: str | None = None, loss: str = "?", step: str = "step"):
        super().__init__(message, sample_id=sample_id, op=f"{step}, loss {loss!r}", key=key)
        self.loss, self.step = loss, step

    def at(self, step: str, tail: str = "") -> InvalidTargetError:
        """The same error said of ``step`` (e.g. with the epoch and batch added), its message ending in ``tail``."""
        return InvalidTargetError(self.reason + tail, sample_id=self.sample_id, key=self.key, loss=self.loss, step=step)


def _kwargs(value) -> tuple:
    if isinstance(value, Mapping):
        return tuple(sorted(value.items()))
    return tuple(tuple(kv) for kv in value)


_WEIGHT = v.ge(0)
_TORCH_IGNORE = -100  # torch's default ignore_index: those labels are skipped, not invalid
_RESIZE = v.in_(("nearest", "maxpool"))


def _weighted_mean(per_sample: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean of per-element losses per sample, then weighted by ``w`` (N,) across samples."""
    per = per_sample.reshape(per_sample.shape[0], -1).mean(dim=1)
    w = w.to(per.dtype).reshape(-1)
    return (per * w).sum() / w.sum().clamp_min(torch.finfo(per.dtype).tiny)


def _reduce(per: torch.Tensor, batch: Mapping, key: str | None) -> torch.Tensor:
    if key is None:
        return per.mean()
    return _weighted_mean(per, torch.as_tensor(nd.get(batch, key), device=per.device))


def _class_weights(value, like: torch.Tensor) -> torch.Tensor | None:
    if value is None:
        return None
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


@record
class Loss:
    """Any ``torch.nn.functional``-style loss ``fn(pred, target, **kwargs)`` on two keys, times ``weight``.

    With ``sample_weight`` (a key of per-sample weights), ``fn`` is called with
    ``reduction="none"`` and the per-sample means are averaged with those weights.

    >>> import torch
    >>> mse = Loss(fn=torch.nn.functional.mse_loss, pred="p", target="t", weight=2.0)
    >>> float(mse({"p": torch.tensor([1.0, 3.0]), "t": torch.tensor([0.0, 3.0])}))
    1.0
    """

    fn: Callable = attrs.field(validator=v.is_callable)
    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=_WEIGHT)
    sample_weight: str | None = None
    kwargs: tuple = attrs.field(default=(), converter=_kwargs)

    def __call__(self, batch: Mapping) -> torch.Tensor:
        pred, target = nd.get(batch, self.pred), nd.get(batch, self.target)
        kw = dict(self.kwargs)
        if self.sample_weight is None:
            return self.fn(pred, target, **kw) * self.weight
        per = self.fn(pred, target, reduction="none", **kw)
        return _reduce(per, batch, self.sample_weight) * self.weight


@record
class CrossEntropy:
    """Softmax cross-entropy of logits (N, C, …) against integer labels (N, …)."""

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=_WEIGHT)
    class_weights: tuple | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    label_smoothing: float = 0.0
    ignore_index: int = -100
    sample_weight: str | None = None

    def __call__(self, batch: Mapping) -> torch.Tensor:
        logits = nd.get(batch, self.pred)
        target, ok = _class_targets(
            _class_labels(nd.get(batch, self.target), logits), logits.shape[1], self.ignore_index
        )
        class_w = _class_weights(self.class_weights, logits)
        per = F.cross_entropy(
            logits,
            target,
            weight=class_w,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="none" if self.sample_weight else "mean",
        )
        if not self.sample_weight:
            return _poisoned(per, ok) * self.weight
        # torch's "mean" divided by the class weights of the counted elements; so do we, times the sample
        # weights, so that all-ones sample weights give exactly the unweighted loss
        sw = torch.as_tensor(nd.get(batch, self.sample_weight), device=per.device).to(per.dtype)
        sw = sw.reshape(-1, *([1] * (per.dim() - 1)))
        valid = (target != self.ignore_index).to(per.dtype)
        denom = sw * valid if class_w is None else sw * valid * class_w[target.clamp_min(0)]
        return _poisoned((per * sw).sum() / denom.sum().clamp_min(torch.finfo(per.dtype).tiny), ok) * self.weight


def _class_labels(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Labels (N, …); a singleton class axis (N, 1, …) next to (N, C, …) logits is dropped."""
    if target.dim() == logits.dim() and target.shape[1] == 1 and logits.shape[1] != 1:
        target = target[:, 0]
    return target


def _class_targets(target: torch.Tensor, num_classes: int, ignore_index: int | None = None):
    """``(int64 labels, whether all are valid, or None)``: labels a loss can index with, never a crash.

    Tensor ops only (no host read, no branch on values; compiles in one graph), so a bad
    label poisons the loss to NaN (:func:`_poisoned`) for the loop to explain. On CUDA an
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


def _poisoned(loss: torch.Tensor, ok: torch.Tensor | None) -> torch.Tensor:
    """``loss``, or NaN when ``ok`` is false: the finite check of the loop then explains it (check_targets)."""
    return loss if ok is None else torch.where(ok, loss, float("nan"))


def _as_pred(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    target = target.to(pred.dtype)
    return target.reshape(pred.shape) if target.numel() == pred.numel() else target


@record
class BCEWithLogits:
    """Binary cross-entropy on logits; the target is cast to the logits' dtype and shape."""

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=_WEIGHT)
    pos_weight: float | None = None
    sample_weight: str | None = None

    def __call__(self, batch: Mapping) -> torch.Tensor:
        logits = nd.get(batch, self.pred)
        target = _as_pred(nd.get(batch, self.target), logits)
        pw = (
            None
            if self.pos_weight is None
            else torch.as_tensor(self.pos_weight, dtype=logits.dtype, device=logits.device)
        )
        per = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
        return _reduce(per, batch, self.sample_weight) * self.weight


def _alpha(value):
    if value is None or isinstance(value, (int, float)):
        return value
    return tuple(value)


@record
class Focal:
    """Focal loss (Lin et al.): cross-entropy down-weighted by ``(1 - p_t) ** gamma``.

    Multi-class when ``pred`` has a class axis the target lacks (softmax; ``alpha`` a
    per-class tuple); binary sigmoid focal when shapes match (``alpha`` a float for the
    positive class).
    """

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=_WEIGHT)
    gamma: float = 2.0
    alpha: float | tuple | None = attrs.field(default=None, converter=_alpha)
    sample_weight: str | None = None

    def __call__(self, batch: Mapping) -> torch.Tensor:
        logits, target = nd.get(batch, self.pred), nd.get(batch, self.target)
        if logits.dim() == target.dim() + 1 and logits.shape[1] > 1 and logits.numel() != target.numel():
            labels, ok = _class_targets(target, logits.shape[1])
            logp = F.log_softmax(logits, dim=1)
            logp_t = logp.gather(1, labels.unsqueeze(1)).squeeze(1)
            per = -((1 - logp_t.exp()) ** self.gamma) * logp_t
            if self.alpha is not None:
                alpha = torch.as_tensor(self.alpha, dtype=logits.dtype, device=logits.device)
                per = per * (alpha[labels] if alpha.dim() else alpha)
            per = _poisoned(per, ok)
        else:
            t = _as_pred(target, logits)
            ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
            p = torch.sigmoid(logits)
            p_t = p * t + (1 - p) * (1 - t)
            per = ce * (1 - p_t) ** self.gamma
            if self.alpha is not None:
                per = per * (self.alpha * t + (1 - self.alpha) * (1 - t))
        return _reduce(per, batch, self.sample_weight) * self.weight


@record
class SoftDice:
    """``1 - mean soft Dice`` over classes and samples, from logits (N, C, *spatial) and labels (N, *spatial).

    ``activation="sigmoid"`` treats each channel independently and expects a target of the
    same shape as ``pred`` (multi-label) or labels (single channel); ``None`` takes ``pred``
    as probabilities. Label maps of another size are resized to the prediction (``resize``).
    """

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=_WEIGHT)
    activation: str | None = attrs.field(default="softmax", validator=v.in_(("softmax", "sigmoid", None)))
    smooth: float = 1.0
    include_background: bool = True
    resize: str = attrs.field(default="nearest", validator=_RESIZE)

    def __call__(self, batch: Mapping) -> torch.Tensor:
        x, target = nd.get(batch, self.pred), nd.get(batch, self.target)
        ok = None
        if _dice_labels(target, x):
            target, ok = _class_targets(target, x.shape[1])
        if target.dim() == x.dim() - 1 and tuple(target.shape[1:]) != tuple(x.shape[2:]):
            target = resize_target(target, tuple(x.shape[2:]), self.resize)
        if self.activation == "softmax":
            probs = torch.softmax(x, dim=1)
        elif self.activation == "sigmoid":
            probs = torch.sigmoid(x)
        else:
            probs = x
        if target.shape == probs.shape:
            onehot = target.to(probs.dtype)
        elif probs.shape[1] == 1:
            onehot = target.to(probs.dtype).reshape(probs.shape)
        else:
            onehot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
        if not self.include_background and probs.shape[1] > 1:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dims = tuple(range(2, probs.dim()))
        inter = (probs * onehot).sum(dims)
        den = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (den + self.smooth)
        loss = 1 - dice.mean()
        return _poisoned(loss, ok) * self.weight


def _dice_labels(target: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether SoftDice reads ``target`` as class labels (one-hot encoded), not as per-channel values."""
    return target.dim() == x.dim() - 1 and x.shape[1] > 1


def resize_target(target: torch.Tensor, size: tuple, mode: str = "nearest") -> torch.Tensor:
    """Integer label maps (N, *spatial) resized to ``size``: ``"nearest"`` or ``"maxpool"`` (highest label wins)."""
    if tuple(target.shape[1:]) == tuple(size):
        return target.long()
    x = target[:, None].float()
    if mode == "nearest":
        out = F.interpolate(x, size=tuple(size), mode="nearest")
    elif mode == "maxpool":
        pool = F.adaptive_max_pool2d if len(size) == 2 else F.adaptive_max_pool3d
        out = pool(x, tuple(size))
    else:
        raise ConfigError(f"resize mode must be 'nearest' or 'maxpool', got {mode!r}")
    return out[:, 0].long()


def ipw_class_weights(target: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """Inverse class frequency in ``target``: ``total / (C * count_c)``, 0 for absent classes (fixed size C)."""
    classes = torch.arange(num_classes, device=target.device).view(1, num_classes, *([1] * (target.dim() - 1)))
    counts = (target.long().unsqueeze(1) == classes).sum(dim=[d for d in range(target.dim() + 1) if d != 1])
    counts = counts.to(dtype)
    total = counts.sum()
    return torch.where(counts > 0, total / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))


def _list_to_tuple(value):
    return tuple(value) if isinstance(value, list) else value


def _seg_weights(instance, attribute, value):
    # one of three kinds (None, "ipw", a tuple): no fusefn.validators combination says "one of"
    if value is not None and value != "ipw" and not isinstance(value, tuple):
        raise ConfigError(f"SegmentationCrossEntropy.class_weights must be None, 'ipw' or a tuple, got {value!r}")


@record
class SegmentationCrossEntropy:
    """Per-pixel cross-entropy of class maps (N, C, *spatial) against label maps, resized to the prediction.

    ``class_weights="ipw"`` weights each class by its inverse frequency in the batch's target
    (FuseMedML's segmentation loss); a tuple gives fixed weights.
    """

    pred: str
    target: str
    weight: float = attrs.field(default=1.0, validator=_WEIGHT)
    class_weights: str | tuple | None = attrs.field(default=None, converter=_list_to_tuple, validator=_seg_weights)
    resize: str = attrs.field(default="nearest", validator=_RESIZE)

    def __call__(self, batch: Mapping) -> torch.Tensor:
        logits, target = nd.get(batch, self.pred), nd.get(batch, self.target)
        if target.dim() == logits.dim():  # (N, 1, *spatial) label maps
            target = target[:, 0]
        target, ok = _class_targets(target, logits.shape[1], _TORCH_IGNORE)
        target = resize_target(target, tuple(logits.shape[2:]), self.resize)
        if self.class_weights == "ipw":
            w = ipw_class_weights(target, logits.shape[1], logits.dtype)
        else:
            w = _class_weights(self.class_weights, logits)
        return _poisoned(F.cross_entropy(logits, target, weight=w), ok) * self.weight


def total(losses: Mapping[str, Callable], batch: Mapping) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of the (already weighted) losses and each one by name."""
    if not losses:
        raise ConfigError("total: no losses given")
    parts = {name: loss(batch) for name, loss in losses.items()}
    values = list(parts.values())
    out = values[0]
    for x in values[1:]:
        out = out + x
    return out, parts


def apply(losses: Mapping[str, Callable], batch: Mapping) -> dict:
    """``batch`` with ``losses.<name>`` and ``keys.TOTAL_LOSS`` set (a new dict; the input is untouched)."""
    t, parts = total(losses, batch)
    return nd.assoc_many(batch, {**{f"losses.{k}": x for k, x in parts.items()}, keys.TOTAL_LOSS: t})


# ------------------------------------------------------------------------ explaining a failed loss


def _label_spec(loss, batch: Mapping) -> tuple[bool, int | None, int | None]:
    """``(class labels?, number of classes or None, ignored label or None)`` of ``loss``'s target."""
    pred_key = getattr(loss, "pred", None)
    pred = nd.get(batch, pred_key, default=None) if isinstance(pred_key, str) else None
    target = nd.get(batch, loss.target)
    classes = int(pred.shape[1]) if is_tensor(pred) and pred.dim() > 1 else None
    if isinstance(loss, CrossEntropy):
        return True, classes, loss.ignore_index
    if isinstance(loss, SegmentationCrossEntropy):
        return True, classes, _TORCH_IGNORE
    if isinstance(loss, Focal):
        multi = is_tensor(pred) and pred.dim() == target.dim() + 1 and pred.numel() != target.numel()
        return bool(multi and classes and classes > 1), classes, None
    if isinstance(loss, SoftDice):
        return bool(is_tensor(pred) and _dice_labels(target, pred)), classes, None
    if isinstance(loss, Loss) and loss.fn in (F.cross_entropy, F.nll_loss):
        ignore = dict(loss.kwargs).get("ignore_index", _TORCH_IGNORE)
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


def check_targets(losses: Mapping[str, Callable], batch: Mapping, *, step: str = "step") -> None:
    """Raise :class:`InvalidTargetError` when a loss's target in ``batch`` holds values the loss cannot take.

    Host-side and unhurried: run it after a loss failed or came out non-finite, to say why.
    ``batch`` is the step's output (predictions give the number of classes) or its input;
    ``step`` names where (e.g. ``"train step 12 (epoch 1, batch 3)"``). Losses without a
    ``target`` key are skipped; values are checked as class labels for the class-label losses
    and ``Loss(fn=F.cross_entropy | F.nll_loss)``, as finite numbers for the others.

    >>> ce = CrossEntropy(pred="p", target="t")
    >>> b = {"p": torch.zeros(3, 2), "t": torch.tensor([1.0, float("nan"), 5.0]), "data": {"sample_id": ["a", "b", "c"]}}
    >>> try:
    ...     check_targets({"ce": ce}, b, step="train step 0")
    ... except InvalidTargetError as e:
    ...     print(str(e)[:62])
    sample ['b', 'c'], op train step 0, loss 'ce', key 't': 2 of 3
    """
    ids = nd.get(batch, keys.SAMPLE_ID, default=None)
    for name, loss in losses.items():
        key = getattr(loss, "target", None)
        if not isinstance(key, str) or not nd.contains(batch, key):
            continue
        t = nd.get(batch, key)
        t = t if is_tensor(t) else torch.as_tensor(t)
        labels, classes, ignore = _label_spec(loss, batch)
        bad, valid = _bad_values(t, labels, classes, ignore)
        rows = torch.nonzero(bad.any(dim=1)).flatten().tolist()
        if not rows:
            continue
        flat = t.detach().cpu().reshape(bad.shape)
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
