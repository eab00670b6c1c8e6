import math

import numpy as np
import pytest
import torch

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
    [(math.nan, "label is NaN"), (3, r"out of range \[0, 3\)"), (-1, "out of range"), (1.5, "not a whole number"),
     ("x", "must be a number")],
)  # fmt: skip
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
    op = ops.RandomLabel(num_classes=5, seed=3)
    labels = [op({"data": {"sample_id": f"s{i}"}})["data"]["gt"]["label"] for i in range(50)]
    again = [op({"data": {"sample_id": f"s{i}"}})["data"]["gt"]["label"] for i in range(50)]
    assert labels == again and set(labels) == set(range(5))
    other = [ops.RandomLabel(num_classes=5, seed=4)({"data": {"sample_id": f"s{i}"}})["data"]["gt"]["label"]
             for i in range(50)]  # fmt: skip
    assert other != labels
    assert fingerprint(op) != fingerprint(ops.RandomLabel(num_classes=5, seed=4))
    with pytest.raises(ConfigError, match="num_classes"):
        ops.RandomLabel(num_classes=0)
