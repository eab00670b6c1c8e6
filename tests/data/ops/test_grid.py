"""Grid ops against physics (world-coordinate ramps, a marked voxel, exact inversion) and against MONAI and SimpleITK
on FuseMedML's real kidney label maps."""

import itertools
import pathlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from monai.transforms import Orientationd, Spacingd

from fusefn import affine as geo
from fusefn import chain, keys
from fusefn.data.ops.grid import CropForeground, DivisiblePad, Flip, Orient, Resample, ResampleLike, ToOriginalGrid
from fusefn.data.ops.intensity import Window
from fusefn.errors import ConfigError, SampleError
from fusefn.protocols import Transform
from fusefn_recipes.reference import fuse_eval_dir

IMG, MASK, AFF = keys.IMAGE, keys.MASK, keys.AFFINE
KIDNEYS = sorted((pathlib.Path(fuse_eval_dir()) / "semantic_segmentation" / "labeled").glob("*/seg.nii.gz"))
CODES = sorted(
    {"".join(c[i] for i in p) for c in map("".join, itertools.product("RL", "AP", "SI")) for p in itertools.permutations(range(3))}
)  # fmt: skip


def signed_perm(codes, spacing=(1.1, 0.7, 2.3), origin=(12.0, -30.0, 41.0)):
    a = np.zeros((4, 4))
    a[3, 3] = 1
    for ax, c in enumerate(codes):
        a["LRPAIS".index(c) // 2, ax] = spacing[ax] * (1 if c in "RAS" else -1)
    a[:3, 3] = origin
    return a


def ramp(affine, shape, coef=(0.5, -1.25, 2.0), bias=200.0):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return geo.voxel_to_world(affine, idx) @ np.array(coef) + bias


def sample(img=None, mask=None, affine=None, sid="vol"):
    data = {"sample_id": sid, "input": {}, "gt": {}}
    if img is not None:
        data["input"]["img"] = img
    if mask is not None:
        data["gt"]["mask"] = mask
    if affine is not None:
        data["input"]["affine"] = affine
        data["input"]["original_affine"] = affine
        data["input"]["original_shape"] = tuple((img if img is not None else mask).shape[-3:])
    return {"data": data}


def get(s, key):
    from fusefn import nd

    return nd.get(s, key)


# --------------------------------------------------------------------------- physics


@pytest.mark.parametrize("codes", ["LPS", "IPL", "ASR", "RAI"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_orient_then_resample_keeps_a_world_ramp(codes, kind):
    a = signed_perm(codes)
    shape = (15, 22, 9)
    x = ramp(a, shape)[None].astype(np.float32)
    x = torch.from_numpy(x) if kind == "torch" else x
    out = chain(Orient(axcodes="RAS"), Resample(spacing=(0.9, 1.3, 1.6)))(sample(x, affine=a))
    y, b = get(out, IMG), get(out, AFF)
    assert isinstance(y, type(x)) and geo.axcodes(b) == "RAS"
    np.testing.assert_allclose(geo.spacing(b), (0.9, 1.3, 1.6))
    y = np.asarray(y)[0]
    want = ramp(b, y.shape)
    idx = np.argwhere(np.ones(y.shape, bool))
    src = geo.world_to_voxel(a, geo.voxel_to_world(b, idx))
    inside = ((src >= 0) & (src <= np.array(shape) - 1)).all(axis=1)  # every voxel between the outer centres
    assert inside.mean() > 0.7
    np.testing.assert_allclose(y[tuple(idx[inside].T)], want[tuple(idx[inside].T)], rtol=1e-4)


def test_a_marked_voxel_keeps_its_world_position():
    a = signed_perm("LPI", spacing=(1.1, 0.7, 2.3))
    shape = (20, 30, 12)
    rng = np.random.default_rng(0)
    for _ in range(5):
        v = tuple(int(rng.integers(2, s - 2)) for s in shape)
        mask = np.zeros((1, *shape), np.uint8)
        mask[(0, *v)] = 1
        img = rng.normal(size=(1, *shape)).astype(np.float32)
        prep = chain(
            Orient(axcodes="RAS", label_keys=MASK),
            Resample(spacing=(1.0, 0.6, 1.5), label_keys=MASK),  # finer than the source: nearest keeps the voxel
            CropForeground(source_key=MASK, label_keys=MASK, margin=2),
        )
        out = prep(sample(img, mask, a))
        m, b = get(out, MASK)[0], get(out, AFF)
        assert get(out, IMG).shape[1:] == m.shape and m.shape == tuple(
            2 * 2 + k for k in (np.ptp(np.argwhere(m), 0) + 1)
        )
        centre = geo.voxel_to_world(b, np.argwhere(m).mean(0))
        gap = np.abs(geo.world_to_voxel(b, geo.voxel_to_world(a, v)) - geo.world_to_voxel(b, centre))
        assert (gap <= 0.5 + 1e-9).all(), gap


def _labels(shape, rng):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    lab = np.zeros(shape, np.int16)
    for value in (1, 2, 4):
        c = rng.uniform(0.3, 0.7, 3) * np.array(shape)
        r = rng.uniform(0.1, 0.25, 3) * np.array(shape)
        lab[(((idx - c) / r) ** 2).sum(-1) <= 1] = value
    return lab[None]


@pytest.mark.parametrize("codes", ["LPS", "IPL", "ASR"])
def test_preprocess_then_invert_is_exact_without_resampling(codes):
    a = signed_perm(codes)
    lab = _labels((40, 36, 18), np.random.default_rng(1))
    img = lab.astype(np.float32) * 10 + 1
    prep = chain(
        Orient(axcodes="RAS", label_keys=MASK),
        CropForeground(source_key=MASK, label_keys=MASK, margin=1),
        DivisiblePad(k=8, label_keys=MASK),
        Flip(axes=(0, 2), label_keys=MASK),
    )
    out = prep(sample(img, lab, a))
    assert all(s % 8 == 0 for s in get(out, MASK).shape[1:])
    back = ToOriginalGrid(keys=IMG, label_keys=MASK)(out)
    np.testing.assert_array_equal(get(back, MASK), lab)
    np.testing.assert_array_equal(get(back, AFF), a)
    inside = lab > 0  # the image outside the foreground box was cropped away: zero where it comes back
    np.testing.assert_array_equal(get(back, IMG)[inside], img[inside])


@given(st.sampled_from(CODES), st.sampled_from(CODES))
@settings(max_examples=40, deadline=None)
def test_orient_to_x_then_back_is_the_identity(src, dst):
    a = signed_perm(src)
    x = np.arange(3 * 4 * 5, dtype=np.float32).reshape(1, 3, 4, 5)
    there = Orient(axcodes=dst)(sample(x, affine=a))
    assert geo.axcodes(get(there, AFF)) == dst
    back = Orient(axcodes=src)(there)
    np.testing.assert_array_equal(get(back, IMG), x)
    np.testing.assert_allclose(get(back, AFF), a, atol=1e-12)


def test_resample_like_puts_a_mask_on_its_image_grid():
    a = signed_perm("RAS", spacing=(1.0, 1.0, 1.0))
    img = ramp(a, (30, 30, 20))[None].astype(np.float32)
    fine = np.zeros((1, 30, 30, 20), np.uint8)
    fine[:, 10:20, 5:25, 4:16] = 3
    # the mask came on a coarser, shifted grid
    m_aff, m_shape = geo.resampled_affine(geo.crop_affine(a, (2, 0, 0)), (28, 30, 20), (2.0, 2.0, 2.0))
    coarse = geo.resample_to_grid(fine, a, m_aff, m_shape, mode="nearest")
    s = sample(img, coarse, a)
    s["data"]["gt"]["affine"] = m_aff
    out = ResampleLike(affine_key="data.gt.affine", label_keys=MASK)(s)
    got = get(out, MASK)
    assert got.shape == fine.shape and got.dtype == np.uint8 and set(np.unique(got)) <= {0, 3}
    assert (got == fine).mean() > 0.97
    np.testing.assert_array_equal(get(out, "data.gt.affine"), a)


def test_window_composes_with_the_grid_ops():
    a = signed_perm("LPS")
    ct = ramp(a, (20, 20, 10), coef=(10.0, 5.0, 3.0), bias=0.0)[None].astype(np.float32)
    w = Window(keys=IMG, center=40.0, width=400.0)
    first = chain(w, Orient(), Resample(spacing=(1.5, 1.5, 1.5)))(sample(ct, affine=a))
    last = chain(Orient(), Resample(spacing=(1.5, 1.5, 1.5)), w)(sample(ct, affine=a))
    np.testing.assert_array_equal(get(first, AFF), get(last, AFF))  # Window leaves the geometry alone
    # a window is affine where it does not clip, and so commutes with linear interpolation there
    f, g = get(first, IMG), get(last, IMG)
    unclipped = (g > 0.1) & (g < 0.9)  # and so do its interpolation neighbours (0.04 apart)
    assert unclipped.mean() > 0.2
    np.testing.assert_allclose(f[unclipped], g[unclipped], atol=1e-5)
    # an exact op commutes with any pointwise one
    np.testing.assert_array_equal(
        get(chain(w, Orient(axcodes="SPL"))(sample(ct, affine=a)), IMG),
        get(chain(Orient(axcodes="SPL"), w)(sample(ct, affine=a)), IMG),
    )


# --------------------------------------------------------------------------- records and errors


def test_ops_are_transforms_and_leave_their_input_alone():
    a = signed_perm("LPS")
    x = np.ones((1, 6, 6, 4), np.float32)
    for op in (
        Orient(),
        Resample(spacing=(2.0, None, 1.0)),
        CropForeground(threshold=0.5),
        DivisiblePad(k=4),
        Flip(axes=1),
        ToOriginalGrid(),
        ResampleLike(affine_key=AFF, keys=IMG, label_keys=()),
    ):
        s = sample(x, affine=a)
        assert isinstance(op, Transform)
        op(s)
        assert s["data"]["input"]["img"] is x and s["data"]["input"]["affine"] is a and (x == 1).all()


def test_bad_configuration_is_a_config_error():
    assert Resample(spacing=1.5).spacing == (1.5, 1.5, 1.5) and DivisiblePad(k=8).k == (8, 8, 8)
    with pytest.raises(ConfigError, match="Resample.spacing"):
        Resample(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="Resample.spacing"):
        Resample(spacing=(1.0, -2.0, 1.0))
    with pytest.raises(ConfigError, match="Resample.spacing"):
        Resample(spacing=(1.0, 1.0))
    with pytest.raises(ConfigError, match="Orient.axcodes"):
        Orient(axcodes="RAR")
    with pytest.raises(ConfigError, match="Orient.keys.*label_keys"):
        Orient(keys=())
    with pytest.raises(ConfigError, match="DivisiblePad.k"):
        DivisiblePad(k=0)
    with pytest.raises(ConfigError, match="CropForeground.margin"):
        CropForeground(margin=-1)
    with pytest.raises(ConfigError, match="Flip.axes"):
        Flip(axes=(3,))
    with pytest.raises(ConfigError, match="Resample.mode"):
        Resample(spacing=(1.0, 1.0, 1.0), mode="bicubic")


def test_sample_errors_name_the_sample_the_op_and_the_key():
    a = signed_perm("LPS")
    with pytest.raises(SampleError, match=r"sample 'slice', op Resample, key 'data.input.img'.*2D image"):
        Resample(spacing=(1.0, 1.0, 1.0))(sample(np.zeros((1, 8, 8)), affine=a, sid="slice"))
    with pytest.raises(SampleError, match=r"sample 'vol', op Orient, key 'data.input.affine'"):
        Orient()(sample(np.zeros((1, 4, 4, 4))))
    with pytest.raises(SampleError, match=r"op Orient, key 'data.input.affine'.*4×4"):
        Orient()(sample(np.zeros((1, 4, 4, 4)), affine=np.eye(3)))
    with pytest.raises(SampleError, match="different spatial shapes"):
        Orient(label_keys=MASK)(sample(np.zeros((1, 4, 4, 4)), np.zeros((1, 4, 4, 5)), a))
    with pytest.raises(SampleError, match=r"op ToOriginalGrid, key 'data.input.original_affine'"):
        s = sample(np.zeros((1, 4, 4, 4)), affine=a)
        del s["data"]["input"]["original_affine"]
        ToOriginalGrid()(s)


def test_empty_foreground_leaves_the_sample_and_labels_select_the_box():
    a = signed_perm("LPS")
    lab = np.zeros((1, 10, 10, 10), np.int64)
    s = sample(np.zeros((1, 10, 10, 10), np.float32), lab, a)
    out = CropForeground(source_key=MASK, label_keys=MASK)(s)
    assert get(out, MASK).shape == lab.shape and get(out, AFF) is a
    lab = lab.copy()
    lab[0, 2, 3, 4] = 1
    lab[0, 6, 7, 8] = 2
    out = CropForeground(source_key=MASK, labels=(2,), label_keys=MASK)(sample(np.zeros((1, 10, 10, 10)), lab, a))
    assert get(out, MASK).shape == (1, 1, 1, 1) and get(out, MASK)[0, 0, 0, 0] == 2
    np.testing.assert_allclose(geo.voxel_to_world(get(out, AFF), (0, 0, 0)), geo.voxel_to_world(a, (6, 7, 8)))


# --------------------------------------------------------------------------- oracles on real label maps


def _lps(affine):
    return np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3], np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]


def _sitk_onto(path, affine, shape):
    """SimpleITK reads the file itself (its own reader, LPS world) and resamples it onto our grid, nearest."""
    im = sitk.ReadImage(str(path))
    r = sitk.ResampleImageFilter()
    sp = np.array(geo.spacing(affine))
    lin, org = _lps(affine)
    r.SetOutputOrigin(org.tolist())
    r.SetOutputSpacing(sp.tolist())
    r.SetOutputDirection((lin / sp).flatten().tolist())
    r.SetSize([int(s) for s in shape])
    r.SetInterpolator(sitk.sitkNearestNeighbor)
    return sitk.GetArrayFromImage(r.Execute(im)).transpose(2, 1, 0)


@pytest.mark.slow
@pytest.mark.parametrize("path", KIDNEYS, ids=[p.parent.name for p in KIDNEYS])
def test_kidney_label_maps_agree_with_monai_and_simpleitk(path):
    assert len(KIDNEYS) == 4
    img = nib.load(path)
    lab = np.asarray(img.dataobj).astype(np.int16)[None]
    a = img.affine.astype(np.float64)
    spacing = (1.5, 1.5, 3.0)
    # MONAI: Orientationd + Spacingd (nearest); our Orient is the same array, Spacingd's grid differs (it keeps the
    # first centre), so our kernel is run onto MONAI's grid
    m = Orientationd(keys="m", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(
        {"m": MetaTensor(torch.from_numpy(lab), affine=torch.from_numpy(a))}
    )
    ours = Orient(keys=(), label_keys=MASK)(sample(mask=lab, affine=a))
    np.testing.assert_array_equal(get(ours, MASK), m["m"].numpy())
    np.testing.assert_allclose(get(ours, AFF), m["m"].affine.numpy(), atol=1e-4)
    m = Spacingd(keys="m", pixdim=spacing, mode="nearest")(m)
    theirs = m["m"].numpy()[0]
    mine = geo.resample_to_grid(lab, a, m["m"].affine.numpy().astype(np.float64), theirs.shape, mode="nearest")[0]
    assert (mine == theirs).mean() >= 0.99 and set(np.unique(mine)) <= set(np.unique(lab))
    # SimpleITK onto the grid of our Orient + Resample
    out = Resample(spacing=spacing, keys=(), label_keys=MASK)(ours)
    res, b = get(out, MASK)[0], get(out, AFF)
    assert (res == _sitk_onto(path, b, res.shape)).mean() >= 0.99
    # and back onto the scanner's grid: the label map comes back almost everywhere
    back = ToOriginalGrid(keys=(), label_keys=MASK)(out)
    assert get(back, MASK).shape == lab.shape and (get(back, MASK) == lab).mean() >= 0.99
