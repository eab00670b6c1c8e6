"""Every public augmentation conforms to the Augmentation protocol; chain of augmentations is a Pipeline."""

import inspect

import pytest
import torch

from fusefn import Rng, augment, chain, optim
from fusefn.augment import Affine, Augmentation, GaussianNoise, Intensity, Pipeline, RandomCrop
from fusefn.errors import ConfigError
from fusefn.protocols import Augmentation as AugmentationProtocol

KEY = "img"

EXAMPLES = {
    "Affine": Affine(image_keys=KEY, rotate=(-20, 20), p=0.6),
    "Cutout": augment.Cutout(image_keys=KEY, p=0.6),
    "Elastic": augment.Elastic(image_keys=KEY, displacement=1.0, p=0.6),
    "GaussianBlur": augment.GaussianBlur(image_keys=KEY, p=0.6),
    "GaussianNoise": GaussianNoise(image_keys=KEY, p=0.6),
    "Intensity": Intensity(image_keys=KEY, multiply=(0.9, 1.1), p=0.6),
    "Pipeline": augment.default_image_pipeline(KEY),
    "RandomCrop": RandomCrop(image_keys=KEY, size=(6, 6), p=0.6),
    "RandomResizedCrop": augment.RandomResizedCrop(image_keys=KEY, size=(6, 6), p=0.6),
}


def _batch(n=6):
    return {KEY: torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))}


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_every_public_augmentation_is_covered_here():
    public = {
        n
        for n in augment.__all__
        if inspect.isclass(getattr(augment, n)) and issubclass(getattr(augment, n), Augmentation)
    }
    assert public - {"Augmentation"} == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_public_augmentations_satisfy_the_protocol(name):
    op = EXAMPLES[name]
    assert isinstance(op, AugmentationProtocol)
    for method in ("sample", "sample_like", "__call__"):
        params = inspect.signature(getattr(op, method)).parameters
        assert params["rng"].kind is inspect.Parameter.KEYWORD_ONLY
    batch = _batch()
    params = op.sample_like(batch, rng=Rng(4))
    assert _equal(op(batch, rng=Rng(4)), op.apply(batch, params))
    shapes = {KEY: (1, 8, 8)}
    assert _equal(op.sample(6, rng=Rng(4), device="cpu", shapes=shapes), params)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_streams_equal_a_generator_seeded_with_the_rng_seed(name):
    # what callers passed before rng=: torch.Generator().manual_seed(seed) for the whole op
    op = EXAMPLES[name]
    g = torch.Generator().manual_seed(Rng(7).child("augment", 3).seed)
    old = op._sample(g, 6, shapes={KEY: (1, 8, 8)})
    new = op.sample(6, rng=Rng(7).child("augment", 3), shapes={KEY: (1, 8, 8)})
    assert _equal(old, new)


def test_rng_must_be_an_rng():
    with pytest.raises(TypeError, match="fusefn.Rng"):
        GaussianNoise(image_keys=KEY)(_batch(), rng=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError):
        GaussianNoise(image_keys=KEY)(_batch(), torch.Generator().manual_seed(0))  # rng is keyword-only


def test_one_chain_for_augmentations():
    assert augment.chain is chain
    ops = [
        Affine(image_keys=KEY, flip=(0.5, 0.0)),
        Intensity(image_keys=KEY, add=(-0.1, 0.1), p=0.5),
        GaussianNoise(image_keys=KEY, p=0.5),
    ]
    piped = chain(ops[0], chain(*ops[1:]))
    assert isinstance(piped, Pipeline) and piped == Pipeline(ops=tuple(ops))
    batch = _batch()
    out = piped(batch, rng=Rng(2))
    # the hand-written fold: one generator, every op's draws in order, then every apply in order
    g = Rng(2).generator()
    params = [op._sample(g, 6, shapes={KEY: (1, 8, 8)}) for op in ops]
    ref = batch
    for op, p in zip(ops, params):
        ref = op.apply(ref, p)
    assert _equal(out, ref)


def test_chain_refuses_to_mix_kinds():
    with pytest.raises(ConfigError, match="cannot mix"):
        chain(GaussianNoise(image_keys=KEY), optim.sgd(lr=0.1))
    with pytest.raises(ConfigError, match="cannot mix"):
        chain(GaussianNoise(image_keys=KEY), lambda b: b)
    with pytest.raises(ConfigError, match=r"Pipeline\.ops\[0\]"):
        Pipeline(ops=(lambda b: b,))


def test_sample_like_draws_on_the_batch_device():
    params = GaussianNoise(image_keys=KEY).sample_like(_batch(), rng=Rng(0))
    assert params["noise"][KEY].device == _batch()[KEY].device
