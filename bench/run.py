"""Run the benchmark scripts, then regenerate bench/RESULTS.md.

    python bench/run.py [--quick] [--device cpu|cuda] [--only cache,augment,...]
    python bench/run.py --device cuda --suite gpu     # the GPU benchmark (issue 16), <= 8 min on one H100

Each script runs in its own process (imports and thread settings do not leak between comparisons) and appends its
rows to ``bench/results-<cpu|cuda>.jsonl``. A full run starts that file afresh; ``--only`` replaces just the rows
of the named benchmarks. ``nox -s bench`` runs this in a virtual environment that also holds the peers
(FuseMedML 0.4.1, MONAI 1.6.1, torchmetrics); without them the peer rows are skipped and say why.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C
import report

BENCHES = (
    "cache",
    "augment",
    "metrics",
    "dice",
    "train",
    "models",
    "resample",
    "dicom",
    "patches",
    "sliding",
    "analyze",
    "survival",
    "compare",
    "finetune",
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="reduced sizes: the whole suite in < 5 min on 2 cores")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHES)}")
    p.add_argument(
        "--suite",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: bench_gpu.py alone (compiled steps, GPU augmentation, input pipeline, sliding windows)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=pathlib.Path, default=None)
    p.add_argument("--no-report", action="store_true", help="do not regenerate bench/RESULTS.md")
    args = p.parse_args(argv)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in only if b not in BENCHES]
    if unknown:
        p.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    if args.repeats < 5:
        print(f"note: --repeats {args.repeats} < 5: RESULTS.md asks for at least 5", file=sys.stderr)
    if args.suite == "gpu":
        if not args.device.startswith("cuda"):
            p.error("--suite gpu needs --device cuda (bench/bench_gpu.py --dry runs it at tiny sizes on the CPU)")
        only = ["gpu"]
    selected = only or list(BENCHES)
    results = args.results or C.results_path(args.device)

    # keep the rows of benchmarks not re-run (with --only), and when each of them was measured; drop the rest
    kept, runs = [], {}
    if only and results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            if row.get("bench") == "_machine":
                runs = row.get("runs") or dict.fromkeys(BENCHES, row.get("date"))
            elif row.get("bench") not in selected:
                kept.append(line)
    kept_benches = {json.loads(line).get("bench") for line in kept}
    import torch

    torch.set_num_threads(args.threads)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    info = {
        "bench": "_machine",
        "quick": args.quick,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "date": date,
        "runs": {**{b: d for b, d in runs.items() if b in kept_benches}, **dict.fromkeys(selected, date)},
        **C.machine_info(args.device, args.threads),
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("".join(x + "\n" for x in [json.dumps(info), *kept]))

    common = [
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--results",
        str(results),
    ]
    if args.quick:
        common.append("--quick")
    failed = []
    t_all = time.perf_counter()
    for name in selected:
        script = C.BENCH_DIR / f"bench_{name}.py"
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *common])
        print(f"-- {name}: {'ok' if rc == 0 else f'exit {rc}'} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    print(f"-- all: {time.perf_counter() - t_all:.0f} s; rows in {results}")
    if not args.no_report:
        out = report.generate()
        print(f"-- wrote {out}")
    if failed:
        print(f"-- failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
