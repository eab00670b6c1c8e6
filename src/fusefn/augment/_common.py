"""Shared plumbing of the batch augmentations: the base class, range checks, sampling and subset helpers.

Every augmentation draws, for each sample of the batch, whether it applies (``apply``,
a bool mask from ``p``) and the sorted indices of those samples (``index``). The heavy
part of ``apply`` then runs on the active subset only, and the subset is written back
into a copy of the input, so a sample the op skips costs one copy, not one resampling.

Randomness enters through one ``rng`` (a :class:`fusefn.Rng`): ``sample`` turns it into a
single ``torch.Generator`` on the target device, and every draw of the op (or of every op of
a pipeline, in order) comes from that generator.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Mapping

import torch

from fusefn import nd
from fusefn.core import Rng
from fusefn.errors import ConfigError, MissingKeyError, SampleError

__all__ = ["Augmentation"]

# a module-level sentinel (not one made per call) so torch.compile can trace the lookup
_ABSENT = object()


# ------------------------------------------------------------------------ validation


def keys_tuple(value) -> tuple:
    """A key or a sequence of keys as a tuple of dotted strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def as_tuple(value):
    """Lists (from JSON or a user) as tuples, recursively, so records stay hashable."""
    if isinstance(value, list | tuple):
        return tuple(as_tuple(v) for v in value)
    return value


def name_of(instance, attribute) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def check_range(label: str, value, *, lower: float | None = None, allow_none: bool = True):
    """A ``(low, high)`` pair of finite numbers with ``low <= high`` (and ``low >= lower``)."""
    if value is None:
        if allow_none:
            return
        raise ConfigError(f"{label} is required")
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{label} must be a (low, high) pair of numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{label} must be finite, got {value!r}")
    if lo > hi:
        raise ConfigError(f"{label} has low > high: {value!r}")
    if lower is not None and lo < lower:
        raise ConfigError(f"{label} must be >= {lower}, got {value!r}")


def range_validator(*, lower: float | None = None, allow_none: bool = True):
    """attrs validator of a ``(low, high)`` pair (no combination of ``fusefn.validators`` checks ``low <= high``)."""

    def validate(instance, attribute, value):
        check_range(name_of(instance, attribute), value, lower=lower, allow_none=allow_none)

    return validate


def as_range(value) -> tuple[float, float]:
    """A number ``v`` means the fixed value ``(v, v)``; a pair is kept."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value), float(value))
    return (float(value[0]), float(value[1]))


def per_axis(label: str, value, dims: int) -> tuple:
    """One ``(low, high)`` range, or one per spatial axis, as a tuple of ``dims`` ranges."""
    if value is None:
        return (None,) * dims
    if isinstance(value, (tuple, list)) and len(value) == dims and all(isinstance(v, (tuple, list)) for v in value):
        for i, v in enumerate(value):
            check_range(f"{label}[{i}]", v)
        return tuple((float(v[0]), float(v[1])) for v in value)
    check_range(label, value)
    return ((float(value[0]), float(value[1])),) * dims


# --------------------------------------------------------------------------- batches


def get_key(batch: Mapping, key: str, op: str):
    """``nd.get`` whose error also names the op."""
    value = nd.get(batch, key, _ABSENT)
    if value is _ABSENT:
        try:
            nd.get(batch, key)
        except MissingKeyError as e:
            raise MissingKeyError(key, f"{op}: {e.message}") from None
    if not isinstance(value, torch.Tensor):
        raise SampleError(f"expected a tensor, got {type(value).__name__}", op=op, key=key)
    return value


def check_image(x: torch.Tensor, *, op: str, key: str, dims: int | None, floating: bool = True):
    """An ``N×C×<spatial>`` tensor with ``dims`` spatial axes (any number ≥ 1 when ``dims`` is None)."""
    if dims is None:
        if x.ndim < 3:
            raise SampleError(f"expected N×C×<spatial>, got shape {tuple(x.shape)}", op=op, key=key)
    elif x.ndim != dims + 2:
        layout = "N×C×H×W" if dims == 2 else "N×C×D×H×W"
        raise SampleError(
            f"a {dims}D op expects {layout} ({dims + 2} dims), got shape {tuple(x.shape)}", op=op, key=key
        )
    if floating and not x.is_floating_point():
        raise SampleError(f"image keys must hold floating tensors, got {x.dtype}", op=op, key=key)


def check_mask(m: torch.Tensor, image: torch.Tensor, *, op: str, key: str, image_key: str):
    """A mask shares the batch size and spatial shape of its image (channels may differ)."""
    if m.ndim != image.ndim or m.shape[0] != image.shape[0] or m.shape[2:] != image.shape[2:]:
        raise SampleError(
            f"mask shape {tuple(m.shape)} does not match image {image_key!r} shape {tuple(image.shape)}"
            " (batch and spatial sizes must agree)",
            op=op,
            key=key,
        )


def batch_info(batch: Mapping, keys: tuple, op: str):
    """``(batch_size, device, {key: per-sample shape})`` of the tensors at ``keys``."""
    if not keys:
        raise ConfigError(f"{op} has no keys to augment")
    tensors = {k: get_key(batch, k, op) for k in keys}
    first = tensors[keys[0]]
    for k, v in tensors.items():
        if v.ndim == 0 or v.shape[0] != first.shape[0]:
            raise SampleError(
                f"batch size {tuple(v.shape)[:1]} differs from {keys[0]!r} ({first.shape[0]})", op=op, key=k
            )
    return first.shape[0], first.device, {k: tuple(v.shape[1:]) for k, v in tensors.items()}


# ------------------------------------------------------------------------- sampling


def uniform(generator: torch.Generator, n: int, bounds, dtype=torch.float64) -> torch.Tensor:
    """``n`` draws from U(low, high) on the generator's device (one draw even when low == high)."""
    lo, hi = as_range(bounds)
    u = torch.rand(n, generator=generator, device=generator.device, dtype=dtype)
    return u.mul_(hi - lo).add_(lo)


def randint(generator: torch.Generator, n: int, bounds) -> torch.Tensor:
    """``n`` integers uniform in ``[low, high]`` (both included), as float64."""
    lo, hi = as_range(bounds)
    lo_i, hi_i = math.ceil(lo), math.floor(hi)
    if lo_i > hi_i:
        raise ConfigError(f"no integer in the range {bounds!r}")
    return torch.randint(lo_i, hi_i + 1, (n,), generator=generator, device=generator.device).to(torch.float64)


def bernoulli(generator: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64) < p


def gate(generator: torch.Generator, n: int, p: float) -> dict:
    """The ``apply`` mask and the ``index`` of the samples it selects."""
    apply = bernoulli(generator, n, p)
    return {"apply": apply, "index": torch.nonzero(apply).flatten()}


def to_device(params, device):
    """Move every tensor of a params tree to ``device`` (no-op when it is already there)."""
    if device is None:
        return params
    if isinstance(params, torch.Tensor):
        if params.dtype == torch.float64 and torch.device(device).type == "mps":
            return params.to(device, torch.float32)  # MPS has no float64
        return params.to(device)
    if isinstance(params, dict):
        return {k: to_device(v, device) for k, v in params.items()}
    if isinstance(params, (tuple, list)):
        return type(params)(to_device(v, device) for v in params)
    return params


# --------------------------------------------------------------------------- subsets


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The active samples of ``x`` (``x`` itself when every sample is active)."""
    if index.shape[0] == x.shape[0]:
        return x
    return x.index_select(0, index)


def put(x: torch.Tensor, index: torch.Tensor, y: torch.Tensor, owned: bool) -> torch.Tensor:
    """``x`` with its active samples replaced by ``y``; in place only when the caller owns ``x``."""
    if index.shape[0] == x.shape[0]:
        return y
    if owned:
        return x.index_copy_(0, index, y)
    return x.index_copy(0, index, y)


# about 2 MiB of samples per chunk: the working set of a chunk stays in cache, and buffers
# under glibc's mmap threshold are recycled instead of page-faulted in on every call
CHUNK_BYTES = 1 << 21


def chunk_slices(n: int, x: torch.Tensor) -> list:
    """Slices of ``range(n)`` holding about ``CHUNK_BYTES`` of ``x``'s samples each."""
    per = max(1, CHUNK_BYTES // max(1, x[0].numel() * x.element_size()))
    return [slice(s, min(n, s + per)) for s in range(0, n, per)]


def chunked(x: torch.Tensor) -> bool:
    """Whether to work chunk by chunk: eager mode on CPU only.

    A compiled graph fuses the passes itself, and on a GPU the extra launches cost more
    than the cache reuse gains.
    """
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def output_buffer(x: torch.Tensor, index: torch.Tensor, owned: bool) -> torch.Tensor:
    """Where the op writes: ``x`` itself when owned, else a new tensor holding ``x``'s samples outside ``index``.

    The samples in ``index`` are left uninitialised: the caller writes every one of them, so copying
    them first would be a wasted pass over the largest part of the batch.
    """
    if owned:
        return x
    out = torch.empty_like(x)
    if index.shape[0] == x.shape[0]:
        return out
    if not chunked(x) or not large_samples(x):
        return out.copy_(x)
    keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    keep[index] = False
    for _, start, length in runs(torch.nonzero(keep).flatten()):
        out.narrow(0, start, length).copy_(x.narrow(0, start, length))
    return out


def large_samples(x: torch.Tensor) -> bool:
    """Whether a sample of ``x`` is big enough (a volume) that one op per run of samples beats one op per batch.

    Small samples (2D images) come in many short runs, where the per-op overhead outweighs the pass saved.
    """
    return x[0].numel() * x.element_size() >= CHUNK_BYTES // 4


def runs(index: torch.Tensor) -> list:
    """``[(position, start, length)]``: the sorted sample ``index`` as runs of consecutive samples (read on the host)."""
    out: list = []
    for pos, i in enumerate(index.tolist()):
        if out and out[-1][1] + out[-1][2] == i:
            out[-1][2] += 1
        else:
            out.append([pos, i, 1])
    return [tuple(r) for r in out]


def consecutive(idx: torch.Tensor):
    """The first of the sorted samples ``idx`` when they are consecutive, else None (read on the host)."""
    n = idx.shape[0]
    if n == 0:
        return None
    start = int(idx[0])
    return start if int(idx[-1]) - start + 1 == n else None


def rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Samples ``idx`` (sorted) of ``x``: a view when they are consecutive, else a copy. Eager CPU only (reads ``idx``)."""
    start = consecutive(idx)
    return x.index_select(0, idx) if start is None else x.narrow(0, start, idx.shape[0])


def write_rows(out: torch.Tensor, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``out`` with samples ``idx`` (sorted) set to ``y``, in place: a plain copy into a view when consecutive."""
    start = consecutive(idx)
    if start is None:
        return out.index_copy_(0, idx, y)
    dst = out.narrow(0, start, idx.shape[0])
    if not (dst.data_ptr() == y.data_ptr() and dst.stride() == y.stride()):
        dst.copy_(y)
    return out


def split_over_threads(count: int, fn: Callable[[int, int], None], *, threads: int | None = None) -> None:
    """``fn(lo, hi)`` over contiguous ranges covering ``range(count)``, on ``threads`` threads.

    ``threads`` defaults to ``torch.get_num_threads()``. Python threads, for work that releases
    the GIL (PyTorch ops, the numba kernels). The range is cut into a few pieces per thread, which
    the threads (the calling one included) take in turn until none is left: a thread slowed by
    other work on its core does less, instead of holding the others up. What a piece computes must
    not depend on which thread runs it. The helper threads run in the caller's grad and inference
    modes (PyTorch keeps those per thread).
    """
    k = max(1, min(count, torch.get_num_threads() if threads is None else threads))
    pieces = min(count, k * 8) if k > 1 else 1
    bounds = [count * i // pieces for i in range(pieces + 1)]
    taken = itertools.count()  # next() on it is atomic under the GIL
    errors: list = []
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def work() -> None:
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while not errors and (i := next(taken)) < pieces:
                    fn(bounds[i], bounds[i + 1])
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    others = [threading.Thread(target=work) for _ in range(1, k)]
    for t in others:
        t.start()
    work()
    for t in others:
        t.join()
    if errors:
        raise errors[0]


# samples at least this large draw their noise from generators of their own (see scaled_normal)
OWN_GENERATOR_NUMEL = 1 << 16


def scaled_normal(generator: torch.Generator, n: int, shape: tuple, scale: torch.Tensor) -> torch.Tensor:
    """``n×shape`` normal draws with mean 0 and standard deviation ``scale[i]`` for sample ``i``.

    PyTorch draws from one CPU generator on one thread. On the CPU, samples of at least
    ``OWN_GENERATOR_NUMEL`` values therefore each draw from a generator of their own, seeded from
    ``generator`` (one 32-bit seed each: the Mersenne Twister takes no more), so the threads draw
    them in parallel; the values do not depend on the threads. Smaller samples, and other devices,
    draw the batch from ``generator`` in one call.
    """
    numel = math.prod(shape)
    if generator.device.type != "cpu" or numel < OWN_GENERATOR_NUMEL or n == 0:
        z = torch.randn((n, *shape), generator=generator, device=generator.device)
        return z.mul_(scale.to(z.device).view((-1,) + (1,) * len(shape)))
    seeds = torch.randint(0, 2**32, (n,), generator=generator).tolist()
    factors = scale.tolist()
    z = torch.empty((n, *shape))

    def draw(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            # the scale inside the draw: a separate multiply would start a thread team of its own here
            torch.normal(0.0, factors[i], shape, generator=torch.Generator().manual_seed(seeds[i]), out=z[i])

    split_over_threads(n, draw)
    return z


def generator(rng: Rng, device) -> torch.Generator:
    """The one ``torch.Generator`` an op (or a whole pipeline) draws from: ``rng``'s, on ``device``.

    Drawing where the batch lives means no random tensor crosses the bus. MPS has no float64,
    so draws for it are made on the host and copied.
    """
    if not isinstance(rng, Rng):
        raise TypeError(f"rng must be a fusefn.Rng, got {type(rng).__name__}: {rng!r}")
    dev = torch.device("cpu" if device is None else device)
    return rng.generator("cpu" if dev.type == "mps" else dev)


def _combine(fns) -> Augmentation:
    from .pipeline import Pipeline  # Pipeline subclasses Augmentation: imported when chained

    flat: list = []
    for fn in fns:
        flat.extend(fn.ops if isinstance(fn, Pipeline) else (fn,))
    return Pipeline(ops=tuple(flat))


class Augmentation:
    """Base of the batch augmentations; conforms to :class:`fusefn.protocols.Augmentation`.

    Subclasses define ``all_keys()``, ``_sample(generator, batch_size, *, device, shapes) -> params``
    (every draw from the one ``generator``) and ``_apply(batch, params, owned) -> (batch, owned)``.
    ``owned`` is the set of keys whose tensors were allocated inside the current pipeline, so a
    later op may update them in place without touching the caller's tensors.

    ``fusefn.chain`` of augmentations is a flattened :class:`~fusefn.augment.Pipeline` (the
    ``__chain__`` class attribute says so).
    """

    __slots__ = ()
    __chain__ = staticmethod(_combine)
    # params entries drawn for the active samples only (leading size = number active); widened by fixed_params
    _active_fields: tuple = ()
    # whether ``apply`` (the gate) decides if a sample changes at all; crops change every sample
    _gated: bool = True

    def all_keys(self) -> tuple:
        """Every key the op reads or writes."""
        raise NotImplementedError

    def like_keys(self) -> tuple:
        """The keys ``sample_like`` reads the batch size and device from (default: ``all_keys()``)."""
        return self.all_keys()

    def fuse_key(self):
        """Consecutive ops with equal, non-None fuse keys compose their params into one stage."""
        return None

    def out_shapes(self, shapes: Mapping | None) -> Mapping | None:
        """Per-sample shapes after this op (ops that crop or resize change them)."""
        return shapes

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None):
        raise NotImplementedError

    def _apply(self, batch, params, owned: frozenset):
        raise NotImplementedError

    def sample(self, batch_size: int, *, rng: Rng, device=None, shapes=None):
        """Every random value of ``batch_size`` samples as tensors on ``device``, drawn from ``rng``.

        ``shapes`` (``{key: per-sample shape}``) is needed only by ops that draw per-pixel values.
        """
        return self._sample(generator(rng, device), batch_size, device=device, shapes=shapes)

    def sample_like(self, batch: Mapping, *, rng: Rng):
        """``sample`` with the batch size, device and shapes read from ``batch``."""
        n, device, shapes = batch_info(batch, self.like_keys(), type(self).__name__)
        return self.sample(n, rng=rng, device=device, shapes=shapes)

    def apply(self, batch: Mapping, params) -> dict:
        """The batch with this augmentation applied under ``params`` (pure, no randomness)."""
        return self._apply(batch, params, frozenset())[0]

    def __call__(self, batch: Mapping, *, rng: Rng) -> dict:
        """``apply(batch, sample_like(batch, rng=rng))``."""
        return self.apply(batch, self.sample_like(batch, rng=rng))

    def fixed_params(self, params, batch_size: int):
        """``params`` whose shapes depend on the batch size only, never on how many samples the gate chose.

        ``index`` becomes every sample and the values drawn for the active samples only are
        spread over the batch (zeros elsewhere). With :meth:`apply_fixed` this is what a
        compiled graph takes: one graph whatever the draw (no recompiles, CUDA-graph safe).
        """
        return _widened(params, self._active_fields, batch_size)

    def apply_fixed(self, batch: Mapping, params) -> dict:
        """:meth:`apply` under :meth:`fixed_params`: every sample is transformed, the unchosen ones put back.

        Same result as ``apply`` with the unwidened params (the samples the gate skipped are the
        input's own values, by ``torch.where``); fixed shapes and no data-dependent branch, so it
        traces into one graph (``torch.compile(fullgraph=True)``). Costs the work of a full batch.
        """
        out, _ = self._apply(batch, params, frozenset())
        return keep_unchosen(batch, out, self.all_keys(), params["apply"]) if self._gated else out


def keep_unchosen(batch: Mapping, out: Mapping, keys: tuple, apply: torch.Tensor) -> dict:
    """``out`` with the samples ``apply`` leaves out taken back from ``batch`` (by ``torch.where``)."""
    updates = {}
    for k in keys:
        old, new = nd.get(batch, k, None), nd.get(out, k, None)
        changed = isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and new is not old
        if changed and new.shape == old.shape:
            on = apply.view((-1,) + (1,) * (new.ndim - 1))
            updates[k] = torch.where(on, new, old)
    return nd.assoc_many(out, updates) if updates else out


def _widened(params: Mapping, fields: tuple, n: int) -> dict:
    index = params["index"]
    out = dict(params)
    out["index"] = torch.arange(n, device=index.device)
    if index.shape[0] == n:
        return out
    for name in fields:
        value = params[name]
        if isinstance(value, Mapping):
            out[name] = {k: spread(t, index, n) for k, t in value.items()}
        else:
            out[name] = spread(value, index, n)
    return out


def spread(t: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` (one row per active sample) as ``n`` rows, zeros where no sample was active."""
    return t.new_zeros((n, *t.shape[1:])).index_copy_(0, index, t)
