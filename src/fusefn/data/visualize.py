"""PNG figures of samples and batches: image + mask overlay, batch grids, before/after, 3D montages, histograms.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global
backend switch), so they work headless and in worker processes. Each function
writes one PNG and returns its path; :func:`show_samples` writes one per sample,
named by its id through :func:`safe_name` (ids such as ``a/b`` or ``..`` never
leave the folder), with ``index.json`` mapping the names back to the ids.

>>> import numpy as np, tempfile, pathlib
>>> s = {"data": {"sample_id": "a", "input": {"img": np.random.default_rng(0).random((1, 16, 16))},
...      "gt": {"label": 1}}}
>>> show_sample(s, pathlib.Path(tempfile.mkdtemp()) / "a.png").suffix
'.png'
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fusefn import nd
from fusefn._atomic import atomic_dir, atomic_path, write_bytes
from fusefn._types import is_tensor
from fusefn.core import Rng
from fusefn.errors import SampleError
from fusefn.keys import AFFINE, IMAGE, LABEL, MASK, SAMPLE_ID

__all__ = [
    "safe_name",
    "sample_path",
    "save_figure",
    "figure_caption",
    "show_batch",
    "show_before_after",
    "show_histogram",
    "show_sample",
    "show_samples",
    "show_volume",
    "show_predictions",
    "prediction_order",
    "show_scores",
    "show_recipe_samples",
    "AUTO",
]

AUTO = "auto"
"""``mask_key`` default: overlay ``data.gt.mask`` when the sample has one (any other key given must be there)."""

_KEEP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.#@+=,~()[]")


def safe_name(sample_id, *, max_len: int = 120) -> str:
    """A file (or HDF5 dataset) name for a sample id: it stays inside its folder and belongs to that id alone.

    Characters other than letters, digits and ``_-.#@+=,~()[]`` are percent-encoded (their
    UTF-8 bytes), and so are ``%`` and a leading dot: no ``/``, no ``.`` or ``..``, no hidden
    file, and ``urllib.parse.unquote`` gives the id back. The empty id is ``%``. A name longer
    than ``max_len`` is cut and ends in ``%~`` and 16 hex digits of the id's SHA-256 (no other
    name holds ``%~``); the writer keeps the mapping to the id (``index.json``, an attribute).
    Not handled: names that differ only in case on a case-insensitive file system.

    >>> [safe_name(s) for s in ("s0", "a/b", ".", "..", "ct 01#2", "")]
    ['s0', 'a%2Fb', '%2E', '%2E.', 'ct%2001#2', '%']
    >>> len(safe_name("x" * 500)), safe_name("x" * 500)[-18:-16]
    (120, '%~')
    """
    text = str(sample_id)
    if not text:
        return "%"
    out = "".join(c if c in _KEEP else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text)
    if out.startswith("."):
        out = "%2E" + out[1:]
    if len(out) > max_len:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        out = out[: max_len - 18] + "%~" + digest
    return out


def sample_path(folder, sample_id, suffix: str = ".png") -> pathlib.Path:
    """``folder / (safe_name(sample_id) + suffix)``: a path for a sample's output that cannot leave ``folder``."""
    return pathlib.Path(folder) / (safe_name(sample_id) + suffix)


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, *, caption: str | None = None, **savefig_kwargs) -> pathlib.Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary file, then a rename): never half a file.

    ``caption`` (a sentence saying what the figure shows) is stored in the PNG's ``Description``
    text, where :func:`figure_caption` and the reports that embed the figure find it.
    """
    path = pathlib.Path(path)
    savefig_kwargs.setdefault("bbox_inches", "tight")  # long titles are kept, not cut at the edge
    if caption:
        savefig_kwargs["metadata"] = {**savefig_kwargs.get("metadata", {}), "Description": caption}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    return path


def figure_caption(path) -> str | None:
    """The caption stored in a PNG by :func:`save_figure` (``Description``), or None (none, or not a PNG)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return getattr(im, "text", {}).get("Description") or None
    except (OSError, ValueError):
        return None


def _np(x) -> np.ndarray:
    if is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _image2d(x, sid=None, key=None) -> np.ndarray:
    """A displayable H×W (gray) or H×W×3 (RGB) array from C×H×W, H×W, or a 3D volume's middle slice."""
    a = _np(x).astype(np.float32)
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[0] in (1, 3):
        return a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    if a.ndim == 3:  # D×H×W volume
        return a[a.shape[0] // 2]
    if a.ndim == 4:  # C×D×H×W
        return a[0, a.shape[1] // 2]
    raise SampleError(f"cannot show an array of shape {a.shape} as an image", sample_id=sid, key=key, op="visualize")


def _rgb_scale(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3:
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a


def _scalar_text(v) -> str:
    a = _np(v)
    if a.ndim == 0:
        return f"{a.item():.3g}" if a.dtype.kind == "f" else str(a.item())
    if a.ndim == 1 and a.size <= 10:
        return "[" + ", ".join(f"{x:.2f}" for x in a.astype(float)) + "]"
    return f"array{tuple(a.shape)}"


def _required(sample: Mapping, key: str, op: str):
    if not nd.contains(sample, key):
        sid = nd.get(sample, SAMPLE_ID, None)
        have = sorted(nd.flatten(sample))
        near = difflib.get_close_matches(key, have, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise SampleError(f"no {key!r} to show{hint}; the sample has {have}", sample_id=sid, key=key, op=op)
    return nd.get(sample, key)


def _check_mask(mask_shape: tuple, image_shape: tuple, sid, key: str, op: str) -> None:
    # an overlay of another size would be stretched over the image and look plausible
    if tuple(mask_shape) != tuple(image_shape):
        raise SampleError(
            f"mask of shape {tuple(mask_shape)} does not match the image's {tuple(image_shape)}",
            sample_id=sid,
            key=key,
            op=op,
        )


def _slice_note(x, affine=None) -> str:
    """Which slice :func:`_image2d` shows of a volume (index, and its world position in mm with an affine)."""
    shape = tuple(_np(x).shape)
    if len(shape) == 3 and shape[0] not in (1, 3):
        depth = shape[0]
    elif len(shape) == 4:
        depth, shape = shape[1], shape[1:]
    else:
        return ""
    k = depth // 2
    if affine is None:
        return f"slice {k} of {depth} (voxel axis 0)"
    a = np.asarray(_np(affine), dtype=np.float64)
    name, world = _view(a, 0)
    centre = (np.asarray(shape, np.float64) - 1) / 2
    centre[0] = k
    return f"{name} slice {k} of {depth}, {'xyz'[world]} = {float((a @ [*centre, 1.0])[world]):.1f} mm"


def _draw(ax, sample: Mapping, image_key, mask_key, label_key, pred_key, title_prefix=""):
    sid = nd.get(sample, SAMPLE_ID, None)
    raw = _required(sample, image_key, "visualize")
    img = _rgb_scale(_image2d(raw, sid, image_key))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    if mask_key in (AUTO, MASK):  # the well-known mask key: drawn where the sample has one
        mask_key = MASK if nd.contains(sample, MASK) else None
    if mask_key is not None:
        # a mask key that was asked for and is not there is a mistake, not an image without a mask
        mask = _image2d(_required(sample, mask_key, "visualize (mask)"), sid, mask_key)
        _check_mask(mask.shape[:2], img.shape[:2], sid, mask_key, "visualize")
        ax.imshow(np.ma.masked_where(mask <= 0, mask), cmap="autumn", alpha=0.45, interpolation="nearest")
    parts = [f"{title_prefix}{sid}" if sid is not None else title_prefix]
    if label_key is not None and nd.contains(sample, label_key):
        parts.append(f"gt {_scalar_text(nd.get(sample, label_key))}")
    if pred_key is not None and nd.contains(sample, pred_key):
        parts.append(f"pred {_scalar_text(nd.get(sample, pred_key))}")
    title = "  ".join(p for p in parts if p)
    where = _slice_note(raw, nd.get(sample, AFFINE, None))  # a volume: say which slice is shown
    ax.set_title(title + (f"\n{where}" if where else ""), fontsize=8)
    ax.set_axis_off()


def show_sample(
    sample: Mapping,
    path,
    image_key: str = IMAGE,
    mask_key: str | None = AUTO,
    label_key: str | None = LABEL,
    pred_key: str | None = None,
) -> pathlib.Path:
    """One sample: its image, the mask overlaid, label and prediction in the title.

    ``mask_key``: :data:`AUTO` (or ``data.gt.mask`` itself) overlays ``data.gt.mask`` when the sample
    has one; any other key must be in the sample (a SampleError names it and the keys there are);
    ``None``: no mask.
    """
    fig = _figure(4, 4.3)
    _draw(fig.add_subplot(1, 1, 1), sample, image_key, mask_key, label_key, pred_key)
    fig.tight_layout()
    return save_figure(fig, path)


def show_batch(
    batch: Mapping,
    path,
    image_key: str = IMAGE,
    mask_key: str | None = AUTO,
    label_key: str | None = LABEL,
    pred_key: str | None = None,
    max_items: int = 16,
) -> pathlib.Path:
    """A grid of the first ``max_items`` samples of a batch_dict (or of a list of samples)."""
    from fusefn.data.dataset import uncollate

    samples = list(batch) if isinstance(batch, Sequence) else uncollate(batch)
    samples = samples[:max_items]
    cols = min(4, len(samples)) or 1
    rows = max(1, math.ceil(len(samples) / cols))
    fig = _figure(3 * cols, 3.2 * rows)
    for i, s in enumerate(samples):
        _draw(fig.add_subplot(rows, cols, i + 1), s, image_key, mask_key, label_key, pred_key)
    fig.tight_layout()
    said = ["the sample id", f"the label ({label_key}) as gt"] + ([f"{pred_key} as pred"] if pred_key else [])
    caption = f"{len(samples)} samples in batch order; each title gives {', '.join(said)} where present"
    caption += "; masks are overlaid in orange." if mask_key is not None else "."
    return save_figure(fig, path, caption=caption)


def show_samples(
    samples: Iterable[Mapping],
    folder,
    image_key: str = IMAGE,
    mask_key: str | None = AUTO,
    label_key: str | None = LABEL,
    pred_key: str | None = None,
) -> list[pathlib.Path]:
    """One :func:`show_sample` PNG per sample in ``folder``, named by :func:`sample_path`, and ``index.json``.

    ``index.json`` maps each file name to its sample id (names of cut long ids and repeated
    ids, which get ``%~<n>`` appended, cannot be decoded). The set is written whole or not at
    all (:func:`fusefn._atomic.atomic_dir`): ``folder`` is replaced, so it must be new, empty
    or an earlier output of this function.
    """
    folder = pathlib.Path(folder)
    names: dict[str, object] = {}
    with atomic_dir(folder, owned=("*.png", "index.json")) as tmp:
        for i, s in enumerate(samples):
            sid = nd.get(s, SAMPLE_ID, None)
            name = sample_path("", sid if sid is not None else f"#{i}").name
            if name in names:
                name = f"{name[: -len('.png')]}%~{i}.png"
            names[name] = sid
            show_sample(s, tmp / name, image_key, mask_key, label_key, pred_key)
        write_bytes(tmp / "index.json", json.dumps(names, indent=1, default=str).encode())
    return [folder / n for n in names]


def show_before_after(
    before: Mapping, after: Mapping, path, image_key: str = IMAGE, mask_key: str | None = AUTO
) -> pathlib.Path:
    """The same sample before and after a pipeline (e.g. the dynamic ops or an augmentation), side by side."""
    fig = _figure(8, 4.3)
    _draw(fig.add_subplot(1, 2, 1), before, image_key, mask_key, None, None, "before: ")
    _draw(fig.add_subplot(1, 2, 2), after, image_key, mask_key, None, None, "after: ")
    fig.tight_layout()
    return save_figure(fig, path, caption="The same sample before (left) and after (right) the pipeline.")


_VIEWS = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}


def show_volume(
    volume, path, n_slices: int = 6, mask=None, title: str | None = None, key: str = IMAGE, affine=None
) -> pathlib.Path:
    """A 3D volume (``D×H×W``, ``C×D×H×W``, or a sample dict) as slice montages along each voxel axis.

    With an affine (``affine=``, or ``keys.AFFINE`` in the sample) every view is drawn at its true aspect from
    the voxel spacing, named by the anatomical direction its slicing axis runs along (axial, coronal,
    sagittal), and each slice is titled with its index and its world position in mm (RAS+). Without one the
    voxels are drawn square and the views are named by voxel axis.
    """
    sid = None
    if isinstance(volume, Mapping):
        sid = nd.get(volume, SAMPLE_ID, None)
        title = title or str(sid if sid is not None else "")
        if mask is None and nd.contains(volume, MASK):
            mask = nd.get(volume, MASK)
        if affine is None and nd.contains(volume, AFFINE):
            affine = nd.get(volume, AFFINE)
        volume = _required(volume, key, "show_volume")
    v = _np(volume).astype(np.float32)
    if v.ndim == 4:
        v = v[0]
    if v.ndim != 3:
        raise SampleError(
            f"show_volume needs a 3D volume, got shape {v.shape}", sample_id=sid, key=key, op="show_volume"
        )
    m = None
    if mask is not None:
        m = _np(mask)
        m = m[0] if m.ndim == 4 else m
        _check_mask(m.shape, v.shape, sid, MASK, "show_volume")
    a = None if affine is None else np.asarray(_np(affine), dtype=np.float64)
    if a is not None and a.shape != (4, 4):
        raise SampleError(f"show_volume needs a 4×4 affine, got shape {a.shape}", sample_id=sid, key=AFFINE)
    spacing = np.ones(3) if a is None else np.linalg.norm(a[:3, :3], axis=0)
    lo, hi = float(v.min()), float(v.max())
    fig = _figure(2 * n_slices, 6.4)
    for r in range(3):
        name, world = _view(a, r)
        rows, cols = [ax for ax in range(3) if ax != r]
        picks = np.linspace(0, v.shape[r] - 1, n_slices + 2)[1:-1].round().astype(int)
        for c, k in enumerate(picks):
            ax = fig.add_subplot(3, n_slices, r * n_slices + c + 1)
            # aspect = a pixel's height over its width: the spacing of the displayed rows over that of the columns
            aspect = spacing[rows] / spacing[cols]
            ax.imshow(np.take(v, k, axis=r), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
            if m is not None:
                ms = np.take(m, k, axis=r)
                ax.imshow(
                    np.ma.masked_where(ms <= 0, ms), cmap="autumn", alpha=0.45, interpolation="nearest", aspect=aspect
                )
            where = ""
            if a is not None:
                centre = (np.asarray(v.shape, np.float64) - 1) / 2
                centre[r] = k
                where = f"\n{'xyz'[world]} = {float((a @ [*centre, 1.0])[world]):.1f} mm"
            ax.set_title(f"{name} {k}{where}", fontsize=7)
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    where = "its index and world position (mm, RAS+)" if a is not None else "its index (no affine: voxels square)"
    caption = f"{n_slices} evenly spaced slices along each voxel axis, one row per axis; each titled with {where}."
    return save_figure(fig, path, caption=caption)


def _view(affine, axis: int) -> tuple[str, int]:
    """The view slicing along voxel ``axis`` shows, and the world axis (0 x, 1 y, 2 z) that voxel axis runs along."""
    if affine is None:
        return ("axial", "coronal", "sagittal")[axis], axis
    world = int(np.argmax(np.abs(affine[:3, axis])))
    return _VIEWS["RAS"[world]], world


def show_histogram(sample: Mapping, path, image_key: str = IMAGE, bins: int = 64) -> pathlib.Path:
    """The image next to the histogram of its values (checks normalization and windowing)."""
    sid = nd.get(sample, SAMPLE_ID, None)
    values = _np(_required(sample, image_key, "show_histogram")).astype(np.float64).ravel()
    fig = _figure(8, 3.6)
    _draw(fig.add_subplot(1, 2, 1), sample, image_key, None, None, None)
    ax = fig.add_subplot(1, 2, 2)
    finite = values[np.isfinite(values)]
    ax.hist(finite, bins=bins, color="tab:blue")
    ax.set_title(
        f"{sid}, all {finite.size} values: min {finite.min():.3g} max {finite.max():.3g} "
        f"mean {finite.mean():.3g} std {finite.std():.3g}"
        if finite.size
        else f"{sid}: no finite values",
        fontsize=8,
    )
    ax.set_xlabel(f"intensity ({image_key})", fontsize=8)
    ax.set_ylabel("count", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _decisions(probs, threshold: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """(decision, probability shown, binary) per sample: binary scores against ``threshold``, else argmax."""
    p = np.asarray(_np(probs), dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1:
        return (p >= threshold).astype(np.int64), p, True
    return p.argmax(axis=1), p.max(axis=1), False


def prediction_order(probs, labels, *, threshold: float = 0.5) -> np.ndarray:
    """Sample indices with the errors first, the most confident error first, then the correct ones, least sure first.

    ``probs``: (N,) positive-class probabilities (decided at ``threshold``) or (N, C) class probabilities
    (argmax).

    >>> prediction_order([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]], [0, 0, 0, 0]).tolist()
    [2, 1, 3, 0]
    """
    decision, p, binary = _decisions(probs, threshold)
    conf = np.where(decision == 1, p, 1 - p) if binary else p
    wrong = decision != np.asarray(_np(labels)).astype(np.int64)
    return np.argsort(np.where(wrong, -conf, 1 + conf), kind="stable")


def show_predictions(
    samples,
    path,
    *,
    probs,
    labels,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    image_key: str = IMAGE,
    mask_key: str | None = None,
    max_items: int = 16,
) -> pathlib.Path:
    """A grid of predictions, the errors first (:func:`prediction_order`), each titled true / predicted / probability.

    ``samples``: the samples aligned with ``probs`` and ``labels``, or a function ``index -> sample``
    (only the ``max_items`` drawn are built: images regenerated from an id, read from a cache, …).
    Errors are titled in red. The PNG carries its caption (:func:`figure_caption`).
    """
    decision, p, binary = _decisions(probs, threshold)
    full = np.asarray(_np(probs), dtype=np.float64)
    y = np.asarray(_np(labels)).astype(np.int64)
    names = [str(c) for c in class_names] if class_names is not None else None

    def name(c: int) -> str:
        return names[c] if names is not None and 0 <= c < len(names) else str(c)

    picks = prediction_order(probs, y, threshold=threshold)[:max_items]
    n_err = int(np.count_nonzero(decision != y))
    cols = min(4, len(picks)) or 1
    rows = max(1, math.ceil(len(picks) / cols))
    fig = _figure(3 * cols, 3.3 * rows + 0.5)
    for i, k in enumerate(int(k) for k in picks):
        s = samples(k) if callable(samples) else samples[k]
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw(ax, s, image_key, mask_key, None, None)
        wrong = decision[k] != y[k]
        prob = f"P({name(1)}) {p[k]:.2f}" if binary else f"P({name(int(decision[k]))}) {p[k]:.2f}"
        if wrong and not binary:
            prob += f", P({name(int(y[k]))}) {full[k, y[k]]:.2f}"
        sid = nd.get(s, SAMPLE_ID, k)
        head = f"{'ERROR  ' if wrong else ''}{sid}"
        ax.set_title(f"{head}\ntrue {name(int(y[k]))} · pred {name(int(decision[k]))} · {prob}", fontsize=8,
                     color="tab:red" if wrong else "black")  # fmt: skip
    rule = f"P({name(1)}) ≥ {threshold:.3g}" if binary else "argmax"
    shown_err = min(n_err, len(picks))
    fig.suptitle(
        f"{n_err} of {len(y)} cases misclassified ({rule}); {shown_err} shown first, most confident first, "
        "then the least confident correct cases",
        fontsize=9,
    )
    fig.tight_layout()
    caption = (
        f"Test cases ordered errors first: the {shown_err} misclassified case(s) shown (of {n_err}), most confident "
        f"error first, then the correct cases the model was least sure of; each title gives the true and the "
        f"predicted class and the predicted probability ({rule})."
    )
    return save_figure(fig, path, caption=caption)


def show_scores(
    scores: Mapping[str, np.ndarray], path, *, labels=None, label_name: str = "label", bins: int = 30
) -> pathlib.Path:
    """Histograms of score columns (name -> values), one panel each, split by ``labels`` when given.

    The classes share each panel's bins; one legend for all panels sits under them, off the data.
    """
    scores = {k: np.asarray(_np(v), dtype=np.float64) for k, v in scores.items()}
    cols = min(len(scores), 4) or 1
    rows = -(-len(scores) // cols)
    fig = _figure(4 * cols, 3.2 * rows + 0.6)
    lab = None if labels is None else np.asarray(_np(labels))
    counts = {} if lab is None else {v: int(np.count_nonzero(lab == v)) for v in np.unique(lab)}
    handles: dict = {}
    for i, (name, values) in enumerate(scores.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        finite = values[np.isfinite(values)]
        probs_like = finite.size and finite.min() >= 0 and finite.max() <= 1
        edges = np.histogram_bin_edges(finite, bins=bins, range=(0, 1) if probs_like else None)
        if lab is None:
            ax.hist(finite, bins=edges, color="tab:blue")
        else:
            for value in np.unique(lab):
                sel = values[(lab == value) & np.isfinite(values)]
                *_, patches = ax.hist(sel, bins=edges, alpha=0.5)
                handles.setdefault(f"{label_name} = {value} (n={counts[value]})", patches[0] if len(patches) else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"score ({name})", fontsize=8)
        ax.set_ylabel("samples", fontsize=8)
        ax.tick_params(labelsize=7)
    legend = [(h, t) for t, h in handles.items() if h is not None]
    if legend:
        fig.legend([h for h, _ in legend], [t for _, t in legend], loc="lower center", ncol=min(len(legend), 6),
                   fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.06 if legend else 0, 1, 1))
    split = f", split by {label_name}" if lab is not None else ""
    return save_figure(fig, path, caption=f"Distribution of each score column{split}; the classes share the bins.")


def show_recipe_samples(
    recipe,
    out,
    *,
    num: int = 16,
    rng: Rng,
    cache_dir,
    image_key: str | None = None,
    mask_key: str | None = None,
    label_key: str | None = None,
) -> pathlib.Path:
    """``out/<recipe>_samples.png``: the first ``num`` samples of a recipe's static pipeline, with its keys.

    The keys default to what the recipe declares (``Recipe.image_key``, ``mask_key``, ``label_key``),
    so its masks are drawn; a key given that the samples do not have is a SampleError naming the
    keys they have. ``cache_dir`` holds the samples built (``Recipe.static_data(cache_dir, rng=rng)``).
    """
    from fusefn.data import Dataset, collate
    from fusefn.errors import ConfigError

    if recipe.static_data is None:
        raise ConfigError(f"recipe {recipe.name!r} has no static pipeline to draw (its Recipe.static_data is None)")
    store, source = recipe.static_data(pathlib.Path(cache_dir), rng=rng)
    ds = Dataset(source=source.take(source.ids[:num]), cache=store).build()
    batch = collate([ds[i] for i in range(len(ds))], pad=True)  # volumes of different shapes side by side
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return show_batch(
        batch,
        out / f"{recipe.name}_samples.png",
        image_key=image_key or recipe.image_key,
        mask_key=mask_key or recipe.mask_key,
        label_key=label_key or recipe.label_key,
        max_items=num,
    )
