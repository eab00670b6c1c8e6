import numpy as np
import pytest
import torch

from fusefn.data import ops
from fusefn.errors import ConfigError, SampleError


def s(x, sid="a"):
    return {"data": {"sample_id": sid, "input": {"img": x}}}


def img(out):
    return out["data"]["input"]["img"]


def test_normalize_matches_formula_numpy_and_torch():
    x = np.array([[2, 4], [6, 10]], np.uint8)
    want = (x - 2) / 8 * 2 - 1
    op = ops.Normalize(keys="data.input.img", low=-1, high=1)
    np.testing.assert_allclose(img(op(s(x))), want)
    assert img(op(s(x))).dtype == np.float32
    np.testing.assert_allclose(img(op(s(torch.tensor(x)))).numpy(), want)


def test_normalize_constant_and_fixed_source():
    assert img(ops.Normalize(keys="data.input.img")(s(np.full(3, 5.0)))).tolist() == [0, 0, 0]
    out = img(ops.Normalize(keys="data.input.img", source=(0, 10))(s(np.array([-5.0, 5.0, 20.0]))))
    assert out.tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="Normalize.high"):
        ops.Normalize(keys="data.input.img", low=1, high=0)


def test_zscore_clip_window():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    z = img(ops.ZScore(keys="data.input.img")(s(x)))
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6
    np.testing.assert_allclose(img(ops.ZScore(keys="data.input.img", mean=2.0, std=2.0, eps=0)(s(x))), (x - 2) / 2)
    assert img(ops.Clip(keys="data.input.img", low=2, high=3)(s(x))).tolist() == [2, 2, 3, 3]
    np.testing.assert_allclose(img(ops.Window(keys="data.input.img", center=2.5, width=2)(s(x))), [0, 0.25, 0.75, 1])
    with pytest.raises(ConfigError, match="Window.width"):
        ops.Window(keys="data.input.img", center=0, width=0)


def test_missing_key_names_sample_and_op():
    with pytest.raises(SampleError, match=r"sample 'q', op ZScore, key 'data.input.ct'.*closest: .*data.input.img"):
        ops.ZScore(keys="data.input.ct")(s(np.zeros(2), sid="q"))


def test_ops_do_not_mutate_inputs():
    x = np.array([0.0, 10.0])
    before = s(x)
    ops.Normalize(keys="data.input.img")(before)
    assert before["data"]["input"]["img"] is x and x.tolist() == [0.0, 10.0]
