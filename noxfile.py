"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench [-- --quick]`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

# The CPU torch wheel already on the machine is reused: a fresh venv asking for
# plain `torch` would pull a multi-GB CUDA build.
VENV = ["--system-site-packages"]


@nox.session(venv_params=VENV)
def tests(session: nox.Session) -> None:
    """The test suite, as CI runs it (pass `-- -m "not slow"` for the quick part)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(venv_params=VENV)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_params=VENV)
def bench(session: nox.Session) -> None:
    """Benchmarks against the peers (see bench/README.md)."""
    session.install("-e", ".")
    session.run("python", "bench/run.py", *session.posargs)
