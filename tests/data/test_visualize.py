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
    monkeypatch.setattr(visualize, "save_figure", lambda fig, path, **kw: saved.append(fig) or pathlib.Path(path))
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


# ------------------------------------------------------------------ figures a reader trusts (issue 17)


def _capture(monkeypatch):
    saved = []
    real = visualize.save_figure

    def save(fig, path, **kw):
        saved.append((fig, kw))
        return real(fig, path, **kw)

    monkeypatch.setattr(visualize, "save_figure", save)
    return saved


def test_score_histograms_have_axis_labels_and_one_legend_off_the_data(tmp_path, monkeypatch):
    saved = _capture(monkeypatch)
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 20)
    scores = {"p[0]": rng.random(50), "p[1]": rng.random(50)}
    path = visualize.show_scores(scores, tmp_path / "scores.png", labels=labels, label_name="label")
    fig, _kw = saved[0]
    assert is_png(path) and "split by label" in visualize.figure_caption(path)
    for ax, name in zip(fig.axes, scores):
        assert ax.get_title() == name and ax.get_xlabel() == f"score ({name})" and ax.get_ylabel() == "samples"
        assert ax.get_legend() is None  # no legend drawn over the bars
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["label = 0 (n=30)", "label = 1 (n=20)"]
    # the figure legend sits under the panels
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert all(box.y1 <= ax.get_window_extent().y0 for ax in fig.axes)


def test_a_volume_in_a_grid_says_which_slice(tmp_path, monkeypatch):
    saved = _capture(monkeypatch)
    affine = np.diag([2.0, 1.0, 1.0, 1.0])[[2, 1, 0, 3]]  # voxel axis 0 runs along z, 2 mm apart
    affine[:3, 3] = [0.0, 0.0, -10.0]
    vol = {"data": {"sample_id": "v1", "input": {"img": np.zeros((1, 9, 6, 6), np.float32), "affine": affine}}}
    plain = {"data": {"sample_id": "v2", "input": {"img": np.zeros((1, 9, 6, 6), np.float32)}}}
    visualize.show_batch([vol, plain], tmp_path / "b.png")
    titles = [ax.get_title() for ax in saved[0][0].axes]
    assert titles[0].endswith("axial slice 4 of 9, z = -2.0 mm")  # -10 + 4 * 2
    assert titles[1].endswith("slice 4 of 9 (voxel axis 0)")
    visualize.show_sample(sample(0), tmp_path / "s.png")  # a 2D image: no slice note
    assert "slice" not in saved[-1][0].axes[0].get_title()


def test_histogram_axes_are_labelled(tmp_path, monkeypatch):
    saved = _capture(monkeypatch)
    visualize.show_histogram(sample(0), tmp_path / "h.png")
    ax = saved[0][0].axes[1]
    assert ax.get_xlabel() == "intensity (data.input.img)" and ax.get_ylabel() == "count"
    assert "all 256 values" in ax.get_title()


def test_binary_prediction_grid_with_masks_and_captions(tmp_path, monkeypatch):
    saved = _capture(monkeypatch)
    samples = [sample(i) for i in range(6)]
    probs = np.array([0.9, 0.2, 0.55, 0.1, 0.7, 0.45])
    labels = np.array([0, 0, 1, 1, 1, 0])  # errors: 0 (P 0.9), 3 (P 0.1: confident 0.9 for "no")
    path = visualize.show_predictions(
        samples, tmp_path / "g.png", probs=probs, labels=labels, class_names=["no lesion", "lesion"], mask_key="auto"
    )
    titles = [ax.get_title() for ax in saved[0][0].axes]
    assert titles[0].startswith("ERROR  s0") and "true no lesion · pred lesion · P(lesion) 0.90" in titles[0]
    assert titles[1].startswith("ERROR  s3") and not titles[2].startswith("ERROR")
    assert "P(lesion) ≥ 0.5" in saved[0][0]._suptitle.get_text()
    assert "errors first" in visualize.figure_caption(path)
    # only the drawn samples are built when a function is given
    built = []
    visualize.show_predictions(
        lambda i: built.append(i) or samples[i], tmp_path / "g2.png", probs=probs, labels=labels, max_items=2
    )
    assert built == [0, 3]


def test_every_figure_carries_a_caption(tmp_path):
    assert visualize.figure_caption(visualize.show_batch(collate([sample(0)]), tmp_path / "b.png"))
    assert visualize.figure_caption(visualize.show_volume(np.zeros((4, 5, 6)), tmp_path / "v.png", n_slices=2))
    (tmp_path / "x.png").write_bytes(b"not a png")
    assert visualize.figure_caption(tmp_path / "x.png") is None
