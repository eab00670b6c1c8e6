import numpy as np
import pytest
import torch

from fusefn.data import ops
from fusefn.errors import ConfigError


def s(x):
    return {"data": {"sample_id": 0, "input": {"img": x}}}


def test_casts_round_trip():
    x = np.arange(6, dtype=np.uint8).reshape(2, 3)
    t = ops.ToTensor(keys="data.input.img", dtype="float32")(s(x))["data"]["input"]["img"]
    assert t.dtype == torch.float32 and t.shape == (2, 3)
    back = ops.ToNumpy(keys="data.input.img", dtype="uint8")(s(t))["data"]["input"]["img"]
    np.testing.assert_array_equal(back, x)
    assert ops.AsType(keys="data.input.img", dtype="int64")(s(t))["data"]["input"]["img"].dtype == torch.int64
    assert ops.AsType(keys="data.input.img", dtype="float16")(s(x))["data"]["input"]["img"].dtype == np.float16
    assert ops.ToTensor(keys="data.input.img", dtype="bool")(s(x))["data"]["input"]["img"].dtype == torch.bool


def test_unknown_dtype():
    with pytest.raises(ConfigError, match="AsType.dtype: unknown dtype 'float99'"):
        ops.AsType(keys="data.input.img", dtype="float99")
