import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import Rng, chain, keys, nd, record
from fusefn.data import Dataset, H5Cache
from fusefn.data.ops.foreground import ForegroundIndices
from fusefn.data.patches import ANYWHERE, PATCH_CLASS, PatchDataset, PatchSampler, window
from fusefn.errors import ConfigError, SampleError


def volume(i, shape=(24, 20, 16), classes=(1, 2), affine=True):
    """Volume ``i``: noise, a box of class 1, a box of class 2 for odd ``i``; a sheared affine."""
    r = np.random.default_rng(i)
    img = r.random((1, *shape), dtype=np.float32)
    m = np.zeros((1, *shape), np.uint8)
    m[0, 2:8, 3:9, 4:7] = 1
    if i % 2:
        m[0, 15:20, 10:14, 9:15] = 2
    data = {"sample_id": f"v{i}", "input": {"img": img}, "gt": {"mask": m, "label": i % 2}}
    if affine:
        a = np.diag([0.7, 0.9, 2.5, 1.0])
        a[0, 1], a[:3, 3] = 0.2, [-30.0, 12.5, 4.0]
        data["input"]["affine"] = a
    return ForegroundIndices(classes=classes)({"data": data})


VOLUMES = [volume(i, classes=None) for i in range(10)]
CLASSED = [volume(i) for i in range(10)]


def centre_labels(sampler, vols, rng, epochs):
    """(class drawn, mask value at the centre) of every patch planned over ``epochs`` epochs."""
    out = []
    half = np.asarray(sampler.size) // 2
    for e in range(epochs):
        for i, v in enumerate(vols):
            origins, classes = sampler.plan(v, rng=rng.child("patches", e, i))
            m = v["data"]["gt"]["mask"][0]
            out += [(c, int(m[tuple(o + half)])) for o, c in zip(origins, classes)]
    return out


def test_fraction_on_foreground_is_pos_over_pos_plus_neg():
    s = PatchSampler(size=(8, 8, 8), n=7, pos=1, neg=2)  # 7/3 per volume: the remainder is drawn
    got = centre_labels(s, VOLUMES, Rng(0), epochs=72)
    assert len(got) >= 5000
    assert all((c == "fg") == (m > 0) for c, m in got)  # every centre lies on its class
    frac = sum(m > 0 for _, m in got) / len(got)
    assert abs(frac - 1 / 3) < 0.03
    per_volume = collections.Counter(c for c, _ in centre_labels(s, VOLUMES[:1], Rng(5), epochs=1))
    assert per_volume["fg"] in (2, 3)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), pos=st.floats(0, 5), neg=st.floats(0.01, 5), seed=st.integers(0, 2**32))
def test_each_volume_gets_its_share_exactly_up_to_the_remainder(n, pos, neg, seed):
    s = PatchSampler(size=(4, 4, 4), n=n, pos=pos, neg=neg)
    _, classes = s.plan(VOLUMES[3], rng=Rng(seed))
    want = n * pos / (pos + neg)
    assert len(classes) == n and np.floor(want - 1e-6) <= classes.count("fg") <= np.ceil(want + 1e-6)


def test_per_class_ratios_and_absent_classes():
    s = PatchSampler(size=(6, 6, 6), n=8, ratios={1: 1, 2: 2, "bg": 1})
    odd = centre_labels(s, CLASSED[1::2], Rng(1), epochs=130)  # volumes with both classes
    assert len(odd) >= 5000 and all(c == str(m) if c != "bg" else m == 0 for c, m in odd)
    counts = collections.Counter(c for c, _ in odd)
    assert abs(counts["2"] / len(odd) - 0.5) < 0.03 and abs(counts["1"] / len(odd) - 0.25) < 0.03
    even = collections.Counter(c for c, _ in centre_labels(s, CLASSED[0::2], Rng(1), epochs=50))
    assert even["2"] == 0 and abs(even["1"] / sum(even.values()) - 0.5) < 0.03  # class 2's share spread 1:1
    only_absent = PatchSampler(size=(6, 6, 6), n=5, ratios={2: 1})
    _, classes = only_absent.plan(CLASSED[0], rng=Rng(0))
    assert classes == (ANYWHERE,) * 5
    # pos/neg over per-class leaves pools the classes
    pooled = centre_labels(PatchSampler(size=(6, 6, 6), n=4, pos=1, neg=0), CLASSED[:4], Rng(2), epochs=5)
    assert all(m > 0 for _, m in pooled) and {m for _, m in pooled} == {1, 2}


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 12)] * 3),
    size=st.tuples(*[st.integers(1, 9)] * 3),
    origin=st.tuples(*[st.integers(-10, 14)] * 3),
)
def test_window_is_the_padded_volume_sliced(shape, size, origin):
    x = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    got = window(x, origin, size, pad_value=-7)
    # padded far enough that every window lies inside it: origin ≥ -10 and origin + size ≤ 14 + 9 past any shape
    big = np.pad(x, [(0, 0)] + [(30, 30)] * 3, constant_values=-7)
    want = big[(slice(None), *(slice(o + 30, o + 30 + w) for o, w in zip(origin, size)))]
    np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(size=st.tuples(*[st.integers(1, 30)] * 3), seed=st.integers(0, 1000), border=st.sampled_from(["pad", "shift"]))
def test_every_patch_is_in_bounds_or_padded(size, seed, border):
    v = VOLUMES[seed % 10]
    s = PatchSampler(size=size, n=6, border=border, pad_value={keys.IMAGE: -1.0})
    spatial = np.asarray(v["data"]["input"]["img"].shape[1:])
    for p in s.patches(v, rng=Rng(seed)):
        img, o = p["data"]["input"]["img"], p["data"]["patch"]["origin"]
        assert img.shape == (1, *size) and p["data"]["gt"]["mask"].shape == (1, *size)
        inside = np.all(o >= 0) and np.all(o + size <= spatial)
        if border == "shift":
            room = spatial - size
            assert np.all((o >= np.minimum(room, 0)) & (o <= np.maximum(room, 0)))
            assert inside == np.all(room >= 0)
        assert inside == (img.min() >= 0)  # the noise lies in [0, 1): -1 only where padded


@settings(max_examples=25, deadline=None)
@given(
    affine=st.lists(st.floats(-3, 3), min_size=12, max_size=12),
    origin=st.tuples(*[st.integers(-5, 20)] * 3),
)
def test_patch_affine_maps_its_voxels_to_the_volume_voxels_world(affine, origin):
    a = np.eye(4)
    a[:3] = np.asarray(affine).reshape(3, 4)
    v = nd.assoc(VOLUMES[0], keys.AFFINE, a)
    s = PatchSampler(size=(4, 5, 6))
    p = s.cut(v, origin)
    pa = p["data"]["input"]["affine"]
    np.testing.assert_allclose(pa @ [0, 0, 0, 1], a @ [*origin, 1], atol=1e-9)
    j = np.array([3, 1, 5])
    np.testing.assert_allclose(pa @ [*j, 1], a @ [*(np.asarray(origin) + j), 1], atol=1e-9)
    np.testing.assert_allclose(pa[:3, :3], a[:3, :3])
    assert "affine" not in nd.get(s.cut(nd.dissoc(v, keys.AFFINE), origin), "data.input")


def test_physics_intensity_follows_world_coordinates():
    # an image that is a known function of world position: every patch voxel has the value of its own world point
    v = VOLUMES[1]
    a = v["data"]["input"]["affine"]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (24, 20, 16)], indexing="ij"), -1)
    world = grid @ a[:3, :3].T + a[:3, 3]
    v = nd.assoc(v, keys.IMAGE, (world[..., 0] + 2 * world[..., 1] - world[..., 2])[None].astype(np.float64))
    for p in PatchSampler(size=(5, 5, 5), n=10, border="shift").patches(v, rng=Rng(3)):
        pa = p["data"]["input"]["affine"]
        pg = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1)
        pw = pg @ pa[:3, :3].T + pa[:3, 3]
        np.testing.assert_allclose(p["data"]["input"]["img"][0], pw[..., 0] + 2 * pw[..., 1] - pw[..., 2], atol=1e-9)


def epoch_patches(ds, epoch=0, workers=0):
    ds.set_epoch(epoch)
    out = {}
    for b in ds.loader(workers=workers) if workers else ds:
        bs = [b] if "data" in b and isinstance(b["data"]["sample_id"], str) else None
        for p in bs or _uncollate(b):
            out[p["data"]["sample_id"]] = (tuple(np.asarray(p["data"]["patch"]["origin"])), _digest(p))
    return out


def _uncollate(b):
    from fusefn.data import uncollate

    return uncollate(b)


def _digest(p):
    return float(np.asarray(p["data"]["input"]["img"], dtype=np.float64).sum())


SAMPLER = PatchSampler(size=(8, 8, 8), n=3)


def test_same_rng_same_patches_other_rng_or_epoch_other_patches():
    a = epoch_patches(PatchDataset(VOLUMES, SAMPLER, rng=Rng(7)))
    assert len(a) == 30
    assert a == epoch_patches(PatchDataset(VOLUMES, SAMPLER, rng=Rng(7)))
    assert a == epoch_patches(PatchDataset(VOLUMES, SAMPLER, rng=Rng(7), batch_size=4))  # batched: same patches
    other = epoch_patches(PatchDataset(VOLUMES, SAMPLER, rng=Rng(8)))
    later = epoch_patches(PatchDataset(VOLUMES, SAMPLER, rng=Rng(7)), epoch=1)
    assert sorted(other) == sorted(later) == sorted(a)  # every volume, n patches each
    for b in (other, later):
        assert sum(a[k][0] == b[k][0] for k in a) < 5  # origins drawn afresh


def test_ranks_read_disjoint_volumes_and_together_all_of_them():
    full = PatchDataset(VOLUMES, SAMPLER, rng=Rng(3))
    ranks = [PatchDataset(VOLUMES, SAMPLER, rng=Rng(3), rank=r, world_size=3) for r in range(3)]
    orders = [r.volume_order() for r in ranks]
    assert [len(o) for o in orders] == [3, 3, 3]  # 10 volumes over 3 ranks: the tail of 1 left out
    assert not set(orders[0]) & set(orders[1]) and not set(orders[1]) & set(orders[2])
    got = {}
    for r in ranks:
        got.update(epoch_patches(r))
    want = epoch_patches(full)
    assert len(got) == 27 and all(got[k] == want[k] for k in got)  # a volume's patches do not depend on the rank
    assert ranks[0].volume_order(1) != orders[0]


def test_workers_share_the_epoch_without_repeating_a_patch():
    ds = PatchDataset(VOLUMES, SAMPLER, rng=Rng(4), batch_size=4)
    alone = epoch_patches(ds, epoch=2)
    two = epoch_patches(ds, epoch=2, workers=2)
    assert two == alone  # the same patches whichever worker cuts them
    unbatched = PatchDataset(VOLUMES, SAMPLER, rng=Rng(4))
    unbatched.set_epoch(2)
    ids = [i for b in unbatched.loader(workers=2, batch_size=5) for i in b["data"]["sample_id"]]
    assert sorted(ids) == sorted(alone) and len(set(ids)) == len(ids)


def test_persistent_workers_follow_set_epoch():
    ds = PatchDataset(VOLUMES, SAMPLER, rng=Rng(6), batch_size=3)
    batches = ds.epochs(workers=2, threads=False)  # worker processes, not the default threads
    seen = []
    for e in (0, 1, 0):
        got = {}
        for b in batches(e):
            for p in _uncollate(b):
                got[p["data"]["sample_id"]] = (tuple(np.asarray(p["data"]["patch"]["origin"])), _digest(p))
        seen.append(got)
    assert seen[0] == seen[2] == epoch_patches(PatchDataset(VOLUMES, SAMPLER, rng=Rng(6)), epoch=0)
    assert seen[1] == epoch_patches(PatchDataset(VOLUMES, SAMPLER, rng=Rng(6)), epoch=1) != seen[0]


def test_threads_cut_the_same_patches_as_worker_processes():
    ds = PatchDataset(VOLUMES, SAMPLER, rng=Rng(4), batch_size=4)
    want = epoch_patches(ds, epoch=2, workers=2)
    got, order = {}, []
    for b in ds.epochs(workers=3, threads=True)(2):
        order += b["data"]["sample_id"]
        for p in _uncollate(b):
            got[p["data"]["sample_id"]] = (tuple(np.asarray(p["data"]["patch"]["origin"])), _digest(p))
    assert got == want and len(order) == 30
    again = [i for b in ds.threaded(2, workers=3) for i in b["data"]["sample_id"]]
    assert again == order  # the workers are taken in turn: a fixed order
    it = ds.threaded(0, workers=2, prefetch=1)
    next(it)
    it.close()  # stopping early stops the threads
    import threading

    assert not [t for t in threading.enumerate() if t.name.startswith("fusefn-patches")]


def test_a_failing_volume_is_raised_in_the_loop():
    class Broken(Counting):
        def __getitem__(self, i):
            if i == 3:
                raise SampleError("unreadable", sample_id="v3")
            return super().__getitem__(i)

    with pytest.raises(SampleError, match="unreadable"):
        list(PatchDataset(Broken(VOLUMES), SAMPLER, rng=Rng(0)).threaded(workers=2))
    import threading

    assert not [t for t in threading.enumerate() if t.name.startswith("fusefn-patches")]


class Counting:
    """A map-style dataset that records which volumes were read."""

    def __init__(self, vols):
        self.vols, self.reads = vols, []

    def __len__(self):
        return len(self.vols)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.vols[i]


def test_lazy_each_volume_read_once_its_patches_cut_as_consumed():
    vols = Counting(VOLUMES)
    it = iter(PatchDataset(vols, PatchSampler(size=(8, 8, 8), n=4), rng=Rng(0)))
    first = next(it)
    assert len(vols.reads) == 1 and first["data"]["sample_id"].endswith("#0")
    rest = list(it)
    assert len(rest) == 39 and sorted(vols.reads) == list(range(10))
    mixed = Counting(VOLUMES)
    ps = list(PatchDataset(mixed, PatchSampler(size=(8, 8, 8), n=4), rng=Rng(0), mix=3))
    assert sorted(mixed.reads) == list(range(10)) and len(ps) == 40
    firsts = [p["data"]["sample_id"].split("#")[0] for p in ps[:12]]
    assert len(set(firsts)) == 3 and firsts != sorted(firsts)  # three volumes' patches interleaved


def test_batches_keep_dtypes_and_metadata():
    ds = PatchDataset(CLASSED, PatchSampler(size=(8, 8, 8), n=3, ratios={1: 1, "bg": 1}), rng=Rng(0), batch_size=4)
    b = next(iter(ds))
    assert b["data"]["input"]["img"].dtype == torch.float32 and b["data"]["gt"]["mask"].dtype == torch.uint8
    assert b["data"]["input"]["img"].shape == (4, 1, 8, 8, 8) and b["data"]["input"]["affine"].shape == (4, 4, 4)
    assert b["data"]["patch"]["origin"].dtype == torch.int64 and "indices" not in b["data"]["patch"]
    assert sorted(set(nd.get(b, PATCH_CLASS))) <= ["1", "bg"] and b["data"]["gt"]["label"].shape == (4,)
    assert len(list(PatchDataset(CLASSED, SAMPLER, rng=Rng(0), batch_size=4, drop_last=True))) == 7


@record
class _MakeVolume:
    def __call__(self, s):
        v = volume(int(s["data"]["sample_id"]), affine=True)
        return nd.assoc(nd.dissoc(v, "data.patch"), keys.SAMPLE_ID, s["data"]["sample_id"])


def test_patches_from_the_cache_equal_those_from_memory(tmp_path):
    static = chain(_MakeVolume(), ForegroundIndices(classes=(1, 2)))
    cache = H5Cache(root=tmp_path, pipeline=static, workers=0, progress=False)
    ds = Dataset(source=[str(i) for i in range(4)], cache=cache).build()
    memory = [static({"data": {"sample_id": str(i)}}) for i in range(4)]
    sampler = PatchSampler(size=(10, 10, 10), n=3, ratios={1: 1, 2: 1, "bg": 1})
    got = epoch_patches(PatchDataset(ds, sampler, rng=Rng(0), batch_size=2), workers=2)
    assert got == epoch_patches(PatchDataset(memory, sampler, rng=Rng(0)))


def test_errors_name_what_is_wrong():
    with pytest.raises(ConfigError, match="PatchSampler.size"):
        PatchSampler(size=(0, 4))
    with pytest.raises(ConfigError, match="pos \\+ neg"):
        PatchSampler(size=(4,), pos=0, neg=0)
    with pytest.raises(ConfigError, match="PatchSampler.ratios"):
        PatchSampler(size=(4,), ratios={1: -1})
    with pytest.raises(SampleError, match=r"ratios name classes \['3'\] not stored") as e:
        PatchSampler(size=(4, 4, 4), ratios={3: 1}).plan(CLASSED[0], rng=Rng(0))
    assert e.value.sample_id == "v0" and e.value.key == "data.patch.indices"
    with pytest.raises(SampleError, match="data.patch.indices"):
        PatchSampler(size=(4, 4, 4)).plan(nd.dissoc(CLASSED[0], "data.patch"), rng=Rng(0))
    with pytest.raises(SampleError, match="different spatial shapes"):
        PatchSampler(size=(4, 4, 4)).plan(nd.assoc(CLASSED[0], keys.MASK, np.zeros((1, 5, 5, 5))), rng=Rng(0))
    with pytest.raises(ConfigError, match="rank"):
        PatchDataset(VOLUMES, SAMPLER, rng=Rng(0), rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        PatchDataset(VOLUMES, SAMPLER, rng=Rng(0), batch_size=0)


def test_epochs_default_to_threads_when_the_dataset_batches_itself():
    """``epochs(workers=2)`` of a batching dataset: worker threads (no DataLoader), the same patches as processes."""
    import threading

    ds = PatchDataset(VOLUMES, SAMPLER, rng=Rng(4), batch_size=4)
    seen = []
    got = {}
    for b in ds.epochs(workers=2)(2):
        seen += [t.name for t in threading.enumerate() if t.name.startswith("fusefn-patches")]
        for p in _uncollate(b):
            got[p["data"]["sample_id"]] = (tuple(np.asarray(p["data"]["patch"]["origin"])), _digest(p))
    assert seen and got == epoch_patches(ds, epoch=2, workers=2)
    assert not isinstance(ds.epochs(workers=2)(0), torch.utils.data.DataLoader)
    # worker processes: asked for, given DataLoader options, or single patches to batch by collate
    assert isinstance(ds.epochs(workers=2, threads=False)(0), torch.utils.data.DataLoader)
    assert isinstance(ds.epochs(workers=2, pin_memory=False)(0), torch.utils.data.DataLoader)
    single = PatchDataset(VOLUMES, SAMPLER, rng=Rng(4))
    assert isinstance(single.epochs(workers=2, batch_size=4)(0), torch.utils.data.DataLoader)
    assert isinstance(ds.epochs()(0), torch.utils.data.DataLoader)  # no worker: the plain in-process loader


def test_threads_reuse_a_batch_buffer_only_once_the_loop_let_go_of_it():
    ds = PatchDataset(VOLUMES, SAMPLER, rng=Rng(4), batch_size=3)
    kept = [(b, [_digest(p) for p in _uncollate(b)]) for b in ds.threaded(0, workers=2)]  # all held
    view = kept[0][0]["data"]["input"]["img"][0]  # a view alone keeps its memory too
    first = float(view.sum())
    ptrs = []
    for _ in range(3):  # later epochs, each batch dropped at once: buffers come back
        for b in ds.threaded(1, workers=2, prefetch=1):
            ptrs.append(b["data"]["input"]["img"].data_ptr())
    assert all([_digest(p) for p in _uncollate(b)] == d for b, d in kept)  # nothing held was overwritten
    assert float(view.sum()) == first
    assert len(set(ptrs)) < len(ptrs)  # reused
    import pickle

    assert "_recycler" not in pickle.loads(pickle.dumps(ds)).__dict__  # worker processes get no buffers
