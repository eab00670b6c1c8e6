"""Sliding-window inference over a volume: time against MONAI, and the peak memory of a streamed label map (issue 15).

Both systems run the same predictor on the same volume with the same windows (roi, overlap 0.25, gaussian
blending, sigma_scale 0.125, 4 windows per call); their outputs are checked to agree before timing.

- ``infer.sliding.probs``: a small 3D conv net (1 → 16 → 16 → 4 classes, 3×3×3 convs), 1×128×128×96 volume,
  roi 64³: ``fusefn.train.sliding_window(output="probs")`` against ``monai.inferers.sliding_window_inference``.
- ``infer.sliding.argmax``: the same, for a label map: fusefn's ``output="argmax"`` (streamed) against MONAI's
  output followed by ``argmax`` and a cast to ``uint8``.
- ``infer.sliding.memory`` / ``infer.sliding.memory96``: 32 classes from a 1×1×1 convolution written as one
  ``addcmul`` (so the rows measure the blending and not the net) on a 1×256×256×192 volume, roi 64³ / 96³, label map out. Each system runs in its
  own child process; the figure is that child's peak resident memory during the call (``VmHWM`` after resetting
  it through ``/proc/self/clear_refs`` once the volume is built), so imports and the input volume do not count
  and the systems do not see each other's pages.

``--quick`` halves every side of the volumes and the rois.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as C

MEM_CLASSES = 32


def _net(k: int = 4):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(16, k, 1),
    ).eval()


def _cheap(k: int = MEM_CLASSES):
    """A 1×1×1 convolution from one channel to ``k`` classes that allocates its output and nothing else.

    (``nn.Conv3d`` through oneDNN holds about three outputs' worth while it runs: the same for both systems,
    but it would hide the blending's own memory behind the predictor's.)
    """
    import torch

    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(1, k, 1, 1, 1, generator=g), torch.randn(1, k, 1, 1, 1, generator=g)
    return lambda x: torch.addcmul(bias, x, weight)


def _monai(net, x, roi, argmax: bool):
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        out = sliding_window_inference(x[None], roi, 4, net, overlap=0.25, mode="gaussian", sigma_scale=0.125)[0]
    if argmax:
        return out.argmax(0).to(torch.uint8)
    return out


def _fusefn(net, x, roi, argmax: bool):
    from fusefn.train.sliding_window import sliding_window

    return sliding_window(
        net, x, roi=roi, overlap=0.25, blend="gaussian", sigma_scale=0.125, batch_size=4,
        output="argmax" if argmax else "probs",
    )  # fmt: skip


def _kb(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(system: str, shape: tuple, roi: tuple, threads: int) -> None:
    """Run one system once in this (fresh) process and print its peak working memory in MiB as JSON."""
    import torch

    torch.set_num_threads(threads)
    net = _cheap()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if system == C.MONAI:
        from monai.inferers import sliding_window_inference  # noqa: F401  (imported before the reset)
    else:
        from fusefn.train.sliding_window import sliding_window  # noqa: F401
    pathlib.Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
    before = _kb("VmRSS")
    fn = _monai if system == C.MONAI else _fusefn
    labels = fn(net, x, roi, argmax=True)
    peak = _kb("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024, "labels_sum": int(labels.sum())}))


def _child_peak(system: str, shape, roi, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([system, list(shape), list(roi), threads])]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{system} child failed: {res.stderr[-500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    C.header("sliding", args)
    rec = C.Recorder("sliding", args)
    import torch

    if args.device.startswith("cuda"):
        print("  CPU rows only (the peak RSS rows measure host memory)")
        return
    m, why = C.peer("monai.inferers", "sliding_window_inference")
    f, fwhy = C.optional_import("fusefn.train.sliding_window", "sliding_window")
    q = 2 if args.quick else 1
    shape = (1, 128 // q, 128 // q, 96 // q)
    roi = (64 // q,) * 3
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    net = _net()
    voxels = shape[1] * shape[2] * shape[3]
    if m is None or f is None:
        print(f"  skipped: {why or fwhy}")
        return
    ref, ours = _monai(net, x, roi, False), _fusefn(net, x, roi, False)
    err = float((ref - ours).abs().max())
    agree = bool(torch.equal(_fusefn(net, x, roi, True).long(), ref.argmax(0)))
    print(f"  max |fusefn - MONAI| = {err:.2e}; streamed argmax equal to MONAI's argmax: {agree}")
    settings = f"roi {roi}, overlap 0.25, gaussian, 4 windows per call; conv net 1→16→16→4"
    for name, argmax in (("infer.sliding.probs", False), ("infer.sliding.argmax", True)):
        times = C.measure_interleaved(
            {
                C.FUSEFN: lambda a=argmax: _fusefn(net, x, roi, a),
                C.MONAI: lambda a=argmax: _monai(net, x, roi, a),
            },
            repeats=args.repeats,
            warmup=args.warmup,
        )
        for system, t in times.items():
            if isinstance(t, Exception):
                rec.skip(name, system, f"failed: {t}")
                continue
            extra = {"max_abs_diff": err, "argmax_equal": agree}
            rec.add(name, system, t, figure="time", unit="s", n=voxels, n_unit="voxels", settings=settings, extra=extra)
    mem_shape = (1, 256 // q, 256 // q, 192 // q)
    for name, side in (("infer.sliding.memory", 64 // q), ("infer.sliding.memory96", 96 // q)):
        mroi = (side,) * 3
        sums = {}
        for system in (C.FUSEFN, C.MONAI):
            with C.guard(rec, name, system):
                got = _child_peak(system, mem_shape, mroi, args.threads)
                sums[system] = got["labels_sum"]
                rec.add_value(
                    name,
                    system,
                    got["peak_mib"],
                    figure="peak memory",
                    unit="MiB",
                    n=mem_shape[1] * mem_shape[2] * mem_shape[3],
                    n_unit="voxels",
                    settings=f"{MEM_CLASSES} classes (1×1×1 conv as addcmul), roi {mroi}, label map out, own child process",
                )
        if len(set(sums.values())) > 1:
            print(f"  WARNING: the label maps differ ({sums})")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        system, shape, roi, threads = json.loads(sys.argv[2])
        child(system, tuple(shape), tuple(roi), threads)
    else:
        main()
