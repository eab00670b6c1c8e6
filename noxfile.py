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


# The peers the benchmarks compare against: installed only in the bench session, never a dependency of fusefn.
BENCH_PEERS = [
    "fuse-med-ml==0.4.1",
    "monai==1.6.1",
    "torchmetrics",
    "pytest",
    "scikit-image",
    "nibabel",
    "SimpleITK",
    "torchio",
    "pydicom",
]


@nox.session(venv_params=VENV)
def bench(session: nox.Session) -> None:
    """fusefn side by side with FuseMedML 0.4.1, MONAI 1.6.1, torchmetrics; regenerates bench/RESULTS.md.

    Arguments after `--` go to bench/run.py: `--quick` (reduced sizes, < 5 min on 2 cores),
    `--only cache,augment,metrics,dice,train,models`, `--device cuda`, `--repeats N`.
    """
    import pathlib

    # Pin torch to the wheel already installed (reused through the system site packages), so no
    # peer's `torch` requirement can make pip fetch another build (a plain one is multi-GB CUDA).
    torch_version = session.run("python", "-c", "import torch; print(torch.__version__)", silent=True)
    constraints = pathlib.Path(session.create_tmp()) / "bench-constraints.txt"
    constraints.write_text(f"torch=={torch_version.strip().splitlines()[-1]}\n")
    session.install("-c", str(constraints), "-e", ".")
    # a reused venv that already has the pinned peers skips pip's slow resolve of their large dependency tree
    check = (
        "import importlib.metadata as m\n"
        "want = {'fuse-med-ml': '0.4.1', 'monai': '1.6.1', 'torchmetrics': None, 'scikit-image': None, "
        "'SimpleITK': None, 'torchio': None}\n"
        "def ok(d, v):\n"
        "    try:\n"
        "        return v is None or m.version(d) == v\n"
        "    except m.PackageNotFoundError:\n"
        "        return False\n"
        "print('peers:', 'ok' if all(ok(d, v) for d, v in want.items()) else 'missing')\n"
    )
    if "peers: ok" not in str(session.run("python", "-c", check, silent=True)):
        session.install("-c", str(constraints), *BENCH_PEERS)
    # a peer may pull a torchvision built for CUDA torch, whose C extension cannot load next to the CPU wheel;
    # bench/_common.prepare_peers declares the two op schemas it registers kernels for, so its pure-Python
    # transforms (which FuseMedML's augmentation uses) import. Drop it only if even that fails.
    probe = (
        "import sys, importlib.util\nsys.path.insert(0, 'bench')\nimport _common\n"
        "if importlib.util.find_spec('torchvision'):\n    _common.prepare_peers()\n"
        "    import torchvision.transforms.functional, torchmetrics"
    )
    try:
        session.run("python", "-c", probe, silent=True)
    except Exception:
        session.run("pip", "uninstall", "-y", "torchvision")
    session.run("python", "bench/run.py", *session.posargs)
