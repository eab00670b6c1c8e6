import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusefn import chain, nd
from fusefn.data import Dataset, DataSource, H5Cache, collate, ops, uncollate, wrap_torch_dataset
from fusefn.errors import ConfigError, SampleError

FRAME = pl.DataFrame({"sample_id": [f"s{i}" for i in range(6)], "label": [0, 1, 2, 0, 1, 0]})
SRC = DataSource.from_frame(FRAME)


def image(s):
    n = int(s["data"]["sample_id"][1:])
    return nd.assoc(s, "data.input.img", np.full((1, 3, 3), float(n), np.float32))


def label(s):
    return nd.assoc(s, "data.gt.label", s["data"]["source"]["label"])


STATIC = chain(image, label)


def test_dataset_without_cache_runs_static_then_dynamic():
    ds = Dataset(source=SRC, static=STATIC, dynamic=ops.ToTensor(keys="data.input.img"))
    assert len(ds) == 6 and ds.ids == SRC.ids
    s = ds[2]
    assert isinstance(s["data"]["input"]["img"], torch.Tensor) and s["data"]["gt"]["label"] == 2
    assert ds[-1]["data"]["sample_id"] == "s5"
    with pytest.raises(IndexError):
        ds[6]


def test_dataset_with_cache_equals_uncached(tmp_path):
    cache = H5Cache(root=tmp_path, pipeline=STATIC, progress=False)
    cached = Dataset(source=SRC, cache=cache).build()
    assert cached.report.computed == 6
    plain = Dataset(source=SRC, static=STATIC)
    for i in range(6):
        a, b = cached[i], plain[i]
        np.testing.assert_array_equal(a["data"]["input"]["img"], b["data"]["input"]["img"])
        assert a["data"]["gt"]["label"] == b["data"]["gt"]["label"]
    assert cached.values("data.gt.label") == [0, 1, 2, 0, 1, 0]
    assert Dataset(source=SRC.head(2), cache=cache).build().report.computed == 0
    with pytest.raises(ConfigError, match="differs from Dataset.cache.pipeline"):
        Dataset(source=SRC, static=image, cache=cache)


def test_drop_and_split_need_cache_or_eager(tmp_path):
    def drop_s1(s):
        return None if s["data"]["sample_id"] == "s1" else s

    static = chain(STATIC, drop_s1, ops.Patches(keys="data.input.img", shape=(1, 3)))
    with pytest.raises(SampleError, match="use a cache or eager=True"):
        Dataset(source=SRC, static=static)[1]
    eager = Dataset(source=SRC, static=static, eager=True).build()
    cached = Dataset(source=SRC, cache=H5Cache(root=tmp_path, pipeline=static, progress=False)).build()
    assert eager.ids == cached.ids and len(eager) == 15 and eager.ids[:3] == ["s0#0", "s0#1", "s0#2"]
    summary = cached.summary()
    assert summary["sources"] == 6 and summary["samples"] == 15 and summary["dropped"] == 1
    assert summary["labels"] == {0: 9, 1: 3, 2: 3} and summary["shapes"]["data.input.img"] == {(1, 1, 3): 15}


def test_failed_sample_raises_recorded_error(tmp_path):
    def boom(s):
        if s["data"]["sample_id"] == "s4":
            raise RuntimeError("corrupt slice")
        return s

    ds = Dataset(source=SRC, cache=H5Cache(root=tmp_path, pipeline=chain(STATIC, boom), progress=False)).build()
    assert ds.report.failed == 1 and len(ds) == 5 and "s4" not in ds.ids
    assert ds.summary()["failed"] == 1


def test_op_errors_name_the_op():
    ds = Dataset(source=SRC, static=chain(STATIC, ops.ToLabel(num_classes=2)))
    with pytest.raises(SampleError, match="sample 's2', op ToLabel, key 'data.gt.label'.*out of range"):
        ds[2]

    def plain_fn(s):
        raise KeyError("x")

    with pytest.raises(SampleError, match="sample 's0', op plain_fn: KeyError"):
        Dataset(source=SRC, static=plain_fn)[0]


def test_collate_stacks_numbers_and_keeps_lists():
    samples = [
        {
            "data": {
                "sample_id": i,
                "input": {"img": np.ones((1, 2, 2)) * i},
                "gt": {"label": i},
                "name": f"n{i}",
                "w": 0.5 * i,
                "t": torch.tensor([i, i]),
            }
        }
        for i in range(3)
    ]
    b = collate(samples)
    assert b["data"]["sample_id"] == [0, 1, 2] and b["data"]["name"] == ["n0", "n1", "n2"]
    assert b["data"]["input"]["img"].shape == (3, 1, 2, 2)
    assert b["data"]["gt"]["label"].dtype == torch.int64 and b["data"]["w"].dtype == torch.float32
    assert b["data"]["t"].tolist() == [[0, 0], [1, 1], [2, 2]]
    assert samples[0]["data"]["input"]["img"].shape == (1, 2, 2)  # inputs untouched


def test_collate_shape_mismatch_names_ids_and_key():
    a = {"data": {"sample_id": "a", "input": {"img": np.zeros((1, 2, 2))}}}
    b = {"data": {"sample_id": "b", "input": {"img": np.zeros((1, 3, 2))}}}
    with pytest.raises(
        SampleError, match=r"op collate, key 'data.input.img'.*\(1, 2, 2\): \['a'\]; \(1, 3, 2\): \['b'\]"
    ):
        collate([a, b])
    padded = collate([a, b], pad=True, pad_value=-1)["data"]["input"]["img"]
    assert padded.shape == (2, 1, 3, 2) and padded[0, 0, 2].tolist() == [-1, -1]
    with pytest.raises(SampleError, match="key missing from samples \\['b'\\]"):
        collate([a, {"data": {"sample_id": "b"}}])
    with pytest.raises(ConfigError):
        collate([])


@st.composite
def batches(draw):
    n = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    return {
        "data": {
            "sample_id": [f"id{i}" for i in range(n)],
            "input": {"img": torch.randn(n, *shape)},
            "gt": {"label": torch.randint(0, 5, (n,))},
            "names": draw(st.lists(st.text(max_size=3), min_size=n, max_size=n)),
        }
    }


@settings(max_examples=30, deadline=None)
@given(batches())
def test_collate_uncollate_round_trip(batch):
    again = collate(uncollate(batch))
    assert again["data"]["sample_id"] == batch["data"]["sample_id"]
    assert again["data"]["names"] == batch["data"]["names"]
    assert torch.equal(again["data"]["input"]["img"], batch["data"]["input"]["img"])
    assert torch.equal(again["data"]["gt"]["label"], batch["data"]["gt"]["label"])


def test_wrap_torch_dataset():
    tds = torch.utils.data.TensorDataset(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0]))
    w = wrap_torch_dataset(tds, keys=("data.input.x", "data.gt.label"))
    assert len(w) == 3
    b = collate([w[i] for i in range(3)])
    assert b["data"]["sample_id"] == [0, 1, 2] and b["data"]["input"]["x"].shape == (3, 2)
    with pytest.raises(SampleError, match="sample 0.*2 values for keys"):
        wrap_torch_dataset(tds, keys=("data.x",))[0]


@pytest.mark.slow
@pytest.mark.parametrize("mapped", [False, True], ids=["copied", "mapped"])
def test_dataloader_workers_read_the_cache(tmp_path, monkeypatch, mapped):
    if mapped:  # every row read by mapping, as volumes are; the workers are forked, so they inherit this
        monkeypatch.setattr("fusefn.data.cache.reader._MAP_MIN_BYTES", 1)
    ds = Dataset(source=SRC, cache=H5Cache(root=tmp_path, pipeline=STATIC, progress=False)).build()
    ds[0]  # the parent has the store open before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [i for b in batches for i in b["data"]["sample_id"]] == SRC.ids
    img = torch.cat([b["data"]["input"]["img"] for b in batches])
    assert img[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_static_and_cache_with_the_same_pipeline_are_accepted(tmp_path):
    import polars as pl

    from fusefn.data import Dataset, DataSource, H5Cache, ops

    src = DataSource.from_frame(pl.DataFrame({"sample_id": ["a", "b"], "v": [1.0, 2.0]}))
    static = ops.TableRow(table=src.frame, columns={"v": "data.input.v"})
    ds = Dataset(source=src, static=static, cache=H5Cache(root=tmp_path, pipeline=static, progress=False)).build()
    assert len(ds) == 2


def test_construction_reads_nothing_and_build_is_explicit(tmp_path):
    from fusefn.errors import FusefnError

    cache = H5Cache(root=tmp_path / "c", pipeline=STATIC, workers=2, progress=False)
    ds = Dataset(source=SRC, cache=cache)
    assert not (tmp_path / "c").exists()  # no store made, no worker started
    with pytest.raises(FusefnError, match=r"\.build\(\)"):
        len(ds)
    with pytest.raises(FusefnError, match=r"\.build\(\)"):
        ds[0]
    built = ds.build(workers=0)
    assert built is not ds and built.report.computed == 6 and len(built) == 6 and ds.report is None
    assert built.build().report.reused == 6  # building again reuses the store
    with pytest.raises(FusefnError, match="eager=True"):
        _ = Dataset(source=SRC, static=STATIC, eager=True).ids
    plain = Dataset(source=SRC, static=STATIC)
    assert plain.build() is plain and len(plain) == 6


def test_a_built_dataset_pickles_without_its_reader(tmp_path):
    import pickle

    ds = Dataset(source=SRC, cache=H5Cache(root=tmp_path, pipeline=STATIC, progress=False)).build()
    ds[0]  # this process's reader is open
    again = pickle.loads(pickle.dumps(ds))
    assert again.ids == ds.ids
    np.testing.assert_array_equal(again[3]["data"]["input"]["img"], ds[3]["data"]["input"]["img"])
