"""Optimizers as ``init``/``update`` pairs over flat parameter dicts, with torch's own math.

An optimizer is a frozen record; its state lives outside it (optax-style)::

    state = opt.init(params)
    params, state = opt.update(grads, state, params)

``params`` and ``grads`` are flat dicts ``name -> Tensor`` (what
``fusefn.models.init`` returns). The update math is torch's own:
:func:`torch.optim.adamw.adamw`, :func:`torch.optim.adam.adam` and
:func:`torch.optim.sgd.sgd` are called on the tensors of the dicts, so N steps
here equal N steps of ``torch.optim.AdamW``/``SGD`` to float rounding. Eager on
the CPU, Adam and AdamW run torch's fused kernel (bit for bit ``torch.optim.AdamW(
..., fused=True)``), which is much cheaper per step than torch's default loop over
tensors. Like JAX buffer donation, ``update`` writes the new values into the
storage of ``params`` and of the state it is given; the caller must not use the
old ones afterwards. That is what saves a copy of the parameters per step.

Learning rates are floats or *schedules* (:mod:`fusefn.optim.schedules`): records that
map a step tensor to an lr tensor, so a compiled step sees a tensor whose value changes
and never recompiles. ``chain`` (the one :func:`fusefn.chain`) runs gradient transforms
(clipping, schedule scaling, :mod:`fusefn.optim.transforms`) before the optimizer;
:class:`ReduceLROnPlateau` (:mod:`fusefn.optim.plateau`) is a pure fold over epoch results
whose output is a multiplier handed to ``update(..., lr_scale=)``.

Fine-tuning: :func:`freeze` and :func:`param_groups` (:mod:`fusefn.optim.groups`) give groups of
parameters, chosen by name pattern, their own transform (or none); ``decay="weights"`` keeps
weight decay off biases and norms; :func:`from_torch` (:mod:`fusefn.optim.torch_optim`) makes
any ``torch.optim`` optimizer a transform.

>>> import torch
>>> params = {"w": torch.ones(3)}
>>> opt = chain(clip_by_global_norm(1.0), sgd(lr=0.5))
>>> state = opt.init(params)
>>> params, state = opt.update({"w": torch.full((3,), 10.0)}, state, params)
>>> params["w"]  # clipped gradient has norm 1, so each entry moves by 0.5/sqrt(3)
tensor([0.7113, 0.7113, 0.7113])
"""

from fusefn.core import chain

from .groups import BiasAndNorm, Frozen, ParamGroups, freeze, frozen, no_decay_on_bias_and_norm, param_groups
from .plateau import ReduceLROnPlateau
from .schedules import (
    Constant,
    CosineDecay,
    LinearWarmup,
    Schedule,
    StepDecay,
    WarmupCosine,
    constant,
    cosine_decay,
    linear_warmup,
    step_decay,
    warmup_cosine,
)
from .torch_optim import TorchOptimizer, from_torch
from .transforms import (
    Adam,
    AdamW,
    Chain,
    ClipByGlobalNorm,
    GradientTransform,
    ScaleBySchedule,
    Sgd,
    adam,
    adamw,
    clip_by_global_norm,
    learning_rate,
    scale_by_schedule,
    sgd,
)

__all__ = [
    "Schedule",
    "Constant",
    "CosineDecay",
    "LinearWarmup",
    "WarmupCosine",
    "StepDecay",
    "constant",
    "cosine_decay",
    "linear_warmup",
    "warmup_cosine",
    "step_decay",
    "GradientTransform",
    "Sgd",
    "Adam",
    "AdamW",
    "Chain",
    "ClipByGlobalNorm",
    "ScaleBySchedule",
    "sgd",
    "adam",
    "adamw",
    "chain",
    "clip_by_global_norm",
    "scale_by_schedule",
    "learning_rate",
    "ReduceLROnPlateau",
    "ParamGroups",
    "Frozen",
    "BiasAndNorm",
    "param_groups",
    "freeze",
    "frozen",
    "no_decay_on_bias_and_norm",
    "TorchOptimizer",
    "from_torch",
]
