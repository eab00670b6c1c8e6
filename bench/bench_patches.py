"""Patch sampling from cached volumes: patches/s delivered to a training loop (issue 15).

Every system delivers the same work: from ``V`` volumes of 1×256×256×160 (float32 image, uint8 label map with
three ellipsoids of foreground, 0.6 % of the voxels), ``n = 8`` patches of 96³ per volume per epoch, centred on
foreground:background = 1:1 with foreground/background locations computed once beforehand, in batches of 8
patches (image and label), iterated by a loop that touches every batch. One timed repetition is one epoch,
DataLoader start included where a system starts workers per epoch. ``V`` = 12 (``--quick``: 3).

Systems and settings:
What a "worker" is differs: fusefn's default workers are threads of the training process, MONAI's and TorchIO's
are DataLoader worker processes. Every row uses 2 workers (of its kind) and the same thread count.

- fusefn: ``H5Cache(pipeline=chain(volume, ForegroundIndices()))`` built beforehand (not timed; indices thinned
  to 2¹⁸ per class, the default), ``Dataset(cache=...)``, ``PatchDataset(ds, PatchSampler(size=96, n=8),
  batch_size=8)`` iterated through ``epochs(workers=2)`` (the documented pattern; its default workers: 2 threads
  of the training process cutting patches straight into the batch tensors, which reach the loop in ordinary
  memory and are reused once the loop has let go of a batch; border="pad", the default).
- fusefn, worker processes: ``epochs(workers=2, threads=False)``: one DataLoader whose 2 worker processes persist
  across epochs, patches cut straight into shared-memory batch tensors.
- fusefn, fresh workers: ``epoch_loader(e, workers=2)``: 2 worker processes started for every epoch.
- fusefn, collate: single patches batched by ``DataLoader(batch_size=8, collate_fn=collate)`` (2 persistent
  worker processes).
- fusefn, in-process: the batched dataset iterated with no worker (the bare loop's conditions).
- MONAI 1.6.1: ``CacheDataset([FgBgToIndicesd, RandCropByPosNegLabeld(spatial_size=96, pos=1, neg=1,
  num_samples=8, fg/bg_indices_key=...)], cache_rate=1)``: volumes and their indices (all of them) held in RAM,
  cropped in one ``DataLoader(batch_size=1, num_workers=2, collate_fn=list_data_collate)`` reused every epoch
  (its tutorials' pattern; torch's default: workers started per epoch) — 8 patches per batch.
- MONAI, persistent workers: the same DataLoader with ``persistent_workers=True``.
- MONAI, in-process: the same DataLoader with ``num_workers=0``.
- TorchIO 1.2.1: ``Queue(SubjectsDataset(in-memory subjects), max_length=32, samples_per_volume=8,
  LabelSampler(96, label_probabilities={0: 1, 1: 1}), num_workers=2)`` under ``DataLoader(batch_size=8)``
  (its documented pattern; the volumes are in RAM, not read from a file).
- h5py bare loop (the ceiling): one process, no framework: read each volume and label map from a plain HDF5
  file (one contiguous dataset each), draw 8 centres from the same precomputed indices, slice (windows moved
  inside the volume, no padding), ``np.stack`` into the batch.

All volumes (the HDF5 files too) are in the page cache: this measures the CPU work of sampling, not a disk.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

SHAPE = (256, 256, 160)
PATCH = 96
PER_VOLUME = 8
BATCH = 8
TORCHIO = "TorchIO 1.2.1"
FUSEFN_COLLATE = "fusefn, collate"
FUSEFN_FRESH = "fusefn, fresh workers"
FUSEFN_PROCS = "fusefn, worker processes"
MONAI_INPROC = "MONAI, in-process"
MONAI_PERSISTENT = "MONAI, persistent workers"
FUSEFN_INPROC = "fusefn, in-process"
BARE = "h5py bare loop (ceiling)"


def make_volume(i: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Volume ``i``: (1×shape float32 image, 1×shape uint8 label map, 4×4 affine), deterministic from ``i``."""
    r = np.random.default_rng(i)
    img = r.standard_normal((1, *shape), dtype=np.float32)
    mask = np.zeros(shape, np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(3):
        centre = r.uniform(0.25, 0.75, 3) * shape
        radii = r.uniform(12, 24, 3)
        inside = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, radii)) <= 1
        mask[inside] = 1
    img[0][mask > 0] += 2.0
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    affine[:3, 3] = [-100.0, -100.0, -120.0]
    return img, mask[None], affine


def touch(img, mask) -> float:
    """What the training loop does with a batch: read a strided sample of it (every batch is really there)."""
    assert tuple(img.shape) == (img.shape[0], 1, PATCH, PATCH, PATCH) and tuple(mask.shape) == tuple(img.shape)
    return float(img[:, 0, ::8, ::8, ::8].sum()) + float(mask[:, 0, ::8, ::8, ::8].sum())


# ---------------------------------------------------------------- fusefn

try:
    import attrs

    from fusefn import keys, nd
    from fusefn.core import record

    @record
    class MakeVolume:
        """The bench's reader: volume ``int(sample_id)`` with its label map and affine (part of the bench)."""

        shape: tuple = attrs.field(converter=tuple)

        def __call__(self, sample):
            img, mask, affine = make_volume(int(nd.get(sample, keys.SAMPLE_ID)), self.shape)
            return nd.assoc_many(sample, {keys.IMAGE: img, keys.MASK: mask, keys.AFFINE: affine})

except ImportError:
    MakeVolume = None


def fusefn_systems(ids, root: pathlib.Path):
    """``{system: epoch function}`` of fusefn, or the reason it is not there."""
    import functools

    from fusefn import Rng, chain
    from fusefn.data import Dataset, H5Cache
    from fusefn.data.ops.foreground import ForegroundIndices
    from fusefn.data.patches import PatchDataset, PatchSampler

    static = chain(MakeVolume(shape=SHAPE), ForegroundIndices())
    cache = H5Cache(root=root, pipeline=static, workers=2, progress=False)
    ds = Dataset(source=[str(i) for i in ids], cache=cache).build()
    sampler = PatchSampler(size=(PATCH,) * 3, n=PER_VOLUME, pos=1, neg=1)
    batched = PatchDataset(ds, sampler, rng=Rng(0), batch_size=BATCH)
    single = PatchDataset(ds, sampler, rng=Rng(0))
    epoch = {"e": 0}

    def run(make_loader):
        epoch["e"] += 1
        count = 0
        for b in make_loader(epoch["e"]):
            touch(b["data"]["input"]["img"], b["data"]["gt"]["mask"])
            count += len(b["data"]["sample_id"])
        assert count == len(ids) * PER_VOLUME, count

    def inproc(e):
        batched.set_epoch(e)
        return iter(batched)

    return {
        C.FUSEFN: functools.partial(run, batched.epochs(workers=2)),
        FUSEFN_FRESH: functools.partial(run, functools.partial(batched.epoch_loader, workers=2)),
        FUSEFN_COLLATE: functools.partial(run, single.epochs(workers=2, batch_size=BATCH)),
        FUSEFN_PROCS: functools.partial(run, batched.epochs(workers=2, threads=False)),
        FUSEFN_INPROC: functools.partial(run, inproc),
    }


# ---------------------------------------------------------------- MONAI


def monai_systems(volumes) -> dict:
    """MONAI's three loaders over one CacheDataset (held once in memory)."""
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.transforms import Compose, FgBgToIndicesd, RandCropByPosNegLabeld

    transform = Compose(
        [
            FgBgToIndicesd(keys="label"),
            RandCropByPosNegLabeld(
                keys=["img", "label"],
                label_key="label",
                spatial_size=(PATCH,) * 3,
                pos=1,
                neg=1,
                num_samples=PER_VOLUME,
                fg_indices_key="label_fg_indices",
                bg_indices_key="label_bg_indices",
            ),
        ]
    )
    data = [{"img": img, "label": mask} for img, mask, _ in volumes]
    ds = CacheDataset(data, transform=transform, cache_rate=1.0, num_workers=2, progress=False)

    def system(workers: int, persistent: bool):
        loader = DataLoader(
            ds,
            batch_size=BATCH // PER_VOLUME,
            num_workers=workers,
            collate_fn=list_data_collate,
            shuffle=True,
            persistent_workers=persistent,
        )

        def epoch():
            count = 0
            for b in loader:
                touch(b["img"], b["label"])
                count += b["img"].shape[0]
            assert count == len(volumes) * PER_VOLUME, count

        return epoch

    return {C.MONAI: system(2, False), MONAI_PERSISTENT: system(2, True), MONAI_INPROC: system(0, False)}


# ---------------------------------------------------------------- TorchIO


def torchio_system(volumes):
    import torch
    import torchio as tio

    subjects = [
        tio.Subject(
            img=tio.ScalarImage(tensor=torch.from_numpy(img), affine=affine),
            label=tio.LabelMap(tensor=torch.from_numpy(mask), affine=affine),
        )
        for img, mask, affine in volumes
    ]
    dataset = tio.SubjectsDataset(subjects)
    sampler = tio.LabelSampler(patch_size=PATCH, label_name="label", label_probabilities={0: 1, 1: 1})

    def epoch():
        queue = tio.Queue(
            dataset, max_length=32, samples_per_volume=PER_VOLUME, sampler=sampler, num_workers=2, verbose=False
        )
        count = 0
        for b in torch.utils.data.DataLoader(queue, batch_size=BATCH, num_workers=0):
            touch(b["img"][tio.DATA], b["label"][tio.DATA])
            count += b["img"][tio.DATA].shape[0]
        assert count == len(volumes) * PER_VOLUME, count

    return epoch


# ---------------------------------------------------------------- bare loop


def bare_system(volumes, root: pathlib.Path):
    import h5py
    import torch

    path = root / "bare.h5"
    n = len(volumes)
    indices = []
    with h5py.File(path, "w") as f:
        img_ds = f.create_dataset("img", shape=(n, 1, *SHAPE), dtype=np.float32)
        mask_ds = f.create_dataset("mask", shape=(n, 1, *SHAPE), dtype=np.uint8)
        for i, (img, mask, _) in enumerate(volumes):
            img_ds[i], mask_ds[i] = img, mask
            r = np.random.default_rng(i)
            flat = mask.reshape(-1)
            fg, bg = np.flatnonzero(flat), np.flatnonzero(flat == 0)
            indices.append(tuple(np.sort(r.choice(x, min(len(x), 1 << 18), replace=False)) for x in (fg, bg)))
    state = {"e": 0}
    half = PATCH // 2
    room = np.asarray(SHAPE) - PATCH

    def epoch():
        state["e"] += 1
        r = np.random.default_rng(state["e"])
        count = 0
        with h5py.File(path, "r") as f:
            for i in r.permutation(n):
                img, mask = f["img"][i], f["mask"][i]
                fg, bg = indices[i]
                flat = np.concatenate([r.choice(fg, PER_VOLUME // 2), r.choice(bg, PER_VOLUME - PER_VOLUME // 2)])
                origins = np.clip(np.stack(np.unravel_index(flat, SHAPE), 1) - half, 0, room)
                cuts = [tuple(slice(o, o + PATCH) for o in origin) for origin in origins]
                bi = torch.from_numpy(np.stack([img[(slice(None), *c)] for c in cuts]))
                bm = torch.from_numpy(np.stack([mask[(slice(None), *c)] for c in cuts]))
                touch(bi, bm)
                count += len(cuts)
        assert count == n * PER_VOLUME

    return epoch


# ---------------------------------------------------------------- driver


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("patches", args)
    rec = C.Recorder("patches", args)
    if args.device.startswith("cuda"):
        print("  patch sampling is host-side work feeding the device: no CUDA rows")
        return
    n = 3 if args.quick else 12
    own = args.workdir is None
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="fusefn-bench-patches-")) if own else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    ids = list(range(n))
    try:
        volumes = [make_volume(i) for i in ids]
        systems: dict = {}
        settings = {
            C.FUSEFN: "H5Cache + ForegroundIndices() + PatchDataset(batch_size=8).epochs(workers=2): "
            "2 worker threads of the training process (the default)",
            FUSEFN_PROCS: "PatchDataset(batch_size=8).epochs(workers=2, threads=False): 2 persistent worker processes",
            FUSEFN_FRESH: "epoch_loader(e, workers=2): 2 worker processes started per epoch",
            FUSEFN_COLLATE: "PatchDataset(batch_size=None).epochs(workers=2, batch_size=8): fusefn collate, "
            "2 persistent worker processes",
            FUSEFN_INPROC: "PatchDataset(batch_size=8) iterated in the main process (no worker)",
            C.MONAI: "CacheDataset(FgBgToIndicesd, RandCropByPosNegLabeld(num_samples=8)), DataLoader(num_workers=2): "
            "2 worker processes started per epoch",
            MONAI_PERSISTENT: "the same DataLoader with persistent_workers=True: 2 persistent worker processes",
            MONAI_INPROC: "the same DataLoader with num_workers=0",
            TORCHIO: "Queue(max_length=32, samples_per_volume=8, LabelSampler, num_workers=2), DataLoader(batch_size=8): "
            "2 worker processes",
            BARE: "one process: h5py read of the volume + label, slicing, np.stack",
        }
        fns, why = C.attempt(lambda: (fusefn_systems(ids, workdir / "fusefn"), None))
        if fns is None:
            rec.skip("patches.epoch", C.FUSEFN, why)
        else:
            systems.update(fns)
        m, why = C.peer("monai.transforms", "RandCropByPosNegLabeld")
        if m is None:
            rec.skip("patches.epoch", C.MONAI, why)
        else:
            systems.update(monai_systems(volumes))
        m, why = C.peer("torchio", "Queue", "LabelSampler")
        if m is None:
            rec.skip("patches.epoch", TORCHIO, why)
        else:
            systems[TORCHIO] = torchio_system(volumes)
        systems[BARE] = bare_system(volumes, workdir)
        times = C.measure_interleaved(systems, repeats=args.repeats, warmup=args.warmup)
        for system, t in times.items():
            if isinstance(t, Exception):
                rec.skip("patches.epoch", system, f"failed: {type(t).__name__}: {str(t)[:300]}")
                continue
            rec.add(
                "patches.96cube.256x256x160",
                system,
                t,
                figure="patches delivered",
                unit="patches/s",
                n=n * PER_VOLUME,
                n_unit="patches",
                rate=True,
                settings=settings[system],
            )
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
