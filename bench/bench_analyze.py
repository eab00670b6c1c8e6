"""`fusefn analyze` on large files: wall time and peak memory of the whole command, 2 threads (issue 17).

Each timing runs the command line in a fresh subprocess — ``fusefn analyze --pred FILE --score score --label
label --out DIR`` with its defaults (10,000 stratified bootstrap resamples, BCa for ECE and AP, the ROC band,
the three figures) — and reads the child's peak resident memory from ``os.wait4``. Inputs are written once:
seeded binary predictions (30 % positives, a logistic score of a binormal signal, 6 decimals) as CSV.

- ``analyze 10⁶ binary`` — the issue's target: ≤ 60 s and ≤ 2 GB on 2 cores. More than 10,000 rows: the
  resamples are drawn over score cells (``fusefn.analyze.resampling``).
- ``analyze 20,000 binary`` — the issue's example of a silent 36 s / 1.17 GB run (now over cells too).

FuseMedML has no row here: its bootstrap is a Python loop of metric calls, one per resample (the KNIGHT row of
``bench_metrics.py`` times it on 60 samples); at 10⁶ rows it would take hours. ``--quick``: 10⁵ and 5,000 rows.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

_CLI = "from fusefn.cli import main; main()"


def write_inputs(path: pathlib.Path, n: int, seed: int = 0) -> pathlib.Path:
    import polars as pl

    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    s = 1 / (1 + np.exp(-(rng.normal(size=n) * 1.5 + y * 1.5 - 0.8)))
    pl.DataFrame({"id": [f"s{i}" for i in range(n)], "score": np.round(s, 6), "label": y}).write_csv(path)
    return path


def run_once(pred: pathlib.Path, out: pathlib.Path, threads: int) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of one ``fusefn analyze`` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MPLBACKEND": "Agg"}
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-c", _CLI, "analyze", "--pred", str(pred), "--score", "score", "--label", "label"]
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stdout = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"fusefn analyze exited with {proc.returncode}: {stdout[-500:]}")
    return wall, usage.ru_maxrss / 1024, stdout  # ru_maxrss is in KiB on Linux


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("analyze", args)
    rec = C.Recorder("analyze", args)
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench-analyze-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [(100_000, "10⁵"), (5_000, "5,000")] if args.quick else [(1_000_000, "10⁶"), (20_000, "20,000")]
    for n, shown in sizes:
        pred = write_inputs(work / f"pred_{n}.csv", n)
        name = f"analyze {shown} binary"
        with C.guard(rec, name, C.FUSEFN):
            walls, peaks, auc = [], [], None
            for i in range(args.warmup + args.repeats):
                wall, peak, stdout = run_once(pred, work / f"out_{n}", args.threads)
                if i >= args.warmup:
                    walls.append(wall)
                    peaks.append(peak)
                auc = next((ln.split()[1] for ln in stdout.splitlines() if ln.startswith("auc ")), None)
            settings = "fusefn analyze defaults: 10,000 resamples, BCa for ECE/AP, ROC band, figures; subprocess"
            rec.add(name, C.FUSEFN, walls, figure="wall time", unit="s", n=n, settings=settings, extra={"auc": auc})
            rec.add_value(f"{name} peak RSS", C.FUSEFN, max(peaks), figure="peak memory", unit="MiB", n=n)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
