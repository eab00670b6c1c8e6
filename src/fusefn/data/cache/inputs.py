"""The samples a static pipeline starts from and ends with: initial sample dicts, input digests, id keys.

The cache and :class:`~fusefn.data.Dataset` both name samples through :func:`id_key`,
so an id stored by one is found by the other.

>>> initial_samples(["a", 2])
[{'data': {'sample_id': 'a'}}, {'data': {'sample_id': 2}}]
>>> id_key("1") != id_key(1), id_key(1) == id_key(__import__("numpy").int64(1))
(True, True)
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
from collections.abc import Mapping

import numpy as np

from fusefn import keys, nd
from fusefn.core import fingerprint
from fusefn.errors import ConfigError, SampleError

__all__ = ["initial_samples", "input_digest", "id_key", "unique_outputs"]


def initial_samples(source) -> list[dict]:
    """The sample dicts a pipeline starts from: ``data.sample_id`` plus the source row at ``data.source``.

    ``source`` is a :class:`~fusefn.data.DataSource` or an iterable of ids (or of
    ready sample dicts).
    """
    from fusefn.data.sources import DataSource

    if isinstance(source, DataSource):
        out = []
        for row in source.rows():
            sid = row.pop(source.id_column)
            row = {k: _plain_cell(v) for k, v in row.items()}
            out.append({"data": {"sample_id": sid, "source": row}} if row else {"data": {"sample_id": sid}})
        return out
    out = []
    for item in source:
        if isinstance(item, Mapping):
            if not nd.contains(item, keys.SAMPLE_ID):
                raise ConfigError(
                    f"a sample dict given to the cache has no {keys.SAMPLE_ID!r}: {sorted(nd.keys(item))}"
                )
            out.append(dict(item))
        else:
            out.append({"data": {"sample_id": item.item() if isinstance(item, np.generic) else item}})
    ids = [s["data"]["sample_id"] for s in out]
    if len(set(map(id_key, ids))) != len(ids):
        raise ConfigError("the samples given to the cache have duplicate ids")
    return out


def _plain_cell(v):
    # dates, times and decimals become text, so every row can be hashed and stored
    if isinstance(v, (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal)):
        return str(v)
    return v


def input_digest(sample: dict) -> str:
    """A digest of what the pipeline starts from (id and source row): a changed row is recomputed."""
    try:
        return fingerprint(sample)
    except ConfigError:
        return hashlib.sha256(repr(sample).encode()).hexdigest()[:32]


def id_key(sid) -> str:
    """The text a sample id is looked up by: ``1`` and ``"1"`` stay distinct, ``np.int64(1)`` is ``1``."""
    # the common cases skip JSON: this runs on every read
    t = type(sid)
    if t is str:
        return "s" + sid
    if t is int:
        return f"i{sid}"
    if isinstance(sid, np.generic):
        return id_key(sid.item())
    return "j" + json.dumps(sid)


def unique_outputs(sid, outs: list[dict]) -> list[dict]:
    """The pipeline's outputs of sample ``sid``, each with a str or int id: ``<id>#<k>`` when several share one."""
    if len(outs) > 1:
        ids = [nd.get(o, keys.SAMPLE_ID, sid) for o in outs]
        if len({id_key(i) for i in ids}) != len(ids):
            outs = [nd.assoc(o, keys.SAMPLE_ID, f"{sid}#{k}") for k, o in enumerate(outs)]
    fixed = []
    for o in outs:
        oid = nd.get(o, keys.SAMPLE_ID, sid)
        if isinstance(oid, np.generic):
            oid = oid.item()
        if not isinstance(oid, (str, int)) or isinstance(oid, bool):
            raise SampleError(f"output sample id must be a str or int, got {oid!r}", sample_id=sid, key=keys.SAMPLE_ID)
        fixed.append(o if nd.get(o, keys.SAMPLE_ID, None) is oid else nd.assoc(o, keys.SAMPLE_ID, oid))
    return fixed
