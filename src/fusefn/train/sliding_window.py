"""Sliding-window inference over a whole volume, streamed slab by slab so a label map never needs all K scores.

:func:`sliding_window` runs a ``predictor`` (``N×C×roi -> N×K×roi``) over windows of ``roi`` laid
out as MONAI's ``sliding_window_inference`` lays them (same scan interval, same positions, same
gaussian importance map with its clamp, same centred padding of a volume smaller than ``roi``) and
blends the window outputs by their importance-weighted mean. Blending is done on whatever the
predictor returns: logits blend as logits, probabilities as probabilities (their argmax can differ).

The windows are visited in order of their start on the first spatial axis. With ``output="probs"``
each window's ``scores × weight`` is added (one fused ``addcmul_``, no temporary) straight into the
output, which is divided by the summed weights in place at the end. With ``output="argmax"`` the
scores go to a ring buffer of rows instead: once every window that starts before row ``d`` is in,
the rows before ``d`` are final, so they are divided by their weight, turned into labels and their
buffer rows reused (nothing is moved). So the working memory is one slab of K-class scores
(``K × (roi[0] + …) × H × W``), not the ``K × D × H × W`` of the whole output, and the result is the
label volume alone (``uint8`` up to 256 classes, else ``int16``/``int32``). Every voxel is summed
with the same arithmetic in the same order in both modes, so ``argmax`` equals the argmax of
``output="probs"`` exactly (for finite scores); ties go to the lowest class, as with ``torch.argmax``.
The sums are MONAI's in MONAI's order except that ``p·w`` is not rounded before it is added: the
results agree to about one float32 ulp.

>>> import torch
>>> predictor = lambda x: torch.cat([x, -x], 1)  # two "classes": the image and its negative
>>> volume = torch.linspace(-1, 1, 20 * 9 * 7).reshape(1, 20, 9, 7)
>>> scores = sliding_window(predictor, volume, roi=(8, 8, 8), overlap=0.5)
>>> scores.shape, bool(torch.allclose(scores[0], volume[0], atol=1e-6))
(torch.Size([2, 20, 9, 7]), True)
>>> labels = sliding_window(predictor, volume, roi=(8, 8, 8), output="argmax")
>>> labels.dtype, bool((labels == (volume[0] < 0).to(torch.uint8)).all())
(torch.uint8, True)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fusefn._types import is_tensor
from fusefn.errors import ConfigError

__all__ = ["sliding_window", "window_starts", "scan_interval", "importance_map"]

_BLENDS = ("gaussian", "constant")
_OUTPUTS = ("probs", "argmax")
_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _per_axis(value, n: int, name: str) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ConfigError(f"sliding_window: {name} has {len(value)} values for {n} spatial axes: {value}")
    return value


def scan_interval(image_size: Sequence[int], roi: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    """The step between window starts per axis: ``int(roi * (1 - overlap))`` (at least 1), ``roi`` where they are equal.

    MONAI's rule (``monai.inferers.utils._get_scan_interval``).

    >>> scan_interval((100, 64), (64, 64), (0.25, 0.25))
    (48, 64)
    """
    out = []
    for size, r, o in zip(image_size, roi, overlap):
        out.append(int(r) if r == size else max(int(r * (1 - o)), 1))
    return tuple(out)


def window_starts(image_size: Sequence[int], roi: Sequence[int], interval: Sequence[int]) -> list[list[int]]:
    """Window starts per axis: multiples of ``interval`` until a window reaches the end, the last moved back to fit.

    MONAI's ``dense_patch_slices``; ``image_size`` is at least ``roi`` on every axis (pad first).

    >>> window_starts((100,), (64,), (48,))
    [[0, 36]]
    >>> window_starts((10,), (4,), (3,))
    [[0, 3, 6]]
    """
    starts = []
    for size, r, step in zip(image_size, roi, interval):
        n = next((d for d in range(math.ceil(size / step)) if d * step + r >= size), 0) + 1
        starts.append([i * step - max(i * step + r - size, 0) for i in range(n)])
    return starts


@functools.lru_cache(maxsize=8)
def _cached_importance(roi: tuple, blend: str, sigma_scale, dtype, device) -> torch.Tensor:
    # one map per setting: a call over many volumes builds it once (callers never write to it)
    return importance_map(roi, blend=blend, sigma_scale=sigma_scale, dtype=dtype, device=device)


def importance_map(roi: Sequence[int], *, blend: str = "gaussian", sigma_scale=0.125, dtype=torch.float32, device=None):
    """The per-voxel weight of a window's output, MONAI's ``compute_importance_map``.

    ``"gaussian"``: a separable gaussian centred on the window, sigma ``sigma_scale × roi`` per axis,
    values below ``max(min, 1e-3)`` raised to it (so corners still count); ``"constant"``: ones.

    >>> w = importance_map((5, 5), sigma_scale=0.125)
    >>> float(w[2, 2]), float(w.min())
    (1.0, 0.0010000000474974513)
    """
    n = len(roi)
    if blend == "constant":
        w = torch.ones(tuple(roi), device=device, dtype=torch.float)
    elif blend == "gaussian":
        sigmas = [r * s for r, s in zip(roi, _per_axis(sigma_scale, n, "sigma_scale"))]
        w = None
        for i, (r, s) in enumerate(zip(roi, sigmas)):
            x = torch.arange(start=-(r - 1) / 2.0, end=(r - 1) / 2.0 + 1, dtype=torch.float, device=device)
            x = torch.exp(x**2 / (-2 * s**2))
            w = x if i == 0 else w.unsqueeze(-1) * x[(None,) * i]
    else:
        raise ConfigError(f"sliding_window: blend must be one of {_BLENDS}, got {blend!r}")
    floor = max(torch.min(w).item(), 1e-3)
    return torch.clamp_(w.to(torch.float), min=floor).to(dtype)


def _check_flips(tta_flips, n: int) -> tuple[tuple[int, ...], ...]:
    flips = []
    for f in tta_flips:
        axes = (f,) if isinstance(f, int) else tuple(f)
        if not axes or any(not isinstance(a, int) or not 0 <= a < n for a in axes):
            raise ConfigError(
                f"sliding_window: each tta_flips entry is a tuple of spatial axes in [0, {n}), got {f!r} "
                f"(e.g. tta_flips=((0,), (1,), (0, 1)))"
            )
        flips.append(axes)
    return tuple(flips)


def _label_dtype(k: int) -> torch.dtype:
    if k <= 256:
        return torch.uint8
    return torch.int16 if k <= 32768 else torch.int32


def _argmax0(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``scores.argmax(0)`` as ``dtype`` (the first maximum wins), one class at a time.

    ``torch.argmax`` over the leading axis of a strided slab runs 2-7× slower on CPU than these K passes.
    """
    best = scores[0].clone()
    labels = torch.zeros(scores.shape[1:], dtype=dtype, device=scores.device)
    for k in range(1, scores.shape[0]):
        labels.masked_fill_(scores[k] > best, k)
        torch.maximum(best, scores[k], out=best)
    return labels


class _Writer:
    """Takes finished rows (padded coordinates) and keeps those inside the volume as labels."""

    def __init__(self, crop: tuple[slice, ...], shape: tuple[int, ...], device):
        self.crop, self.shape, self.device = crop, shape, device
        self.out = None

    def __call__(self, lo: int, scores: torch.Tensor) -> None:  # scores: K × rows × rest
        k, rows = scores.shape[0], scores.shape[1]
        d0 = self.crop[0].start
        a, b = max(lo, d0), min(lo + rows, d0 + self.shape[0])
        if a >= b:
            return
        part = scores[(slice(None), slice(a - lo, b - lo), *self.crop[1:])]
        if self.out is None:
            self.out = torch.empty(self.shape, dtype=_label_dtype(k), device=self.device)
        self.out[a - d0 : b - d0] = _argmax0(part, self.out.dtype).to(self.device)


def _ring(start: int, length: int, cap: int) -> list[tuple[slice, slice]]:
    """Rows ``start:start + length`` of a ring buffer of ``cap`` rows: ``(buffer rows, rows of the piece)`` pairs."""
    a = start % cap
    n = min(length, cap - a)
    pieces = [(slice(a, a + n), slice(0, n))]
    if n < length:  # wraps around to the buffer's first rows
        pieces.append((slice(0, length - n), slice(n, length)))
    return pieces


def _predict(predictor: Callable, x: torch.Tensor, flips, roi: tuple, dtype) -> torch.Tensor:
    def one(inp):
        p = predictor(inp)
        if not is_tensor(p):
            p = torch.as_tensor(np.asarray(p))
        if p.ndim != inp.ndim or p.shape[0] != inp.shape[0] or tuple(p.shape[2:]) != roi:
            raise ConfigError(
                f"sliding_window: the predictor returned shape {tuple(p.shape)} for windows of shape "
                f"{tuple(inp.shape)}; expected (N, K, *roi) = ({inp.shape[0]}, K, {', '.join(map(str, roi))})"
            )
        return p.to(inp.device, dtype)

    out = one(x)
    for axes in flips:
        dims = [a + 2 for a in axes]
        out = out + one(torch.flip(x, dims)).flip(dims)
    return out / (1 + len(flips)) if flips else out


def sliding_window(
    predictor: Callable,
    volume,
    *,
    roi: int | Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    blend: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    output: str = "probs",
    pad_mode: str | None = "constant",
    tta_flips: Sequence[int | Sequence[int]] = (),
    progress: bool = False,
):
    """Blend ``predictor``'s outputs over windows of ``roi`` covering ``volume`` (one case, ``C×D×H×W``).

    Args:
        predictor: ``N×C×roi`` tensor to ``N×K×roi`` (logits or probabilities; blended as returned).
        volume: one case, channels first, any number of spatial axes (``C×D×H×W`` in 3D); a tensor or
            an array. Several cases: call once per case (each may have its own size).
        roi: window size, one int for every axis or one per axis.
        overlap: fraction of a window shared with the next, in ``[0, 1)``; one for every axis or one per axis.
        blend: ``"gaussian"`` (centre voxels weigh more) or ``"constant"`` (plain mean).
        sigma_scale: gaussian sigma as a fraction of ``roi`` (one or per axis).
        batch_size: windows per predictor call.
        device: where the predictor and the blending run (default: the volume's); the result is on the volume's.
        output: ``"probs"`` (``K×D×H×W`` blended scores) or ``"argmax"`` (``D×H×W`` labels, streamed).
        pad_mode: ``F.pad`` mode for a volume smaller than ``roi`` (padded evenly on both sides, cropped back);
            ``None`` refuses such a volume.
        tta_flips: test-time flips, each a tuple of spatial axes; the outputs on the flipped windows, flipped
            back, are averaged with the plain one (before blending).
        progress: a tqdm bar over the predictor calls.

    Returns:
        a tensor (an array when ``volume`` is one): the blended scores in the volume's floating dtype
        (float32 for integer volumes), or the label map.
    """
    was_numpy = not is_tensor(volume)
    x = torch.as_tensor(np.ascontiguousarray(volume)) if was_numpy else volume
    if x.ndim < 2:
        raise ConfigError(f"sliding_window: volume must be C×D×H×W (channels first), got shape {tuple(x.shape)}")
    n = x.ndim - 1
    roi = tuple(int(r) for r in _per_axis(roi, n, "roi"))
    overlap = tuple(float(o) for o in _per_axis(overlap, n, "overlap"))
    if any(r < 1 for r in roi):
        raise ConfigError(f"sliding_window: roi must be positive, got {roi}")
    if any(not 0 <= o < 1 for o in overlap):
        raise ConfigError(f"sliding_window: overlap must be in [0, 1), got {overlap}")
    if blend not in _BLENDS:
        raise ConfigError(f"sliding_window: blend must be one of {_BLENDS}, got {blend!r}")
    if any(s <= 0 for s in _per_axis(sigma_scale, n, "sigma_scale")):
        raise ConfigError(f"sliding_window: sigma_scale must be > 0, got {sigma_scale}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"sliding_window: batch_size must be a positive int, got {batch_size!r}")
    if output not in _OUTPUTS:
        raise ConfigError(f"sliding_window: output must be one of {_OUTPUTS}, got {output!r}")
    if pad_mode is not None and pad_mode not in _PAD_MODES:
        raise ConfigError(f"sliding_window: pad_mode must be one of {_PAD_MODES} or None, got {pad_mode!r}")
    flips = _check_flips(tta_flips, n)

    shape = tuple(x.shape[1:])
    out_device = x.device
    dev = torch.device(device) if device is not None else x.device
    dtype = x.dtype if x.is_floating_point() else torch.float32
    small = [i for i in range(n) if shape[i] < roi[i]]
    if small and pad_mode is None:
        raise ConfigError(
            f"sliding_window: roi {roi} is larger than the volume's spatial shape {shape} on axis "
            f"{', '.join(map(str, small))} and pad_mode=None; pass pad_mode='constant' or a smaller roi"
        )
    before = [max(r - s, 0) // 2 for r, s in zip(roi, shape)]
    pad = []
    for i in reversed(range(n)):  # F.pad lists the last axis first
        diff = max(roi[i] - shape[i], 0)
        pad += [before[i], diff - before[i]]
    x = x[None]
    if any(pad):
        x = F.pad(x.to(dtype) if pad_mode != "constant" else x, pad, mode=pad_mode)
    size = tuple(x.shape[2:])
    starts = window_starts(size, roi, scan_interval(size, roi, overlap))
    windows = list(itertools.product(*starts))
    sig = tuple(float(s) for s in _per_axis(sigma_scale, n, "sigma_scale"))
    w = _cached_importance(roi, blend, sig, dtype, dev)
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, shape))
    full = output == "probs"
    # probs: the buffers are the whole (padded) output, blended in place. argmax: a ring of the rows a batch
    # needs, from the first row not yet final (its first window's start) to its last window's end; finished
    # rows become labels and their buffer rows are reused, nothing is moved
    cap = size[0] if full else max(b[-1][0] + roi[0] - b[0][0] for b in batches)
    write = None if full else _Writer(crop, shape, out_device)
    acc = None
    cnt = torch.zeros((1, cap, *size[1:]), dtype=dtype, device=dev)
    lo = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches), desc="sliding window", unit="batch", leave=False)
    try:
        with torch.no_grad():
            for bi, batch in enumerate(batches):
                win = torch.cat(
                    [x[(slice(None), slice(None), *(slice(s, s + r) for s, r in zip(st, roi)))] for st in batch]
                )
                p = _predict(predictor, win.to(dev, dtype), flips, roi, dtype)
                if acc is None:
                    acc = torch.zeros((p.shape[1], cap, *size[1:]), dtype=dtype, device=dev)
                elif p.shape[1] != acc.shape[0]:
                    raise ConfigError(
                        f"sliding_window: the predictor returned {p.shape[1]} channels, earlier {acc.shape[0]}"
                    )
                for pi, st in zip(p, batch):
                    rest = tuple(slice(s, s + r) for s, r in zip(st[1:], roi[1:]))
                    for rows, part in _ring(st[0], roi[0], cap):
                        # acc += p·w in one pass, no p·w temporary (MONAI multiplies first: within an ulp)
                        acc[(slice(None), rows, *rest)].addcmul_(pi[:, part], w[part])
                        cnt[(slice(None), rows, *rest)] += w[part]
                del p, pi, win  # before the next call allocates its output: one batch of scores alive at a time
                if not full:
                    nxt = batches[bi + 1][0][0] if bi + 1 < len(batches) else size[0]
                    if nxt > lo:  # rows lo:nxt are final: no later window touches them
                        for rows, part in _ring(lo, nxt - lo, cap):
                            write(lo + part.start, acc[:, rows].div_(cnt[:, rows]))
                            acc[:, rows] = 0
                            cnt[:, rows] = 0
                        lo = nxt
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if full:
        out = acc.div_(cnt)
        if any(pad):
            out = out[(slice(None), *crop)].clone()
        out = out.to(out_device)
    else:
        out = write.out
    return out.numpy() if was_numpy else out
