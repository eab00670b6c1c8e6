"""Random patches from whole volumes: ``n`` per volume per epoch, centred on classes in a given ratio.

:class:`PatchSampler` is the configuration and its pure functions: :meth:`~PatchSampler.plan`
draws the ``n`` patch origins of one volume from an :class:`~fusefn.Rng` (vectorised: one draw per
class, ``numpy.unravel_index`` over the stored flat indices of
:class:`~fusefn.data.ops.ForegroundIndices`), :meth:`~PatchSampler.cut` cuts one patch (NumPy
slicing, padded where it leaves the volume) with its own affine.

:class:`PatchDataset` wraps a map-style dataset of volumes (a built :class:`~fusefn.data.Dataset`
over the cache) as a torch ``IterableDataset``: each volume is read once, and its ``n`` patches
are cut one by one as they are consumed. Volume ``i`` of epoch ``e`` always gets the patches of
``rng.child("patches", e, i)``, whichever DataLoader worker or DDP rank reads it, and each
volume is read by exactly one worker of one rank: patches are distinct across workers and ranks,
and the same for the same ``rng`` (only their interleaving depends on the number of workers).

>>> import numpy as np
>>> from fusefn import Rng
>>> from fusefn.data.ops.foreground import ForegroundIndices
>>> mask = np.zeros((1, 20, 20, 20), np.uint8); mask[0, 5:8, 5:8, 5:8] = 1
>>> vol = {"data": {"sample_id": "v", "input": {"img": np.random.default_rng(0).random((1, 20, 20, 20), np.float32)},
...        "gt": {"mask": mask}}}
>>> vol = ForegroundIndices()(vol)
>>> sampler = PatchSampler(size=(8, 8, 8), n=4, pos=1, neg=1)
>>> ps = list(sampler.patches(vol, rng=Rng(0)))
>>> [p["data"]["patch"]["class"] for p in ps], ps[0]["data"]["input"]["img"].shape
(['bg', 'fg', 'fg', 'bg'], (1, 8, 8, 8))
>>> all(p["data"]["gt"]["mask"][(0, 4, 4, 4)] == (p["data"]["patch"]["class"] == "fg") for p in ps)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import attrs
import numpy as np
import torch

from fusefn import keys, nd
from fusefn import validators as v
from fusefn.affine import crop_affine
from fusefn.core import Rng, record
from fusefn.data.ops._base import KEYS, fail, get, sample_id
from fusefn.data.ops.foreground import BACKGROUND, FOREGROUND, INDICES, class_name
from fusefn.data.samplers import _distributed
from fusefn.errors import ConfigError

__all__ = ["PatchSampler", "PatchDataset", "window", "PATCH_CLASS", "ANYWHERE"]

PATCH_CLASS = keys.PATCH_CLASS
"""The leaf a patch's centre was drawn from (``"fg"``, ``"bg"``, a class; proposed as ``fusefn.keys.PATCH_CLASS``)."""
ANYWHERE = "any"
"""The class of a centre drawn uniformly over the volume (no leaf with a weight had a voxel)."""

_BORDERS = ("pad", "shift")


def _size(instance, attribute, value) -> None:
    if not (isinstance(value, tuple) and len(value) in (1, 2, 3) and all(isinstance(x, int) and x > 0 for x in value)):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be 1 to 3 positive ints, got {value!r}")


def _ratios(value):
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"PatchSampler.ratios must map classes to weights, got {value!r}")
    return tuple((class_name(k), float(w)) for k, w in value.items())


def _check_ratios(instance, attribute, value) -> None:
    if value is None:
        return
    names = [k for k, _ in value]
    if not value or len(set(names)) != len(names) or any(not w >= 0 for _, w in value) or sum(w for _, w in value) <= 0:
        raise ConfigError(f"PatchSampler.ratios must give distinct classes weights >= 0, not all 0; got {dict(value)}")


def _pad_values(value):
    if isinstance(value, Mapping):
        return tuple((str(k), float(x)) for k, x in value.items())
    return float(value)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


@record
class PatchSampler:
    """Where ``n`` patches of ``size`` lie in one volume, and how each is cut.

    Args:
        size: the patch's spatial size (the trailing axes of every key in ``keys``).
        n: patches per volume (per epoch, in a :class:`PatchDataset`).
        pos, neg: the ratio of patches centred on a foreground voxel to those centred on a
            background voxel (leaves ``fg`` and ``bg``; with per-class leaves, ``pos`` pools them).
        ratios: instead of ``pos``/``neg``, a weight per stored leaf, e.g. ``{1: 1, 2: 2, "bg": 1}``.
            A volume's ``n`` centres split in these proportions exactly (a remainder by a weighted draw);
            a class absent from a volume gives its share to the others, in proportion; a volume
            with none of them gets uniform centres (class :data:`ANYWHERE`).
        keys: the arrays cut (same window for all: image and mask stay aligned).
        indices_key: where :class:`~fusefn.data.ops.ForegroundIndices` stored the leaves.
        border: ``"pad"``: the drawn voxel is the patch's centre (voxel ``size // 2``) and what lies
            outside the volume is padded; ``"shift"``: the window moves inside the volume (MONAI's
            behaviour; padded only when the volume is smaller than the patch).
        pad_value: the padding value, one for every key or ``{key: value}`` (0 for keys not named).
    """

    size: tuple = attrs.field(converter=tuple, validator=_size)
    n: int = attrs.field(default=1, validator=v.and_(v.instance_of(int), v.ge(1)))
    pos: float = attrs.field(default=1.0, validator=v.ge(0))
    neg: float = attrs.field(default=1.0, validator=v.ge(0))
    ratios: tuple | None = attrs.field(default=None, converter=_ratios, validator=_check_ratios)
    keys: tuple = attrs.field(default=(keys.IMAGE, keys.MASK), **KEYS)
    indices_key: str = attrs.field(default=INDICES, validator=v.key)
    border: str = attrs.field(default="pad", validator=v.in_(_BORDERS))
    pad_value: float | tuple = attrs.field(default=0.0, converter=_pad_values)

    def __attrs_post_init__(self):
        if self.ratios is None and self.pos + self.neg <= 0:
            raise ConfigError("PatchSampler: pos + neg must be > 0")

    # ------------------------------------------------------------------ where

    def spatial(self, sample: Mapping) -> tuple:
        """The spatial shape shared by every key of ``sample`` in ``keys``."""
        d = len(self.size)
        shapes = {}
        for k in self.keys:
            shape = tuple(get(sample, self, k).shape)
            if len(shape) < d:
                raise fail(sample, self, k, f"array of shape {shape} has fewer than {d} spatial axes")
            shapes[k] = shape[-d:]
        if len(set(shapes.values())) > 1:
            raise fail(sample, self, None, f"keys have different spatial shapes: {shapes}")
        return next(iter(shapes.values()))

    def _groups(self, sample) -> list[tuple[str, list, float]]:
        """``(name, index arrays, weight)`` per group of centres."""
        tree = get(sample, self, self.indices_key)
        if not isinstance(tree, Mapping):
            raise fail(sample, self, self.indices_key, "expected the leaves of ForegroundIndices (a dict of arrays)")
        if self.ratios is not None:
            unknown = [k for k, _ in self.ratios if k not in tree]
            if unknown:
                raise fail(
                    sample, self, self.indices_key, f"ratios name classes {unknown} not stored; stored: {sorted(tree)}"
                )
            return [(k, [tree[k]], w) for k, w in self.ratios]
        if BACKGROUND not in tree:
            raise fail(sample, self, self.indices_key, f"no {BACKGROUND!r} leaf; stored: {sorted(tree)}")
        fg = [tree[FOREGROUND]] if FOREGROUND in tree else [a for k, a in sorted(tree.items()) if k != BACKGROUND]
        return [(FOREGROUND, fg, self.pos), (BACKGROUND, [tree[BACKGROUND]], self.neg)]

    def plan(self, sample: Mapping, *, rng: Rng) -> tuple[np.ndarray, tuple]:
        """The ``n`` patch origins (``n×d`` int64 voxel corners, possibly outside the volume) and their classes."""
        spatial = self.spatial(sample)
        voxels = math.prod(spatial)
        groups = self._groups(sample)
        sizes = np.array([sum(len(a) for a in arrays) for _, arrays, _ in groups], dtype=np.int64)
        weights = np.array([w for _, _, w in groups], dtype=np.float64) * (sizes > 0)
        draw = rng.numpy()
        names = [name for name, _, _ in groups]
        if weights.sum() <= 0:  # no voxel of any weighted class: anywhere in the volume
            names, weights, sizes = [ANYWHERE], np.ones(1), np.array([voxels])
            groups = [(ANYWHERE, None, 1.0)]
        counts = _split(self.n, weights / weights.sum(), draw)
        which = draw.permutation(np.repeat(np.arange(len(names)), counts))
        flat = np.empty(self.n, dtype=np.int64)
        for g, (_, arrays, _) in enumerate(groups):
            at = which == g
            if not counts[g]:
                continue
            picks = draw.integers(0, sizes[g], counts[g])
            flat[at] = picks if arrays is None else _take(arrays, picks)
        if flat.size and (flat.min() < 0 or flat.max() >= voxels):
            raise fail(
                sample,
                self,
                self.indices_key,
                f"stored indices do not fit the spatial shape {spatial}: built on another grid?",
            )
        centres = np.stack(np.unravel_index(flat, spatial), axis=1).astype(np.int64)
        origins = centres - np.asarray(self.size, dtype=np.int64) // 2
        if self.border == "shift":
            room = np.asarray(spatial, dtype=np.int64) - np.asarray(self.size, dtype=np.int64)
            origins = np.clip(origins, np.minimum(room, 0), np.maximum(room, 0))
        return origins, tuple(names[g] for g in which)

    # ------------------------------------------------------------------ cut

    def pad_for(self, key: str) -> float:
        """The padding value of ``key``."""
        if isinstance(self.pad_value, tuple):
            return dict(self.pad_value).get(key, 0.0)
        return self.pad_value

    def meta(self, sample: Mapping, origin: np.ndarray, *, index: int, cls: str) -> dict:
        """Patch ``index`` of ``sample`` without its arrays: the volume's other values, its id
        ``"<id>#<index>"``, origin, class and (when the volume has one) affine moved to the patch."""
        out = nd.dissoc(sample, self.indices_key) if nd.contains(sample, self.indices_key) else dict(sample)
        for k in self.keys:
            out = nd.dissoc(out, k)
        origin = np.asarray(origin, dtype=np.int64)
        updates = {
            keys.SAMPLE_ID: f"{sample_id(sample)}#{index}",
            keys.PATCH_ORIGIN: origin,
            PATCH_CLASS: cls,
        }
        affine = nd.get(sample, keys.AFFINE, None)
        if affine is not None:
            updates[keys.AFFINE] = _moved(self, sample, _numpy(affine), origin)
        return nd.assoc_many(out, updates)

    def cut(self, sample: Mapping, origin, *, index: int = 0, cls: str = ANYWHERE) -> dict:
        """One patch of ``sample`` at ``origin`` (``d`` ints; a new array per key, padded outside the volume)."""
        origin = np.asarray(origin, dtype=np.int64)
        patch = self.meta(sample, origin, index=index, cls=cls)
        return nd.assoc_many(
            patch, {k: window(_numpy(get(sample, self, k)), origin, self.size, self.pad_for(k)) for k in self.keys}
        )

    def patches(self, sample: Mapping, *, rng: Rng) -> Iterator[dict]:
        """The ``n`` patches of ``sample`` drawn from ``rng``, cut one at a time as they are asked for."""
        origins, classes = self.plan(sample, rng=rng)
        for k, (origin, cls) in enumerate(zip(origins, classes)):
            yield self.cut(sample, origin, index=k, cls=cls)


def _split(n: int, p: np.ndarray, draw: np.random.Generator) -> np.ndarray:
    """``n`` split in proportions ``p``: the whole parts, the remainder to classes drawn by their fractional parts."""
    expected = n * p
    counts = np.floor(expected + 1e-9).astype(np.int64)
    rest = n - int(counts.sum())
    if rest > 0:
        frac = np.clip(expected - counts, 0, None)
        extra = draw.choice(len(p), rest, replace=False, p=frac / frac.sum())
        counts[extra] += 1
    return counts


def _take(arrays: Sequence[np.ndarray], picks: np.ndarray) -> np.ndarray:
    """Elements ``picks`` of the concatenation of ``arrays`` (without concatenating them)."""
    if len(arrays) == 1:
        return np.asarray(arrays[0])[picks].astype(np.int64)
    ends = np.cumsum([len(a) for a in arrays])
    which = np.searchsorted(ends, picks, side="right")
    out = np.empty(len(picks), dtype=np.int64)
    for j, a in enumerate(arrays):
        at = which == j
        if at.any():
            out[at] = np.asarray(a)[picks[at] - (ends[j] - len(a))]
    return out


def _moved(op, sample, affine: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """The affine of a patch starting at ``origin``: voxel 0 of the patch is voxel ``origin`` of the volume."""
    d = len(origin)
    if affine.shape != (d + 1, d + 1):
        raise fail(sample, op, keys.AFFINE, f"affine of shape {affine.shape} does not match {d} spatial axes")
    return crop_affine(affine, origin)


def window(x: np.ndarray, origin, size: tuple, pad_value: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """The ``size`` window of ``x``'s trailing axes starting at ``origin`` (which may lie outside ``x``: padded).

    One slice copy (a second write of the padding only for windows that leave ``x``); into ``out`` when given.

    >>> window(np.arange(5), (-2,), (4,), pad_value=-1).tolist()
    [-1, -1, 0, 1]
    """
    d = len(size)
    shape = x.shape[-d:]
    origin = [int(o) for o in origin]
    lo = [max(o, 0) for o in origin]
    hi = [min(o + w, s) for o, w, s in zip(origin, size, shape)]
    if out is None:
        out = np.empty((*x.shape[:-d], *size), dtype=x.dtype)
    inside = all(a == o and b == o + w for a, b, o, w in zip(lo, hi, origin, size))
    if not inside:
        out[...] = pad_value
    if all(b > a for a, b in zip(lo, hi)):
        dst = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin))
        out[(Ellipsis, *dst)] = x[(Ellipsis, *(slice(a, b) for a, b in zip(lo, hi)))]
    return out


# ---------------------------------------------------------------------------------------- dataset


def _as_is(batch):
    return batch


class PatchDataset(torch.utils.data.IterableDataset):
    """The patches of a map-style dataset of volumes: ``sampler.n`` per volume per epoch, read lazily.

    Not a frozen record on purpose: like ``DistributedSampler`` it carries the epoch, set with
    :meth:`set_epoch` before each epoch is iterated. The epoch lives in shared memory, so worker
    processes that persist across epochs (``loader(persistent_workers=True)``, what
    ``epochs(threads=False)`` gives) read the new one when the next epoch starts, and keep their open
    cache readers. :meth:`epochs` with workers cuts in threads of this process by default.

    Args:
        volumes: ``len`` and ``[i]`` -> a sample dict holding ``sampler.keys`` and the indices
            (e.g. a built :class:`~fusefn.data.Dataset` whose static pipeline ends with
            :class:`~fusefn.data.ops.ForegroundIndices`).
        sampler: where the patches lie and how they are cut.
        rng: with the epoch and the volume's index, the only source of randomness.
        batch_size: ``None``: yield single patch dicts (batch them with ``DataLoader(batch_size=,
            collate_fn=fusefn.data.collate)``); an int: yield batch_dicts of that many patches, each
            patch cut straight into the batch's tensors (in a worker, in shared memory: one copy
            from the volume to the training loop). Use ``DataLoader(ds, batch_size=None)`` or :meth:`loader`.
        mix: volumes a worker holds at once; their patches are interleaved in a random order
            (1: a volume's patches come together, the least memory).
        shuffle: visit the volumes in an order drawn per epoch (else in index order).
        drop_last: drop a worker's last batch when smaller than ``batch_size``.
        rank, world_size: under DDP each rank takes every ``world_size``-th volume of the epoch's
            order (the tail that does not divide is left out so ranks run equal steps); default
            from ``torch.distributed`` when it is initialized.
    """

    def __init__(
        self,
        volumes,
        sampler: PatchSampler,
        *,
        rng: Rng,
        epoch: int = 0,
        batch_size: int | None = None,
        mix: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if not isinstance(sampler, PatchSampler):
            raise ConfigError(f"PatchDataset.sampler must be a PatchSampler, got {sampler!r}")
        if not isinstance(rng, Rng):
            raise ConfigError(f"PatchDataset.rng must be a fusefn.Rng, got {rng!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"PatchDataset.batch_size must be a positive int or None, got {batch_size!r}")
        if not isinstance(mix, int) or mix < 1:
            raise ConfigError(f"PatchDataset.mix must be a positive int, got {mix!r}")
        if rank is None or world_size is None:
            dist_rank, dist_world = _distributed()
            rank = dist_rank if rank is None else rank
            world_size = dist_world if world_size is None else world_size
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"PatchDataset: rank {rank!r} must be in [0, world_size={world_size!r})")
        self.volumes, self.sampler, self.rng = volumes, sampler, rng
        # shared with the workers (forked or spawned): persistent workers see set_epoch of the main process
        self._epoch = torch.full((), int(epoch), dtype=torch.int64).share_memory_()
        self.batch_size, self.mix, self.shuffle, self.drop_last = batch_size, mix, shuffle, drop_last
        self.rank, self.world_size = rank, world_size

    @property
    def epoch(self) -> int:
        """The epoch the next iteration draws."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the patches of ``epoch`` on the next iteration (in this process and in its DataLoader workers)."""
        self._epoch.fill_(int(epoch))

    def volume_order(self, epoch: int | None = None) -> list[int]:
        """The volume indices this rank reads in ``epoch`` (default: the current one), all its workers together."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = len(self.volumes)
        if self.shuffle:
            order = self.rng.child("patch-order", epoch).numpy().permutation(n).tolist()
        else:
            order = list(range(n))
        return order[: n // self.world_size * self.world_size][self.rank :: self.world_size]

    def patches_per_epoch(self) -> int:
        """Patches this rank yields per epoch (over all its workers)."""
        return len(self.volume_order()) * self.sampler.n

    def volume_rng(self, index: int, epoch: int | None = None) -> Rng:
        """The stream of volume ``index``'s patches in ``epoch``."""
        return self.rng.child("patches", self.epoch if epoch is None else int(epoch), int(index))

    def _stream(self, mine: list[int], worker: int, epoch: int) -> Iterator[tuple]:
        """``(volume sample, origin, index in volume, class)`` for this worker's volumes, ``mix`` at a time."""
        n = self.sampler.n
        for g in range(0, len(mine), self.mix):
            group = mine[g : g + self.mix]
            plans = []
            for i in group:
                sample = self.volumes[i]
                plans.append((sample, *self.sampler.plan(sample, rng=self.volume_rng(i, epoch))))
            order = [(a, k) for a in range(len(group)) for k in range(n)]
            if len(group) > 1:
                perm = self.rng.child("patch-mix", epoch, self.rank, worker, g).numpy().permutation(len(order))
                order = [order[j] for j in perm]
            for a, k in order:
                sample, origins, classes = plans[a]
                yield sample, origins[k], k, classes[k]

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # the epoch is read once: set_epoch for the next epoch may come while this one is consumed
        return self._iterate(self.epoch, worker, workers, shared=info is not None)

    def _iterate(self, epoch: int, worker: int, workers: int, *, shared: bool, pool=None) -> Iterator[dict]:
        """Worker ``worker`` of ``workers``: its share of the epoch's volumes, as patches or batches."""
        stream = self._stream(self.volume_order(epoch)[worker::workers], worker, epoch)
        if self.batch_size is None:
            for sample, origin, k, cls in stream:
                yield self.sampler.cut(sample, origin, index=k, cls=cls)
            return
        items: list = []
        for item in stream:
            items.append(item)
            if len(items) == self.batch_size:
                yield self._batch(items, shared=shared, pool=pool)
                items = []
        if items and not self.drop_last:
            yield self._batch(items, shared=shared, pool=pool)

    def threaded(self, epoch: int | None = None, *, workers: int = 2, prefetch: int = 2) -> Iterator[dict]:
        """The epoch's patches (or batches) cut by ``workers`` threads of this process, ``prefetch`` ahead each.

        The same patches as ``workers`` DataLoader processes, taken from the workers in turn (a
        deterministic order), without their cost: NumPy releases the GIL while it copies, and a batch
        reaches the loop in ordinary memory, not through shared memory (whose page faults cost more than
        the copy itself on many machines). Stopping early (``break``) stops the threads.
        """
        import queue
        import threading

        epoch = self.epoch if epoch is None else int(epoch)
        if not isinstance(workers, int) or workers < 1 or not isinstance(prefetch, int) or prefetch < 1:
            raise ConfigError(f"PatchDataset.threaded: workers and prefetch must be >= 1, got {workers}, {prefetch}")
        queues = [queue.Queue(maxsize=prefetch) for _ in range(workers)]
        pool = self.__dict__.setdefault("_recycler", _Recycler())
        # batches in flight: per thread its queue, one waiting for room and one being cut; the loop holds two
        pool.cap = max(pool.cap, len(self.sampler.keys) * (workers * (prefetch + 2) + 2))
        stop = threading.Event()
        done = object()

        def put(w, item) -> bool:
            while not stop.is_set():
                try:
                    queues[w].put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def run(w):
            try:
                for item in self._iterate(epoch, w, workers, shared=False, pool=pool):
                    if not put(w, (None, item)):
                        return
                put(w, (None, done))
            except BaseException as exc:  # handed to the consumer, raised there
                put(w, (exc, None))

        threads = [
            threading.Thread(target=run, args=(w,), daemon=True, name=f"fusefn-patches-{w}") for w in range(workers)
        ]
        for t in threads:
            t.start()
        try:
            live = list(range(workers))
            while live:
                for w in list(live):
                    exc, item = queues[w].get()
                    if exc is not None:
                        raise exc
                    if item is done:
                        live.remove(w)
                    else:
                        yield item
        finally:
            stop.set()
            for t in threads:
                t.join()

    def __getstate__(self) -> dict:  # the threads' buffers (and a lock) stay in this process
        return {k: v for k, v in self.__dict__.items() if k != "_recycler"}

    def _batch(self, items: list, *, shared: bool, pool=None) -> dict:
        """A batch_dict of ``items``: each key's patches cut straight into one (shared-memory) tensor."""
        from fusefn.data.dataset import collate

        sampler = self.sampler
        meta = [sampler.meta(s, o, index=k, cls=c) for s, o, k, c in items]
        batch = collate(meta)
        for key in sampler.keys:
            arrays = [_numpy(get(s, sampler, key)) for s, _, _, _ in items]
            first = arrays[0]
            lead = first.shape[: -len(sampler.size)]
            for (s, _, _, _), a in zip(items, arrays):
                if a.dtype != first.dtype or a.shape[: -len(sampler.size)] != lead:
                    raise fail(
                        s, sampler, key, f"{a.dtype} {a.shape} cannot share a batch with {first.dtype} {first.shape}"
                    )
            shape = (len(items), *lead, *sampler.size)
            buf = (
                pool.empty(shape, first.dtype)
                if pool is not None and not shared
                else _buffer(shape, first.dtype, shared)
            )
            out = buf.numpy()
            pad = sampler.pad_for(key)
            for j, ((_, origin, _, _), a) in enumerate(zip(items, arrays)):
                window(a, origin, sampler.size, pad, out=out[j])
            batch = nd.assoc(batch, key, buf)
        return batch

    def epochs(self, *, workers: int = 0, threads: bool | None = None, **kwargs) -> Callable[[int], Iterable]:
        """``epoch -> batches``: the ``train_data`` that :func:`fusefn.train.fit` takes.

        ``threads=True`` (the default when ``workers > 0``, the dataset batches itself and no DataLoader
        option is given): ``workers`` threads of this process cut the patches (:meth:`threaded`; ``kwargs``:
        ``prefetch``). Cutting is NumPy copying, which releases the GIL, into reused buffers that reach the
        loop in ordinary memory: ``bench/bench_patches.py`` measures it 2-3× faster than worker processes,
        whose batches cross in shared memory (page faults on both sides for every batch).
        ``threads=False``: one DataLoader whose ``workers`` processes persist across epochs (started once,
        their cache readers kept; ``kwargs`` go to :meth:`loader`), for heavy per-patch Python.
        """
        if threads is None:
            threads = workers > 0 and self.batch_size is not None and not set(kwargs) - {"prefetch"}
        if threads:
            return lambda epoch: self.threaded(epoch, workers=max(workers, 1), **kwargs)
        kwargs.setdefault("persistent_workers", workers > 0)
        loader = self.loader(workers=workers, **kwargs)

        def batches(epoch: int) -> torch.utils.data.DataLoader:
            self.set_epoch(epoch)
            return loader

        return batches

    def epoch_loader(self, epoch: int, *, workers: int = 0, **kwargs) -> torch.utils.data.DataLoader:
        """:meth:`set_epoch` then a fresh :meth:`loader` (its workers started for this epoch alone)."""
        self.set_epoch(epoch)
        return self.loader(workers=workers, **kwargs)

    def loader(self, *, workers: int = 0, batch_size: int | None = None, **kwargs) -> torch.utils.data.DataLoader:
        """A DataLoader over these patches: batches as :meth:`_batch` cuts them (``batch_size`` set here),
        or ``batch_size`` single patches through :func:`fusefn.data.collate`."""
        from fusefn.data.dataset import collate

        kwargs.setdefault("persistent_workers", False)
        if self.batch_size is not None:
            if batch_size is not None:
                raise ConfigError("PatchDataset.loader: this dataset batches itself; leave batch_size out")
            return torch.utils.data.DataLoader(self, batch_size=None, num_workers=workers, collate_fn=_as_is, **kwargs)
        return torch.utils.data.DataLoader(
            self, batch_size=batch_size or 1, num_workers=workers, collate_fn=collate, **kwargs
        )


def _buffer(shape: tuple, dtype: np.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; in shared memory when ``shared`` (a worker's batch then crosses to the
    main process without a copy, as torch's own collate does)."""
    t = torch.empty(0, dtype=torch.from_numpy(np.empty(0, dtype)).dtype)
    if not shared:
        return t.new_empty(shape)
    try:
        storage = t._typed_storage()._new_shared(math.prod(shape))
        return t.new(storage).resize_(shape)
    except (AttributeError, RuntimeError):  # private torch API moved: a copy into shared memory instead
        return t.new_empty(shape).share_memory_()


class _Recycler:
    """Batch buffers for :meth:`PatchDataset.threaded`, reused once the training loop has let go of them.

    A new buffer of many MB per batch costs more in page faults than the patch copy itself (such blocks
    are mapped afresh, every page zeroed by the kernel). A buffer is handed out again only when nothing
    but this pool refers to its memory (no tensor, view or NumPy array of the loop's); at most ``cap``.
    """

    def __init__(self, cap: int = 0):
        import threading

        self.cap, self._lock, self._storages = cap, threading.Lock(), []
        # torch's count of a storage's holders (private; without it nothing is reused)
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)

    def empty(self, shape: tuple, dtype: np.dtype) -> torch.Tensor:
        tdtype, nbytes = torch.from_numpy(np.empty(0, dtype)).dtype, math.prod(shape) * np.dtype(dtype).itemsize
        stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        with self._lock:
            if self._use_count is not None:
                for s in self._storages:
                    if s.nbytes() == nbytes and self._use_count(s._cdata) == 1:  # only this pool holds it
                        return torch.empty(0, dtype=tdtype).set_(s, 0, shape, stride)
            t = torch.empty(shape, dtype=tdtype)
            if self._use_count is not None and len(self._storages) < self.cap:
                self._storages.append(t.untyped_storage())
            return t
