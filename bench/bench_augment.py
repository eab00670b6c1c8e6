"""Augmentation: the default image pipeline, 2D (256 × 1×256×256) and 3D (64 × 1×96³) (issues 4, 16).

All systems augment the same float32 images in [0, 1] (a fixed seeded stack); figures are images per second over the
whole stack. The systems alternate every repetition (after two warm-up rounds), so load changes hit them alike.
The peers augment one sample at a time, as they are built to (each sample is cloned first because FuseMedML's
affine op writes into its input); fusefn augments the stack as one batch.

Systems and settings:
- FuseMedML 0.4.1, 2D: the FuseMedML guide's ``aug_image_default_pipeline`` written with 0.4.1's ops, as its ISIC example
  writes it: ``OpRandApply(OpSample(OpAugAffine2D()), 0.5)`` (rotate U(−30, 30), scale U(0.9, 1.1), flips
  RandBool(0.3), translate RandInt(−10, 10)), ``OpRandApply(OpSample(OpAugColor()), 0.5)`` (add U(−0.06, 0.06),
  mul U(0.95, 1.05), gamma U(0.9, 1.1), contrast U(0.85, 1.15)), ``OpRandApply(OpAugGaussian(), 0.5)`` (std 0.03).
- FuseMedML 0.4.1, 3D: its own KNIGHT example's 3D pipeline (``OpRotation3D`` U(−5, 5)° per axis with p 0.5, the 2D
  affine per slice with p 0.5, Gaussian noise std 0.01 with p 0.3) on the D×H×W volume — FuseMedML has no 3D
  counterpart of the default pipeline. It is less work than fusefn's default 3D pipeline: its 3D rotation is
  nearest-neighbour (three ``torchvision`` rotations of the slice stack) where fusefn's is trilinear, it has no
  intensity group (fusefn's: gamma, multiply, add, contrast, p 0.5) and adds noise with p 0.3 (fusefn: 0.5). The row
  "fusefn (FuseMedML's augmentations)" runs FuseMedML's augmentations with fusefn's ops (``fusemedml_equivalent_3d``).
- MONAI 1.6.1: dictionary transforms ``RandAffined`` (p 0.5, rotation ±30° per axis, translate ±10 px, scale ±0.1,
  bilinear, zeros padding), ``RandFlipd`` per spatial axis (p 0.3), ``RandShiftIntensityd`` (±0.06),
  ``RandScaleIntensityd`` (±0.05), ``RandAdjustContrastd`` (gamma 0.9–1.1), ``RandScaleIntensityFixedMeand``
  (contrast ±0.15), ``RandGaussianNoised`` (std 0.03), each intensity transform with p 0.5; other arguments at their
  defaults (metadata tracking on). MONAI has no clip-to-[0, 1] step in this chain.
- fusefn: ``fusefn.augment.default_image_pipeline`` (and its 3D counterpart) on the whole batch, eager; plus the same
  with the apply step compiled (``torch.compile(fullgraph=True)``, not in ``--quick``), and the fixed-shape
  ``apply_fixed`` a compiled train step runs (issue 16), compiled the same way.

A third case, ``augment.3d_elastic`` (16 × 1×96³, issue 16), times an affine followed by an elastic deformation:
fusefn's ``chain(Affine, Elastic)`` (fused: one grid, one resampling), the same two ops called one after the other
(two resamplings, what the chain did before), and MONAI's ``Rand3DElasticd`` (also one resampling: affine and
elastic in one grid), all with p 1, rotation ±15° per axis, scale 0.9–1.1, bilinear. FuseMedML has no 3D elastic.

Environment knobs for partial runs on a busy machine: ``BENCH_AUGMENT_CASES`` (comma-separated subset of
``2d,3d,3d_elastic``) and ``BENCH_AUGMENT_EAGER=1`` (skip the compiled rows, which take minutes to compile).
"""

from __future__ import annotations

import math
import os
import pathlib
import random
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

KEY = "data.input.img"


def images(n: int, spatial: tuple, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, *spatial), generator=g)


def seed_globals(seed: int = 0) -> None:
    """The peers draw from global RNGs (their design); seed them without switching torch to deterministic mode."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- FuseMedML


def fusemedml_pipeline(ndim: int):
    from fuse.data.ops.ops_aug_common import OpRandApply, OpSample
    from fuse.data.pipelines.pipeline_default import PipelineDefault
    from fuse.utils.rand.param_sampler import RandBool, RandInt, Uniform
    from fuseimg.data.ops.aug.color import OpAugColor, OpAugGaussian
    from fuseimg.data.ops.aug.geometry import OpAugAffine2D, OpRotation3D

    if ndim == 2:
        ops = [
            (
                OpRandApply(OpSample(OpAugAffine2D()), 0.5),
                dict(
                    key=KEY,
                    rotate=Uniform(-30.0, 30.0),
                    scale=Uniform(0.9, 1.1),
                    flip=(RandBool(0.3), RandBool(0.3)),
                    translate=(RandInt(-10, 10), RandInt(-10, 10)),
                ),
            ),
            (
                OpRandApply(OpSample(OpAugColor()), 0.5),
                dict(
                    key=KEY,
                    add=Uniform(-0.06, 0.06),
                    mul=Uniform(0.95, 1.05),
                    gamma=Uniform(0.9, 1.1),
                    contrast=Uniform(0.85, 1.15),
                ),
            ),
            (OpRandApply(OpAugGaussian(), 0.5), dict(key=KEY, std=0.03)),
        ]
    else:
        ops = [
            (
                OpRandApply(OpSample(OpRotation3D()), 0.5),
                dict(key=KEY, z_rot=Uniform(-5.0, 5.0), x_rot=Uniform(-5.0, 5.0), y_rot=Uniform(-5.0, 5.0)),
            ),
            (
                OpRandApply(OpSample(OpAugAffine2D()), 0.5),
                dict(
                    key=KEY,
                    rotate=Uniform(-180.0, 180.0),
                    scale=Uniform(0.8, 1.2),
                    flip=(RandBool(0.5), RandBool(0.5)),
                    translate=(RandInt(-15, 15), RandInt(-15, 15)),
                ),
            ),
            (OpRandApply(OpAugGaussian(), 0.3), dict(key=KEY, std=0.01)),
        ]
    return PipelineDefault("aug", ops)


def fusemedml_run(imgs: torch.Tensor):
    from fuse.data.utils.sample import create_initial_sample

    ndim = imgs.ndim - 2
    pipe = fusemedml_pipeline(ndim)

    def run():
        for i in range(imgs.shape[0]):
            sample = create_initial_sample(i)
            # 2D ops take C×H×W; the 3D example works on D×H×W
            sample[KEY] = imgs[i].clone() if ndim == 2 else imgs[i, 0].clone()
            out = pipe(sample)[KEY]
        assert out.shape[-1] == imgs.shape[-1]

    return run


# ---------------------------------------------------------------- MONAI


def monai_run(imgs: torch.Tensor, device: str):
    from monai import transforms as T

    ndim = imgs.ndim - 2
    k = ["img"]
    rot = (math.pi / 6,) * (1 if ndim == 2 else 3)
    chain = T.Compose(
        [
            T.RandAffined(
                keys=k,
                prob=0.5,
                rotate_range=rot,
                translate_range=(10,) * ndim,
                scale_range=(0.1,) * ndim,
                mode="bilinear",
                padding_mode="zeros",
            ),
            *[T.RandFlipd(keys=k, prob=0.3, spatial_axis=a) for a in range(ndim)],
            T.RandShiftIntensityd(keys=k, offsets=0.06, prob=0.5),
            T.RandScaleIntensityd(keys=k, factors=0.05, prob=0.5),
            T.RandAdjustContrastd(keys=k, gamma=(0.9, 1.1), prob=0.5),
            T.RandScaleIntensityFixedMeand(keys=k, factors=0.15, prob=0.5),
            T.RandGaussianNoised(keys=k, std=0.03, prob=0.5),
        ]
    )
    chain.set_random_state(seed=0)
    src = imgs.to(device)

    def run():
        for i in range(src.shape[0]):
            out = chain({"img": src[i].clone()})["img"]
        assert out.shape[-1] == imgs.shape[-1]

    return run


# ---------------------------------------------------------------- fusefn


def fusefn_pipeline(ndim: int):
    aug, why = C.optional_import("fusefn.augment", "default_image_pipeline")
    if aug is None:
        return None, why
    if ndim == 2:
        return aug.default_image_pipeline(KEY), None
    if hasattr(aug, "default_volume_pipeline"):
        return aug.default_volume_pipeline(KEY), None
    return None, "fusefn.augment lacks default_volume_pipeline"


SAME_WORK_3D = (
    "FuseMedML's KNIGHT 3D augmentations with fusefn ops, one batch, eager: rotation U(-5, 5) deg about each axis "
    "(p 0.5); in-plane rotation U(-180, 180) deg, scale U(0.8, 1.2), flips of H and W (p 0.5 each), integer "
    "translation U(-15, 15) in-plane (p 0.5); Gaussian noise std 0.01 (p 0.3); the scale is in-plane "
    "(scale_axes=(1, 2)), as FuseMedML's per-slice affine. fusefn resamples trilinearly (bilinearly per slice where "
    "the map keeps the slices), FuseMedML's 3D rotation is nearest-neighbour"
)


def fusemedml_equivalent_3d():
    from fusefn.augment import Affine, GaussianNoise, chain

    return chain(
        Affine(dims=3, image_keys=KEY, rotate=(-5.0, 5.0), p=0.5),
        Affine(
            dims=3,
            image_keys=KEY,
            rotate=((-180.0, 180.0), (0.0, 0.0), (0.0, 0.0)),
            scale=(0.8, 1.2),
            scale_axes=(1, 2),
            flip=(0.0, 0.5, 0.5),
            translate=((0, 0), (-15, 15), (-15, 15)),
            integer_translate=True,
            p=0.5,
        ),
        GaussianNoise(image_keys=KEY, std=0.01, p=0.3),
    )


def fusefn_runs(imgs: torch.Tensor, device: str, compiled: bool = True):
    """[(system label, run, settings)] for fusefn eager and compiled, or (None, why)."""
    import itertools

    from fusefn import Rng, nd

    ndim = imgs.ndim - 2
    pipe, why = fusefn_pipeline(ndim)
    if pipe is None:
        return None, why
    batch = nd.assoc({}, KEY, imgs.to(device))
    calls = itertools.count()  # new draws every call, as fit's (seed, "augment", step) streams give

    def eager():
        out = pipe(batch, rng=Rng(0).child(next(calls)))
        assert nd.get(out, KEY).shape == imgs.shape

    runs = [(C.FUSEFN, eager, "default pipeline, one batch, eager")]
    if ndim == 3:
        # the same work as FuseMedML's row: its KNIGHT augmentations written with fusefn's ops
        same = fusemedml_equivalent_3d()

        def same_work():
            out = same(batch, rng=Rng(0).child(next(calls)))
            assert nd.get(out, KEY).shape == imgs.shape

        runs.append((C.FUSEFN + " (FuseMedML's augmentations)", same_work, SAME_WORK_3D))
    if compiled and hasattr(pipe, "sample_like") and hasattr(pipe, "apply"):
        compiled_apply = torch.compile(pipe.apply, fullgraph=True)

        def compiled():
            params = pipe.sample_like(batch, rng=Rng(0).child(next(calls)))
            out = compiled_apply(batch, params)
            assert nd.get(out, KEY).shape == imgs.shape

        runs.append((C.FUSEFN + " (compiled apply)", compiled, "default pipeline, one batch, torch.compile(apply)"))
    if compiled and hasattr(pipe, "apply_fixed"):
        # what a compiled train step runs: fixed shapes (every sample computed, the unchosen put back), one graph
        fixed_apply = torch.compile(pipe.apply_fixed, fullgraph=True)

        def fixed():
            params = pipe.fixed_params(pipe.sample_like(batch, rng=Rng(0).child(next(calls))), imgs.shape[0])
            out = fixed_apply(batch, params)
            assert nd.get(out, KEY).shape == imgs.shape

        runs.append(
            (C.FUSEFN + " (compiled apply_fixed)", fixed, "default pipeline, torch.compile(apply_fixed, fullgraph)")
        )
    return runs, None


# ---------------------------------------------------------------- affine + elastic (issue 16)


def elastic_runs(imgs: torch.Tensor, device: str):
    """{system: (run, settings)} for the affine-then-elastic case: fusefn fused and two-pass, MONAI."""
    import itertools

    from fusefn import Rng, nd
    from fusefn.augment import Affine, Elastic, chain

    aff = Affine(dims=3, image_keys=KEY, rotate=(-15.0, 15.0), scale=(0.9, 1.1))
    el = Elastic(dims=3, image_keys=KEY, displacement=2.0, control_points=4)
    fused = chain(aff, el)
    batch = nd.assoc({}, KEY, imgs.to(device))
    calls = itertools.count()

    def one_grid():
        out = fused(batch, rng=Rng(0).child(next(calls)))
        assert nd.get(out, KEY).shape == imgs.shape

    def two_passes():
        rng = Rng(0).child(next(calls))
        out = el(aff(batch, rng=rng.child(0)), rng=rng.child(1))
        assert nd.get(out, KEY).shape == imgs.shape

    systems = {
        C.FUSEFN: (one_grid, "chain(Affine, Elastic): one composed grid, one resampling, eager"),
        C.FUSEFN + " (two resamplings)": (two_passes, "Affine then Elastic called separately, eager"),
    }
    m, _ = C.peer("monai.transforms", "Rand3DElasticd")
    if m is not None:
        from monai import transforms as T

        rot = (math.pi / 12,) * 3
        t = T.Rand3DElasticd(
            keys=["img"],
            sigma_range=(5.0, 7.0),
            magnitude_range=(50.0, 150.0),
            prob=1.0,
            rotate_range=rot,
            scale_range=(0.1,) * 3,
            mode="bilinear",
            padding_mode="border",
        )
        t.set_random_state(seed=0)
        src = imgs.to(device)

        def monai_elastic():
            for i in range(src.shape[0]):
                out = t({"img": src[i].clone()})["img"]
            assert out.shape[-1] == imgs.shape[-1]

        systems[C.MONAI] = (monai_elastic, "Rand3DElasticd per sample (affine + elastic in one grid), prob 1")
    return systems


def run_elastic_case(rec: C.Recorder, args, imgs: torch.Tensor) -> None:
    name = "augment.3d_elastic"
    rec.skip(name, C.FUSEMEDML, "FuseMedML 0.4.1 has no 3D elastic deformation")
    systems = elastic_runs(imgs, args.device)
    seed_globals()
    times = C.measure_interleaved(
        {k: v[0] for k, v in systems.items()}, repeats=args.repeats, warmup=max(args.warmup, 1), device=args.device
    )
    for system, t in times.items():
        if isinstance(t, Exception):
            rec.skip(name, system, f"failed: {type(t).__name__}: {str(t)[:200]}")
            continue
        rec.add(
            name,
            system,
            t,
            figure="throughput",
            unit="images/s",
            n=imgs.shape[0],
            n_unit="images",
            rate=True,
            device=args.device,
            settings=systems[system][1],
        )


# ---------------------------------------------------------------- driver


def run_case(rec: C.Recorder, args, label: str, imgs: torch.Tensor) -> None:
    n = imgs.shape[0]
    name = f"augment.{label}"
    systems: dict[str, tuple] = {}  # system -> (run, device, settings)
    m, why = C.peer("fuseimg.data.ops.aug.geometry", "OpAugAffine2D")
    if m is None:
        rec.skip(name, C.FUSEMEDML, why)
    else:
        with C.guard(rec, name, C.FUSEMEDML):
            # FuseMedML's ops run on CPU (PIL), on the CPU images: on a GPU run this row is still its CPU
            # throughput, the baseline
            systems[C.FUSEMEDML] = (
                fusemedml_run(imgs),
                "cpu",
                "its default pipeline per sample (ISIC/KNIGHT example settings)",
            )
    m, why = C.peer("monai.transforms", "RandAffined")
    if m is None:
        rec.skip(name, C.MONAI, why)
    else:
        with C.guard(rec, name, C.MONAI):
            systems[C.MONAI] = (
                monai_run(imgs, args.device),
                args.device,
                "dict transforms per sample, documented defaults otherwise",
            )
    # compiling takes minutes on 2 cores: the quick run times the eager path only
    eager_only = args.quick or os.environ.get("BENCH_AUGMENT_EAGER") == "1"
    runs, why = C.attempt(fusefn_runs, imgs, args.device, compiled=not eager_only)
    if runs is None:
        rec.skip(name, C.FUSEFN, why)
    else:
        for system, run, settings in runs:
            systems[system] = (run, args.device, settings)
    seed_globals()
    # systems alternate every repetition, so load changes on the machine hit them alike; per-sample peers with many
    # small ops suffer most from a busy machine. Two warm-ups: the compiled apply compiles in the first.
    times = C.measure_interleaved(
        {k: v[0] for k, v in systems.items()}, repeats=args.repeats, warmup=max(args.warmup, 2), device=args.device
    )
    for system, t in times.items():
        _, device, settings = systems[system]
        if isinstance(t, Exception):  # e.g. torch.compile failing on this machine
            rec.skip(name, system, f"failed: {type(t).__name__}: {str(t)[:200]}")
            continue
        rec.add(
            name,
            system,
            t,
            figure="throughput",
            unit="images/s",
            n=n,
            n_unit="images",
            rate=True,
            device=device,
            settings=settings,
        )


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("augment", args)
    rec = C.Recorder("augment", args)
    cases = set(os.environ.get("BENCH_AUGMENT_CASES", "2d,3d,3d_elastic").split(","))
    n2, n3, ne = (64, 4, 2) if args.quick else (256, 64, 16)
    if "2d" in cases:
        run_case(rec, args, "2d", images(n2, (256, 256)))
    if "3d" in cases:
        run_case(rec, args, "3d", images(n3, (96, 96, 96)))
    if "3d_elastic" in cases:
        run_elastic_case(rec, args, images(ne, (96, 96, 96)))


if __name__ == "__main__":
    main()
