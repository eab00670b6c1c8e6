"""Polars-backed sample tables: ids, folds, filters, and a stratified/grouped fold split.

A :class:`DataSource` is the table of sample descriptors (FuseMedML's data
source): one row per sample, a unique id column, any other columns (paths,
labels, patient ids, folds). Every method returns a new source; none mutates.

>>> import polars as pl
>>> from fusefn import Rng
>>> frame = pl.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]})
>>> src = DataSource.from_frame(split_folds(frame, n_folds=2, stratify="label", rng=Rng(0)))
>>> src.ids
['a', 'b', 'c', 'd']
>>> sorted(src.fold(0).column("label"))
[0, 1]
"""

from __future__ import annotations

import difflib
import glob as _glob
import os
import pathlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import polars as pl

from fusefn import validators as v
from fusefn.core import Rng, record
from fusefn.errors import ConfigError

__all__ = ["DataSource", "split_folds"]


def _close(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f"; closest: {', '.join(close)}" if close else f"; columns: {', '.join(options)}"


def _require_column(frame: pl.DataFrame, name: str, what: str) -> None:
    if name not in frame.columns:
        raise ConfigError(f"{what} column {name!r} not in the table{_close(name, frame.columns)}")


# compressed forms wrap another format, so ``x.nii.gz`` loses both suffixes
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def _strip_extension(name: str) -> str:
    """``name`` without its extension: the last suffix, or two when the last is a compression one."""
    path = pathlib.PurePath(name)
    if path.suffix.lower() in _COMPRESSION_SUFFIXES:
        path = pathlib.PurePath(path.stem)
    return path.stem


def _id_as_string(id_column: str, read_kwargs: dict) -> dict:
    """``read_kwargs`` with the id column read as text unless the caller typed it already."""
    if "schema" in read_kwargs:
        return read_kwargs
    overrides = read_kwargs.get("schema_overrides")
    if overrides is None:
        overrides = {}
    elif not isinstance(overrides, Mapping):  # positional dtypes: cannot name the id column
        return read_kwargs
    return {**read_kwargs, "schema_overrides": {id_column: pl.String, **overrides}}


@record
class DataSource:
    """A table of samples with a unique id column.

    Args:
        frame: one row per sample.
        id_column: the column holding each sample's unique id.
        name: where the table came from (used in error messages only).
    """

    frame: pl.DataFrame = attrs.field(eq=False, validator=v.instance_of(pl.DataFrame), repr=False)
    id_column: str = "sample_id"
    name: str = "table"

    def __attrs_post_init__(self):
        _require_column(self.frame, self.id_column, f"{self.name}: id")
        if self.frame.height == 0:
            raise ConfigError(f"{self.name}: the selection is empty (no rows)")
        ids = self.frame.get_column(self.id_column)
        if not (ids.dtype.is_integer() or ids.dtype == pl.String):
            raise ConfigError(
                f"{self.name}: id column {self.id_column!r} is {ids.dtype}; ids must be strings or integers "
                f"(cast it, e.g. frame.with_columns(pl.col({self.id_column!r}).cast(pl.String)))"
            )
        if ids.null_count():
            raise ConfigError(f"{self.name}: {ids.null_count()} rows have no {self.id_column!r}")
        if ids.n_unique() != len(ids):
            dups = ids.filter(ids.is_duplicated()).unique(maintain_order=True).head(5).to_list()
            raise ConfigError(f"{self.name}: duplicate ids in column {self.id_column!r}: {dups}")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, id_column: str = "sample_id", name: str = "frame") -> DataSource:
        """A source over an in-memory Polars (or pandas) frame."""
        if not isinstance(frame, pl.DataFrame):
            try:
                frame = pl.from_pandas(frame)
            except Exception as exc:  # not a frame at all
                raise ConfigError(f"from_frame needs a polars or pandas DataFrame, got {type(frame).__name__}") from exc
        return cls(frame=frame, id_column=id_column, name=name)

    @classmethod
    def from_csv(cls, path, id_column: str = "sample_id", **read_kwargs) -> DataSource:
        """A source over a CSV file (``read_kwargs`` go to ``polars.read_csv``).

        The id column is read as text, so ids such as ``001`` keep their leading zeros and
        match the ids :meth:`from_glob` takes from file names (a ``schema`` or a
        ``schema_overrides`` entry for the id column in ``read_kwargs`` wins).
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"CSV table not found: {path}")
        return cls(
            frame=pl.read_csv(path, **_id_as_string(id_column, read_kwargs)), id_column=id_column, name=str(path)
        )

    @classmethod
    def from_parquet(cls, path, id_column: str = "sample_id", **read_kwargs) -> DataSource:
        """A source over a Parquet file."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"Parquet table not found: {path}")
        return cls(frame=pl.read_parquet(path, **read_kwargs), id_column=id_column, name=str(path))

    @classmethod
    def from_glob(cls, pattern: str, id_from: str = "stem", id_column: str = "sample_id") -> DataSource:
        """One sample per file matching ``pattern`` (``**`` recurses); columns ``sample_id`` and ``path``.

        Args:
            id_from: where each file's id comes from:

                - ``"stem"``: the file name without its extension (the default);
                - ``"name"``: the file name;
                - ``"parent"``: the name of the folder holding the file (``case_001/seg.nii.gz`` ->
                  ``case_001``, the layout of KiTS and of most exported studies);
                - ``"relpath"``: the path relative to the pattern's fixed prefix;
                - ``"re:<regex>"``: the first capture group of a regular expression searched in that
                  relative path (``"re:(P[0-9]+)_"`` on ``P017_t1.nii.gz`` -> ``P017``).

        The extension is the last suffix, or the last two when the last is a compression suffix
        (``.gz``, ``.bz2``, ``.xz``, ``.zst``): ``ct_01.nii.gz`` -> ``ct_01``, ``img.png`` -> ``img``,
        ``1.2.840.1.dcm`` -> ``1.2.840.1`` (dots before the extension are part of the id, as in
        DICOM UIDs). A name starting with a dot and holding no other (``.hidden``) is kept whole.
        Two files giving one id are an error that lists them and says how to choose another rule.

        >>> import pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for case in ("case_001", "case_002"):
        ...     (root / case).mkdir()
        ...     _ = (root / case / "seg.nii.gz").write_bytes(b"")
        >>> DataSource.from_glob(str(root / "*" / "seg.nii.gz"), id_from="parent").ids
        ['case_001', 'case_002']
        >>> DataSource.from_glob(str(root / "*" / "seg.nii.gz"), id_from="re:_([0-9]+)").ids
        ['001', '002']
        """
        import re

        regex = None
        if isinstance(id_from, str) and id_from.startswith("re:"):
            try:
                regex = re.compile(id_from[3:])
            except re.error as e:
                raise ConfigError(f"from_glob.id_from: bad regular expression {id_from[3:]!r}: {e}") from e
            if regex.groups < 1:
                raise ConfigError(f"from_glob.id_from: {id_from[3:]!r} needs a capture group, e.g. 're:(P[0-9]+)'")
        elif id_from not in ("stem", "name", "parent", "relpath"):
            raise ConfigError(
                f"from_glob.id_from must be 'stem', 'name', 'parent', 'relpath' or 're:<regex>', got {id_from!r}"
            )
        paths = sorted(p for p in _glob.glob(str(pattern), recursive=True) if os.path.isfile(p))
        if not paths:
            raise ConfigError(f"no file matches {pattern!r}")
        prefix = pathlib.Path(str(pattern).split("*", 1)[0])
        base = prefix if str(pattern).endswith(os.sep) or prefix.is_dir() else prefix.parent

        def sample_id(p: str) -> str:
            pp = pathlib.Path(p)
            if regex is not None:
                found = regex.search(str(pp.relative_to(base)))
                if found is None:
                    raise ConfigError(f"from_glob: {id_from!r} does not match {pp.relative_to(base)} (file {p})")
                return found.group(1)
            if id_from == "name":
                return pp.name
            if id_from == "parent":
                return pp.parent.name
            if id_from == "relpath":
                return str(pp.relative_to(base))
            return _strip_extension(pp.name)

        ids = [sample_id(p) for p in paths]
        seen: dict[str, str] = {}
        for sid, p in zip(ids, paths):
            if sid in seen:
                raise ConfigError(
                    f"from_glob({pattern!r}): files {seen[sid]} and {p} both give the id {sid!r} "
                    f"(id_from={id_from!r}); choose another rule: id_from='parent' (the folder name), "
                    "'relpath' (the path below the pattern's prefix) or 're:<regex>' (a capture group)"
                )
            seen[sid] = p
        frame = pl.DataFrame({id_column: ids, "path": paths})
        return cls(frame=frame, id_column=id_column, name=f"glob {pattern}")

    @classmethod
    def from_medmnist(cls, path, split: str = "train", id_column: str = "sample_id") -> DataSource:
        """The samples of one split of a MedMNIST ``.npz`` (``train_images``/``train_labels``, …).

        Columns: ``sample_id`` (``"<split>_<index>"``), ``path``, ``split``, ``index``, ``label``
        (the first label column; all of them as ``label_<j>`` when multi-label).
        Read images with ``ops.ReadNpz(array="<split>_images", index_key="data.source.index")``.
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"MedMNIST file not found: {path}")
        with np.load(path) as z:
            if f"{split}_labels" not in z.files:
                raise ConfigError(f"{path}: no split {split!r}; arrays: {', '.join(z.files)}")
            labels = np.asarray(z[f"{split}_labels"])
        labels = labels.reshape(len(labels), -1)
        n = len(labels)
        cols: dict[str, Any] = {
            id_column: [f"{split}_{i}" for i in range(n)],
            "path": [str(path)] * n,
            "split": [split] * n,
            "index": np.arange(n, dtype=np.int64),
            "label": labels[:, 0].astype(np.int64),
        }
        if labels.shape[1] > 1:
            cols.update({f"label_{j}": labels[:, j].astype(np.int64) for j in range(labels.shape[1])})
        return cls(frame=pl.DataFrame(cols), id_column=id_column, name=str(path))

    # ----------------------------------------------------------------------- queries

    def __len__(self) -> int:
        return self.frame.height

    @property
    def ids(self) -> list:
        """The sample ids, in table order."""
        return self.frame.get_column(self.id_column).to_list()

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    def column(self, name: str) -> list:
        """The values of column ``name``, in table order."""
        _require_column(self.frame, name, self.name)
        return self.frame.get_column(name).to_list()

    def rows(self) -> list[dict]:
        """Every row as a dict, in table order."""
        return self.frame.to_dicts()

    def row(self, sample_id) -> dict:
        """The row of ``sample_id`` as a dict."""
        hit = self.frame.filter(pl.col(self.id_column) == sample_id)
        if hit.height == 0:
            raise ConfigError(f"{self.name}: no sample with id {sample_id!r}")
        return hit.row(0, named=True)

    def _select(self, frame: pl.DataFrame, what: str) -> DataSource:
        if frame.height == 0:
            raise ConfigError(f"{self.name}: the selection {what} is empty")
        return attrs.evolve(self, frame=frame)

    def filter(self, *predicates, **constraints) -> DataSource:
        """Rows matching Polars expressions (and ``column=value`` constraints)."""
        try:
            frame = self.frame.filter(*predicates, **constraints)
        except pl.exceptions.ColumnNotFoundError as exc:
            raise ConfigError(f"{self.name}: filter names a missing column: {exc}") from exc
        return self._select(frame, f"filter({', '.join(map(str, predicates))})")

    def fold(self, k: int | Sequence[int], column: str = "fold") -> DataSource:
        """Rows whose ``column`` is ``k`` (or one of several folds ``[k, ...]``)."""
        _require_column(self.frame, column, f"{self.name}: fold")
        ks = [k] if isinstance(k, (int, np.integer)) else list(k)
        return self._select(self.frame.filter(pl.col(column).is_in(ks)), f"{column} in {ks}")

    def take(self, ids: Sequence) -> DataSource:
        """Rows with the given ids, in the given order."""
        order = pl.DataFrame({self.id_column: list(ids), "__order": np.arange(len(ids))})
        order = order.with_columns(pl.col(self.id_column).cast(self.frame.schema[self.id_column]))
        frame = self.frame.join(order, on=self.id_column, how="inner").sort("__order").drop("__order")
        if frame.height != len(ids):
            known = set(self.ids)
            missing = [i for i in ids if i not in known][:5]
            raise ConfigError(f"{self.name}: unknown ids {missing}")
        return self._select(frame, "take(...)")

    def head(self, n: int) -> DataSource:
        """The first ``n`` rows (debug modes limit samples with this)."""
        return self._select(self.frame.head(n), f"head({n})")

    def with_folds(
        self,
        n_folds: int,
        stratify: str | None = None,
        group: str | None = None,
        *,
        rng: Rng = Rng(0),
        column: str = "fold",
    ) -> DataSource:
        """This source with a fold column added by :func:`split_folds`."""
        frame = split_folds(self.frame, n_folds, stratify=stratify, group=group, rng=rng, column=column)
        return attrs.evolve(self, frame=frame)


# ------------------------------------------------------------------------ fold split


def _group_split(groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Whole groups to folds: shuffled, then largest first into the smallest fold."""
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-counts[order], kind="stable")]
    sizes = np.zeros(n_folds, dtype=np.int64)
    fold_of = np.empty(len(uniq), dtype=np.int64)
    for g in order:
        f = int(np.argmin(sizes))
        fold_of[g] = f
        sizes[f] += counts[g]
    return fold_of[inverse]


def split_folds(
    frame: pl.DataFrame | DataSource,
    n_folds: int,
    stratify: str | None = None,
    group: str | None = None,
    *,
    rng: Rng = Rng(0),
    column: str = "fold",
) -> pl.DataFrame:
    """``frame`` with an integer ``column`` in ``[0, n_folds)``: seeded, stratified and/or grouped.

    Args:
        stratify: column whose class proportions each fold keeps (about).
        group: column (e.g. patient id) whose rows always land in one fold together.
        rng: the same ``rng`` and table give the same folds (``Rng(s)`` gives the folds
            the former ``seed=s`` gave).

    Returns:
        A new frame (the input is untouched).
    """
    if isinstance(frame, DataSource):
        frame = frame.frame
    if not isinstance(n_folds, (int, np.integer)) or isinstance(n_folds, bool) or n_folds < 2:
        raise ConfigError(f"split_folds.n_folds must be an int >= 2, got {n_folds!r}")
    if not isinstance(rng, Rng):
        raise ConfigError(f"split_folds.rng must be a fusefn.Rng, got {rng!r}")
    if frame.height == 0:
        raise ConfigError("split_folds: the table is empty")
    for name, what in ((stratify, "stratify"), (group, "group")):
        if name is not None:
            _require_column(frame, name, f"split_folds.{what}:")
            if frame.get_column(name).null_count():
                raise ConfigError(f"split_folds.{what}: column {name!r} has missing values")
    n = frame.height
    seed32 = rng.seed % (2**32)  # what sklearn's random_state takes
    from sklearn import model_selection as ms

    idx = np.zeros(n)
    if stratify is not None:
        _, counts = np.unique(frame.get_column(stratify).to_numpy(), return_counts=True)
        if counts.max() < n_folds:
            raise ConfigError(f"split_folds.stratify: every class of {stratify!r} has fewer than {n_folds} rows")
    if group is not None:
        groups = frame.get_column(group).to_numpy()
        n_groups = len(np.unique(groups))
        if n_groups < n_folds:
            raise ConfigError(f"split_folds: {n_groups} groups in {group!r} cannot fill {n_folds} folds")
        if stratify is None:
            folds = _group_split(groups, n_folds, seed32)
        else:
            y = frame.get_column(stratify).to_numpy()
            folds = np.empty(n, dtype=np.int64)
            splitter = ms.StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed32)
            with warnings.catch_warnings():
                # a class smaller than n_folds is legal; it just cannot appear in every fold
                warnings.simplefilter("ignore", UserWarning)
                parts = list(splitter.split(idx, y, groups))
            for f, (_, test) in enumerate(parts):
                folds[test] = f
    else:
        if n < n_folds:
            raise ConfigError(f"split_folds: {n} rows cannot fill {n_folds} folds")
        folds = np.empty(n, dtype=np.int64)
        if stratify is None:
            splitter = ms.KFold(n_splits=n_folds, shuffle=True, random_state=seed32)
            parts = splitter.split(idx)
        else:
            y = frame.get_column(stratify).to_numpy()
            with warnings.catch_warnings():
                # a class smaller than n_folds is legal; it just cannot appear in every fold
                warnings.simplefilter("ignore", UserWarning)
                parts = list(ms.StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed32).split(idx, y))
        for f, (_, test) in enumerate(parts):
            folds[test] = f
    return frame.with_columns(pl.Series(column, folds, dtype=pl.Int64))
