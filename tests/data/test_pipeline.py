import pytest

from fusefn import chain, nd
from fusefn.data import run_pipeline
from fusefn.errors import SampleError


def inc(s):
    return nd.assoc(s, "data.x", s["data"]["x"] + 1)


def split(s):
    return [nd.assoc(s, "data.x", s["data"]["x"] * 10 + k) for k in range(2)]


def test_equals_chain_when_ops_are_one_to_one():
    p = chain(inc, chain(inc, inc))
    s = {"data": {"sample_id": 0, "x": 1}}
    assert run_pipeline(p, s) == [p(s)]
    assert run_pipeline(None, s) == [s]


def test_fan_out_and_drop():
    s = {"data": {"sample_id": 0, "x": 1}}
    assert [o["data"]["x"] for o in run_pipeline(chain(split, inc, split), s)] == [110, 111, 120, 121]
    assert run_pipeline(chain(split, lambda s: None, inc), s) == []


def test_errors_name_sample_and_op():
    def bad(s):
        return 3

    with pytest.raises(SampleError, match="sample 7, op bad: returned a int"):
        run_pipeline(bad, {"data": {"sample_id": 7}})
    with pytest.raises(SampleError, match="sample 7, op inc: KeyError"):
        run_pipeline(inc, {"data": {"sample_id": 7}})
