import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from fusefn.data import collate, visualize
from fusefn.errors import SampleError


def sample(i, rgb=False):
    img = np.random.default_rng(i).random((3 if rgb else 1, 16, 16)).astype(np.float32)
    mask = np.zeros((1, 16, 16), np.int64)
    mask[0, 4:8, 4:8] = 1
    return {
        "data": {"sample_id": f"s{i}", "input": {"img": img}, "gt": {"label": i % 2, "mask": mask}},
        "model": {"head_0": {"probs": torch.tensor([0.3, 0.7])}},
    }


def is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 50


def test_every_figure_writes_a_png(tmp_path):
    s = sample(0)
    assert is_png(visualize.show_sample(s, tmp_path / "s.png", pred_key="model.head_0.probs"))
    assert is_png(visualize.show_sample(sample(1, rgb=True), tmp_path / "rgb.png"))
    batch = collate([sample(i) for i in range(5)])
    assert is_png(visualize.show_batch(batch, tmp_path / "sub" / "batch.png"))
    after = {**s, "data": {**s["data"], "input": {"img": s["data"]["input"]["img"][:, ::-1].copy()}}}
    assert is_png(visualize.show_before_after(s, after, tmp_path / "ba.png"))
    vol = {
        "data": {
            "sample_id": "v",
            "input": {"img": torch.rand(1, 8, 10, 12)},
            "gt": {"mask": (torch.rand(1, 8, 10, 12) > 0.8).long()},
        }
    }
    assert is_png(visualize.show_volume(vol, tmp_path / "vol.png", n_slices=4))
    assert is_png(visualize.show_histogram(s, tmp_path / "hist.png"))


def test_bad_shapes_name_the_key(tmp_path):
    with pytest.raises(SampleError, match="key 'data.input.img'"):
        visualize.show_sample(
            {"data": {"sample_id": "a", "input": {"img": np.zeros((2, 2, 2, 2, 2))}}}, tmp_path / "x.png"
        )
    with pytest.raises(SampleError, match="needs a 3D volume"):
        visualize.show_volume(np.zeros((4, 4)), tmp_path / "v.png")


def test_a_missing_image_names_the_sample_and_key(tmp_path):
    s = {"data": {"sample_id": "case7", "input": {"image": np.zeros((1, 8, 8))}}}
    for show in (visualize.show_sample, visualize.show_histogram, visualize.show_volume):
        with pytest.raises(SampleError, match=r"sample 'case7'.*key 'data.input.img'.*data.input.image"):
            show(s, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())  # nothing half written


def test_a_mask_of_another_shape_is_an_error_not_a_stretched_overlay(tmp_path):
    s = sample(0)
    s["data"]["gt"]["mask"] = np.zeros((1, 8, 8), np.int64)
    with pytest.raises(SampleError, match=r"sample 's0'.*key 'data.gt.mask'.*\(8, 8\).*\(16, 16\)"):
        visualize.show_sample(s, tmp_path / "x.png")
    vol = {"data": {"sample_id": "v", "input": {"img": np.zeros((1, 8, 10, 12))}, "gt": {"mask": np.zeros((8, 10, 6))}}}
    with pytest.raises(SampleError, match=r"sample 'v'.*\(8, 10, 6\) does not match the image's \(8, 10, 12\)"):
        visualize.show_volume(vol, tmp_path / "v.png")


def test_safe_name_keeps_ids_inside_the_folder_and_apart():
    from urllib.parse import unquote

    ids = ["s0", "a/b", "a%2Fb", ".", "..", "../x", ".hidden", "", "ü", "a\\b", "c:d", "x" * 400, "x" * 401]
    names = [visualize.safe_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    for sid, name in zip(ids, names):
        assert "/" not in name and "\\" not in name and not name.startswith(".") and 0 < len(name) <= 120
        if len(sid) < 100 and sid:
            assert unquote(name) == sid
    assert visualize.sample_path("out", "../../etc/passwd").parent.name == "out"


# ------------------------------------------------------------------ keys (issue 20, item 8)


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_an_unknown_mask_key_is_an_error_naming_the_key_and_the_keys_there(tmp_path):
    with pytest.raises(SampleError, match=r"no 'data.gt.msk' to show \(did you mean 'data.gt.mask'\?\).*data.gt.mask"):
        visualize.show_sample(sample(0), tmp_path / "s.png", mask_key="data.gt.msk")
    with pytest.raises(SampleError, match=r"no 'data.input.image'.*data.input.img"):
        visualize.show_batch(collate([sample(0)]), tmp_path / "b.png", image_key="data.input.image")


def test_the_default_mask_is_drawn_when_present_and_none_means_none(tmp_path):
    s = sample(0)
    no_mask = {"data": {k: v for k, v in s["data"].items() if k != "gt"}}
    visualize.show_sample(no_mask, tmp_path / "plain.png")  # no mask in the sample: nothing to overlay, no error
    drawn = _pixels(visualize.show_sample(s, tmp_path / "auto.png"))
    bare = _pixels(visualize.show_sample(s, tmp_path / "none.png", mask_key=None))
    assert not np.array_equal(drawn, bare)


def test_recipe_samples_use_the_recipes_declared_mask(tmp_path, monkeypatch):
    from fusefn import Rng
    from fusefn_recipes import lesions2d

    seen = {}
    real = visualize.show_batch

    def spy(batch, path, **kw):
        seen.update(kw)
        return real(batch, path, **kw)

    monkeypatch.setattr(visualize, "show_batch", spy)
    path = visualize.show_recipe_samples(
        lesions2d.RECIPE, tmp_path / "out", num=4, rng=Rng(0), cache_dir=tmp_path / "c"
    )
    assert is_png(path) and seen["mask_key"] == lesions2d.SEG == lesions2d.RECIPE.mask_key
    with pytest.raises(SampleError, match=r"no 'data.gt.segm' to show \(did you mean 'data.gt.seg'\?\)"):
        visualize.show_recipe_samples(
            lesions2d.RECIPE, tmp_path / "out", num=2, rng=Rng(0), cache_dir=tmp_path / "c", mask_key="data.gt.segm"
        )


def test_show_volume_draws_true_aspect_and_world_positions(tmp_path, monkeypatch):
    # an LPS-stored CT, anisotropic: slices along z (axial) at 2.5 mm, rows and columns at 0.5 / 0.8 mm
    import matplotlib.figure

    affine = np.array([[0.0, 0.0, -0.8, 10.0], [0.0, -0.5, 0.0, 20.0], [2.5, 0.0, 0.0, -30.0], [0, 0, 0, 1.0]])
    vol = np.random.default_rng(0).random((1, 8, 12, 10)).astype(np.float32)
    sample = {"data": {"sample_id": "ct", "input": {"img": vol, "affine": affine}}}
    saved = []
    monkeypatch.setattr(visualize, "save_figure", lambda fig, path: saved.append(fig) or pathlib.Path(path))
    visualize.show_volume(sample, tmp_path / "v.png", n_slices=2)
    fig = saved[0]
    assert isinstance(fig, matplotlib.figure.Figure)
    axes = fig.axes
    # first row slices voxel axis 0, which runs along z: axial; its pixels are 0.5 mm tall, 0.8 mm wide
    assert axes[0].get_title().startswith("axial 2")
    assert axes[0].get_aspect() == pytest.approx(0.5 / 0.8)
    # the slice's world position: z of voxel (2, centre, centre) = -30 + 2 * 2.5
    assert "z = -25.0 mm" in axes[0].get_title()
    # second row slices voxel axis 1 (along y: coronal), rows 2.5 mm, columns 0.8 mm
    assert axes[2].get_title().startswith("coronal") and axes[2].get_aspect() == pytest.approx(2.5 / 0.8)
    # third row: voxel axis 2 runs along -x (L): sagittal, x of slice 3 = 10 - 3 * 0.8
    assert axes[4].get_title() == "sagittal 3\nx = 7.6 mm"
