import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusefn import nd
from fusefn.errors import MissingKeyError

names = st.text(alphabet="abcxyz_", min_size=1, max_size=4)
leaves = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2))
trees = st.recursive(
    st.dictionaries(names, leaves, min_size=1, max_size=3),
    lambda children: st.dictionaries(names, st.one_of(leaves, children), min_size=1, max_size=3),
    max_leaves=12,
)
dotted = st.lists(names, min_size=1, max_size=4).map(".".join)


@given(trees, dotted, leaves)
def test_get_of_assoc_returns_value_and_input_unchanged(tree, key, value):
    before = copy.deepcopy(tree)
    try:
        out = nd.assoc(tree, key, value)
    except TypeError:
        return  # a leaf sits on the path: refusing is the documented behaviour
    assert nd.get(out, key) == value
    assert tree == before


@given(trees)
def test_unflatten_flatten_round_trip(tree):
    assert nd.unflatten(nd.flatten(tree)) == tree


@given(trees)
def test_keys_are_flatten_keys_and_get_agrees(tree):
    flat = nd.flatten(tree)
    assert nd.keys(tree) == list(flat)
    for k, v in flat.items():
        assert nd.get(tree, k) == v


@given(trees, dotted, leaves)
def test_dissoc_removes_only_that_key(tree, key, value):
    try:
        t = nd.assoc(tree, key, value)
    except TypeError:
        return
    out = nd.dissoc(t, key)
    assert not nd.contains(out, key)
    assert {k: v for k, v in nd.flatten(t).items() if k != key and not k.startswith(key + ".")} == nd.flatten(out)


def test_assoc_shares_untouched_subtrees():
    t = {"data": {"input": {"img": 1}}, "model": {"x": 2}}
    out = nd.assoc(t, "data.gt.label", 3)
    assert out["model"] is t["model"]
    assert out["data"]["input"] is t["data"]["input"]
    assert out["data"] is not t["data"]


def test_missing_key_names_key_and_closest():
    t = {"data": {"gt": {"label": 1}, "input": {"img": 0}}}
    with pytest.raises(KeyError) as e:
        nd.get(t, "data.gt.lable")
    msg = str(e.value)
    assert "data.gt.lable" in msg and "data.gt.label" in msg
    assert isinstance(e.value, MissingKeyError)
    assert nd.get(t, "data.gt.lable", default=None) is None


def test_select_patterns():
    t = {"data": {"a": {"label": 1, "img": 2}, "b": {"label": 3}}, "model": {"label": 4}}
    assert nd.select(t, "data.*.label") == {"data.a.label": 1, "data.b.label": 3}
    assert nd.select(t, "**.label") == {"data.a.label": 1, "data.b.label": 3, "model.label": 4}
    assert nd.select(t, "data.a") == {"data.a.label": 1, "data.a.img": 2}
    assert nd.select(t, "nothing.*") == {}


def test_assoc_through_leaf_is_refused():
    with pytest.raises(TypeError, match="a.b"):
        nd.assoc({"a": {"b": 1}}, "a.b.c", 2)


def test_malformed_keys():
    with pytest.raises(ValueError):
        nd.get({}, "a..b")
    with pytest.raises(TypeError):
        nd.get({}, "")


def test_merge_is_deep_and_pure():
    a = {"x": {"y": 1, "z": 2}}
    b = {"x": {"z": 3}, "w": 4}
    assert nd.merge(a, b) == {"x": {"y": 1, "z": 3}, "w": 4}
    assert a == {"x": {"y": 1, "z": 2}}
