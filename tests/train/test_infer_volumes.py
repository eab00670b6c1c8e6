"""infer in volume mode: sliding windows per case, post-processing, sidecar and NIfTI masks on the original grid."""

import json

import h5py
import numpy as np
import polars as pl
import pytest
import torch

from fusefn import Rng, chain, keys, models, nd
from fusefn.data.ops.components import KeepLargestComponent, RemoveSmallComponents
from fusefn.data.visualize import safe_name
from fusefn.errors import ConfigError
from fusefn.train import infer, load_model
from fusefn.train.checkpoint import save_checkpoint
from fusefn.train.infer_volumes import LABELS, SlidingWindowSettings
from fusefn.train.sliding_window import sliding_window
from fusefn.train.state import TrainState
from fusefn.train.step import make_eval_step

nib = pytest.importorskip("nibabel")

# voxel axes permuted and flipped, anisotropic, translated: nothing about this grid is the identity
AFFINES = {
    "case/a": np.array([[0, 0, -2.0, 10], [0, 0.8, 0, -5], [1.5, 0, 0, 3], [0, 0, 0, 1]]),
    "case b": np.array([[-1.2, 0, 0, 40], [0, 0, 1.0, 2], [0, -0.9, 0, -7], [0, 0, 0, 1]]),
}
SHAPES = {"case/a": (13, 10, 11), "case b": (9, 14, 12)}
SETTINGS = SlidingWindowSettings(roi=(8, 8, 8), overlap=0.5, batch_size=3)
POST = chain(KeepLargestComponent(key=LABELS), RemoveSmallComponents(key=LABELS, min_size=2))


def _model_dir(path, seed=0):
    model = models.Model(
        backbone=models.UNet(in_channels=1, channels=(4, 8), spatial_dims=3),
        heads=(models.SegmentationHead3D(name="head_0", num_classes=3),),
    )
    params, buffers = models.init(model, rng=Rng(seed))
    save_checkpoint(path / "checkpoints" / "last.pt", TrainState(params=params, buffers=buffers), model=model)
    return path


class Cases(torch.utils.data.Dataset):
    """NIfTI cases read by ReadNifti, then cropped (1 voxel off the start of axis 0, 2 off the end of axis 2)."""

    def __init__(self, root, ids):
        self.root, self.ids = root, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        from fusefn.data.ops.read import ReadNifti

        sid = self.ids[i]
        s = ReadNifti(path=str(self.root / f"{safe_name(sid)}.nii.gz"))({"data": {"sample_id": sid}})
        shift = np.eye(4)
        shift[0, 3] = 1  # the crop starts at voxel 1 of axis 0
        img = nd.get(s, keys.IMAGE)[:, 1:, :, :-2]
        return nd.assoc_many(
            s, {keys.IMAGE: torch.from_numpy(np.ascontiguousarray(img)), keys.AFFINE: nd.get(s, keys.AFFINE) @ shift}
        )


@pytest.fixture
def cases(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for sid, shape in SHAPES.items():
        vol = rng.normal(size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, AFFINES[sid]), root / f"{safe_name(sid)}.nii.gz")
    (root / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    return root


def _reference(model_dirs, sample, post=POST):
    members = []
    for d in model_dirs:
        model, state = load_model(d, "last")
        members.append((make_eval_step(model), state))

    def predict(x):
        outs = [nd.get(step(st, nd.assoc({}, keys.IMAGE, x)), keys.logits()) for step, st in members]
        return sum(outs) / len(outs) if len(outs) > 1 else outs[0]

    labels = sliding_window(predict, nd.get(sample, keys.IMAGE), roi=(8, 8, 8), overlap=0.5, output="argmax")
    out = nd.assoc(sample, LABELS, labels.numpy())
    return nd.get(post(out) if post else out, LABELS)


def test_volumes_end_to_end_with_one_broken_case(cases, tmp_path):
    mdir = _model_dir(tmp_path / "m")
    data = Cases(cases, ["case/a", "broken", "case b"])
    out = tmp_path / "out" / "seg.parquet"
    frame = infer(
        mdir,
        data,
        output_file=out,
        checkpoint="last",
        device="cpu",
        sliding_window=SETTINGS,
        postprocess=POST,
        nifti_dir=tmp_path / "masks",
    )
    assert frame["sample_id"].to_list() == ["case/a", "case b"]
    assert frame.columns == ["sample_id", "mask_file"]
    assert pl.read_parquet(out).equals(frame)
    failed = json.loads(out.with_suffix(".failed.json").read_text())
    assert [f["sample_id"] for f in failed] == ["broken"] and "cannot read NIfTI" in failed[0]["error"]
    with h5py.File(out.with_suffix(".h5")) as f:
        assert [x.decode() for x in f["_index/sample_id"][()]] == ["case/a", "case b"]
        stored = {sid: f[LABELS][name][()] for sid, name in zip(["case/a", "case b"], f["_index/name"].asstr()[()])}
    for i, sid in enumerate(["case/a", "case b"]):
        sample = data[0 if i == 0 else 2]
        want = _reference([mdir], sample)
        assert stored[sid].dtype == np.uint8
        np.testing.assert_array_equal(stored[sid], want)
        assert len(np.unique(want)) >= 2  # the model draws something: the mapping below is not trivially all-zero
        # the mask file: the original grid and affine; the crop's voxels where they came from, zero elsewhere
        path = tmp_path / "masks" / f"{safe_name(sid)}.nii.gz"
        assert frame["mask_file"][i] == str(path)
        img = nib.load(path)
        np.testing.assert_allclose(img.affine, AFFINES[sid], atol=1e-5)
        mask = np.asarray(img.dataobj)
        assert mask.shape == SHAPES[sid]
        np.testing.assert_array_equal(mask[1:, :, :-2], want)
        assert not mask[0].any() and not mask[:, :, -2:].any()


def test_ensemble_averages_members_window_by_window(cases, tmp_path):
    dirs = [_model_dir(tmp_path / "a", seed=0), _model_dir(tmp_path / "b", seed=1)]
    data = Cases(cases, ["case b"])
    infer(dirs, data, output_file=tmp_path / "e.parquet", checkpoint="last", device="cpu", sliding_window=SETTINGS)
    with h5py.File(tmp_path / "e.h5") as f:
        got = f[LABELS][safe_name("case b")][()]
    np.testing.assert_array_equal(got, _reference(dirs, data[0], post=None))
    single = _reference(dirs[:1], data[0], post=None)
    assert not np.array_equal(got, single)  # the second member changed something


def test_extra_columns_and_a_case_that_fails_in_the_model(cases, tmp_path):
    mdir = _model_dir(tmp_path / "m")

    class TwoChannels(Cases):
        def __getitem__(self, i):
            s = super().__getitem__(i)
            if nd.get(s, keys.SAMPLE_ID) == "case b":  # the model takes 1 channel
                s = nd.assoc(s, keys.IMAGE, torch.cat([nd.get(s, keys.IMAGE)] * 2))
            return s

    frame = infer(
        mdir,
        TwoChannels(cases, ["case/a", "case b"]),
        output_file=tmp_path / "o.parquet",
        output_columns={"affine": keys.AFFINE},
        checkpoint="last",
        device="cpu",
        sliding_window=SETTINGS,
    )
    assert frame["sample_id"].to_list() == ["case/a"] and "affine" not in frame.columns  # 4×4: to the sidecar
    failed = json.loads((tmp_path / "o.failed.json").read_text())
    assert failed[0]["sample_id"] == "case b" and "channels" in failed[0]["error"]
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["affine"][safe_name("case/a")].shape == (4, 4)


def test_volume_mode_errors(cases, tmp_path):
    mdir = _model_dir(tmp_path / "m")
    with pytest.raises(ConfigError, match="postprocess and nifti_dir are for volumes"):
        infer(mdir, Cases(cases, ["case b"]), output_file=tmp_path / "x.parquet", checkpoint="last", nifti_dir=tmp_path)
    with pytest.raises(ConfigError, match="map-style dataset"):
        infer(mdir, [{}], output_file=tmp_path / "x.parquet", checkpoint="last", sliding_window=SETTINGS)
    with pytest.raises(Exception, match="every case failed"):
        infer(
            mdir,
            Cases(cases, ["broken"]),
            output_file=tmp_path / "x.parquet",
            checkpoint="last",
            sliding_window=SETTINGS,
        )
    with pytest.raises(ConfigError, match="'mask_file' is volume inference's own"):
        infer(
            mdir,
            Cases(cases, ["case b"]),
            output_file=tmp_path / "x.parquet",
            output_columns={"mask_file": keys.AFFINE},
            checkpoint="last",
            sliding_window=SETTINGS,
        )
    assert not (tmp_path / "x.parquet").exists()


def test_settings_validate_and_repeat_one_roi():
    assert SlidingWindowSettings(roi=16).window_kwargs(3)["roi"] == (16, 16, 16)
    with pytest.raises(ConfigError, match="SlidingWindowSettings.blend"):
        SlidingWindowSettings(roi=16, blend="box")
    with pytest.raises(ConfigError, match="SlidingWindowSettings.roi"):
        SlidingWindowSettings(roi=(16, 0))
