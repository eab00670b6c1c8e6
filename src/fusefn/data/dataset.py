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
from fusefn import validators as v
from fusefn._types import is_tensor
from fusefn.core import Rng, record
from fusefn.data.cache import BuildReport, H5Cache, NotCachedError, ReaderSlot, id_key, initial_samples, store_key
from fusefn.data.cache.inputs import input_digest, unique_outputs
from fusefn.data.order import EpochSampler, index_batches
from fusefn.data.pipeline import run_pipeline
from fusefn.data.sources import DataSource
from fusefn.errors import ConfigError, FusefnError, SampleError
from fusefn.keys import IMAGE, LABEL, SAMPLE_ID

__all__ = ["Dataset", "collate", "uncollate", "loader", "wrap_torch_dataset", "TorchDatasetAdapter"]

_log = logging.getLogger("fusefn")


def _as_source(value):
    if isinstance(value, DataSource):
        return value
    return tuple(value)


@record
class _Built:
    """What :meth:`Dataset.build` found: the sample ids by index and where each sample comes from."""

    ids: tuple
    initial: Mapping = attrs.field(eq=False, repr=False)  # id key -> the sample dict the static pipeline starts from
    memory: Mapping | None = attrs.field(eq=False, repr=False)  # id key -> static output (eager, no cache)
    report: BuildReport | None = None
    # id key -> input digest of the source row: the cache serves only rows built from these
    expect: Mapping | None = attrs.field(default=None, eq=False, repr=False)


def _default_static(ds: Dataset) -> Callable | None:
    return ds.cache.pipeline if ds.cache is not None else None


def _lazy_view(ds: Dataset) -> _Built | None:
    """A Dataset that runs its static pipeline on every access needs no build: its view is its source."""
    if ds.cache is not None or ds.eager:
        return None
    samples = initial_samples(ds.source)
    if not samples:
        raise ConfigError("Dataset: no samples left (every sample was dropped or failed)")
    return _Built(
        ids=tuple(s["data"]["sample_id"] for s in samples),
        initial={id_key(s["data"]["sample_id"]): s for s in samples},
        memory=None,
    )


@record
class Dataset:
    """Samples of ``source`` through the ``static`` pipeline (cached when ``cache`` is given), then ``dynamic``.

    Args:
        source: a :class:`DataSource` or a sequence of sample ids.
        static: per-sample ops run once (file reads, resampling); ops may drop (``None``) or
            split (a list) a sample. Defaults to ``cache.pipeline``.
        dynamic: per-sample ops run on every access (cheap, per-epoch work).
        cache: an :class:`H5Cache`; :meth:`build` stores the samples not stored yet.
        eager: without a cache, :meth:`build` runs ``static`` over every sample and keeps the
            results in memory (needed when static ops drop or split samples and there is no cache).

    Constructing a Dataset reads no file and starts no process. One with a cache (or
    ``eager``) is built explicitly: ``ds = Dataset(...).build()`` returns a built copy;
    reading one that was not built raises an error saying so. One without either runs
    ``static`` on every access and needs no build (:meth:`build` returns it unchanged).

    ``dataset[i]`` is a sample dict. With a cache, a sample whose static pipeline
    failed raises its recorded :class:`~fusefn.errors.SampleError`. Each process reads
    the cache through its own :class:`~fusefn.data.cache.Reader`, opened on its first
    read and kept on this instance (DataLoader workers, forked or spawned, open theirs).
    That reader serves only rows built from this Dataset's source rows and whose checksums
    hold; any other stored row (another table sharing the cache root, a damaged shard) is
    recomputed from the source instead, with a warning.
    """

    source: DataSource | tuple = attrs.field(converter=_as_source, repr=False)
    cache: H5Cache | None = attrs.field(default=None, validator=v.optional(v.instance_of(H5Cache)))
    static: Callable | None = attrs.field(
        default=attrs.Factory(_default_static, takes_self=True), validator=v.optional(v.is_callable)
    )
    dynamic: Callable | None = attrs.field(default=None, validator=v.optional(v.is_callable))
    eager: bool = False
    _built: _Built | None = attrs.field(
        alias="_built", default=attrs.Factory(_lazy_view, takes_self=True), eq=False, repr=False
    )
    _reader: ReaderSlot = attrs.field(init=False, factory=ReaderSlot, eq=False, repr=False)

    def __attrs_post_init__(self):
        cache = self.cache
        if cache is not None and self.static is not cache.pipeline and store_key(self.static) != cache.fingerprint:
            raise ConfigError("Dataset.static differs from Dataset.cache.pipeline: give one pipeline, to the cache")

    def build(
        self, *, workers: int | None = None, progress: bool | None = None, allow_missing: bool = False
    ) -> Dataset:
        """This Dataset, built: its cache holds every sample (or, ``eager``, its samples are in memory).

        Resumable and cheap when nothing is missing: samples already stored are reused.
        ``workers`` and ``progress`` override the cache's for this build. Without a cache
        and without ``eager``, returns this Dataset unchanged.

        Samples the build did not store (a build worker died) are an error naming them, unless
        ``allow_missing``: then the Dataset holds the samples that were stored. Samples whose
        static pipeline failed or dropped them are left out either way (see :attr:`report`).
        """
        if self.cache is None and not self.eager:
            return self
        samples = initial_samples(self.source)
        memory = report = reader = expect = None
        if self.cache is not None:
            report = self.cache.build(samples, workers=workers, progress=progress)
            expect = {id_key(s["data"]["sample_id"]): input_digest(s) for s in samples}
            reader = self.cache.open(expect=expect)
            lost = [s["data"]["sample_id"] for s in samples if reader.entry(s["data"]["sample_id"]) is None]
            if lost and not allow_missing:
                reader.close()
                raise FusefnError(
                    f"Dataset: the cache build did not store {len(lost)} of {len(samples)} samples (a build "
                    f"worker was lost?), e.g. {lost[:5]}; build again, or pass allow_missing=True to use the rest "
                    f"(store {self.cache.path})"
                )
            if lost:
                _log.warning("Dataset: %d samples were not stored and are left out, e.g. %s", len(lost), lost[:5])
            ids = reader.ids(samples)
        else:
            memory = {}
            for s in samples:
                for out in unique_outputs(s["data"]["sample_id"], run_pipeline(self.static, s)):
                    memory[id_key(out["data"]["sample_id"])] = out
            ids = [m["data"]["sample_id"] for m in memory.values()]
        if not ids:
            raise ConfigError("Dataset: no samples left (every sample was dropped or failed)")
        initial = {id_key(s["data"]["sample_id"]): s for s in samples}
        built = attrs.evolve(
            self, _built=_Built(ids=tuple(ids), initial=initial, memory=memory, report=report, expect=expect)
        )
        if reader is not None:
            built._reader.get(lambda: reader)  # the reader that listed the ids serves this process's reads
        return built

    def _view(self) -> _Built:
        if self._built is None:
            what = "a cache" if self.cache is not None else "eager=True"
            raise FusefnError(f"this Dataset has {what} and is not built: use ds = ds.build() before reading it")
        return self._built

    @property
    def report(self) -> BuildReport | None:
        """What the cache build of :meth:`build` did (``None`` without a cache or before the build)."""
        return None if self._built is None else self._built.report

    def __len__(self) -> int:
        return len(self._view().ids)

    @property
    def ids(self) -> list:
        """Sample ids by index (after the static pipeline: dropped samples gone, splits expanded)."""
        return list(self._view().ids)

    def _cache_reader(self):
        expect = self._view().expect
        return self._reader.get(lambda: self.cache.open(expect=expect))

    def static_sample(self, i: int) -> dict:
        """Sample ``i`` after the static pipeline only (from the cache when there is one)."""
        view = self._view()
        sid = view.ids[i]
        if view.memory is not None:
            return view.memory[id_key(sid)]
        if self.cache is not None:
            reader = self._cache_reader()
            try:
                return reader.read(sid)
            except NotCachedError as exc:
                if id_key(sid) not in view.initial:
                    raise  # an output of a split: its source cannot be recomputed into it alone
                # built from another row since, or its shard was damaged: recompute rather than fail the epoch
                # (warned once per shard: a whole shard of misses would flood the log)
                if exc.shard is None or exc.shard not in reader.warned:
                    reader.warned.add(exc.shard)
                    _log.warning("%s; computing it without the cache", exc)
        outs = run_pipeline(self.static, view.initial[id_key(sid)])
        if len(outs) != 1:
            raise SampleError(
                f"the static pipeline gave {len(outs)} samples; use a cache or eager=True when ops drop or split samples",
                sample_id=sid,
            )
        return outs[0]

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a Dataset of {n} samples")
        sample = self.static_sample(i)
        if self.dynamic is None:
            return sample
        outs = run_pipeline(self.dynamic, sample)
        if len(outs) != 1:
            raise SampleError(f"the dynamic pipeline gave {len(outs)} samples, not 1", sample_id=self._view().ids[i])
        return outs[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        # DataLoader fetches a whole batch through this when present
        return [self[i] for i in indices]

    def values(self, key: str) -> list:
        """The value at ``key`` of every sample after the static pipeline (e.g. labels for a sampler)."""
        view = self._view()
        if self.cache is not None and view.memory is None:
            reader = self._cache_reader()
            out = []
            for i, sid in enumerate(view.ids):
                try:
                    out.append(_value(reader.read(sid, keys=(key,)), key, sid))
                except NotCachedError:
                    out.append(_value(self.static_sample(i), key, sid))
            return out
        return [_value(self.static_sample(i), key, view.ids[i]) for i in range(len(self))]

    def summary(self, label_key: str | None = LABEL, max_samples: int | None = None) -> dict:
        """Counts, label distribution and array shapes/dtypes of the static samples.

        Returns:
            ``{"sources", "samples", "dropped", "failed", "labels": {value: count},
            "shapes": {key: {shape: count}}, "dtypes": {key: [dtype, ...]}}``.
        """
        view = self._view()
        n = len(self) if max_samples is None else min(len(self), max_samples)
        labels: collections.Counter = collections.Counter()
        shapes: dict = collections.defaultdict(collections.Counter)
        dtypes: dict = collections.defaultdict(set)
        for i in range(n):
            flat = nd.flatten(self.static_sample(i))
            for k, x in flat.items():
                if is_tensor(x) or isinstance(x, np.ndarray):
                    shapes[k][tuple(x.shape)] += 1
                    dtypes[k].add(str(x.dtype).removeprefix("torch."))
            if label_key is not None and label_key in flat:
                labels[_label_value(flat[label_key])] += 1
        dropped = failed = 0
        if self.cache is not None:
            reader = self._cache_reader()
            for s in view.initial.values():
                e = reader.entry(s["data"]["sample_id"])
                dropped += e is not None and e["status"] == "dropped"
                failed += e is not None and e["status"] == "failed"
        return {
            "sources": len(view.initial),
            "samples": len(self),
            "summarized": n,
            "dropped": dropped,
            "failed": failed,
            "labels": dict(sorted(labels.items(), key=lambda kv: str(kv[0]))),
            "shapes": {k: dict(c) for k, c in shapes.items()},
            "dtypes": {k: sorted(d) for k, d in dtypes.items()},
        }


def _label_value(x):
    """A label as a dict key: Python scalars as they are, 0-d arrays and tensors as their value, others as text."""
    if isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, (np.ndarray, np.generic)) or is_tensor(x):
        return x.item() if x.ndim == 0 else str(x.tolist())
    return str(x)


def _value(sample, key, sid):
    try:
        return nd.get(sample, key)
    except KeyError as exc:
        raise SampleError(str(exc), sample_id=sid, key=key) from None


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
        elif all(is_tensor(v) or isinstance(v, np.ndarray) for v in vals) and not any(
            isinstance(v, np.ndarray) and v.dtype.kind not in "biufc" for v in vals
        ):
            ts = [v if is_tensor(v) else torch.from_numpy(np.ascontiguousarray(v)) for v in vals]
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
    sizes = {k: (len(v) if not is_tensor(v) else (v.shape[0] if v.ndim else None)) for k, v in flat.items()}
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
    rng: Rng | None = None,
    epoch: int = 0,
    batch_sampler=None,
    workers: int = 0,
    drop_last: bool = False,
    pad: bool | Sequence[str] = False,
):
    """A torch ``DataLoader`` over ``dataset`` that yields batch_dicts in the order of :func:`~fusefn.data.index_batches`.

    Args:
        shuffle: shuffle with ``rng.child("shuffle", epoch)`` (``rng`` defaults to ``Rng(0)``), the
            stream :func:`fusefn.train.fit` uses for the same epoch.
        batch_sampler: e.g. a :class:`~fusefn.data.BalancedBatchSampler` (then ``batch_size``,
            ``shuffle``, ``rng`` and ``drop_last`` are not used).
        workers: DataLoader worker processes; each opens the cache on its own.
        pad: passed to :func:`collate`.

    >>> import torch
    >>> from fusefn import Rng
    >>> ds = wrap_torch_dataset(torch.utils.data.TensorDataset(torch.arange(4.0), torch.arange(4)))
    >>> [b["data"]["sample_id"] for b in loader(ds, batch_size=2, shuffle=True, rng=Rng(1))]
    [[2, 1], [0, 3]]
    """
    import functools

    import torch

    collate_fn = functools.partial(collate, pad=pad) if pad else collate
    common = {"num_workers": workers, "collate_fn": collate_fn, "persistent_workers": False}
    if batch_sampler is not None:
        if isinstance(batch_sampler, EpochSampler):
            batch_sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **common)
    order = (rng or Rng(0)).child("shuffle", epoch) if shuffle else None
    batches = index_batches(len(dataset), batch_size=batch_size, rng=order, drop_last=drop_last)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, **common)


# ------------------------------------------------------------------ torch datasets


@record
class TorchDatasetAdapter:
    """A torch Dataset returning tuples, seen as fusefn sample dicts (FuseMedML's DatasetWrapper)."""

    dataset: Any = attrs.field(eq=False, repr=False)
    keys: tuple = attrs.field(converter=tuple, validator=v.and_(v.min_len(1), v.keys))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)):
            item = (item,)
        if len(item) != len(self.keys):
            raise SampleError(f"the dataset returned {len(item)} values for keys {list(self.keys)}", sample_id=i)
        sample = {"data": {"sample_id": i}}
        for k, x in zip(self.keys, item):
            sample = nd.assoc(sample, k, x)
        return sample


def wrap_torch_dataset(dataset, keys: Sequence[str] = (IMAGE, LABEL)) -> TorchDatasetAdapter:
    """Wrap a torch Dataset of tuples so item ``i`` is ``{"data": {"sample_id": i, <keys>: values}}``.

    >>> import torch
    >>> tds = torch.utils.data.TensorDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2]))
    >>> wrap_torch_dataset(tds)[2]["data"]["gt"]["label"]
    tensor(2)
    """
    return TorchDatasetAdapter(dataset=dataset, keys=keys)
