"""Run a per-sample pipeline whose ops may drop a sample (``None``) or split it (a list).

:class:`fusefn.core.Chain` feeds each op the previous op's result; here a list
result fans out (later ops run on each element) and ``None`` stops the sample.
Errors name the sample id and the op that raised.

>>> from fusefn import chain, nd
>>> split = lambda s: [nd.assoc(s, "data.k", k) for k in range(3)]
>>> drop_odd = lambda s: None if s["data"]["k"] % 2 else s
>>> [s["data"]["k"] for s in run_pipeline(chain(split, drop_odd), {"data": {"sample_id": "a"}})]
[0, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fusefn import nd
from fusefn.core import Chain
from fusefn.errors import SampleError
from fusefn.keys import SAMPLE_ID

__all__ = ["run_pipeline", "ops_of"]


def ops_of(pipeline: Callable | None) -> tuple:
    """The ops of ``pipeline`` in order (a Chain's flattened ops, else the pipeline itself)."""
    if pipeline is None:
        return ()
    if isinstance(pipeline, Chain):
        return tuple(op for fn in pipeline.fns for op in ops_of(fn))
    return (pipeline,)


def _name(op) -> str:
    return getattr(op, "__name__", None) or type(op).__name__


def run_pipeline(pipeline: Callable | None, sample: Mapping) -> list[dict]:
    """Every sample ``pipeline`` makes of ``sample`` (0, 1 or more), ops applied left to right."""
    current = [sample]
    for op in ops_of(pipeline):
        nxt = []
        for s in current:
            try:
                out = op(s)
            except SampleError:
                raise
            except Exception as exc:
                sid = nd.get(s, SAMPLE_ID, None) if isinstance(s, Mapping) else None
                raise SampleError(f"{type(exc).__name__}: {exc}", sample_id=sid, op=_name(op)) from exc
            if out is None:
                continue
            if isinstance(out, Mapping):
                nxt.append(out)
            elif isinstance(out, (list, tuple)):
                nxt.extend(out)
            else:
                sid = nd.get(s, SAMPLE_ID, None)
                reason = f"returned a {type(out).__name__}, not a sample dict, None or a list"
                raise SampleError(reason, sample_id=sid, op=_name(op))
        current = nxt
    return current
