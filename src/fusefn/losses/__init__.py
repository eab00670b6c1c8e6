"""Loss records: ``loss(batch_dict) -> scalar tensor``, and their weighted sum.

A loss reads its ``pred`` and target keys (``target``; ``time`` and ``event`` for the Cox
loss), computes a scalar and multiplies it by ``weight`` (as FuseMedML's LossDefault).
Losses are pure torch code with no ``.item()`` and no Python branch on tensor values, so
they run inside ``torch.func.grad`` and ``torch.compile``.

A loss is *not* a :class:`fusefn.protocols.Transform`: it maps a batch to a 0-d tensor,
not to a batch. Its protocol is ``__call__(batch: Mapping, /) -> torch.Tensor`` (a scalar,
already weighted), and any callable of that shape may be used as one. :func:`apply` is the
transform-shaped step: it writes a named set of losses and their sum (``keys.TOTAL_LOSS``)
into the batch.

* classification (:mod:`~fusefn.losses.classification`): :class:`Loss` (any ``F.*`` loss),
  :class:`CrossEntropy`, :class:`BCEWithLogits` (binary, multi-label with per-label
  ``pos_weight`` and a known-label ``mask``), :class:`Focal`;
* segmentation (:mod:`~fusefn.losses.segmentation`): :class:`SoftDice`, :class:`SegmentationCrossEntropy`;
* regression (:mod:`~fusefn.losses.regression`): :class:`MSE`, :class:`Huber`;
* survival (:mod:`~fusefn.losses.survival`): :class:`CoxPH` (Breslow ties), with
  :func:`breslow_baseline` and :func:`cox_survival` to turn risks into survival curves.

Class-label losses (:class:`CrossEntropy`, multi-class :class:`Focal`, :class:`SoftDice`,
:class:`SegmentationCrossEntropy`) never index with a label they cannot take (NaN, a
fraction, a class out of range, as a table without ``ToLabel`` gives): such a batch's loss
is NaN, found by the training loop's finite check, and :func:`check_targets` then names the
samples, the key and the loss (:class:`InvalidTargetError`).

>>> import attrs, torch
>>> batch = {"model": {"head_0": {"logits": torch.tensor([[2.0, 0.0], [0.0, 1.0]])}},
...          "data": {"gt": {"label": torch.tensor([0, 1])}}}
>>> ce = CrossEntropy(pred="model.head_0.logits", target="data.gt.label")
>>> round(float(ce(batch)), 4)
0.2201
>>> t, parts = total({"cls": ce, "cls2": attrs.evolve(ce, weight=0.5)}, batch)
>>> round(float(t), 4), sorted(parts)
(0.3301, ['cls', 'cls2'])
"""

from fusefn.losses.classification import BCEWithLogits, CrossEntropy, Focal, Loss, label_pos_weights
from fusefn.losses.combine import apply, total
from fusefn.losses.regression import MSE, Huber
from fusefn.losses.segmentation import SegmentationCrossEntropy, SoftDice, ipw_class_weights, resize_target
from fusefn.losses.survival import CoxPH, breslow_baseline, cox_partial_nll, cox_survival
from fusefn.losses.targets import InvalidTargetError, check_targets

__all__ = [
    "Loss",
    "CrossEntropy",
    "BCEWithLogits",
    "Focal",
    "SoftDice",
    "SegmentationCrossEntropy",
    "MSE",
    "Huber",
    "CoxPH",
    "total",
    "apply",
    "resize_target",
    "ipw_class_weights",
    "label_pos_weights",
    "cox_partial_nll",
    "breslow_baseline",
    "cox_survival",
    "check_targets",
    "InvalidTargetError",
]
