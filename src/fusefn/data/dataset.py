"""Dataset = source + static pipeline (cached) + dynamic pipeline; collate samples into a batch_dict.

>>> import numpy as np, polars as pl
>>> from fusefn import chain
>>> from fusefn.data import DataSource, ops
>>> src = DataSource.from_frame(pl.DataFrame({"sample_id": ["a", "b", "c"], "label": [0, 1, 1]}))
>>> fill = lambda s: {**s, "data": {**s["data"], "input": {"img": np.ones((1, 2, 2), np.float32)}}}
>>> ds = Dataset(source=src, static=chain(fill, ops.TableRow(table=src.frame, columns={"label": "data.gt.label"})))
>>> len(ds), ds[1]["data"]["gt"]["label"]
(3, 1)
>>> batch = collate([ds[0], ds[1]])
>>> batch["data"]["sample_id"], tuple(batch["data"]["input"]["img"].shape), batch["data"]["gt"]["label"].tolist()
(['a', 'b'], (2, 1, 2, 2), [0, 1])
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from fusefn import nd
from fusefn.core import derive_seed, record
from fusefn.data.cache import H5Cache, NotCachedError, initial_samples, store_key
from fusefn.data.pipeline import run_pipeline
from fusefn.data.sources import DataSource
from fusefn.errors import ConfigError, SampleError

__all__ = ["Dataset", "collate", "uncollate", "loader", "wrap_torch_dataset", "TorchDatasetAdapter"]

SAMPLE_ID = "data.sample_id"
_log = logging.getLogger("fusefn")


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _as_source(value):
    if isinstance(value, DataSource):
        return value
    return tuple(value)


@record
class Dataset:
    """Samples of ``source`` through the ``static`` pipeline (cached when ``cache`` is given), then ``dynamic``.

    Args:
        source: a :class:`DataSource` or a sequence of sample ids.
        static: per-sample ops run once (file reads, resampling); ops may drop (``None``) or
            split (a list) a sample. Defaults to ``cache.pipeline``.
        dynamic: per-sample ops run on every access (cheap, per-epoch work).
        cache: an :class:`H5Cache`; built at construction for samples not stored yet.
        eager: without a cache, run ``static`` over every sample now and keep the results in
            memory (needed when static ops drop or split samples and there is no cache).

    ``dataset[i]`` is a sample dict. With a cache, a sample whose static pipeline
    failed raises its recorded :class:`~fusefn.errors.SampleError`.
    """

    source: DataSource | tuple = attrs.field(converter=_as_source, repr=False)
    static: Callable | None = None
    dynamic: Callable | None = None
    cache: H5Cache | None = None
    eager: bool = False
    _ids: list = attrs.field(init=False, eq=False, repr=False)
    _initial: dict = attrs.field(init=False, eq=False, repr=False)
    _memory: dict | None = attrs.field(init=False, eq=False, repr=False)
    report: Any = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        if self.cache is not None:
            if self.static is None:
                object.__setattr__(self, "static", self.cache.pipeline)
            elif store_key(self.static) != self.cache.fingerprint:
                raise ConfigError("Dataset.static differs from Dataset.cache.pipeline: give one pipeline, to the cache")
        samples = initial_samples(self.source)
        object.__setattr__(self, "_initial", {_key(s["data"]["sample_id"]): s for s in samples})
        object.__setattr__(self, "_memory", None)
        object.__setattr__(self, "report", None)
        if self.cache is not None:
            object.__setattr__(self, "report", self.cache.build(samples))
            ids = self.cache.ids(samples)
        elif self.eager:
            memory = {}
            for s in samples:
                for out in _unique_ids(s["data"]["sample_id"], run_pipeline(self.static, s)):
                    memory[_key(out["data"]["sample_id"])] = out
            object.__setattr__(self, "_memory", memory)
            ids = [m["data"]["sample_id"] for m in memory.values()]
        else:
            ids = [s["data"]["sample_id"] for s in samples]
        if not ids:
            raise ConfigError("Dataset: no samples left (every sample was dropped or failed)")
        object.__setattr__(self, "_ids", ids)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list:
        """Sample ids by index (after the static pipeline: dropped samples gone, splits expanded)."""
        return list(self._ids)

    def static_sample(self, i: int) -> dict:
        """Sample ``i`` after the static pipeline only (from the cache when there is one)."""
        sid = self._ids[i]
        if self._memory is not None:
            return self._memory[_key(sid)]
        if self.cache is not None:
            try:
                return self.cache.read(sid)
            except NotCachedError as exc:
                if _key(sid) not in self._initial:
                    raise
                # its shard was damaged after the build: recompute rather than fail the epoch
                _log.warning("%s; computing it without the cache", exc)
        outs = run_pipeline(self.static, self._initial[_key(sid)])
        if len(outs) != 1:
            raise SampleError(
                f"the static pipeline gave {len(outs)} samples; use a cache or eager=True when ops drop or split samples",
                sample_id=sid,
            )
        return outs[0]

    def __getitem__(self, i: int) -> dict:
        if not -len(self._ids) <= i < len(self._ids):
            raise IndexError(f"index {i} out of range for a Dataset of {len(self._ids)} samples")
        sample = self.static_sample(i)
        if self.dynamic is None:
            return sample
        outs = run_pipeline(self.dynamic, sample)
        if len(outs) != 1:
            raise SampleError(f"the dynamic pipeline gave {len(outs)} samples, not 1", sample_id=self._ids[i])
        return outs[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        # DataLoader fetches a whole batch through this when present
        return [self[i] for i in indices]

    def values(self, key: str) -> list:
        """The value at ``key`` of every sample after the static pipeline (e.g. labels for a sampler)."""
        if self.cache is not None and self._memory is None:
            out = []
            for sid in self._ids:
                s = self.cache.read(sid, keys=(key,))
                out.append(_value(s, key, sid))
            return out
        return [_value(self.static_sample(i), key, self._ids[i]) for i in range(len(self))]

    def summary(self, label_key: str | None = "data.gt.label", max_samples: int | None = None) -> dict:
        """Counts, label distribution and array shapes/dtypes of the static samples.

        Returns:
            ``{"sources", "samples", "dropped", "failed", "labels": {value: count},
            "shapes": {key: {shape: count}}, "dtypes": {key: [dtype, ...]}}``.
        """
        n = len(self) if max_samples is None else min(len(self), max_samples)
        labels: collections.Counter = collections.Counter()
        shapes: dict = collections.defaultdict(collections.Counter)
        dtypes: dict = collections.defaultdict(set)
        for i in range(n):
            flat = nd.flatten(self.static_sample(i))
            for k, v in flat.items():
                if _is_tensor(v) or isinstance(v, np.ndarray):
                    shapes[k][tuple(v.shape)] += 1
                    dtypes[k].add(str(v.dtype).removeprefix("torch."))
            if label_key is not None and label_key in flat:
                v = flat[label_key]
                labels[_label_value(v)] += 1
        dropped = failed = 0
        if self.cache is not None:
            for s in self._initial.values():
                e = self.cache.entry(s["data"]["sample_id"])
                dropped += e is not None and e["status"] == "dropped"
                failed += e is not None and e["status"] == "failed"
        return {
            "sources": len(self._initial),
            "samples": len(self),
            "summarized": n,
            "dropped": dropped,
            "failed": failed,
            "labels": dict(sorted(labels.items(), key=lambda kv: str(kv[0]))),
            "shapes": {k: dict(c) for k, c in shapes.items()},
            "dtypes": {k: sorted(v) for k, v in dtypes.items()},
        }


def _label_value(v):
    if isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    if hasattr(v, "tolist"):
        return str(v.tolist())
    return str(v)


def _key(sid) -> tuple:
    return (type(sid).__name__, sid)


def _value(sample, key, sid):
    try:
        return nd.get(sample, key)
    except KeyError as exc:
        raise SampleError(str(exc), sample_id=sid, key=key) from None


def _unique_ids(sid, outs: list[dict]) -> list[dict]:
    if len(outs) > 1 and len({_key(nd.get(o, SAMPLE_ID, sid)) for o in outs}) != len(outs):
        outs = [nd.assoc(o, SAMPLE_ID, f"{sid}#{k}") for k, o in enumerate(outs)]
    return [o if nd.contains(o, SAMPLE_ID) else nd.assoc(o, SAMPLE_ID, sid) for o in outs]


# ------------------------------------------------------------------------------ collate


def _ids_of(flat: list[dict]) -> list:
    return [f.get(SAMPLE_ID, i) for i, f in enumerate(flat)]


def _describe_shapes(ids, shapes) -> str:
    groups: dict = collections.defaultdict(list)
    for sid, shape in zip(ids, shapes):
        groups[shape].append(sid)
    return "; ".join(f"{shape}: {ids_[:4]}{' …' if len(ids_) > 4 else ''}" for shape, ids_ in groups.items())


def _pad_stack(key, ts, ids, pad_value):
    import torch
    import torch.nn.functional as F

    ndims = {t.ndim for t in ts}
    if len(ndims) > 1:
        raise SampleError(
            f"cannot pad arrays with different numbers of axes: {_describe_shapes(ids, [tuple(t.shape) for t in ts])}",
            key=key,
            op="collate",
        )
    target = [max(s) for s in zip(*(t.shape for t in ts))]
    out = []
    for t in ts:
        widths = []
        for have, want in zip(reversed(t.shape), reversed(target)):
            widths += [0, want - have]
        out.append(F.pad(t, widths, value=pad_value) if any(widths) else t)
    return torch.stack(out)


def collate(samples: Sequence[Mapping], pad: bool | Sequence[str] = False, pad_value: float = 0.0) -> dict:
    """Samples into a batch_dict: arrays/tensors stacked, numbers into tensors, the rest as lists.

    Args:
        pad: pad arrays to the largest shape in the batch (at the end of each axis) instead of
            raising on a shape mismatch; ``True`` for every key or a list of keys.
        pad_value: the value padding fills with.

    ``data.sample_id``, strings and other objects stay lists. A key missing from some
    samples, or arrays of different shapes (without ``pad``), raise an error naming the
    key and the sample ids.
    """
    import torch

    if not samples:
        raise ConfigError("collate: no samples")
    flat = [nd.flatten(s) for s in samples]
    ids = _ids_of(flat)
    keys: dict[str, None] = {}
    for f in flat:
        keys.update(dict.fromkeys(f))
    pad_keys = set(keys) if pad is True else set(pad or ())
    out: dict[str, Any] = {}
    for key in keys:
        lacking = [sid for sid, f in zip(ids, flat) if key not in f]
        if lacking:
            raise SampleError(f"key missing from samples {lacking[:5]} (present in others)", key=key, op="collate")
        vals = [f[key] for f in flat]
        if key == SAMPLE_ID:
            out[key] = vals
        elif all(_is_tensor(v) or isinstance(v, np.ndarray) for v in vals) and not any(
            isinstance(v, np.ndarray) and v.dtype.kind not in "biufc" for v in vals
        ):
            ts = [v if _is_tensor(v) else torch.from_numpy(np.ascontiguousarray(v)) for v in vals]
            shapes = [tuple(t.shape) for t in ts]
            if len(set(shapes)) == 1:
                out[key] = torch.stack(ts)
            elif key in pad_keys:
                out[key] = _pad_stack(key, ts, ids, pad_value)
            else:
                raise SampleError(
                    f"arrays of different shapes cannot be stacked ({_describe_shapes(ids, shapes)}); "
                    "resize them or collate with pad=True",
                    key=key,
                    op="collate",
                )
        elif all(isinstance(v, (bool, np.bool_)) for v in vals):
            out[key] = torch.tensor([bool(v) for v in vals])
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in vals):
            out[key] = torch.tensor([int(v) for v in vals], dtype=torch.int64)
        elif all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in vals):
            out[key] = torch.tensor([float(v) for v in vals], dtype=torch.float32)
        else:
            out[key] = vals
    return nd.unflatten(out)


def uncollate(batch: Mapping) -> list[dict]:
    """A batch_dict back into per-sample dicts (tensors split along axis 0, lists item by item)."""
    flat = nd.flatten(batch)
    sizes = {k: (len(v) if not _is_tensor(v) else (v.shape[0] if v.ndim else None)) for k, v in flat.items()}
    known = {s for s in sizes.values() if s is not None}
    if len(known) != 1:
        raise ConfigError(f"uncollate: keys disagree on the batch size: {sizes}")
    (n,) = known
    return [nd.unflatten({k: v[i] for k, v in flat.items()}) for i in range(n)]


def loader(
    dataset,
    batch_size: int = 1,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    batch_sampler=None,
    workers: int = 0,
    drop_last: bool = False,
    pad: bool | Sequence[str] = False,
):
    """A torch ``DataLoader`` over ``dataset`` that yields batch_dicts, its order seeded from ``(seed, epoch)``.

    Args:
        batch_sampler: e.g. a :class:`~fusefn.data.BalancedBatchSampler` (then ``batch_size``,
            ``shuffle`` and ``drop_last`` are not used).
        workers: DataLoader worker processes; each opens the cache on its own.
        pad: passed to :func:`collate`.

    >>> import torch
    >>> ds = wrap_torch_dataset(torch.utils.data.TensorDataset(torch.arange(4.0), torch.arange(4)))
    >>> [b["data"]["sample_id"] for b in loader(ds, batch_size=2, shuffle=True, seed=1)]
    [[3, 0], [2, 1]]
    """
    import functools

    import torch

    collate_fn = functools.partial(collate, pad=pad) if pad else collate
    common = {"num_workers": workers, "collate_fn": collate_fn, "persistent_workers": False}
    if batch_sampler is not None:
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **common)
    generator = torch.Generator().manual_seed(derive_seed(seed, "loader", epoch))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator, **common
    )


# ------------------------------------------------------------------ torch datasets


@record
class TorchDatasetAdapter:
    """A torch Dataset returning tuples, seen as fusefn sample dicts (the seed's DatasetWrapper)."""

    dataset: Any = attrs.field(eq=False, repr=False)
    keys: tuple = attrs.field(converter=tuple)

    def __attrs_post_init__(self):
        if not self.keys:
            raise ConfigError("wrap_torch_dataset.keys is empty")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)):
            item = (item,)
        if len(item) != len(self.keys):
            raise SampleError(f"the dataset returned {len(item)} values for keys {list(self.keys)}", sample_id=i)
        sample = {"data": {"sample_id": i}}
        for k, v in zip(self.keys, item):
            sample = nd.assoc(sample, k, v)
        return sample


def wrap_torch_dataset(dataset, keys: Sequence[str] = ("data.input.img", "data.gt.label")) -> TorchDatasetAdapter:
    """Wrap a torch Dataset of tuples so item ``i`` is ``{"data": {"sample_id": i, <keys>: values}}``.

    >>> import torch
    >>> tds = torch.utils.data.TensorDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2]))
    >>> wrap_torch_dataset(tds)[2]["data"]["gt"]["label"]
    tensor(2)
    """
    return TorchDatasetAdapter(dataset=dataset, keys=keys)
