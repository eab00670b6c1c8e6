import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import Rng
from fusefn.data import DataSource, split_folds
from fusefn.errors import ConfigError


def frame(n=12):
    return pl.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "label": [i % 3 for i in range(n)],
            "patient": [f"p{i // 2}" for i in range(n)],
        }
    )


def test_from_frame_ids_column_filter():
    src = DataSource.from_frame(frame())
    assert src.ids[:3] == ["s0", "s1", "s2"]
    assert len(src) == 12
    assert src.filter(pl.col("label") == 1).column("label") == [1, 1, 1, 1]
    assert src.row("s4") == {"sample_id": "s4", "label": 1, "patient": "p2"}
    assert src.take(["s3", "s1"]).ids == ["s3", "s1"]


def test_from_csv_and_parquet(tmp_path):
    frame().write_csv(tmp_path / "t.csv")
    frame().write_parquet(tmp_path / "t.parquet")
    assert DataSource.from_csv(tmp_path / "t.csv").ids == DataSource.from_parquet(tmp_path / "t.parquet").ids
    with pytest.raises(ConfigError, match="not found"):
        DataSource.from_csv(tmp_path / "missing.csv")


def test_from_glob_ids_from_file_names(tmp_path):
    for name in ("b.nii.gz", "a.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    src = DataSource.from_glob(str(tmp_path / "*.nii.gz"))
    assert src.ids == ["a", "b"]
    assert src.column("path")[0].endswith("a.nii.gz")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.nii.gz").write_bytes(b"x")
    assert DataSource.from_glob(str(tmp_path / "**" / "*.nii.gz"), id_from="relpath").ids == [
        "a.nii.gz",
        "b.nii.gz",
        "sub/c.nii.gz",
    ]
    with pytest.raises(ConfigError, match="no file matches"):
        DataSource.from_glob(str(tmp_path / "*.png"))


def test_from_glob_stem_strips_only_the_extension(tmp_path):
    # DICOM files named by UID: every dot before the extension belongs to the id
    names = ("1.2.840.113619.2.55.3.1.dcm", "1.2.840.113619.2.55.3.2.dcm", "case01.nii.gz", "img.png", "t.csv.zst")
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(DataSource.from_glob(str(tmp_path / "*")).ids) == [
        "1.2.840.113619.2.55.3.1",
        "1.2.840.113619.2.55.3.2",
        "case01",
        "img",
        "t",
    ]


def test_from_csv_reads_ids_as_text(tmp_path):
    (tmp_path / "t.csv").write_text("sample_id,label\n001,0\n002,1\n")
    (tmp_path / "001.png").write_bytes(b"x")
    src = DataSource.from_csv(tmp_path / "t.csv")
    assert src.ids == ["001", "002"]
    assert src.column("label") == [0, 1]  # only the id column is forced to text
    assert DataSource.from_glob(str(tmp_path / "*.png")).ids[0] in src.ids
    (tmp_path / "u.csv").write_text("case,label\n007,0\n")
    assert DataSource.from_csv(tmp_path / "u.csv", id_column="case").ids == ["007"]
    # the caller's own typing of the id column wins
    assert DataSource.from_csv(tmp_path / "t.csv", schema_overrides={"sample_id": pl.Int64}).ids == [1, 2]
    # a frame built in memory keeps integer ids
    assert DataSource.from_frame(pl.DataFrame({"sample_id": [1, 2]})).ids == [1, 2]


def test_from_medmnist_layout(tmp_path):
    np.savez(
        tmp_path / "m.npz",
        train_images=np.zeros((5, 28, 28), np.uint8),
        train_labels=np.arange(5).reshape(5, 1),
        test_images=np.zeros((2, 28, 28), np.uint8),
        test_labels=np.zeros((2, 1)),
    )
    src = DataSource.from_medmnist(tmp_path / "m.npz", split="train")
    assert src.ids[0] == "train_0" and src.column("label") == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="no split 'val'"):
        DataSource.from_medmnist(tmp_path / "m.npz", split="val")


def test_duplicate_ids_missing_id_column_empty_selection():
    with pytest.raises(ConfigError, match="duplicate ids.*'a'"):
        DataSource.from_frame(pl.DataFrame({"sample_id": ["a", "b", "a"]}))
    with pytest.raises(ConfigError, match="ids must be strings or integers"):
        DataSource.from_frame(pl.DataFrame({"sample_id": [0.5, 1.5]}))
    with pytest.raises(ConfigError, match="id column 'sample_id'.*closest: sample"):
        DataSource.from_frame(pl.DataFrame({"sample": ["a"]}))
    src = DataSource.from_frame(frame())
    with pytest.raises(ConfigError, match="empty"):
        src.filter(pl.col("label") == 9)
    with pytest.raises(ConfigError, match="fold column 'fold'"):
        src.fold(0)
    with pytest.raises(ConfigError, match="empty"):
        src.with_folds(3).fold(7)
    with pytest.raises(ConfigError, match="closest: label"):
        src.column("labels")


def test_split_folds_bad_config():
    with pytest.raises(ConfigError, match="n_folds"):
        split_folds(frame(), 1)
    with pytest.raises(ConfigError, match="groups"):
        split_folds(frame(4), 3, group="patient")
    with pytest.raises(ConfigError, match="stratify.*'lbl'"):
        split_folds(frame(), 2, stratify="lbl")


def test_split_folds_seeded_and_pure():
    f = frame(30)
    a = split_folds(f, 3, stratify="label", rng=Rng(1))
    assert a.equals(split_folds(f, 3, stratify="label", rng=Rng(1)))
    assert not a.equals(split_folds(f, 3, stratify="label", rng=Rng(2)))
    assert "fold" not in f.columns  # input untouched
    # stratified: each fold holds each class equally (10 per class, 3 folds)
    counts = a.group_by(["fold", "label"]).len().get_column("len").to_list()
    assert max(counts) - min(counts) <= 1


@st.composite
def tables(draw):
    n = draw(st.integers(6, 60))
    groups = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    return pl.DataFrame({"sample_id": list(range(n)), "g": groups, "y": labels})


@settings(max_examples=40, deadline=None)
@given(tables(), st.integers(2, 4), st.integers(0, 2**31), st.booleans())
def test_split_folds_partitions_ids_and_never_splits_groups(t, k, seed, stratified):
    if t.get_column("g").n_unique() < k:
        with pytest.raises(ConfigError):
            split_folds(t, k, group="g", rng=Rng(seed))
        return
    if stratified and t.get_column("y").value_counts().get_column("count").max() < k:
        with pytest.raises(ConfigError, match="fewer than"):
            split_folds(t, k, group="g", stratify="y", rng=Rng(seed))
        return
    out = split_folds(t, k, group="g", stratify="y" if stratified else None, rng=Rng(seed))
    assert out.get_column("sample_id").to_list() == t.get_column("sample_id").to_list()
    folds = out.get_column("fold").to_list()
    assert set(folds) <= set(range(k))
    per_group = out.group_by("g").agg(pl.col("fold").n_unique().alias("n")).get_column("n")
    assert per_group.max() == 1
    # the folds partition the ids
    ids = [set(out.filter(pl.col("fold") == f).get_column("sample_id").to_list()) for f in range(k)]
    assert sum(len(s) for s in ids) == t.height and set().union(*ids) == set(range(t.height))


@settings(max_examples=25, deadline=None)
@given(st.integers(4, 50), st.integers(2, 4), st.integers(0, 1000))
def test_split_folds_ungrouped_partitions(n, k, seed):
    t = pl.DataFrame({"sample_id": list(range(n))})
    if n < k:
        return
    folds = split_folds(t, k, rng=Rng(seed)).get_column("fold").to_list()
    sizes = np.bincount(folds, minlength=k)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1


def test_from_glob_takes_the_id_from_the_parent_folder_or_a_capture_group(tmp_path):
    for case in ("case_001", "case_002"):
        (tmp_path / case).mkdir()
        for name in ("seg.nii.gz", "img.nii.gz"):
            (tmp_path / case / name).write_bytes(b"")
    src = DataSource.from_glob(str(tmp_path / "*" / "seg.nii.gz"), id_from="parent")
    assert src.ids == ["case_001", "case_002"]
    assert [p.endswith("seg.nii.gz") for p in src.frame["path"]] == [True, True]
    assert DataSource.from_glob(str(tmp_path / "*" / "img.nii.gz"), id_from=r"re:case_(\d+)").ids == ["001", "002"]
    # the most common mistake: the default id (the file stem) is the same in every folder
    with pytest.raises(ConfigError, match=r"both give the id 'seg'.*id_from='parent'"):
        DataSource.from_glob(str(tmp_path / "*" / "seg.nii.gz"))
    with pytest.raises(ConfigError, match="capture group"):
        DataSource.from_glob(str(tmp_path / "*" / "seg.nii.gz"), id_from="re:case")
    with pytest.raises(ConfigError, match="does not match"):
        DataSource.from_glob(str(tmp_path / "*" / "seg.nii.gz"), id_from=r"re:(P\d+)")
