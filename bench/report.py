"""Turn the JSON rows of bench/results-*.jsonl into bench/RESULTS.md.

    python bench/report.py [RESULTS.jsonl ...] [--out bench/RESULTS.md]

Per comparison: a table with each system's median (min–max over the repetitions), the ratio of fusefn's figure to
that system's, the issue's target for that ratio and whether it is met; the machine on top of each run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

OUT = C.BENCH_DIR / "RESULTS.md"
FUSEFN_VARIANTS = (C.FUSEFN, C.FUSEFN + " (compiled apply)")

_CACHE_BUILD_NOTE = (
    "Before every timed build, untimed and for every system: the previous store is deleted and `os.sync()` "
    "writes back its dirty pages, so no build pays for the one before it."
)
_CACHE_READ_NOTE = (
    "A read fetches every sample once, in one shuffled order, and sums all its values: the time counts until "
    "every byte was used, so work a system defers (fusefn maps large rows) is inside it."
)


def _cache_comparisons(label: str, dims: str, shape: str) -> dict[str, dict[str, Any]]:
    """The build / read / disk comparisons of one cache case (issue 3): the same targets in 2D and 3D."""
    return {
        f"cache.build.{label}": {
            "title": f"Sample cache: build, {dims} ({shape} float32, 2 workers)",
            "issue": 3,
            "note": _CACHE_BUILD_NOTE,
            "better": "higher",
            "targets": {C.FUSEMEDML: (">=", 3.0, "build ≥ 3× FuseMedML")},
        },
        f"cache.read.{label}": {
            "title": f"Sample cache: read, {dims} ({shape} float32)",
            "issue": 3,
            "note": _CACHE_READ_NOTE,
            "better": "higher",
            "targets": {
                C.FUSEMEDML: (">=", 10.0, "read ≥ 10× FuseMedML"),
                C.H5PY: (">=", 0.75, "within 25 % of the plain-h5py ceiling"),
            },
        },
        f"cache.disk.{label}": {
            "title": f"Sample cache: disk use, {dims}",
            "issue": 3,
            "better": "lower",
            "targets": {"raw array bytes": ("<=", 1.0, "no larger than the raw array bytes")},
        },
    }


# name -> what the row measures and the targets on the ratio fusefn / system (of the row's figure).
# "subject": the fusefn system(s) the ratio is taken for (the best present one when several).
# "targets": system -> (op, value, words); "gpu_targets" replace them when fusefn ran on CUDA; "note": how it
# was measured, printed under the table.
COMPARISONS: dict[str, dict[str, Any]] = {
    **_cache_comparisons("2d", "2D", "1×256×256"),
    **_cache_comparisons("3d", "3D", "1×64×128×128"),
    "augment.2d": {
        "title": "Augmentation: default pipeline, 2D (1×256×256)",
        "issue": 4,
        "better": "higher",
        "subject": FUSEFN_VARIANTS,
        "targets": {C.FUSEMEDML: (">=", 2.0, "CPU: ≥ 2× FuseMedML")},
        "gpu_targets": {C.FUSEMEDML: (">=", 50.0, "GPU: ≥ 50× FuseMedML's CPU throughput")},
    },
    "augment.3d": {
        "title": "Augmentation: default pipeline, 3D (1×96×96×96)",
        "issue": 4,
        "better": "higher",
        "subject": FUSEFN_VARIANTS,
        "targets": {},
    },
    "metrics.auc_ci.knight": {
        "title": "ROC AUC + stratified bootstrap 95 % CI on the 60 KNIGHT cases",
        "issue": 6,
        "better": "lower",
        "targets": {C.FUSEMEDML: ("<=", 1 / 500, "≥ 500× faster than FuseMedML's CI(MetricAUCROC)")},
    },
    "metrics.auc.1e6": {
        "title": "ROC AUC on 10⁶ scores",
        "issue": 6,
        "better": "lower",
        "targets": {C.SKLEARN: ("<=", 1.0, "time ≤ scikit-learn's")},
    },
    "metrics.dice3d.nifti": {
        "title": "3D Dice (3 label groups) on the 4 shared NIfTI volumes",
        "issue": 6,
        "better": "lower",
        "targets": {C.FUSEMEDML: ("<=", 1 / 20, "≥ 20× faster than FuseMedML's MetricDice")},
    },
    "train.epoch.digits": {
        "title": "Training: one epoch of the digits model, data in memory",
        "issue": 7,
        "better": "lower",
        "targets": {
            C.TORCH: ("<=", 1.05, "fit overhead ≤ 5 % over a hand-written loop"),
            C.FUSEMEDML: ("<=", 0.7, "≤ 0.7× FuseMedML's Lightning module"),
        },
    },
    "models.fwd_bwd.smallcnn": {
        "title": "Forward + backward, digits SmallCNN: functional apply vs the module",
        "issue": 5,
        "better": "lower",
        "subject": ("fusefn apply",),
        "targets": {"nn.Module (direct)": ("<=", 1.05, "apply ≤ 1.05× the module")},
    },
    "models.fwd_bwd.resnet18": {
        "title": "Forward + backward, ResNet-18 (1×64×64): functional apply vs the module",
        "issue": 5,
        "better": "lower",
        "subject": ("fusefn apply",),
        "targets": {"nn.Module (direct)": ("<=", 1.05, "apply ≤ 1.05× the module")},
    },
    "models.compile.resnet18.224": {
        "title": "GPU: ResNet-18 step (batch 64, 1×224×224, bf16), compiled vs eager",
        "issue": "5, 7",
        "better": "lower",
        "subject": ("fusefn compiled (bf16)",),
        "targets": {"fusefn eager (bf16)": ("<=", 1 / 1.3, "compiled ≥ 1.3× faster")},
    },
    "models.compile.resnet18_3d.96": {
        "title": "GPU: 3D ResNet-18 step (batch 8, 1×96³, bf16), compiled vs eager",
        "issue": 5,
        "better": "lower",
        "subject": ("fusefn compiled (bf16)",),
        "targets": {},
    },
}


def load(paths: Sequence[pathlib.Path]) -> dict[str, tuple[dict, list[dict]]]:
    """{file label: (machine info, rows)}."""
    runs = {}
    for p in paths:
        info, rows = {}, []
        for line in p.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("bench") == "_machine":
                info = row
            else:
                rows.append(row)
        runs[p.name] = (info, rows)
    return runs


def fmt(x: float) -> str:
    if x == 0 or x != x:  # zero or NaN
        return str(x)
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_ratio(r: float) -> str:
    # near 1 the later digits decide a "≤ 1.05" or "≤ 1" target: show more of them
    if 0.99 <= r <= 1.01:
        return f"{r:.5g}"
    return f"{r:.4g}" if 0.9 <= r <= 1.1 else f"{r:.3g}"


def check(ratio: float, op: str, value: float) -> bool:
    return ratio >= value if op == ">=" else ratio <= value


def pick_subject(rows_by_system: dict[str, dict], spec: dict) -> str | None:
    cands = [s for s in spec.get("subject", (C.FUSEFN,)) if s in rows_by_system]
    if not cands:
        return None
    better_high = spec["better"] == "higher"
    return sorted(cands, key=lambda s: rows_by_system[s]["median"], reverse=better_high)[0]


def comparison_md(name: str, rows: list[dict]) -> tuple[list[str], list[tuple[str, str, bool | None]]]:
    spec = COMPARISONS.get(name, {"title": name, "issue": "?", "better": "lower", "targets": {}})
    by_sys: dict[str, dict] = {}
    for r in rows:
        by_sys[r["system"]] = r  # the last row of a system wins (a re-run with --only appends)
    subject = pick_subject(by_sys, spec)
    sub_row = by_sys.get(subject) if subject else None
    on_gpu = bool(sub_row and str(sub_row.get("device", "")).startswith("cuda"))
    targets = spec.get("gpu_targets", spec["targets"]) if on_gpu else spec["targets"]
    any_row = next(iter(by_sys.values()))
    unit = any_row["unit"]
    better = "higher is better" if spec["better"] == "higher" else "lower is better"
    out = [f"### {spec['title']}", ""]
    size = f"n = {any_row['n']:,} {any_row.get('n_unit', '')}".rstrip()
    sizes = "quick sizes" if any(r.get("quick") for r in by_sys.values()) else "full sizes"
    out.append(f"`{name}` · issue {spec['issue']} · {any_row['figure']} in {unit} ({better}) · {size} ({sizes})")
    out.append("")
    ratio_head = f"{subject} / system" if subject else "fusefn / system"
    out.append(f"| system | device | median | min–max | reps | {ratio_head} | target | met |")
    out.append("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    verdicts = []
    for system, r in by_sys.items():
        rng = "" if r["repeats"] == 1 else f"{fmt(r['min'])}–{fmt(r['max'])}"
        ratio = tgt = met = ""
        if sub_row is not None and system != subject and r["median"]:
            q = sub_row["median"] / r["median"]
            ratio = fmt_ratio(q)
            if system in targets:
                op, value, words = targets[system]
                ok = check(q, op, value)
                tgt = f"{'≥' if op == '>=' else '≤'} {value:.3g} ({words})"
                met = "met" if ok else "**not met**"
                verdicts.append((name, f"{words}: {ratio} vs {'≥' if op == '>=' else '≤'} {value:.3g}", ok))
        elif system == subject:
            ratio = "1"
        dev = str(r.get("device", "")).split(" (")[0]
        out.append(f"| {system} | {dev} | {fmt(r['median'])} | {rng} | {r['repeats']} | {ratio} | {tgt} | {met} |")
    for system, (op, value, words) in targets.items():
        if system not in by_sys or sub_row is None:
            missing = system if system not in by_sys else "fusefn"
            out.append(f"| {missing} | | — | | | | {'≥' if op == '>=' else '≤'} {value:.3g} ({words}) | no row yet |")
            verdicts.append((name, f"{words}: no {missing} row", None))
    out.append("")
    notes = [f"- {s}: {r['settings']}" for s, r in by_sys.items() if r.get("settings")]
    vals = [f"- value computed by {s}: `{json.dumps(r['value'])}`" for s, r in by_sys.items() if "value" in r]
    if spec.get("note"):
        notes.append(f"- {spec['note']}")
    out += notes + vals
    if notes or vals:
        out.append("")
    return out, verdicts


def machine_md(info: dict) -> list[str]:
    if not info:
        return ["Machine: not recorded (rows written by a script run alone).", ""]
    peers = ", ".join(
        f"{k} {info[k]}"
        for k in ("fuse-med-ml", "monai", "torchmetrics", "scikit-learn", "h5py", "numpy")
        if info.get(k)
    )
    return [
        f"- **CPU**: {info.get('cpu')}, {info.get('cores')} cores; **threads** (torch.set_num_threads, all systems): "
        f"{info.get('threads')}",
        f"- **device**: {info.get('device')}",
        f"- **torch** {info.get('torch')}, Python {info.get('python')}, fusefn {info.get('fusefn')}",
        f"- **peers**: {peers or 'not installed (peer rows skipped)'}",
        f"- **run**: {info.get('date')}, {'QUICK (reduced sizes)' if info.get('quick') else 'full sizes'}, "
        f"{info.get('repeats')} timed repetitions after {info.get('warmup')} warm-up; load average at start "
        f"{info.get('load_average')} (other work on the machine makes the figures noisy)",
        *_runs_md(info.get("runs") or {}),
        "",
    ]


def _runs_md(runs: dict) -> list[str]:
    """When some benchmarks were re-run alone (``--only``), which rows come from which run."""
    by_date: dict[str, list[str]] = {}
    for bench, date in runs.items():
        by_date.setdefault(date, []).append(bench)
    if len(by_date) < 2:
        return []
    parts = [f"{', '.join(b)} at {d}" for d, b in sorted(by_date.items(), reverse=True)]
    return [f"- **rows measured**: {'; '.join(parts)} (re-run alone; the machine line above is the latest run's)"]


def generate(paths: Sequence[pathlib.Path] | None = None, out: pathlib.Path = OUT) -> pathlib.Path:
    paths = list(paths) if paths else sorted(C.BENCH_DIR.glob("results-*.jsonl"))
    runs = load(paths)
    lines = [
        "# fusefn benchmarks",
        "",
        "Generated by `python bench/report.py` from the JSON rows the scripts in `bench/` write; do not edit by hand.",
        "Run everything with `nox -s bench` (full sizes) or `nox -s bench -- --quick` (reduced sizes, < 5 min on 2",
        "cores); one comparison with `nox -s bench -- --only NAME`; on a CUDA machine `python bench/run.py --device "
        "cuda`.",
        "Every figure is the median over the repetitions after warm-up (min–max beside it), all systems on identical",
        "inputs with the same thread count. Ratios are fusefn's figure over the other system's: above 1 means fusefn is",
        "higher (faster for rates), below 1 lower (faster for times). Peers run with their documented defaults or the",
        "settings of their own examples, listed under each table.",
        "",
    ]
    summary: list[tuple[str, str, bool | None]] = []
    body: list[str] = []
    for label, (info, rows) in runs.items():
        kind = ("CUDA" if "cuda" in label else "CPU") + (" quick" if info.get("quick") else (" full" if info else ""))
        body += [f"## {kind} run (`{label}`)", ""]
        body += machine_md(info)
        if info.get("quick"):
            body += [
                "> Quick run: reduced sizes, so the figures are indicative only; the issues' targets are for the",
                "> full sizes.",
                "",
            ]
        names = list(dict.fromkeys(r["name"] for r in rows))
        order = [n for n in COMPARISONS if n in names] + [n for n in names if n not in COMPARISONS]
        for name in order:
            md, verdicts = comparison_md(name, [r for r in rows if r["name"] == name])
            body += md
            summary += [(f"{kind}: {n}", w, ok) for n, w, ok in verdicts]
    if summary:
        lines += [
            "## Targets at a glance",
            "",
            "| comparison | target: measured ratio vs required | met |",
            "| --- | --- | --- |",
        ]
        for n, w, ok in summary:
            lines.append(f"| `{n}` | {w} | {'met' if ok else ('—' if ok is None else '**not met**')} |")
        lines.append("")
    lines += body
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="*", type=pathlib.Path, help="JSON-lines files (default: bench/results-*.jsonl)")
    p.add_argument("--out", type=pathlib.Path, default=OUT)
    args = p.parse_args(argv)
    print(generate(args.results, args.out))


if __name__ == "__main__":
    main()
