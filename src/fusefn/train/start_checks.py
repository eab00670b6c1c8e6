"""What ``fit`` checks before its first epoch: every key a metric, loss, callback or best-epoch rule reads.

Why: a misspelt key would otherwise show up late and quietly — a metric's after a whole
training epoch, an early-stopping source never (it is simply never found, so training
"stops" after ``patience`` epochs). Each is a :class:`~fusefn.errors.ConfigError` naming the
component, the key and the closest keys there are (:func:`difflib.get_close_matches`).

Batch keys (what metrics and losses read) are looked for among the keys of the first sample
of the training data (map-style datasets only), the keys the model writes (fusefn's model
records) and ``losses.*``; a kind of key whose source cannot be seen (an iterable of batches,
a model of your own) is not checked. Epoch-result keys (best epochs, early stopping, a
plateau rule) are checked against the keys the epoch results will have.

>>> from fusefn.train import EarlyStopping
>>> check_epoch_keys({"early stopping": EarlyStopping(source="validation.losses.totl_loss")},
...                  ["validation.losses.total_loss", "validation.metrics.auc"])
Traceback (most recent call last):
...
fusefn.errors.ConfigError: early stopping 'validation.losses.totl_loss' will not be in the epoch results; closest: validation.losses.total_loss, ...; available: ...
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

import attrs

from fusefn import keys, nd
from fusefn.errors import ConfigError
from fusefn.train.batches import is_map_dataset

__all__ = ["epoch_keys", "check_epoch_keys", "batch_keys_read", "check_batch_keys"]

_ROOTS = ("data.", "model.", "losses.")


def _closest(key: str, available: Iterable[str]) -> str:
    available = sorted(set(available))
    near = difflib.get_close_matches(key, available, n=3, cutoff=0.5)
    return ", ".join(near) if near else "none close"


def epoch_keys(losses: Mapping, metrics_by_mode: Mapping) -> list[str]:
    """The dotted keys (or their prefixes, for metrics with several values) of every epoch's results."""
    available = ["epoch", "learning_rate"]
    for mode, ms in metrics_by_mode.items():
        available += [f"{mode}.{keys.TOTAL_LOSS}"] + [f"{mode}.losses.{k}" for k in losses]
        available += [f"{mode}.metrics.{k}" for k in ms]
    return available


def _reads(component) -> tuple[str, ...]:
    reads = getattr(component, "reads", None)
    if callable(reads):
        return tuple(reads())
    source = getattr(component, "source", None)
    return (source,) if isinstance(source, str) else ()


def check_epoch_keys(readers, available: list[str]) -> None:
    """A ConfigError when a reader (``{what: component}`` or ``(what, component)`` pairs) reads a key that will not exist.

    A component says what it reads by ``reads() -> keys`` or a ``source`` field (BestEpochSource,
    EarlyStopping, ReduceLROnPlateau). ``validation.metrics.auc`` also covers ``…auc.macro``.
    """
    for what, component in readers.items() if isinstance(readers, Mapping) else readers:
        for key in _reads(component):
            if not any(key == a or key.startswith(a + ".") for a in available):
                raise ConfigError(
                    f"{what} {key!r} will not be in the epoch results; closest: {_closest(key, available)}; "
                    f"available: {', '.join(available)}"
                )


def batch_keys_read(component) -> list[str]:
    """The batch keys a metric or loss record reads: its string fields under ``data.``/``model.``/``losses.``.

    Nested records (a Bootstrap's metric) and tuples of keys are walked.
    """
    found: list[str] = []

    def walk(value, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(value, str):
            if value.startswith(_ROOTS):
                found.append(value)
        elif isinstance(value, (tuple, list)):
            for x in value:
                walk(x, depth + 1)
        elif attrs.has(type(value)):
            for f in attrs.fields(type(value)):
                if f.init:
                    walk(getattr(value, f.name), depth + 1)

    walk(component, 0)
    return found


def _sample_keys(data) -> list[str] | None:
    """The keys of the first sample (map-style data) or ready batch (a list or tuple of them)."""
    if data is None or not (is_map_dataset(data) or isinstance(data, (list, tuple))):
        return None
    try:
        if len(data) == 0:
            return None
        sample = data[0]
    except Exception:  # the first sample fails: training names it with its id
        return None
    return list(nd.flatten(sample)) if isinstance(sample, Mapping) else None


def check_batch_keys(readers: Mapping[str, object], *, model, losses: Mapping, data) -> None:
    """A ConfigError when a metric or loss (``{what: component}``) reads a batch key nothing will write."""
    sample = None
    if any(k.startswith("data.") for c in readers.values() for k in batch_keys_read(c)):
        sample = _sample_keys(data)  # read only when needed: a sample may be costly
    writes = getattr(model, "writes", None)
    model_keys = list(writes()) if callable(writes) else None
    loss_keys = [keys.TOTAL_LOSS, *(f"losses.{k}" for k in losses)]
    for what, component in readers.items():
        for key in batch_keys_read(component):
            if key.startswith("losses."):
                pool = loss_keys
            elif key.startswith("model.") and model_keys is not None:
                pool = model_keys
            elif key.startswith("data.") and sample is not None:
                pool = sample
            else:
                continue
            if not any(key == a or a.startswith(key + ".") for a in pool):
                seen = [*(sample or []), *(model_keys or []), *loss_keys]
                raise ConfigError(
                    f"{what} reads {key!r}, which no batch will have (not in the first training sample, not "
                    f"written by the model); closest: {_closest(key, seen)}"
                )
