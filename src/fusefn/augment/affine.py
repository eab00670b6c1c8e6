"""Random affine transform (rotation, scale, shear, translation, flips) as one matrix and one resampling.

The parts are composed into a single forward matrix per sample, in centred pixel
coordinates (the origin is the image centre): ``out = A · (in − c) + t + c`` with
``A = R · Shear · scale · Flip``. Images are resampled bilinearly (trilinearly in 3D),
masks by nearest neighbour, and point/box keys are mapped forward with the same matrix.

>>> import torch
>>> aug = Affine(image_keys="img", rotate=(90, 90))
>>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
>>> from fusefn import Rng
>>> out = aug({"img": x}, rng=Rng(0))
>>> torch.equal(out["img"], torch.rot90(x, 1, dims=(-2, -1)))
True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import attrs
import torch

from fusefn import nd
from fusefn import validators as v
from fusefn.core import record
from fusefn.errors import ConfigError, SampleError

from ._common import (
    Augmentation,
    as_tuple,
    bernoulli,
    check_image,
    chunked,
    gate,
    get_key,
    keys_tuple,
    output_buffer,
    per_axis,
    randint,
    range_validator,
    to_device,
    uniform,
)
from ._resample import grid_from_inverse, planar, resample_keys, resample_planar

__all__ = ["Affine", "compose_affine_params", "rotation_matrix"]

_PADDING = ("zeros", "border", "reflection")


def _snap(v: torch.Tensor) -> torch.Tensor:
    # cos(90°) is 6e-17, not 0: snapping makes right-angle rotations exact permutations
    r = torch.round(v)
    return torch.where((v - r).abs() < 1e-12, r, v)


def rotation_matrix(angles_deg: torch.Tensor, dims: int, axis: int) -> torch.Tensor:
    """``n×d×d`` rotations by ``angles_deg`` about spatial ``axis`` (3D) or in the image plane (2D).

    A positive angle turns axis p towards axis q (p < q the two other axes), the direction
    of ``torch.rot90(x, 1, dims=(p, q))``.
    """
    n = angles_deg.shape[0]
    rad = angles_deg * (math.pi / 180.0)
    c, s = _snap(torch.cos(rad)), _snap(torch.sin(rad))
    p, q = [a for a in range(dims) if a != axis] if dims == 3 else (0, 1)
    m = torch.eye(dims, dtype=angles_deg.dtype, device=angles_deg.device).repeat(n, 1, 1)
    m[:, p, p] = c
    m[:, p, q] = -s
    m[:, q, p] = s
    m[:, q, q] = c
    return m


def _flip_probs(value, dims: int, label: str) -> tuple:
    if value is None:
        return (0.0,) * dims
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * dims
    if not isinstance(value, (tuple, list)) or len(value) != dims:
        raise ConfigError(f"{label} must be a probability or one per spatial axis ({dims}), got {value!r}")
    for x in value:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
            raise ConfigError(f"{label} must hold probabilities in [0, 1], got {value!r}")
    return tuple(float(x) for x in value)


def compose_affine_params(first: Mapping, second: Mapping) -> dict:
    """Params of ``first`` followed by ``second`` as a single affine (one resampling)."""
    apply = first["apply"] | second["apply"]
    return {
        "apply": apply,
        "index": torch.nonzero(apply).flatten(),
        "matrix": second["matrix"] @ first["matrix"],
        "inverse": first["inverse"] @ second["inverse"],
    }


@record
class Affine(Augmentation):
    """Random affine of images, masks, points and boxes, per sample, in one resampling.

    Args:
        dims: 2 (``N×C×H×W``) or 3 (``N×C×D×H×W``).
        image_keys: resampled bilinearly (trilinearly in 3D).
        mask_keys: resampled by nearest neighbour, so label values are kept.
        point_keys: ``N×K×dims`` pixel coordinates in axis order (row, col) / (depth, row, col).
        box_keys: ``N×K×2·dims`` boxes ``(lo_0, …, hi_0, …)`` in the same coordinates; the result
            is the axis-aligned box around the transformed corners.
        rotate: degrees ``(low, high)``; in 3D one range for every axis or one per axis
            (rotation about axis 2, then 1, then 0).
        scale: zoom factor ``(low, high)``, the same on every axis (> 1 enlarges the content).
        scale_axes: the spatial axes the zoom acts on (default: all), e.g. ``(1, 2)`` for an
            in-plane zoom of a volume that keeps its slices.
        shear: degrees ``(low, high)`` for each off-diagonal term.
        translate: pixels ``(low, high)``, one range or one per axis.
        integer_translate: draw whole-pixel translations (both ends included).
        flip: probability of mirroring each axis (one number or one per axis).
        p: probability that a sample is transformed at all.
        padding: ``grid_sample`` padding mode of the pixels coming from outside.
    """

    dims: int = attrs.field(default=2, validator=v.in_((2, 3)))
    image_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    mask_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    point_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    box_keys: tuple = attrs.field(default=(), converter=keys_tuple, validator=v.keys)
    rotate: tuple | None = attrs.field(default=None, converter=as_tuple)
    scale: tuple | None = attrs.field(default=None, converter=as_tuple, validator=range_validator())
    scale_axes: tuple | None = attrs.field(default=None, converter=as_tuple)
    shear: tuple | None = attrs.field(default=None, converter=as_tuple, validator=range_validator())
    translate: tuple | None = attrs.field(default=None, converter=as_tuple)
    integer_translate: bool = False
    flip: tuple | float | None = attrs.field(default=None, converter=as_tuple)
    p: float = attrs.field(default=1.0, validator=v.unit_interval)
    padding: str = attrs.field(default="zeros", validator=v.in_(_PADDING))

    def __attrs_post_init__(self):
        name = type(self).__name__
        if not self.image_keys and not self.mask_keys:
            raise ConfigError(f"{name} needs at least one image or mask key (they give the image size)")
        if self.scale is not None and self.scale[0] <= 0:
            raise ConfigError(f"{name}.scale must be > 0, got {self.scale!r}")
        axes = self.scale_axes
        if axes is not None and (
            not isinstance(axes, tuple)
            or not axes
            or len(set(axes)) != len(axes)
            or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < self.dims for a in axes)
        ):
            raise ConfigError(f"{name}.scale_axes must hold distinct spatial axes in [0, {self.dims}), got {axes!r}")
        if self.shear is not None and max(abs(self.shear[0]), abs(self.shear[1])) >= 90:
            raise ConfigError(f"{name}.shear must lie inside (-90, 90) degrees, got {self.shear!r}")
        per_axis(f"{name}.rotate", self.rotate, 3 if self.dims == 3 else 1)
        per_axis(f"{name}.translate", self.translate, self.dims)
        _flip_probs(self.flip, self.dims, f"{name}.flip")
        if self.integer_translate and self.translate is not None:
            for lo, hi in per_axis(f"{name}.translate", self.translate, self.dims):
                if math.ceil(lo) > math.floor(hi):
                    raise ConfigError(f"{name}.translate has no integer in {(lo, hi)!r}")

    def all_keys(self) -> tuple:
        return self.image_keys + self.mask_keys + self.point_keys + self.box_keys

    def like_keys(self) -> tuple:
        return self.image_keys + self.mask_keys

    def fuse_key(self) -> tuple:
        """Consecutive affines with equal fuse keys compose into one resampling."""
        return (Affine, self.dims, self.image_keys, self.mask_keys, self.point_keys, self.box_keys, self.padding)

    def _sample(self, generator: torch.Generator, batch_size: int, *, device=None, shapes=None) -> dict:
        """Per-sample ``apply``/``index`` and forward/inverse centred matrices ``N×(d+1)×(d+1)`` (float64)."""
        n, d, g = batch_size, self.dims, generator
        params = gate(g, n, self.p)
        eye = torch.eye(d, dtype=torch.float64, device=g.device).repeat(n, 1, 1)
        a = eye
        flips = _flip_probs(self.flip, d, "flip")
        if any(flips):
            signs = torch.stack([1.0 - 2.0 * bernoulli(g, n, pf).double() for pf in flips], dim=1)
            a = a * signs[:, None, :]
        if self.scale is not None:
            s = uniform(g, n, self.scale)
            if self.scale_axes is None:
                a = a * s[:, None, None]
            else:  # a is still diagonal here: scaling its rows scales those axes
                f = torch.ones(n, d, dtype=torch.float64, device=g.device)
                f[:, list(self.scale_axes)] = s[:, None]
                a = a * f[:, :, None]
        if self.shear is not None:
            sh = eye.clone()
            for i, j in itertools.permutations(range(d), 2):
                sh[:, i, j] = torch.tan(uniform(g, n, self.shear) * (math.pi / 180.0))
            a = sh @ a
        if self.rotate is not None:
            ranges = per_axis("rotate", self.rotate, 3 if d == 3 else 1)
            for axis in reversed(range(len(ranges))):
                a = rotation_matrix(uniform(g, n, ranges[axis]), d, axis) @ a
        t = torch.zeros(n, d, dtype=torch.float64, device=g.device)
        if self.translate is not None:
            draw = randint if self.integer_translate else uniform
            t = torch.stack([draw(g, n, r) for r in per_axis("translate", self.translate, d)], dim=1)
        on = params["apply"][:, None, None]
        a = torch.where(on, a, eye)
        t = torch.where(on[:, :, 0], t, torch.zeros_like(t))
        bottom = torch.zeros(n, 1, d + 1, dtype=torch.float64, device=g.device)
        bottom[..., d] = 1.0
        matrix = torch.cat([torch.cat([a, t[:, :, None]], dim=2), bottom], dim=1)
        # inverse of [A t; 0 1] is [A⁻¹ −A⁻¹t; 0 1]; solve once here so apply needs no linalg
        a_inv = torch.linalg.inv(a)
        inverse = torch.cat([torch.cat([a_inv, -(a_inv @ t[:, :, None])], dim=2), bottom], dim=1)
        params.update(matrix=matrix, inverse=_snap(inverse))
        return to_device(params, device)

    def _apply(self, batch: Mapping, params: Mapping, owned: frozenset):
        rest, moves = self._indexable(batch, params)
        rest, flat = self._planar(batch, params, rest)
        out, owned = resample_keys(
            batch,
            owned,
            op=type(self).__name__,
            dims=self.dims,
            image_keys=self.image_keys,
            mask_keys=self.mask_keys,
            index=rest,
            grid_fn=lambda spatial, dtype, sl: grid_from_inverse(params["inverse"][rest[sl]], spatial, dtype),
            padding=self.padding,
            # volumes may skip the grid (the compiled CPU kernel); images always sample one
            inverse=params["inverse"].index_select(0, rest) if self.dims == 3 else None,
        )
        if flat.shape[0]:
            out, owned = self._resample_planar(batch, out, owned, params, flat)
        if moves:
            out, owned = _index_moves(batch, out, owned, self.image_keys + self.mask_keys, moves)
        return self.map_coords(batch, out, params, owned)

    def _planar(self, batch: Mapping, params: Mapping, rest: torch.Tensor):
        """``(samples for the 3D kernel, samples whose map stays within each slice)``; eager CPU 3D only.

        The second set is resampled slice by slice with the 2D kernel (``_resample.planar``): the same
        values up to rounding, for a fraction of the time.
        """
        ref = get_key(batch, (self.image_keys + self.mask_keys)[0], type(self).__name__)
        if self.dims != 3 or rest.shape[0] == 0 or ref.ndim != 5 or not chunked(ref):
            return rest, rest[:0]
        flat = planar(params["inverse"].index_select(0, rest))
        return rest[~flat], rest[flat]

    def _resample_planar(self, batch: Mapping, out: Mapping, owned: frozenset, params: Mapping, flat: torch.Tensor):
        op, updates = type(self).__name__, {}
        modes = [(k, "bilinear") for k in self.image_keys] + [(k, "nearest") for k in self.mask_keys]
        for k, mode in modes:
            src = get_key(batch, k, op)
            check_image(src, op=op, key=k, dims=3, floating=mode == "bilinear")
            dst = nd.get(out, k) if k in owned else output_buffer(src, flat, False)
            for j in flat.tolist():
                resample_planar(src, dst, j, params["inverse"][j], mode, self.padding)
            updates[k] = dst
        return nd.assoc_many(out, updates), owned | frozenset(updates)

    def _indexable(self, batch: Mapping, params: Mapping):
        """``(samples to resample, [(sample, perm, flipped axes)])``: flips and axis swaps are done by indexing.

        A sample whose inverse is a signed permutation with no translation moves whole pixels:
        ``permute``/``flip`` give it exactly, for a fraction of a resampling. Eager CPU only: the
        check reads the matrices on the host, which a compiled graph or a GPU queue should not wait for.
        """
        index = params["index"]
        ref = get_key(batch, (self.image_keys + self.mask_keys)[0], type(self).__name__)
        d = self.dims
        if index.shape[0] == 0 or ref.ndim != d + 2 or not chunked(ref):
            return index, []
        inv = params["inverse"].index_select(0, index)
        a, t = inv[:, :d, :d], inv[:, :d, d]
        unit = a.abs() == 1
        ok = ((a == 0) | unit).all(2).all(1) & (unit.sum(1) == 1).all(1) & (unit.sum(2) == 1).all(1) & (t == 0).all(1)
        if not bool(ok.any()):
            return index, []
        spatial, moves = tuple(ref.shape[2:]), []
        for pos in ok.nonzero().flatten().tolist():
            m = a[pos]
            perm = [int(m[:, k].abs().argmax()) for k in range(d)]  # output axis k reads input axis perm[k]
            if any(spatial[perm[k]] != spatial[k] for k in range(d)):
                ok[pos] = False  # a swap of unequal axes also shifts the centre: resampled
                continue
            flips = [k for k in range(d) if float(m[perm[k], k]) < 0]
            if perm != list(range(d)) or flips:
                moves.append((int(index[pos]), perm, flips))
        return index[~ok], moves

    def map_coords(self, batch: Mapping, out: Mapping, params: Mapping, owned: frozenset):
        """``out`` with the point and box keys of ``batch`` mapped forward by ``params``' matrices."""
        if not (self.point_keys or self.box_keys):
            return out, owned
        op = type(self).__name__
        ref_key = (self.image_keys + self.mask_keys)[0]
        spatial = tuple(get_key(batch, ref_key, op).shape[2:])
        centre = torch.tensor([(s - 1) / 2 for s in spatial], dtype=torch.float64, device=params["matrix"].device)
        updates = {}
        for k in self.point_keys:
            pts = get_key(batch, k, op)
            _check_coords(pts, self.dims, op, k, per_point=self.dims)
            updates[k] = _map_points(pts, params, centre)
        for k in self.box_keys:
            boxes = get_key(batch, k, op)
            _check_coords(boxes, self.dims, op, k, per_point=2 * self.dims)
            d = self.dims
            corners = torch.stack(
                [
                    torch.stack([boxes[..., d * hi + i] for i, hi in enumerate(pick)], dim=-1)
                    for pick in itertools.product((0, 1), repeat=d)
                ],
                dim=-2,
            )  # N×K×2^d×d
            mapped = _map_points(corners.flatten(1, 2), params, centre).unflatten(1, corners.shape[1:3])
            updates[k] = torch.cat([mapped.amin(dim=-2), mapped.amax(dim=-2)], dim=-1)
        return nd.assoc_many(out, updates), owned | frozenset(updates)


def _index_moves(batch: Mapping, out: Mapping, owned: frozenset, keys: tuple, moves: list):
    updates = {}
    for k in keys:
        src, dst = get_key(batch, k, "Affine"), nd.get(out, k)
        if k not in owned:
            dst = dst.clone()
        for j, perm, flips in moves:
            y = src[j].permute(0, *(1 + a for a in perm))
            # flip copies; a bare permute is a view of src, which may be dst itself
            dst[j] = y.flip([1 + a for a in flips]) if flips else y.contiguous()
        updates[k] = dst
    return nd.assoc_many(out, updates), owned | frozenset(updates)


def _check_coords(x: torch.Tensor, dims: int, op: str, key: str, *, per_point: int):
    if x.ndim != 3 or x.shape[-1] != per_point:
        raise SampleError(f"expected N×K×{per_point} coordinates, got shape {tuple(x.shape)}", op=op, key=key)


def _map_points(pts: torch.Tensor, params: Mapping, centre: torch.Tensor) -> torch.Tensor:
    m = params["matrix"]
    d = centre.shape[0]
    p = pts.to(torch.float64) - centre
    mapped = p @ m[:, :d, :d].transpose(1, 2) + m[:, None, :d, d] + centre
    on = params["apply"][:, None, None]
    return torch.where(on, mapped.to(pts.dtype), pts)
