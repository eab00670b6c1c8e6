"""Shared plumbing for the benchmark scripts: arguments, timing, rows, machine info, peer imports.

Every script times each system on identical inputs, with the same fixed thread count, as the median of
``--repeats`` repetitions after ``--warmup`` untimed ones, and appends one JSON line per (row, system) to the
results file. ``bench/report.py`` turns those lines into ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# FuseMedML's KNIGHT inputs (Apache-2.0), shipped in the repository: fusefn_recipes.reference.fuse_eval_dir()
FUSE_EVAL = REPO / "src" / "fusefn_recipes" / "reference" / "fuse_eval"

FUSEFN = "fusefn"
FUSEMEDML = "FuseMedML 0.4.1"
MONAI = "MONAI 1.6.1"
TORCH = "PyTorch (hand-written)"
SKLEARN = "scikit-learn"
TORCHMETRICS = "torchmetrics"
H5PY = "h5py one chunk/sample"


def results_path(device: str) -> pathlib.Path:
    """Default results file of a device kind: bench/results-cpu.jsonl or bench/results-cuda.jsonl."""
    return BENCH_DIR / f"results-{'cuda' if device.startswith('cuda') else 'cpu'}.jsonl"


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="reduced sizes (the whole suite in < 5 min on 2 cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (rows whose peers cannot use CUDA stay on CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per system (>= 5 for RESULTS.md)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions before timing")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads, the same for every system")
    p.add_argument("--results", type=pathlib.Path, default=None, help="JSON-lines file to append rows to")
    p.add_argument("--workdir", type=pathlib.Path, default=None, help="scratch folder for caches (default: a temp dir)")
    args = p.parse_args(argv)
    if args.results is None:
        args.results = results_path(args.device)
    return args


def setup(args: argparse.Namespace) -> None:
    """Fix the thread count for every system in this process (and its worker processes via the environment)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any],
    *,
    repeats: int,
    warmup: int,
    before: Callable[[], Any] | None = None,
    device: str = "cpu",
) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` timed calls after ``warmup`` untimed ones.

    ``before`` runs untimed ahead of every call (e.g. to empty a cache folder so each build starts cold).
    """
    times = []
    for i in range(warmup + repeats):
        if before is not None:
            before()
        gc.collect()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return times


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int, device: str = "cpu"
) -> dict[str, list[float] | Exception]:
    """Like :func:`measure` for several systems at once, alternating them every repetition (in a rotating order),
    so a change in the machine's load hits all of them alike; close figures (a ≤ 1.05 ratio) need this.

    A system that raises gets its exception instead of times; the others go on.
    """
    names = list(fns)
    times: dict[str, list[float] | Exception] = {k: [] for k in names}
    for i in range(warmup + repeats):
        order = names[i % len(names) :] + names[: i % len(names)]
        for k in order:
            if isinstance(times[k], Exception):
                continue
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            try:
                fns[k]()
            except Exception as e:
                times[k] = e
                continue
            sync(device)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def device_label(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()})"


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device_label(device),
        "threads": threads if threads is not None else torch.get_num_threads(),
        # other work on the machine makes figures noisy: say how busy it was
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    for dist in ("fusefn", "fuse-med-ml", "monai", "torchmetrics", "scikit-learn", "h5py", "numpy"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    return info


class Recorder:
    """Collects the rows of one benchmark script, prints them as a table and appends them as JSON lines."""

    def __init__(self, bench: str, args: argparse.Namespace):
        self.bench = bench
        self.args = args
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        name: str,
        system: str,
        times: Sequence[float],
        *,
        figure: str,
        unit: str,
        n: int,
        n_unit: str = "samples",
        rate: bool = False,
        device: str | None = None,
        settings: str = "",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record one (row, system) result.

        Args:
            times: seconds per repetition.
            rate: if True the figure is ``n / seconds`` (e.g. samples/s), else ``seconds`` scaled to ``unit``.
            settings: which settings the system ran with (documented default, its own example's, ...).
            extra: more fields for the row (e.g. the value computed, to check the systems agree).
        """
        if rate:
            values = [n / t for t in times]
        else:
            scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
            values = [t * scale for t in times]
        row = {
            "bench": self.bench,
            "name": name,
            "system": system,
            "figure": figure,
            "unit": unit,
            "n": n,
            "n_unit": n_unit,
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "repeats": len(values),
            "device": device_label(device or self.args.device),
            "quick": bool(self.args.quick),
            "threads": self.args.threads,
            "settings": settings,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        self.rows.append(row)
        print(
            f"  {name:<28} {system:<28} {row['median']:>12.4g} {unit:<10} (min {row['min']:.4g}, max {row['max']:.4g})"
        )
        self._append(row)
        return row

    def add_value(
        self, name: str, system: str, value: float, *, figure: str, unit: str, n: int, n_unit="samples", settings=""
    ):
        """Record a measured quantity that is not a timing (e.g. bytes on disk): median = min = max = value."""
        row = {
            "bench": self.bench,
            "name": name,
            "system": system,
            "figure": figure,
            "unit": unit,
            "n": n,
            "n_unit": n_unit,
            "median": value,
            "min": value,
            "max": value,
            "repeats": 1,
            "device": device_label(self.args.device),
            "quick": bool(self.args.quick),
            "threads": self.args.threads,
            "settings": settings,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        self.rows.append(row)
        print(f"  {name:<28} {system:<28} {value:>12.4g} {unit}")
        self._append(row)
        return row

    def skip(self, name: str, system: str, why: str) -> None:
        """Say (on stdout only) why a system has no row here, e.g. the fusefn API has not landed yet."""
        print(f"  {name:<28} {system:<28} skipped: {why}")

    def _append(self, row: dict[str, Any]) -> None:
        self.args.results.parent.mkdir(parents=True, exist_ok=True)
        with open(self.args.results, "a") as f:
            f.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def guard(rec: Recorder, name: str, system: str):
    """Run one system's block; if it raises, record why on stdout and go on with the other systems."""
    try:
        yield
    except Exception as e:  # one broken system (e.g. a fusefn API mid-change) must not hide the others' rows
        rec.skip(name, system, f"failed: {type(e).__name__}: {str(e)[:300]}")


def attempt(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """``fn(*args, **kwargs)`` for a side builder returning ``(side, why_not)``; an exception becomes ``why_not``."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        return None, f"failed: {type(e).__name__}: {str(e)[:300]}"


def optional_import(module: str, *names: str) -> tuple[Any, str | None]:
    """Import ``module`` (and check it has ``names``); return (module, None) or (None, why not).

    The fusefn side of a comparison is filled in as each capability lands; until then its row is skipped.
    """
    try:
        m = importlib.import_module(module)
    except Exception as e:  # any failure means "not available yet"
        return None, f"{module} not importable ({type(e).__name__}: {e})"
    missing = [n for n in names if not hasattr(m, n)]
    if missing:
        return None, f"{module} lacks {', '.join(missing)}"
    return m, None


_TORCHVISION_SHIM: Any = None


def prepare_peers() -> None:
    """Make the peers importable on a CPU-only torch.

    torchvision's PyPI wheel (pulled in by fuse-med-ml) is built against the CUDA torch; on the CPU wheel its C
    extension cannot load, and torchvision then fails at import while registering fake kernels for ``nms`` and
    ``qnms``. Declaring those two op schemas (with no kernel) lets the pure-Python parts import — FuseMedML's
    augmentation only uses ``torchvision.transforms.functional`` on PIL images. Calling a box op would still raise.
    """
    global _TORCHVISION_SHIM
    import torch

    if _TORCHVISION_SHIM is not None:
        return
    try:
        import torchvision

        _TORCHVISION_SHIM = False
        return
    except ImportError:
        _TORCHVISION_SHIM = False
        return
    except RuntimeError:
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):  # already declared
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM = lib
    import sys

    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    import torchvision  # noqa: F401


def peer(module: str, *names: str) -> tuple[Any, str | None]:
    """Like ``optional_import`` for a peer package (FuseMedML, MONAI, ...), after ``prepare_peers``."""
    try:
        prepare_peers()
    except Exception as e:
        return None, f"torchvision could not be prepared ({e})"
    m, why = optional_import(module, *names)
    if why is not None:
        why += " — run through `nox -s bench`, which installs the peers"
    return m, why


def header(title: str, args: argparse.Namespace) -> None:
    print(f"== {title} ({'quick' if args.quick else 'full'}, {args.threads} threads, device {args.device})")


# every bench imports this module before any peer: a peer that imports torchvision on its own (torchmetrics, MONAI)
# then finds it prepared
with contextlib.suppress(Exception):
    prepare_peers()
