"""The written rules hold across the whole package: import graph, file sizes, one randomness, protocols."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import attrs
import pytest

import fusefn

SRC = pathlib.Path(fusefn.__file__).resolve().parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(SRC)], prefix="fusefn."))
PACKAGES = {m.name for m in pkgutil.walk_packages([str(SRC)], prefix="fusefn.") if m.ispkg} | {"fusefn"}


def _module_path(name: str) -> pathlib.Path:
    rel = pathlib.Path(*name.split(".")[1:])
    pkg = SRC / rel / "__init__.py"
    return pkg if pkg.exists() else (SRC / rel).with_suffix(".py")


def _resolve(current: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".") if current in PACKAGES else current.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _top_level_imports(name: str) -> set[str]:
    """The fusefn modules that ``name`` imports while it is being imported (not inside functions)."""
    tree = ast.parse(_module_path(name).read_text())
    out: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                mod = _resolve(name, node)
                out.add(mod)
                # `from pkg import sub` imports the submodule too
                out.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    known = set(MODULES) | {"fusefn"}
    return {m for m in out if m in known and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for w in sorted(graph.get(u, ())):
            if state.get(w) == 1:
                return [*stack[stack.index(w) :], w]
            if w not in state and (found := dfs(w)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := dfs(u)):
            return found
    return None


def _is_ancestor(pkg: str, mod: str) -> bool:
    return mod.startswith(pkg + ".")


def test_import_graph_is_acyclic():
    # a package's __init__ re-exporting its own submodules is not a cycle: the submodule
    # importing its parent package is implicit in Python, so those edges are left out
    graph = {
        m: {d for d in _top_level_imports(m) if not _is_ancestor(d, m) and not _is_ancestor(m, d)}
        for m in ["fusefn", *MODULES]
    }
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    def run(name):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
        return name, r.returncode, r.stderr[-800:]

    with ThreadPoolExecutor(2) as pool:
        failures = [(n, err) for n, rc, err in pool.map(run, ["fusefn", *MODULES]) if rc != 0]
    assert not failures, failures


def test_no_source_file_over_600_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def test_fit_is_short_glue():
    from fusefn.train import fit

    lines, _ = inspect.getsourcelines(fit)
    assert len(lines) < 120, len(lines)


# ------------------------------------------------------------------ one randomness

# Where an int seed enters and is turned into an Rng once.
EDGES = {"fusefn.train.fit.fit", "fusefn.core.Rng", "fusefn.core.derive_seed"}
FORBIDDEN = {"seed", "generator", "random_state", "key_seed"}


def _public_objects():
    """``(qualified name, object)`` for every public function and class fusefn exports."""
    seen: set[int] = set()
    for name in ["fusefn", *MODULES]:
        if name.rsplit(".", 1)[-1].startswith("_") or ".cli" in name or name.endswith("__main__"):
            continue
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__all__", ()):
            obj = getattr(mod, attr)
            if id(obj) in seen or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not getattr(obj, "__module__", "").startswith("fusefn"):
                continue
            seen.add(id(obj))
            yield f"{obj.__module__}.{obj.__qualname__}", obj


def _callables(qual: str, obj):
    if inspect.isfunction(obj):
        yield qual, obj
        return
    for name, member in inspect.getmembers(obj):
        if name.startswith("_") and name not in ("__call__", "__init__"):
            continue
        if name == "__init__" and attrs.has(obj):
            continue  # fields are checked on their own
        fn = inspect.unwrap(member) if callable(member) else None
        if inspect.isfunction(fn) and getattr(fn, "__module__", "").startswith("fusefn"):
            yield f"{qual}.{name}", fn


def _violations(qual: str, obj) -> list[str]:
    bad = []
    if attrs.has(obj) and qual not in EDGES:
        for f in attrs.fields(obj):
            if f.name.lstrip("_") in FORBIDDEN:
                bad.append(f"{qual}: field {f.name!r} (use `rng: Rng`)")
            if f.name.lstrip("_") == "rng" and "Rng" not in str(f.type):
                bad.append(f"{qual}: field 'rng' is typed {f.type!r}, not Rng")
    for where, fn in _callables(qual, obj):
        if where in EDGES or qual in EDGES:
            continue
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.name in FORBIDDEN:
                bad.append(f"{where}: parameter {p.name!r} (use keyword-only `rng: Rng`)")
            if p.name == "rng":
                if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                    bad.append(f"{where}: `rng` must be keyword-only")
                if "Rng" not in str(p.annotation):
                    bad.append(f"{where}: `rng` is annotated {p.annotation!r}, not Rng")
    return bad


def test_randomness_has_one_form_across_the_public_api():
    bad = [v for qual, obj in _public_objects() for v in _violations(qual, obj)]
    assert not bad, "\n".join(bad)


def test_the_randomness_walker_catches_each_old_form():
    @attrs.frozen
    class Op:
        seed: int = 0

    def positional(batch, rng):
        return batch

    def untyped(batch, *, rng):
        return batch

    def sampler(n, *, generator=None):
        return n

    def ok(batch, *, rng: fusefn.Rng):
        return batch

    assert _violations("t.Op", Op)
    assert _violations("t.positional", positional)
    assert _violations("t.untyped", untyped)
    assert _violations("t.sampler", sampler)
    assert not _violations("t.ok", ok)


def test_no_bare_step_offsets_for_streams():
    # member or worker streams are children of an Rng, never `seed + 7919 * i`
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "7919" in p.read_text()]
    assert not offenders, offenders


# ------------------------------------------------------------------ well-known keys


def _literal_keys(source: str) -> list[tuple[int, str]]:
    """String constants in code (docstrings left out) equal to a well-known key."""
    wanted = {fusefn.keys.IMAGE, fusefn.keys.SAMPLE_ID, fusefn.keys.LABEL, fusefn.keys.MASK, fusefn.keys.TOTAL_LOSS}
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            docstrings.add(id(first.value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and n.value in wanted and id(n) not in docstrings
    ]


def test_well_known_keys_are_spelt_once():
    # library code names fusefn.keys; only keys.py spells the strings
    spelt = {
        str(p.relative_to(SRC)): found
        for p in SRC.rglob("*.py")
        if p.name != "keys.py" and (found := _literal_keys(p.read_text()))
    }
    assert not spelt, spelt


def test_the_key_finder_skips_docstrings():
    src = 'def f(k="data.input.img"):\n    """Reads "data.input.img"."""\n    return "data.gt.label"\n'
    assert _literal_keys(src) == [(1, "data.input.img"), (3, "data.gt.label")]
