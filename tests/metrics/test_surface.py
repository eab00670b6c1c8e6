"""Surface metrics (HD95, ASSD, NSD) and case_scores equal MONAI 1.6.1's metrics, with spacing, to 1e-6."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from fusefn.affine import spacing as spacing_of
from fusefn.core import from_config, to_config
from fusefn.errors import SampleError
from fusefn.metrics.segmentation import CASE_METRICS, Hausdorff95, VolumeDifference, case_scores
from fusefn.metrics.surface import (
    ASSD,
    SurfaceDice,
    assd,
    border,
    hd95,
    nsd,
    surface_distances,
)

monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")

TOL = {"rel": 1e-6, "abs": 1e-6}  # MONAI keeps distances in float32


def monai_values(pred: np.ndarray, ref: np.ndarray, spacing, tau: float) -> dict:
    """MONAI's four metrics on one pair of boolean masks (one batch item, one channel)."""
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yr = torch.from_numpy(ref[None, None].astype(np.float32))
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": float(monai_metrics.DiceMetric(include_background=True, ignore_empty=False)(yp, yr)[0, 0]),
            "hd95": float(
                monai_metrics.HausdorffDistanceMetric(include_background=True, percentile=95)(yp, yr, spacing=sp)[0, 0]
            ),
            "assd": float(
                monai_metrics.SurfaceDistanceMetric(include_background=True, symmetric=True)(yp, yr, spacing=sp)[0, 0]
            ),
            "nsd": float(monai_metrics.SurfaceDiceMetric([tau], include_background=True)(yp, yr, spacing=sp)[0, 0]),
        }


def blob(rng, shape, p=0.5, sigma=2.0) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), sigma) > np.quantile(
        ndimage.gaussian_filter(rng.random(shape), sigma), 1 - p
    )


def random_pair(rng, shape):
    ref = blob(rng, shape, p=rng.uniform(0.05, 0.4))
    kind = rng.integers(0, 3)
    if kind == 0:  # a perturbed copy: many shared surface voxels
        pred = ndimage.binary_dilation(ref, iterations=int(rng.integers(1, 3))) & (rng.random(shape) < 0.97)
    elif kind == 1:  # shifted
        pred = np.roll(ref, tuple(int(x) for x in rng.integers(-3, 4, len(shape))), axis=tuple(range(len(shape))))
    else:  # unrelated
        pred = blob(rng, shape, p=rng.uniform(0.05, 0.4))
    return pred, ref


def ours(pred, ref, spacing, tau) -> dict:
    d = surface_distances(pred, ref, spacing)
    inter, s = (pred & ref).sum(), pred.sum() + ref.sum()
    return {"dice": 2 * inter / s if s else 1.0, "hd95": hd95(d), "assd": assd(d), "nsd": nsd(d, tau)}


@pytest.mark.parametrize("seed", range(12))
def test_equal_to_monai_on_random_cases_with_spacing(seed):
    rng = np.random.default_rng(seed)
    dims = 2 if seed % 3 == 0 else 3
    shape = tuple(int(x) for x in rng.integers(12, 40, dims))
    spacing = tuple(float(x) for x in rng.uniform(0.3, 3.0, dims))
    tau = float(rng.uniform(0.5, 4.0))
    pred, ref = random_pair(rng, shape)
    got, ref_vals = ours(pred, ref, spacing, tau), monai_values(pred, ref, spacing, tau)
    for k in ref_vals:
        assert got[k] == pytest.approx(ref_vals[k], **TOL), k


@pytest.mark.parametrize("which", ["both", "pred", "ref"])
def test_empty_masks_follow_monai(which):
    ref = np.zeros((10, 12, 9), bool)
    pred = ref.copy()
    if which != "pred":
        pred[2:6, 3:7, 2:5] = True
    if which != "ref":
        ref[3:7, 3:8, 2:6] = True
    if which == "both":
        pred[:] = ref[:] = False
    got, m = ours(pred, ref, (1.0, 0.7, 2.0), 1.5), monai_values(pred, ref, (1.0, 0.7, 2.0), 1.5)
    for k in ("assd", "nsd") if which != "both" else ("hd95", "assd", "nsd"):
        if np.isnan(m[k]):
            assert np.isnan(got[k]), k
        else:
            assert got[k] == m[k], k  # inf or 0
    # one empty: MONAI's 95th percentile interpolates between infinities (inf - inf) and gives NaN; ours says inf
    assert which == "both" or np.isnan(m["hd95"]) or m["hd95"] == np.inf
    if which == "both":
        assert [np.isnan(got[k]) for k in ("hd95", "assd", "nsd")] == [True] * 3
    else:
        assert got["hd95"] == got["assd"] == np.inf and got["nsd"] == 0.0


masks = st.tuples(st.integers(0, 2**32 - 1), st.floats(0.05, 0.6), st.sampled_from([(9, 11), (6, 7, 8)]))


@settings(max_examples=40, deadline=None)
@given(masks, masks, st.tuples(st.floats(0.2, 3.0), st.floats(0.2, 3.0), st.floats(0.2, 3.0)))
def test_laws_symmetry_identity_and_translation(a, b, sp):
    """Swapping the masks changes nothing; a mask against itself scores perfectly; padding both changes nothing."""
    shape = a[2]
    p = np.random.default_rng(a[0]).random(shape) < a[1]
    r = np.random.default_rng(b[0]).random(shape) < b[1]
    spacing = sp[: len(shape)]
    d, e = surface_distances(p, r, spacing), surface_distances(r, p, spacing)
    for f in (hd95, assd, lambda x: nsd(x, 1.0)):
        assert f(d) == f(e) or (np.isnan(f(d)) and np.isnan(f(e)))
    if p.any():
        same = surface_distances(p, p, spacing)
        assert (hd95(same), assd(same), nsd(same, 0.0)) == (0.0, 0.0, 1.0)
    pad = [(2, 1)] * len(shape)
    moved = surface_distances(np.pad(p, pad), np.pad(r, pad), spacing)
    assert all(np.allclose(np.sort(x), np.sort(y), rtol=1e-12, atol=1e-12) for x, y in zip(moved, d))


def test_border_is_erosion_xor():
    rng = np.random.default_rng(5)
    for shape in [(9, 11), (7, 8, 9), (30, 1, 5)]:
        m = rng.random(shape) < 0.6
        np.testing.assert_array_equal(border(m), m ^ ndimage.binary_erosion(m))


def test_case_scores_equal_monai_per_label_group():
    rng = np.random.default_rng(11)
    shape = (24, 30, 28)
    ref = np.zeros(shape, np.int16)
    ref[blob(rng, shape, 0.3)] = 1
    ref[blob(rng, shape, 0.1) & (ref == 1)] = 2
    pred = np.where(rng.random(shape) < 0.95, ref, rng.integers(0, 4, shape)).astype(np.uint8)
    spacing, tau = (2.5, 0.8, 0.8), 2.0
    groups = {"1": (1,), "1+2+3": (1, 2, 3), "2+3": (2, 3), "3": (3,)}
    r = case_scores(pred, ref, tuple(groups.values()), spacing=spacing, tolerance=tau)
    assert list(r) == list(groups)
    for name, g in groups.items():
        pm, rm = np.isin(pred, g), np.isin(ref, g)
        m = monai_values(pm, rm, spacing, tau)
        assert set(r[name]) == set(CASE_METRICS)
        for k in m:
            if k == "hd95" and pm.any() != rm.any():  # one empty: MONAI NaN (inf - inf), ours inf
                assert r[name][k] == np.inf and (np.isnan(m[k]) or m[k] == np.inf)
                continue
            want = m[k] if k != "dice" or rm.any() or pm.any() else np.nan
            assert r[name][k] == pytest.approx(want, nan_ok=True, **TOL), (name, k)
        assert r[name]["iou"] == pytest.approx((pm & rm).sum() / (pm | rm).sum())
        voxel = np.prod(spacing)
        assert r[name]["volume_diff"] == pytest.approx((pm.sum() - rm.sum()) * voxel)
        assert r[name]["volume_ref"] == pytest.approx(rm.sum() * voxel)


def test_case_scores_empty_and_bad_input():
    z = np.zeros((5, 6, 7), np.uint8)
    one = z.copy()
    one[1:3, 2:4, 2:5] = 1
    r = case_scores(z, z, (1,))["1"]
    assert np.isnan([r["dice"], r["iou"], r["hd95"], r["assd"], r["nsd"], r["volume_diff_rel"]]).all()
    assert r["volume_diff"] == 0
    r = case_scores(one, z, (1,))["1"]
    assert (r["dice"], r["nsd"], r["hd95"], r["assd"]) == (0.0, 0.0, np.inf, np.inf)
    assert np.isnan(r["volume_diff_rel"])
    assert case_scores(z, one, (1,))["1"]["volume_diff_rel"] == -1.0
    with pytest.raises(ValueError, match="shape"):
        case_scores(z[:4], z, (1,))
    with pytest.raises(ValueError, match="negative"):
        case_scores(one.astype(np.int8) - 1, z.astype(np.int8), (1,))


def test_reducers_average_finite_volumes_and_merge():
    rng = np.random.default_rng(3)
    shape = (4, 14, 15, 13)
    t = np.stack([blob(rng, shape[1:], 0.3) for _ in range(4)]).astype(np.int64)
    p = np.stack([np.roll(v, 1, axis=0) for v in t])
    p[3] = 0  # one empty prediction: inf distances, left out of the distance averages
    aff = np.stack([np.diag([s, 0.9, 1.1, 1.0]) for s in (1.0, 2.0, 0.5, 1.5)])
    batch = {"p": p, "t": t, "aff": aff}
    for metric, fn in [
        (Hausdorff95(pred="p", target="t", classes=(1,), affine="aff"), hd95),
        (ASSD(pred="p", target="t", classes=(1,), affine="aff"), assd),
        (SurfaceDice(pred="p", target="t", classes=(1,), affine="aff", tolerance=1.0), lambda d: nsd(d, 1.0)),
    ]:
        vals = [fn(surface_distances(p[i] == 1, t[i] == 1, spacing_of(aff[i]))) for i in range(4)]
        want = np.mean([x for x in vals if np.isfinite(x)])
        whole = metric.compute(metric.update(metric.init(), batch))
        assert whole["1"] == pytest.approx(want)
        halves = metric.merge(
            metric.update(metric.init(), {k: v[:2] for k, v in batch.items()}),
            metric.update(metric.init(), {k: v[2:] for k, v in batch.items()}),
        )
        assert metric.compute(halves) == whole
        assert from_config(to_config(metric)) == metric
        counts = np.array([[1, 1, 1, 1], [2, 0, 1, 1]])
        boots = metric.resampled(metric.extract(batch), counts)
        assert boots["1"][0] == pytest.approx(want)
    vd = VolumeDifference(pred="p", target="t", classes=(1,), affine="aff")
    got = vd.compute(vd.update(vd.init(), batch))["1"]
    want = np.mean([(p[i].sum() - t[i].sum()) * abs(np.linalg.det(aff[i][:3, :3])) for i in range(4)])
    assert got == pytest.approx(want)
    rel = VolumeDifference(pred="p", target="t", classes=(1,), affine="aff", relative=True)
    got = rel.compute(rel.update(rel.init(), batch))["1"]
    assert got == pytest.approx(np.mean([p[i].sum() / t[i].sum() - 1 for i in range(4)]))
    with pytest.raises(SampleError, match="equal shape"):
        ASSD(pred="p", target="t", classes=(1,)).update(np.zeros((0, 1)), {"p": p[:, :3], "t": t})


@pytest.mark.slow
def test_kidney_pairs_equal_monai_and_fusemedml_dice(fuse_eval_dir):
    """The four real label-map pairs, spacing from each affine: every metric as MONAI, Dice as FuseMedML."""
    nib = pytest.importorskip("nibabel")
    seg = fuse_eval_dir / "semantic_segmentation"
    groups = {"123": (1, 2, 3), "23": (2, 3), "2": (2,)}
    dice = {k: [] for k in groups}
    for i in range(4):
        pimg = nib.load(seg / "predicted" / f"id_{i}.nii.gz")
        pred = np.asarray(pimg.dataobj)
        ref = np.asarray(nib.load(seg / "labeled" / f"id_{i}" / "seg.nii.gz").dataobj)
        spacing = spacing_of(pimg.affine)
        r = case_scores(pred, ref, tuple(groups.values()), spacing=spacing, tolerance=2.0)
        # MONAI on the box of the foreground (+2 voxels): its metrics crop the same way, only faster
        nz = np.argwhere((pred != 0) | (ref != 0))
        box = tuple(slice(max(lo - 2, 0), hi + 3) for lo, hi in zip(nz.min(0), nz.max(0)))
        for (name, g), key in zip(groups.items(), r):
            m = monai_values(np.isin(pred[box], g), np.isin(ref[box], g), spacing, 2.0)
            for k, want in m.items():
                assert r[key][k] == pytest.approx(want, **TOL), (i, name, k)
            dice[name].append(r[key]["dice"])
    assert [round(float(np.mean(v)), 4) for v in dice.values()] == [0.8741, 0.7164, 0.7184]


def test_case_scores_the_same_on_threads_and_far_false_positives():
    """``workers`` changes nothing; a false positive far beyond the reference (searched among the reference's
    outermost voxels only) scores as MONAI scores it."""
    rng = np.random.default_rng(21)
    shape = (30, 26, 34)
    ref = np.zeros(shape, np.uint8)
    ref[blob(rng, shape, 0.2) & (np.arange(30)[:, None, None] < 12)] = 1
    ref[4:9, 5:12, 6:15][blob(rng, (5, 7, 9), 0.5)] = 2
    pred = ref.copy()
    pred[20:28, 2:9, 25:32] = 2  # beyond the reference's box along axis 0 (and its corner along 1 and 2)
    pred[22:27, 15:24, 10:20] = 1  # beyond along axis 0 only
    spacing, tau = (2.5, 0.7, 0.9), 2.0
    groups = ((1, 2), (2,))
    one = case_scores(pred, ref, groups, spacing=spacing, tolerance=tau)
    assert case_scores(pred, ref, groups, spacing=spacing, tolerance=tau, workers=2) == one
    assert case_scores(pred, ref, groups, spacing=spacing, tolerance=tau, workers=-1) == one
    for g, name in zip(groups, ("1+2", "2")):
        m = monai_values(np.isin(pred, g), np.isin(ref, g), spacing, tau)
        for k in m:
            assert one[name][k] == pytest.approx(m[k], **TOL), (name, k)
