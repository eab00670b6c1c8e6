"""``fusefn inspect``: what a run folder, a model_dir or a checkpoint holds, as short text.

A *run* is the folder a recipe's ``--out`` names (``model/``, ``infer/``, ``report/``; older digits
runs have ``eval/``); a *model_dir* holds ``checkpoints/``; a checkpoint is one ``.pt`` file, read
weights-only (inspecting a file from elsewhere never runs code from it). Each
``describe_*`` function returns the lines it would print.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping

from fusefn.errors import FusefnError

__all__ = ["describe", "describe_checkpoint", "describe_model_dir", "describe_run", "is_run"]

_RUN_PARTS = ("model", "infer", "report", "eval")
_METRIC_FILES = ("report/metrics.json", "eval/metrics.json", "report/analysis/metrics.json")
_MAX_METRICS = 14


def is_run(path: pathlib.Path) -> bool:
    """Whether ``path`` looks like a recipe's run folder (a ``model/`` with checkpoints, or a report)."""
    return (path / "model" / "checkpoints").is_dir() or any((path / f).is_file() for f in _METRIC_FILES)


def describe(path: pathlib.Path) -> list[str]:
    """The description of a run folder, a model_dir or a checkpoint file; a one-line error for anything else."""
    if path.is_dir():
        if is_run(path):
            return describe_run(path)
        if (path / "checkpoints").is_dir():
            return describe_model_dir(path)
        raise FusefnError(
            f"{path} is neither a run folder (with model/, infer/, report/) nor a model_dir (with checkpoints/); "
            "point at one of them or at a checkpoint file"
        )
    if not path.exists():
        raise FusefnError(f"{path}: not found; give a run folder, a model_dir or a checkpoint (.pt)")
    return describe_checkpoint(path)


def _size(path: pathlib.Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return len(files), sum(p.stat().st_size for p in files)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def describe_checkpoint(path: pathlib.Path) -> list[str]:
    """Epoch, step, seed, parameters, model / optimizer types, best epochs and the last epoch's results."""
    from fusefn import nd
    from fusefn.train import load_checkpoint

    payload = load_checkpoint(path)
    state = payload["state"]
    n_params = sum(int(v.numel()) for v in state.params.values())
    cfg = payload.get("model_config") or {}
    lines = [
        f"checkpoint {path}",
        f"  epoch {state.epoch}, step {state.step}, seed {state.rng.seed}, {n_params:,} parameters",
    ]
    if isinstance(cfg, dict) and "__type__" in cfg:
        lines.append(f"  model {cfg['__type__']} (fingerprint {payload.get('model_fingerprint')})")
    opt = payload.get("optimizer_config")
    if isinstance(opt, dict) and "__type__" in opt:
        lines.append(f"  optimizer {opt['__type__']}")
    for source, best in sorted(state.best.items()):
        lines.append(f"  best {source}: {best.get('value')} at epoch {best.get('epoch')}")
    if state.history:
        last = state.history[-1]
        flat = {k: v for k, v in nd.flatten(last).items() if isinstance(v, (int, float))}
        lines.append(f"  last epoch results ({len(state.history)} epochs recorded):")
        for k, v in flat.items():
            lines.append(f"    {k:45s} {v:.4f}" if isinstance(v, float) else f"    {k:45s} {v}")
    return lines


def describe_model_dir(path: pathlib.Path) -> list[str]:
    """The checkpoints of a model_dir with their sizes, then its last (or latest) checkpoint described."""
    ckdir = path / "checkpoints"
    files = sorted(ckdir.glob("*.pt"))
    if not files:
        raise FusefnError(f"no checkpoint in {ckdir}")
    lines = [f"model_dir {path}"]
    lines += [f"  {f.name:45s} {f.stat().st_size / 2**20:7.2f} MiB" for f in files]
    last = ckdir / "last.pt"
    return lines + describe_checkpoint(last if last.exists() else files[-1])


def _config_lines(path: pathlib.Path) -> list[str]:
    lines = []
    model = path / "model" / "model.json"
    if model.is_file():
        try:
            cfg = json.loads(model.read_text())
            lines.append(f"  model: {cfg.get('__type__', '?')} (model/model.json)")
        except (OSError, ValueError):
            lines.append("  model: model/model.json is not readable JSON")
    for f in sorted([*path.glob("*.json"), *(path / "model").glob("*.json")]):
        if f.name == "model.json":
            continue
        try:
            cfg = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(cfg, Mapping):
            flat = ", ".join(f"{k}={v}" for k, v in cfg.items() if isinstance(v, (str, int, float, bool)))[:200]
            lines.append(f"  config {f.relative_to(path)}: {flat or ', '.join(cfg)}")
    return lines


def _metric_rows(tree: Mapping, prefix: str = "") -> list[str]:
    rows = []
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and "value" in v:
            val, lo, hi = v.get("value"), v.get("lower"), v.get("upper")
            if isinstance(val, (int, float)):
                ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi))
                rows.append(f"    {name:40s} {val:.4f}" + (f"  [{lo:.4f}, {hi:.4f}]" if ok else ""))
        elif isinstance(v, Mapping):
            rows.extend(_metric_rows(v, name + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append(f"    {name:40s} {v:.4f}")
    return rows


def describe_run(path: pathlib.Path) -> list[str]:
    """A run folder: its parts and sizes, the model's config, the best epoch and the report's metrics."""
    lines = [f"run {path}"]
    for part in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        n, size = _size(part)
        lines.append(f"  {part.name + '/':12s} {n:4d} files, {_mib(size)}")
    logs = sorted(p.name for p in path.glob("*.log"))
    if logs:
        lines.append(f"  logs: {', '.join(logs)}")
    lines += _config_lines(path)
    ckdir = path / "model" / "checkpoints"
    best = sorted(ckdir.glob("best_*.pt")) if ckdir.is_dir() else []
    last = ckdir / "last.pt"
    if last.is_file() or best:
        from fusefn.train import load_checkpoint

        state = load_checkpoint(last if last.is_file() else best[0])["state"]
        lines.append(f"  trained {state.epoch} epoch(s), {state.step} steps, seed {state.rng.seed}")
        for source, b in sorted(state.best.items()):
            value = b.get("value")
            shown = f"{value:.4f}" if isinstance(value, float) else value
            lines.append(f"  best epoch {b.get('epoch')} by {source} ({shown})")
    elif not (path / "model").is_dir():
        lines.append("  no model/ folder: not trained here")
    for rel in _METRIC_FILES:
        f = path / rel
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            lines.append(f"  metrics {rel}: unreadable ({e})")
            continue
        tree = data.get("metrics", data) if isinstance(data, Mapping) else {}
        # the headline values first: top-level and macro rows before the per-class ones
        rows = sorted(
            _metric_rows(tree), key=lambda r: "." in r.split()[0] and not r.split()[0].endswith((".macro", "ece.ece"))
        )
        n = data.get("num_samples") if isinstance(data, Mapping) else None
        lines.append(f"  metrics ({rel}{f', {n} samples' if n else ''}):")
        lines += rows[:_MAX_METRICS]
        if len(rows) > _MAX_METRICS:
            lines.append(f"    … {len(rows) - _MAX_METRICS} more in {rel}")
        break
    else:
        lines.append("  no report yet (run the recipe's analyze phase)")
    return lines
