import functools
import os
import subprocess
import sys

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fusefn import core, nd
from fusefn.core import Rng, chain, derive_seed, fingerprint, from_config, on_keys, record, to_config
from fusefn.errors import ConfigError


@record
class AddK:
    key: str
    k: int = 1

    def __call__(self, b):
        return nd.assoc(b, self.key, nd.get(b, self.key) + self.k)


@record
class Nested:
    inner: AddK
    scale: float = 1.5
    names: tuple = ("a", "b")
    weights: torch.Tensor | None = attrs.field(default=None, eq=False)


ops = st.builds(AddK, key=st.sampled_from(["data.a", "data.b"]), k=st.integers(-5, 5))


@given(st.lists(ops, max_size=6), st.integers(-100, 100), st.integers(-100, 100))
def test_chain_equals_manual_fold(fns, a, b):
    batch = {"data": {"a": a, "b": b}}
    expected = functools.reduce(lambda acc, f: f(acc), fns, batch)
    assert chain(*fns)(batch) == expected


@given(st.lists(ops, max_size=6), st.integers(0, 6))
def test_nested_chains_flatten_and_compose_the_same(fns, cut):
    nested = chain(chain(*fns[:cut]), chain(*fns[cut:]))
    assert nested.fns == tuple(fns)
    batch = {"data": {"a": 0, "b": 0}}
    assert nested(batch) == chain(*fns)(batch)


def test_chain_rejects_non_callables():
    with pytest.raises(ConfigError, match="fns"):
        chain(AddK(key="data.a"), 3)


def test_on_keys_equals_per_key_assoc():
    op = on_keys(np.sqrt, keys=("data.a", "data.b"), out_keys=("data.sa", "data.sb"))
    b = {"data": {"a": 4.0, "b": 9.0}}
    out = op(b)
    assert out == {"data": {"a": 4.0, "b": 9.0, "sa": 2.0, "sb": 3.0}}
    assert b == {"data": {"a": 4.0, "b": 9.0}}
    with pytest.raises(KeyError, match="data.c"):
        on_keys(np.sqrt, keys="data.c")(b)
    with pytest.raises(ConfigError):
        on_keys(np.sqrt, keys=("data.a",), out_keys=("x", "y"))


def test_fingerprint_changes_with_any_field():
    base = Nested(inner=AddK(key="data.a", k=1))
    assert fingerprint(base) == fingerprint(Nested(inner=AddK(key="data.a", k=1)))
    variants = [
        attrs.evolve(base, inner=AddK(key="data.a", k=2)),
        attrs.evolve(base, inner=AddK(key="data.b", k=1)),
        attrs.evolve(base, scale=1.25),
        attrs.evolve(base, names=("a",)),
        attrs.evolve(base, names=["a", "b"]),
        attrs.evolve(base, weights=torch.ones(2)),
    ]
    prints = {fingerprint(v) for v in variants} | {fingerprint(base)}
    assert len(prints) == len(variants) + 1
    # tensor content matters, not identity
    assert fingerprint(attrs.evolve(base, weights=torch.ones(2))) == fingerprint(
        attrs.evolve(base, weights=torch.ones(2))
    )
    assert fingerprint(attrs.evolve(base, weights=torch.ones(2))) != fingerprint(
        attrs.evolve(base, weights=torch.zeros(2))
    )


def test_fingerprint_of_lambdas_follows_code_and_captures():
    k = 2
    f1 = lambda x: x * k  # noqa: E731
    f2 = lambda x: x * k  # noqa: E731
    k3 = 3
    f3 = lambda x: x * k3  # noqa: E731
    assert fingerprint(on_keys(f1, "a")) == fingerprint(on_keys(f2, "a"))
    assert fingerprint(on_keys(f1, "a")) != fingerprint(on_keys(f3, "a"))


_FP_SCRIPT = """
import torch
from fusefn.core import fingerprint, chain, on_keys, Rng
from fusefn import nd
print(fingerprint((chain(on_keys(torch.sqrt, ("data.a",))), Rng(5))))
print(fingerprint({"b": 1, "a": (1.5, None, "x")}))
print(fingerprint(on_keys(lambda x: x in {"a", "b", "c"}, "k")))
"""


def test_fingerprint_stable_across_processes():
    runs = [
        subprocess.run([sys.executable, "-c", _FP_SCRIPT], capture_output=True, text=True, check=True, env=env).stdout
        for env in ({**os.environ, "PYTHONHASHSEED": "1"}, {**os.environ, "PYTHONHASHSEED": "2"})
    ]
    assert runs[0] == runs[1]
    assert fingerprint((chain(on_keys(torch.sqrt, ("data.a",))), Rng(5))) == runs[0].splitlines()[0]


def test_config_round_trip():
    obj = Nested(inner=AddK(key="data.a", k=3), scale=float("inf"), names=("x", "y"))
    cfg = to_config(obj)
    import json

    again = from_config(json.loads(json.dumps(cfg)), allowed=[Nested, AddK])
    assert again == obj
    assert from_config(cfg, allowed=[__name__]) == obj  # a module name allows everything under it
    assert to_config(chain(AddK(key="a"), on_keys(np.sqrt, "a")))["fns"]["__tuple__"][1]["kernel"] == {
        "__ref__": "numpy:sqrt"
    }
    with pytest.raises(ConfigError, match="lambda"):
        to_config(on_keys(lambda x: x, "a"))


@given(st.integers(0, 2**62), st.lists(st.integers(0, 1000), max_size=4))
def test_derive_seed_is_deterministic_and_in_range(seed, path):
    s = derive_seed(seed, *path)
    assert s == derive_seed(seed, *path)
    assert 0 <= s < 2**63


def test_rng_children_are_independent_streams():
    r = Rng(1234)
    seeds = {r.child(epoch, rank, idx).seed for epoch in range(5) for rank in range(2) for idx in range(20)}
    assert len(seeds) == 200
    assert r.child(1, 2).seed != r.child(2, 1).seed
    a = torch.rand(4, generator=r.child(0).generator())
    b = torch.rand(4, generator=r.child(0).generator())
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(4, generator=r.child(1).generator()))
    with pytest.raises(ConfigError):
        Rng(-1)


def test_record_is_frozen_and_keyword_only():
    with pytest.raises(TypeError):
        AddK("data.a")  # type: ignore[misc]
    op = AddK(key="data.a")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        op.k = 3  # type: ignore[misc]
    assert core.Chain is type(chain())


def test_fingerprint_of_a_bound_method_follows_its_object():
    @record
    class Scale:
        factor: float

        def run(self, x):
            return x * self.factor

    assert fingerprint(Scale(factor=2.0).run) != fingerprint(Scale(factor=3.0).run)
    assert fingerprint(Scale(factor=2.0).run) == fingerprint(Scale(factor=2.0).run)


# ------------------------------------------------------------------ from_config trusts only what it is told


def _marker_config(tmp_path, tag, path):
    marker = tmp_path / "ran"
    # a record whose field would be called with the marker command, and a bare __type__ that calls it
    if tag == "__type__":
        return {"__type__": path, "command": f"touch {marker}"}, marker
    return {"__type__": "fusefn.core:OnKeys", "kernel": {"__ref__": path}, "keys": {"__tuple__": ["a"]}}, marker


@pytest.mark.parametrize("tag", ["__type__", "__ref__"])
@pytest.mark.parametrize("path", ["os:system", "builtins:exec", "builtins:eval", "subprocess:run", "posix:system"])
def test_from_config_refuses_callables_outside_fusefn(tmp_path, tag, path):
    cfg, marker = _marker_config(tmp_path, tag, path)
    with pytest.raises(ConfigError, match=rf"{tag} '{path}' is not a fusefn component.*allowed="):
        from_config(cfg)
    assert not marker.exists()


@pytest.mark.parametrize(
    "path",
    [
        "fusefn.core:np.load",  # numpy reached through a fusefn module's globals
        "fusefn.core:importlib.import_module",
        "fusefn.core:record.__globals__",
        "fusefn_recipes.digits:ReadDigit",  # the recipes are another package: allowed explicitly
        "numpy:load",  # numpy: ufuncs and scalar types only
        "torch:load",
        "torch.nn.functional:torch.load",
        "os",
        "fusefn.core:NoSuchThing",
    ],
)
def test_from_config_refuses_paths_that_leave_the_trusted_set(path):
    with pytest.raises(ConfigError, match="config entry <root>"):
        from_config({"__ref__": path})


def test_from_config_type_must_be_a_record():
    # fusefn functions may be referenced, never called by a config
    with pytest.raises(ConfigError, match="not a record class"):
        from_config({"__type__": "fusefn.core:derive_seed", "seed": 1})
    with pytest.raises(ConfigError, match="not a record class"):
        from_config({"__type__": "torch.nn.modules.linear:Linear", "in_features": 1, "out_features": 1})


def test_from_config_names_the_entry_and_how_to_allow_it():
    cfg = to_config(chain(AddK(key="a")))
    with pytest.raises(ConfigError) as e:
        from_config(cfg)
    msg = str(e.value)
    assert "<root>.fns[0]" in msg and AddK.__module__ in msg and "allowed=" in msg
    assert from_config(cfg, allowed=AddK.__module__) == chain(AddK(key="a"))
    assert from_config(cfg, allowed=[AddK]) == chain(AddK(key="a"))
    assert from_config(cfg, allowed=[sys.modules[AddK.__module__]]) == chain(AddK(key="a"))
    with pytest.raises(ConfigError, match="allowed entry"):
        from_config(cfg, allowed=[3])


def test_from_config_keeps_tensor_library_references():
    import torch.nn.functional as F

    for obj in (np.sqrt, np.float32, torch.nn.Linear, F.mse_loss):
        assert from_config(to_config(on_keys(obj, "a"))).kernel is obj
    with pytest.raises(ConfigError, match="torch dtype"):
        from_config({"__array__": [1], "dtype": "load", "torch": True})
