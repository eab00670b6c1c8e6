import math

import numpy as np
import pytest
import torch

from fusefn import Rng
from fusefn.core import fingerprint, from_config, to_config
from fusefn.data import ops
from fusefn.errors import ConfigError, SampleError


def s(label, sid="a"):
    return {"data": {"sample_id": sid, "gt": {"label": label}}}


@pytest.mark.parametrize("value", [1, 1.0, np.int64(1), torch.tensor(1), np.array([1.0])])
def test_to_label_accepts_whole_numbers(value):
    assert ops.ToLabel(num_classes=2)(s(value))["data"]["gt"]["label"] == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "label is NaN"),
        (3, r"out of range \[0, 3\)"),
        (-1, "out of range"),
        (1.5, "not a whole number"),
        ("x", "must be a number"),
    ],
)
def test_bad_labels_name_sample_op_key(value, message):
    with pytest.raises(SampleError, match=rf"sample 'p7', op ToLabel, key 'data.gt.label': .*{message}"):
        ops.ToLabel(num_classes=3)(s(value, sid="p7"))
    with pytest.raises(SampleError, match="op OneHot"):
        ops.OneHot(num_classes=3)(s(value, sid="p7"))


def test_one_hot_and_map_values():
    assert ops.OneHot(num_classes=4, out_key="data.gt.onehot")(s(2))["data"]["gt"]["onehot"].tolist() == [0, 0, 1, 0]
    mapping = ops.MapValues(mapping={"benign": 0, "malignant": 1})
    assert mapping(s("malignant"))["data"]["gt"]["label"] == 1
    with pytest.raises(SampleError, match="value 'other' not in the mapping"):
        mapping(s("other"))
    assert ops.MapValues(mapping={"a": 0}, default=-1)(s("zzz"))["data"]["gt"]["label"] == -1
    assert from_config(to_config(mapping)) == mapping


def test_random_label_is_seeded_by_sample_id():
    op = ops.RandomLabel(num_classes=5, rng=Rng(3))
    labels = [op({"data": {"sample_id": f"s{i}"}})["data"]["gt"]["label"] for i in range(50)]
    again = [op({"data": {"sample_id": f"s{i}"}})["data"]["gt"]["label"] for i in range(50)]
    assert labels == again and set(labels) == set(range(5))
    other = [
        ops.RandomLabel(num_classes=5, rng=Rng(4))({"data": {"sample_id": f"s{i}"}})["data"]["gt"]["label"]
        for i in range(50)
    ]
    assert other != labels
    assert fingerprint(op) != fingerprint(ops.RandomLabel(num_classes=5, rng=Rng(4)))
    with pytest.raises(ConfigError, match="num_classes"):
        ops.RandomLabel(num_classes=0)


def mask_sample(mask):
    return {"data": {"sample_id": "m1", "gt": {"mask": mask}}}


def mapped_mask(mask, mapping, **kw):
    return ops.MapValues(key="data.gt.mask", mapping=mapping, **kw)(mask_sample(mask))["data"]["gt"]["mask"]


def test_map_values_maps_numpy_masks_element_wise_at_once():
    mask = np.array([[0, 1], [2, 2]], np.uint8)
    out = mapped_mask(mask, {0: 0, 1: 2, 2: 1})
    assert out.dtype == np.uint8 and out.tolist() == [[0, 2], [1, 1]]  # a swap, not a chain
    assert mask.tolist() == [[0, 1], [2, 2]]
    assert mapped_mask(mask, {1: 5}, default=0).tolist() == [[0, 5], [0, 0]]
    with pytest.raises(SampleError, match=r"sample 'm1', op MapValues, key 'data.gt.mask': values \[0, 2\] not in"):
        mapped_mask(mask, {1: 5})


def test_map_values_maps_torch_masks_element_wise():
    out = mapped_mask(torch.tensor([0, 1, 2]), {0: 0, 1: 2, 2: 1})
    assert torch.is_tensor(out) and out.dtype == torch.int64 and out.tolist() == [0, 2, 1]
    # torch would compare a uint8 with -1 as 255: the lookup must not wrap around
    out = mapped_mask(torch.tensor([0, 255], dtype=torch.uint8), {0: -1, 255: 1})
    assert out.dtype == torch.int16 and out.tolist() == [-1, 1]
    half = mapped_mask(torch.tensor([0.0, 1.0], dtype=torch.bfloat16), {0.0: 1.0, 1.0: 0.0})
    assert half.dtype == torch.bfloat16 and half.tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("dtype", "mapping", "expected"),
    [
        (np.uint8, {0: -1, 1: 1}, np.int16),
        (np.uint8, {0: 0.5, 1: 1}, np.float32),
        (np.bool_, {False: 0, True: 2}, np.uint8),
        (np.int16, {0: 1, 1: 0}, np.int16),
        (np.float32, {0: 0.1, 1: 1}, np.float32),
    ],
)
def test_map_values_widens_the_dtype_only_when_a_value_does_not_fit(dtype, mapping, expected):
    out = mapped_mask(np.array([0, 1], dtype), mapping)
    assert out.dtype == expected
    np.testing.assert_allclose(out, [mapping[0], mapping[1]], rtol=1e-6)


def test_map_values_rejects_arrays_it_cannot_map_element_wise():
    with pytest.raises(SampleError, match="op MapValues, key 'data.gt.mask': an array maps to numbers only"):
        mapped_mask(np.array([0, 1]), {0: "bg", 1: "fg"})
    with pytest.raises(SampleError, match="cannot map an array of dtype <U2"):
        mapped_mask(np.array(["bg", "fg"]), {"bg": 0, "fg": 1})
    # zero-dimensional values stay single values
    assert ops.MapValues(mapping={2: "malignant"})(s(torch.tensor(2)))["data"]["gt"]["label"] == "malignant"
    assert ops.MapValues(mapping={2: "malignant"})(s(np.array(2)))["data"]["gt"]["label"] == "malignant"
