"""fusefn.affine against physics (intensities that are known functions of world coordinates), nibabel and SimpleITK."""

import itertools

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import affine as geo

CODES = ["".join(p) for p in itertools.product("RL", "AP", "SI")]
ALL_CODES = sorted({"".join(c[i] for i in perm) for c in CODES for perm in itertools.permutations(range(3))})


def rotation(ax: int, angle: float) -> np.ndarray:
    r = np.eye(4)
    i, j = [a for a in range(3) if a != ax]
    c, s = np.cos(angle), np.sin(angle)
    r[[i, i, j, j], [i, j, i, j]] = [c, -s, s, c]
    return r


def signed_perm(codes: str, spacing=(0.7, 1.1, 2.5), origin=(10.0, -20.0, 35.0)) -> np.ndarray:
    """The affine whose voxel axes run towards ``codes`` with ``spacing``."""
    a = np.eye(4)
    a[:3, :3] = 0
    for ax, c in enumerate(codes):
        w = "LRPAIS".index(c) // 2
        a[w, ax] = spacing[ax] * (1 if c in "RAS" else -1)
    a[:3, 3] = origin
    return a


def ramp(affine, shape, coef=(0.5, -1.25, 2.0), bias=100.0) -> np.ndarray:
    """An intensity that is a linear function of the world position of each voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (geo.voxel_to_world(affine, idx) @ np.array(coef) + bias).astype(np.float64)


def interior(shape, margin=1):
    return tuple(slice(margin, s - margin) for s in shape)


# --------------------------------------------------------------------------- derived geometry


@given(st.sampled_from(ALL_CODES), st.floats(-0.3, 0.3), st.integers(0, 2))
@settings(max_examples=60, deadline=None)
def test_axcodes_and_spacing_agree_with_nibabel(codes, angle, ax):
    a = rotation(ax, angle) @ signed_perm(codes)
    assert geo.axcodes(a) == "".join(nib.aff2axcodes(a))
    np.testing.assert_allclose(geo.spacing(a), nib.affines.voxel_sizes(a))


@given(st.sampled_from(ALL_CODES), st.sampled_from(ALL_CODES), st.tuples(*[st.integers(1, 6)] * 3))
@settings(max_examples=60, deadline=None)
def test_orienting_there_and_back_is_the_identity(src, dst, shape):
    a = signed_perm(src)
    x = np.arange(np.prod(shape)).reshape(1, *shape)
    perm, flips, b = geo.orientation_transform(a, shape, dst)
    y = geo.apply_orientation(x, perm, flips)
    assert geo.axcodes(b) == dst
    # every voxel keeps its world position: same value at the same world point
    idx = np.argwhere(np.ones(y.shape[1:], bool))
    back = np.rint(geo.world_to_voxel(a, geo.voxel_to_world(b, idx))).astype(int)
    np.testing.assert_array_equal(y[0][tuple(idx.T)], x[0][tuple(back.T)])
    perm2, flips2, c = geo.orientation_transform(b, y.shape[1:], src)
    np.testing.assert_array_equal(geo.apply_orientation(y, perm2, flips2), x)
    np.testing.assert_allclose(c, a, atol=1e-12)
    # the same as nibabel's orientation transform
    ornt = nib.orientations.ornt_transform(nib.io_orientation(a), nib.orientations.axcodes2ornt(tuple(dst)))
    np.testing.assert_array_equal(y[0], nib.orientations.apply_orientation(x[0], ornt))


@given(
    st.lists(st.floats(-50, 50), min_size=3, max_size=3),
    st.lists(st.integers(-9, 9), min_size=3, max_size=3),
    st.lists(st.integers(-9, 9), min_size=3, max_size=3),
)
@settings(max_examples=50, deadline=None)
def test_affine_composition_laws(p, s1, s2):
    a = rotation(1, 0.2) @ signed_perm("LPS")
    np.testing.assert_allclose(geo.world_to_voxel(a, geo.voxel_to_world(a, p)), p, atol=1e-9)
    # two crops are one crop at the summed start; a crop then its pad is the identity
    np.testing.assert_allclose(
        geo.crop_affine(geo.crop_affine(a, s1), s2), geo.crop_affine(a, np.add(s1, s2)), atol=1e-9
    )
    np.testing.assert_allclose(geo.crop_affine(geo.crop_affine(a, s1), [-v for v in s1]), a, atol=1e-9)
    # a voxel of the crop is the voxel start + index of the original
    np.testing.assert_allclose(
        geo.voxel_to_world(geo.crop_affine(a, s1), p), geo.voxel_to_world(a, np.add(p, s1)), atol=1e-9
    )


def test_resampled_affine_keeps_the_field_of_view():
    a = signed_perm("LPI", spacing=(0.7, 0.8, 2.5))
    shape = (100, 90, 40)
    b, new_shape = geo.resampled_affine(a, shape, (1.5, None, 1.0))
    assert new_shape == (47, 90, 100)
    np.testing.assert_allclose(geo.spacing(b), (1.5, 0.8, 1.0))
    assert geo.axcodes(b) == "LPI"
    # the outer face of the first voxel (index -0.5) is where it was
    np.testing.assert_allclose(geo.voxel_to_world(b, [-0.5] * 3), geo.voxel_to_world(a, [-0.5] * 3), atol=1e-9)
    with pytest.raises(ValueError, match="> 0"):
        geo.resampled_affine(a, shape, (0.0, 1.0, 1.0))


def test_scale_affine_describes_interpolate():
    a = signed_perm("RAS", spacing=(1.0, 2.0, 0.5))
    shape, new = (12, 10, 16), (6, 15, 8)
    x = ramp(a, shape)
    y = F.interpolate(torch.from_numpy(x)[None, None], size=new, mode="trilinear", align_corners=False)[0, 0].numpy()
    want = ramp(geo.scale_affine(a, shape, new), new)
    np.testing.assert_allclose(y[interior(new, 2)], want[interior(new, 2)], rtol=1e-6)


def test_same_grid():
    a = signed_perm("LPS")
    assert geo.same_grid(a, a.copy())
    assert not geo.same_grid(a, geo.crop_affine(a, (0, 0, 0.01)), tol_mm=1e-3)
    b = a.copy()
    b[0, 0] += 1e-5  # a tiny spacing error grows along the axis
    assert geo.same_grid(a, b, shape=(10, 10, 10)) and not geo.same_grid(a, b, shape=(1000, 10, 10), tol_mm=1e-3)


# --------------------------------------------------------------------------- the resampling kernel


def test_permutation_flip_and_integer_shift_are_exact_indexing():
    a = signed_perm("LPS")
    x = np.random.default_rng(0).integers(-1000, 3000, size=(2, 7, 8, 9)).astype(np.int16)
    perm, flips, b = geo.orientation_transform(a, x.shape[1:], "SAR")
    target = geo.crop_affine(b, (-2, 1, 3))
    shape = (12, 5, 4)
    for arr in (x, torch.from_numpy(x)):
        for mode in geo.MODES:
            y = geo.resample_to_grid(arr, a, target, shape, mode=mode, fill=-7)
            assert type(y) is type(arr) and y.dtype == arr.dtype
            y = np.asarray(y)
            full = geo.apply_orientation(x, perm, flips)
            want = np.full((2, *shape), -7, np.int16)
            assert full.shape == (2, 9, 8, 7)
            want[:, 2:11] = full[:, :, 1:6, 3:7]  # target 11 on the first axis is source 9: outside
            np.testing.assert_array_equal(y, want)


def _targets(a, shape):
    """Target grids that exercise each path of the kernel: face-keeping (torch's kernel), shifted, oblique."""
    b, bs = geo.resampled_affine(a, shape, (1.3, 0.9, 1.7))
    return {
        "separable-upsample": (b, bs),
        "separable-shifted": (geo.crop_affine(b, (0.37, -0.61, 1.29)), bs),
        "oblique": (
            turned(rotation(2, 0.25) @ rotation(0, -0.15), a, shape) @ geo.crop_affine(b, (3, 2, 4)),
            (10, 12, 14),
        ),
    }


def turned(r, a, shape):
    """``r`` about the world centre of the grid ``(a, shape)``, so the turned grid still overlaps it."""
    c = geo.voxel_to_world(a, (np.array(shape) - 1) / 2)
    t, u = np.eye(4), np.eye(4)
    t[:3, 3], u[:3, 3] = c, -c
    return t @ r @ u


@pytest.mark.parametrize("codes", ["RAS", "LPS", "IPL", "ASR"])
@pytest.mark.parametrize("path", ["separable-upsample", "separable-shifted", "oblique"])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_a_world_ramp_resamples_to_the_ramp(codes, path, mode):
    a = signed_perm(codes, spacing=(1.1, 0.7, 2.3))
    shape = (14, 20, 9)
    x = ramp(a, shape)[None].astype(np.float32)
    b, bs = _targets(a, shape)[path]
    y = geo.resample_to_grid(x, a, b, bs, mode=mode)[0]
    want = ramp(b, bs)
    # inside the source's outer centres the ramp is exact (linear and cubic B-splines reproduce linear functions)
    idx = np.argwhere(np.ones(bs, bool))
    src = geo.world_to_voxel(a, geo.voxel_to_world(b, idx))
    margin = 2.0 if mode == "cubic" else 0.0  # the cubic's boundary condition reaches two voxels in
    inside = ((src >= margin) & (src <= np.array(shape) - 1 - margin)).all(axis=1)
    assert inside.sum() > 100
    got, exp = y[tuple(idx[inside].T)], want[tuple(idx[inside].T)]
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_outside_the_source_box_is_fill_and_within_half_a_voxel_the_edge():
    a = np.eye(4)
    x = np.arange(1.0, 5.0).reshape(1, 4, 1, 1)
    b = geo.crop_affine(np.diag([0.25, 1.0, 1.0, 1.0]), (-4, 0, 0))  # centres at -1.0, -0.75, ..., 4.75
    y = geo.resample_to_grid(x, a, b, (24, 1, 1), fill=-1.0)[0, :, 0, 0]
    pos = -1.0 + 0.25 * np.arange(24)
    want = np.where((pos < -0.5) | (pos > 3.5), -1.0, np.interp(pos, np.arange(4), x.ravel()))
    np.testing.assert_allclose(y, want, atol=1e-6)


def test_nearest_never_creates_labels_and_keeps_dtype():
    rng = np.random.default_rng(1)
    a = signed_perm("LPS", spacing=(0.8, 0.8, 3.0))
    lab = rng.choice(np.array([0, 3, 7, 200], np.uint8), size=(1, 30, 30, 10))
    for b, bs in _targets(a, lab.shape[1:]).values():
        for arr in (lab, torch.from_numpy(lab)):
            y = geo.resample_to_grid(arr, a, b, bs, mode="nearest")
            assert y.dtype == arr.dtype
            assert set(np.unique(np.asarray(y))) <= {0, 3, 7, 200}


def test_antialias_removes_what_the_coarse_grid_cannot_hold():
    x = np.zeros((1, 64, 4, 4), np.float32)
    x[:, ::2] = 1.0  # the highest frequency the fine grid holds
    a = np.eye(4)
    b, bs = geo.resampled_affine(a, x.shape[1:], (3.0, None, None))
    plain = geo.resample_to_grid(x, a, b, bs)
    smooth = geo.resample_to_grid(x, a, b, bs, antialias=True)
    assert plain.std() > 0.3 and smooth.std() < 0.1  # aliasing turns the stripes into a coarse pattern
    np.testing.assert_allclose(smooth[0, 2:-2].mean(), 0.5, atol=0.05)


def blob(shape, centre, radii) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (((idx - np.array(centre)) / np.array(radii)) ** 2).sum(-1) <= 1


def test_to_original_grid_inverts_crop_and_resample():
    a = signed_perm("LPS", spacing=(0.8, 0.8, 2.0))
    shape = (96, 96, 32)
    lab = 2 * blob(shape, (40, 44, 14), (18, 14, 6)).astype(np.int64)[None]
    lab[0][blob(shape, (38, 40, 14), (6, 7, 3))] = 5
    perm, flips, b = geo.orientation_transform(a, shape, "RAS")
    oriented = geo.apply_orientation(lab, perm, flips)
    cropped = oriented[:, 5:90, 8:86, 2:30]
    c = geo.crop_affine(b, (5, 8, 2))
    back = geo.to_original_grid(cropped, c, a, shape, mode="nearest")
    np.testing.assert_array_equal(back, lab)  # exact: everything cropped away was background
    d, ds = geo.resampled_affine(c, cropped.shape[1:], (1.6, 1.6, 4.0))
    coarse = geo.resample_to_grid(cropped, c, d, ds, mode="nearest")
    back = geo.to_original_grid(coarse, d, a, shape, mode="nearest")
    assert (back == lab).mean() >= 0.99
    for v in (2, 5):  # each structure comes back where it was, up to a coarse voxel at its surface
        assert 2 * ((back == v) & (lab == v)).sum() / ((back == v).sum() + (lab == v).sum()) >= 0.8


# --------------------------------------------------------------------------- SimpleITK as the oracle


def to_sitk(arr: np.ndarray, affine: np.ndarray) -> sitk.Image:
    im = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    set_grid(im, affine)
    return im


def set_grid(obj, affine):
    """ITK's world is LPS: x and y reversed; direction columns are the voxel axes."""
    sp = np.array(geo.spacing(affine))
    lps = np.diag([-1.0, -1.0, 1.0])
    out = "Output" if isinstance(obj, sitk.ResampleImageFilter) else ""
    getattr(obj, f"Set{out}Origin")((lps @ affine[:3, 3]).tolist())
    getattr(obj, f"Set{out}Spacing")(sp.tolist())
    getattr(obj, f"Set{out}Direction")((lps @ affine[:3, :3] / sp).flatten().tolist())


def sitk_resample(arr, affine, target, shape, interpolator):
    r = sitk.ResampleImageFilter()
    set_grid(r, target)
    r.SetSize([int(s) for s in shape])
    r.SetInterpolator(interpolator)
    if interpolator == sitk.sitkLinear:
        r.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(r.Execute(to_sitk(arr, affine))).transpose(2, 1, 0)


@pytest.mark.parametrize("path", ["separable-upsample", "separable-shifted", "oblique"])
def test_linear_agrees_with_simpleitk(path):
    rng = np.random.default_rng(2)
    a = rotation(1, 0.1) @ signed_perm("PIR", spacing=(0.9, 1.4, 2.2))
    shape = (24, 18, 15)
    smooth = F.avg_pool3d(torch.from_numpy(rng.normal(size=(1, *shape))), 3, 1, 1)[0].numpy().astype(np.float32)
    b, bs = _targets(a, shape)[path]
    ours = geo.resample_to_grid(smooth[None], a, b, bs)[0]
    theirs = sitk_resample(smooth, a, b, bs, sitk.sitkLinear)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.999
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_nearest_agrees_with_simpleitk():
    rng = np.random.default_rng(3)
    a = signed_perm("LPS", spacing=(0.9, 0.9, 2.5))
    lab = rng.integers(0, 5, size=(30, 26, 12)).astype(np.int16)
    for b, bs in _targets(a, lab.shape).values():
        b = geo.crop_affine(b, (0.013, 0.021, 0.017))  # off the exact half-voxel ties, which round either way
        ours = geo.resample_to_grid(lab[None], a, b, bs, mode="nearest")[0]
        assert (ours == sitk_resample(lab, a, b, bs, sitk.sitkNearestNeighbor)).mean() >= 0.999


@pytest.mark.parametrize("turn", [0.0, 0.3])
def test_two_spatial_axes_work_the_same_way(turn):
    a = np.array([[0.0, -0.8, 20.0], [1.2, 0.0, -5.0], [0.0, 0.0, 1.0]])
    shape = (16, 20)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    x = (geo.voxel_to_world(a, idx) @ [0.5, -2.0] + 10)[None].astype(np.float32)
    b, bs = geo.resampled_affine(a, shape, (0.5, 1.1))
    c = np.eye(3)
    c[:2, :2] = [[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]
    b = c @ b
    y = geo.resample_to_grid(x, a, b, bs)[0]
    jdx = np.stack(np.meshgrid(*[np.arange(s) for s in bs], indexing="ij"), -1).reshape(-1, 2)
    src = geo.world_to_voxel(a, geo.voxel_to_world(b, jdx))
    inside = ((src >= 0) & (src <= np.array(shape) - 1)).all(axis=1)
    want = geo.voxel_to_world(b, jdx[inside]) @ [0.5, -2.0] + 10
    np.testing.assert_allclose(y[tuple(jdx[inside].T)], want, rtol=1e-4)


def test_dtypes_torch_lacks_and_other_byte_orders_come_back_as_they_were():
    a = np.diag([1.0, 1.0, 1.0, 1.0])
    lab = np.arange(2 * 3 * 4, dtype=">u2").reshape(1, 2, 3, 4) * 1000  # a big-endian uint16 NIfTI label map
    b, bs = geo.resampled_affine(a, (2, 3, 4), (0.5, 0.5, 0.5))
    y = geo.resample_to_grid(lab, a, b, bs, mode="nearest")
    assert y.dtype == np.uint16 and set(np.unique(y)) <= set(np.unique(lab))
    z = geo.resample_to_grid(lab, a, b, bs)
    assert z.dtype.kind == "f" and z.max() <= lab.max()
