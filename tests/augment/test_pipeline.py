"""Pipelines: reproducibility, sample-then-apply, the hand-written fold, default pipelines, compile."""

import pytest
import torch

from fusefn import augment
from fusefn.augment import (
    Affine,
    Cutout,
    Elastic,
    GaussianBlur,
    GaussianNoise,
    Intensity,
    Pipeline,
    RandomCrop,
    RandomResizedCrop,
    chain,
    default_image_pipeline,
    default_volume_pipeline,
)
from fusefn.core import Rng
from fusefn.errors import ConfigError, MissingKeyError

KEY = "data.input.img"
SEG = "data.gt.seg"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch2d(n=6, size=16, seed=0):
    g = gen(seed)
    return {
        "data": {
            "input": {"img": torch.rand(n, 1, size, size, generator=g)},
            "gt": {"seg": torch.randint(0, 3, (n, 1, size, size), generator=g)},
            "sample_id": [f"s{i}" for i in range(n)],
        }
    }


ALL_OPS_2D = [
    Affine(image_keys=KEY, mask_keys=SEG, rotate=(-30, 30), scale=(0.9, 1.1), shear=(-5, 5), flip=0.5, p=0.7),
    Elastic(image_keys=KEY, mask_keys=SEG, displacement=1.5, p=0.7),
    Intensity(image_keys=KEY, gamma=(0.9, 1.1), multiply=(0.9, 1.1), add=(-0.1, 0.1), contrast=(0.8, 1.2), p=0.7),
    GaussianNoise(image_keys=KEY, std=(0.01, 0.05), p=0.7),
    GaussianBlur(image_keys=KEY, sigma=(0.3, 1.0), p=0.7),
    RandomCrop(image_keys=KEY, mask_keys=SEG, size=(12, 10), p=0.7),
    RandomResizedCrop(image_keys=KEY, mask_keys=SEG, size=(8, 8), p=0.7),
    Cutout(image_keys=KEY, p=0.7),
]


def _tree_equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("op", ALL_OPS_2D, ids=lambda o: type(o).__name__)
def test_sample_then_apply_equals_call_and_input_is_untouched(op):
    batch = batch2d()
    before = {k: v.clone() for k, v in batch["data"]["input"].items()}
    called = op(batch, rng=Rng(5))
    params = op.sample_like(batch, rng=Rng(5))
    assert _tree_equal(op.apply(batch, params), called)
    assert torch.equal(batch["data"]["input"]["img"], before["img"])
    assert called["data"]["sample_id"] is batch["data"]["sample_id"]


@pytest.mark.parametrize("op", ALL_OPS_2D, ids=lambda o: type(o).__name__)
def test_same_seed_is_bit_identical_and_streams_differ(op):
    batch = batch2d()
    a = op(batch, rng=Rng(11).child(3, 0))
    b = op(batch, rng=Rng(11).child(3, 0))
    assert _tree_equal(a, b)
    others = [op(batch, rng=Rng(s).child(e, r)) for s, e, r in [(12, 3, 0), (11, 4, 0), (11, 3, 1)]]
    for o in others:
        assert not torch.equal(o["data"]["input"]["img"], a["data"]["input"]["img"])


def test_pipeline_equals_hand_written_fold():
    ops = [o for o in ALL_OPS_2D if not isinstance(o, Affine)]
    pipe = chain(*ops[:3], chain(*ops[3:]))
    assert len(pipe.ops) == len(ops)
    batch = batch2d()
    params = pipe.sample_like(batch, rng=Rng(9))
    out = pipe.apply(batch, params)
    ref = batch
    for op, p in zip(ops, params):
        ref = op.apply(ref, p)
    assert _tree_equal(out, ref)
    assert _tree_equal(pipe(batch, rng=Rng(9)), out)


def test_pipeline_does_not_mutate_its_input_when_it_works_in_place():
    batch = batch2d(n=8)
    before = batch["data"]["input"]["img"].clone()
    pipe = chain(*ALL_OPS_2D, Intensity(image_keys=KEY, add=(0.1, 0.2), p=1.0), GaussianNoise(image_keys=KEY, p=1.0))
    pipe(batch, rng=Rng(1))
    assert torch.equal(batch["data"]["input"]["img"], before)


def test_noise_after_crop_is_drawn_for_the_cropped_shape():
    pipe = chain(RandomCrop(image_keys=KEY, size=(5, 6)), GaussianNoise(image_keys=KEY))
    out = pipe(batch2d(), rng=Rng(0))
    assert out["data"]["input"]["img"].shape == (6, 1, 5, 6)


def test_default_image_pipeline():
    batch = batch2d(n=64, size=32)
    pipe = default_image_pipeline(KEY, mask_keys=SEG)
    params = pipe.sample_like(batch, rng=Rng(1))
    rates = [float(p["apply"].double().mean()) for p in params]
    assert all(0.25 < r < 0.75 for r in rates)
    out = pipe.apply(batch, params)
    img = out["data"]["input"]["img"]
    assert img.shape == batch["data"]["input"]["img"].shape and img.dtype == torch.float32
    assert set(out["data"]["gt"]["seg"].unique().tolist()) <= {0, 1, 2}
    untouched = ~(params[0]["apply"] | params[1]["apply"] | params[2]["apply"])
    assert torch.equal(img[untouched], batch["data"]["input"]["img"][untouched])


def test_default_volume_pipeline():
    vol = {"data": {"input": {"img": torch.rand(4, 1, 12, 12, 12, generator=gen(2))}}}
    out = default_volume_pipeline(KEY)(vol, rng=Rng(3))
    assert out["data"]["input"]["img"].shape == (4, 1, 12, 12, 12)


def test_light_image_pipeline_never_flips():
    x = torch.zeros(32, 1, 16, 16)
    x[:, :, 2, 2] = 1.0
    out = augment.light_image_pipeline(KEY, p=1.0)({"data": {"input": {"img": x}}}, rng=Rng(1))["data"]["input"]["img"]
    peak = out.flatten(1).argmax(1)
    assert bool((peak // 16 < 8).all() and (peak % 16 < 8).all())  # the bright corner stays top-left


def test_sample_on_a_device_argument_keeps_tensors_there():
    params = default_image_pipeline(KEY).sample(4, rng=Rng(0), device="cpu", shapes={KEY: (1, 8, 8)})
    assert all(t.device.type == "cpu" for p in params for t in p.values() if isinstance(t, torch.Tensor))


def test_errors_name_op_and_key():
    with pytest.raises(ConfigError, match=r"Pipeline\.ops\[0\]"):
        Pipeline(ops=(lambda b: b,))
    with pytest.raises(MissingKeyError, match=r"data\.input\.imgg"):
        default_image_pipeline("data.input.imgg")(batch2d(), rng=Rng(0))
    assert augment.__all__ and all(hasattr(augment, n) for n in augment.__all__)


@pytest.mark.slow
def test_apply_compiles_with_fullgraph():
    pipe = chain(default_image_pipeline(KEY, mask_keys=SEG), *ALL_OPS_2D[1:])
    batch = batch2d(n=8, size=16)
    params = pipe.sample_like(batch, rng=Rng(4))
    compiled = torch.compile(pipe.apply, fullgraph=True)
    out = compiled(batch, params)
    ref = pipe.apply(batch, params)
    torch.testing.assert_close(out["data"]["input"]["img"], ref["data"]["input"]["img"], atol=1e-5, rtol=1e-5)
    assert torch.equal(out["data"]["gt"]["seg"], ref["data"]["gt"]["seg"])


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 12, 1 << 40])
def test_chunked_eager_path_equals_the_whole_batch_path(monkeypatch, chunk_bytes):
    from fusefn.augment import _common, _resample, intensity

    pipe = chain(default_image_pipeline(KEY, mask_keys=SEG), ALL_OPS_2D[2])
    batch = batch2d(n=10, size=24)
    params = pipe.sample_like(batch, rng=Rng(6))
    monkeypatch.setattr(_common, "CHUNK_BYTES", chunk_bytes)
    chunked = pipe.apply(batch, params)
    monkeypatch.setattr(_resample, "chunked", lambda x: False)
    monkeypatch.setattr(intensity, "chunked", lambda x: False)
    whole = pipe.apply(batch, params)
    assert torch.equal(chunked["data"]["input"]["img"], whole["data"]["input"]["img"])
    assert torch.equal(chunked["data"]["gt"]["seg"], whole["data"]["gt"]["seg"])


def test_pipelines_round_trip_through_config():
    from fusefn.core import fingerprint, from_config, to_config

    for pipe in (default_image_pipeline(KEY, mask_keys=SEG), default_volume_pipeline(KEY), chain(*ALL_OPS_2D)):
        again = from_config(to_config(pipe))
        assert again == pipe and fingerprint(again) == fingerprint(pipe)


@pytest.mark.parametrize("seed", range(4))
def test_apply_fixed_equals_apply_for_every_op_and_any_draw(seed):
    """The fixed-shape path a compiled step runs gives apply's result; its params never depend on the draw's count."""
    from fusefn import augment as A

    pipe = A.chain(
        A.default_image_pipeline("img", mask_keys="mask"),
        A.Elastic(dims=2, image_keys="img", mask_keys="mask", p=0.5),
        A.GaussianBlur(image_keys="img", p=0.5),
        A.Cutout(image_keys="img", p=0.5),
        A.Affine(image_keys="img", mask_keys="mask", point_keys="pts", rotate=(-20, 20), p=0.5),
        A.RandomCrop(image_keys="img", mask_keys="mask", size=(24, 24), p=0.5),
    )
    g = torch.Generator().manual_seed(seed)
    batch = {
        "img": torch.rand(6, 1, 32, 32, generator=g),
        "mask": torch.randint(0, 3, (6, 1, 32, 32), generator=g),
        "pts": torch.rand(6, 4, 2, generator=g) * 31,
    }
    before = {k: v.clone() for k, v in batch.items()}
    params = pipe.sample_like(batch, rng=Rng(seed))
    fixed = pipe.fixed_params(params, 6)
    for stage in fixed:
        assert stage["index"].tolist() == list(range(6))
        for value in stage.values():
            if isinstance(value, torch.Tensor) and value.ndim:
                assert value.shape[0] == 6
    a, b = pipe.apply(batch, params), pipe.apply_fixed(batch, fixed)
    for k in batch:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    assert all(torch.equal(batch[k], before[k]) for k in batch)  # the input is not changed
