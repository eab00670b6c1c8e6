"""bench/bench_gpu.py --dry: every row of the GPU suite at tiny sizes on the CPU, so the script cannot rot."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTS = (
    "gpu.step.resnet18_2d",
    "gpu.step.resnet18_2d.augment",
    "gpu.step.unet3d",
    "gpu.step.unet3d.augment",
    "gpu.augment.2d",
    "gpu.augment.3d",
    "gpu.pipeline.hdf5",
)


@pytest.mark.slow
def test_gpu_suite_dry_run_writes_every_row_with_graph_counts(tmp_path):
    results = tmp_path / "results-dry.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--dry", "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    names = {r["name"] for r in rows}
    assert set(PARTS) <= names, names
    systems = {name: {r["system"] for r in rows if r["name"] == name} for name in names}
    assert systems["gpu.step.resnet18_2d"] == {"fusefn eager step", "fusefn compiled step"}
    assert systems["gpu.step.resnet18_2d.augment"] == {
        "fusefn eager step + augmentation",
        "fusefn compiled step + augmentation",
    }
    for r in rows:
        assert r["median"] > 0 and r["device"].startswith("cpu")
        # one graph per compiled function: no graph breaks, no recompiles (smaller batches, new draws, repeats)
        assert r.get("graph_breaks", 0) == 0 and r.get("recompiles", 0) == 0, r
    compiled = [r for r in rows if r["name"].startswith("gpu.step") and "compiled" in r["system"]]
    assert compiled and all(r["graphs"] <= 1 for r in compiled)
    # the sliding-window row runs when helper modules are there, and otherwise says why it is skipped
    assert "gpu.sliding_window" in names or "sliding_window" in proc.stdout
