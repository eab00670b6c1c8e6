import numpy as np
import polars as pl
import pytest

from fusefn import chain
from fusefn.data import DataSource, ops
from fusefn.errors import FusefnError, SampleError


def sample(sid, **source):
    s = {"data": {"sample_id": sid}}
    if source:
        s["data"]["source"] = source
    return s


def test_npy_template_and_path_key(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    out = ops.ReadNpy(path=str(tmp_path / "{sample_id}.npy"), add_channel=True)(sample("a"))
    assert out["data"]["input"]["img"].shape == (1, 2, 3)
    out = ops.ReadNpy(key="data.x")(sample("a", path=str(tmp_path / "a.npy")))
    np.testing.assert_array_equal(out["data"]["x"], np.arange(6).reshape(2, 3))


def test_missing_file_names_sample_op_key(tmp_path):
    read = ops.ReadNpy(path=str(tmp_path / "{sample_id}.npy"))
    with pytest.raises(SampleError, match=r"sample 'zz', op ReadNpy, key 'data.input.img': file not found") as e:
        read(sample("zz"))
    assert (e.value.sample_id, e.value.op, e.value.key) == ("zz", "ReadNpy", "data.input.img")


def test_template_with_unknown_field(tmp_path):
    with pytest.raises(SampleError, match="'root'"):
        ops.ReadNpy(path="{root}/{sample_id}.npy")(sample("a"))


def test_corrupt_npy(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(SampleError, match="sample 'bad', op ReadNpy.*cannot read"):
        ops.ReadNpy(path=str(tmp_path / "{sample_id}.npy"))(sample("bad"))


def test_medmnist_npz_through_source(tmp_path):
    imgs = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    np.savez(tmp_path / "mnist.npz", train_images=imgs, train_labels=np.array([[2], [0], [1]]))
    src = DataSource.from_medmnist(tmp_path / "mnist.npz")
    read = ops.ReadNpz(array="train_images", index_key="data.source.index", add_channel=True)
    row = src.rows()[1]
    s = sample(row.pop("sample_id"), **row)
    out = read(s)
    np.testing.assert_array_equal(out["data"]["input"]["img"], imgs[1][None])
    bad = sample("x", path=str(tmp_path / "mnist.npz"), index=7)
    with pytest.raises(SampleError, match=r"key 'data.source.index': index 7 outside \[0, 3\)"):
        read(bad)
    with pytest.raises(SampleError, match="no array 'val_images'"):
        ops.ReadNpz(array="val_images")(bad)


def test_png_and_jpeg(tmp_path):
    from PIL import Image

    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb).save(tmp_path / "c.jpg")
    png = ops.ReadImage(path=str(tmp_path / "c.png"))(sample("c"))["data"]["input"]["img"]
    assert png.shape == (3, 5, 7) and png.dtype == np.uint8 and png[0].min() == 200
    gray = ops.ReadImage(path=str(tmp_path / "c.jpg"), mode="L")(sample("c"))["data"]["input"]["img"]
    assert gray.shape == (1, 5, 7)


def test_corrupt_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(SampleError, match="sample 'broken', op ReadImage, key 'data.input.img': cannot read image"):
        ops.ReadImage(path=str(tmp_path / "{sample_id}.png"))(sample("broken"))


def write_dicom(path, pixels, slope=2.0, intercept=-100.0, window=None):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelSpacing = [0.5, 0.7]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_rescale_window(tmp_path):
    pixels = np.array([[0, 50], [100, 150]])
    write_dicom(tmp_path / "d.dcm", pixels, window=(100, 200))
    read = ops.ReadDicom(path=str(tmp_path / "d.dcm"))
    out = read(sample("d"))
    np.testing.assert_allclose(out["data"]["input"]["img"], (pixels * 2.0 - 100)[None])
    assert "affine" not in out["data"]["input"]  # 2D images get an affine only when asked (affine_key=)
    win = ops.ReadDicom(path=str(tmp_path / "d.dcm"), window="file")(sample("d"))["data"]["input"]["img"]
    np.testing.assert_allclose(win[0], np.clip((pixels * 2.0 - 100 - 0) / 200, 0, 1))
    assert win.dtype == np.float32


def test_corrupt_dicom(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(SampleError, match="sample 'x', op ReadDicom, key 'data.input.img': cannot read DICOM"):
        ops.ReadDicom(path=str(tmp_path / "{sample_id}.dcm"))(sample("x"))


def write_pixels(path, data, shape, photometric, samples=1, frames=None, bits=8, signed=False, **tags):
    """A secondary-capture DICOM of ``shape`` (rows, columns) whose PixelData is ``data`` as stored."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = shape
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    alloc = 8 if bits <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = alloc, bits, bits - 1, int(signed)
    for name, value in tags.items():
        setattr(ds, name, value)
    dtype = {(8, False): "u1", (8, True): "i1", (16, False): "<u2", (16, True): "<i2"}[alloc, signed]
    ds.PixelData = np.asarray(data).astype(dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)


def read_dicom(path, **kw):
    return ops.ReadDicom(path=str(path), **kw)(sample("d"))["data"]["input"]["img"]


def test_dicom_rgb_is_channel_first_like_read_image(tmp_path):
    from PIL import Image

    rgb = np.arange(4 * 5 * 3).reshape(4, 5, 3)
    write_pixels(tmp_path / "rgb.dcm", rgb, (4, 5), "RGB", samples=3)
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "rgb.png")
    img = read_dicom(tmp_path / "rgb.dcm")
    assert img.shape == (3, 4, 5) and img.dtype == np.float32
    np.testing.assert_array_equal(
        img, ops.ReadImage(path=str(tmp_path / "rgb.png"))(sample("d"))["data"]["input"]["img"]
    )
    video = np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3) % 256
    write_pixels(tmp_path / "video.dcm", video, (4, 5), "RGB", samples=3, frames=2)
    np.testing.assert_array_equal(read_dicom(tmp_path / "video.dcm"), np.moveaxis(video, -1, 0))  # 3×F×H×W


def test_dicom_ybr_full_and_422_become_rgb(tmp_path):
    from pydicom.pixels import convert_color_space

    ybr = np.random.default_rng(0).integers(0, 256, (4, 6, 3)).astype(np.uint8)
    write_pixels(tmp_path / "ybr.dcm", ybr, (4, 6), "YBR_FULL", samples=3)
    expected = convert_color_space(ybr, "YBR_FULL", "RGB")
    np.testing.assert_array_equal(read_dicom(tmp_path / "ybr.dcm"), np.moveaxis(expected, -1, 0))
    # 4:2:2 stores Y1 Y2 Cb Cr per pair of pixels; neutral chroma is gray
    pairs = np.array([[10, 20, 128, 128], [30, 40, 128, 128], [50, 60, 128, 128]] * 2)
    write_pixels(tmp_path / "y422.dcm", pairs, (2, 6), "YBR_FULL_422", samples=3)
    img = read_dicom(tmp_path / "y422.dcm")
    assert img.shape == (3, 2, 6)
    np.testing.assert_allclose(img, np.broadcast_to([10, 20, 30, 40, 50, 60], (3, 2, 6)), atol=1)


def test_dicom_palette_color_is_looked_up(tmp_path):
    lut = np.arange(256)
    tags = {}
    for colour, scale in (("Red", 1), ("Green", 2), ("Blue", 3)):
        tags[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        tags[f"{colour}PaletteColorLookupTableData"] = (lut * scale).astype("<u2").tobytes()
    write_pixels(tmp_path / "pal.dcm", [[0, 1, 2], [3, 4, 5]], (2, 3), "PALETTE COLOR", **tags)
    img = read_dicom(tmp_path / "pal.dcm")
    np.testing.assert_array_equal(img, [[[0, 1, 2], [3, 4, 5]], [[0, 2, 4], [6, 8, 10]], [[0, 3, 6], [9, 12, 15]]])


def test_dicom_unsupported_colour_space_is_named(tmp_path):
    write_pixels(tmp_path / "hsv.dcm", np.zeros((4, 5, 3)), (4, 5), "HSV", samples=3)
    with pytest.raises(SampleError, match="op ReadDicom, key 'data.input.img': .*photometric interpretation 'HSV'"):
        read_dicom(tmp_path / "hsv.dcm")


@pytest.mark.parametrize(
    ("bits", "signed", "stored", "expected"),
    [
        (8, False, [0, 255, 10], [255, 0, 245]),
        (12, False, [0, 4095, 10], [4095, 0, 4085]),
        (12, True, [-2048, 2047, 10], [2047, -2048, -11]),
    ],
)
def test_dicom_monochrome1_is_inverted_over_the_stored_range(tmp_path, bits, signed, stored, expected):
    write_pixels(tmp_path / "m1.dcm", [stored], (1, 3), "MONOCHROME1", bits=bits, signed=signed)
    np.testing.assert_array_equal(read_dicom(tmp_path / "m1.dcm"), [[expected]])
    write_pixels(
        tmp_path / "m1r.dcm",
        [stored],
        (1, 3),
        "MONOCHROME1",
        bits=bits,
        signed=signed,
        RescaleSlope=2,
        RescaleIntercept=-100,
    )
    np.testing.assert_array_equal(read_dicom(tmp_path / "m1r.dcm"), [[np.array(expected) * 2 - 100]])
    np.testing.assert_array_equal(read_dicom(tmp_path / "m1r.dcm", rescale=False), [[expected]])


def test_dicom_monochrome1_file_window_is_the_mirror_of_monochrome2(tmp_path):
    pixels = np.array([[0, 50, 100, 150, 200, 255]])
    tags = {"RescaleSlope": 2, "RescaleIntercept": -10, "WindowCenter": 150, "WindowWidth": 200}
    write_pixels(tmp_path / "m1.dcm", pixels, (1, 6), "MONOCHROME1", **tags)
    write_pixels(tmp_path / "m2.dcm", pixels, (1, 6), "MONOCHROME2", **tags)
    m1, m2 = read_dicom(tmp_path / "m1.dcm", window="file"), read_dicom(tmp_path / "m2.dcm", window="file")
    assert m2.max() > m2.min()
    np.testing.assert_allclose(m1, 1 - m2, atol=1e-6)
    # a window given to the op is over the output values, which MONOCHROME1 has already inverted
    m1_values = read_dicom(tmp_path / "m1.dcm")
    np.testing.assert_allclose(
        read_dicom(tmp_path / "m1.dcm", window=(300, 200)), np.clip((m1_values - 200) / 200, 0, 1), atol=1e-6
    )


def test_nifti_array_and_affine(tmp_path):
    import nibabel as nib

    vol = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    affine = np.array([[0.0, 0.0, -3.0, 20.0], [1.5, 0.0, 0.0, -7.0], [0.0, 2.0, 0.0, 1.25], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "v.nii.gz")
    src = DataSource.from_glob(str(tmp_path / "*.nii.gz"))
    row = src.rows()[0]
    out = ops.ReadNifti()(sample(row.pop("sample_id"), **row))
    assert out["data"]["sample_id"] == "v"
    np.testing.assert_allclose(out["data"]["input"]["img"][0], vol, rtol=1e-6)
    got = out["data"]["input"]
    assert got["affine"].dtype == np.float64 and got["original_shape"] == (4, 5, 6)
    np.testing.assert_array_equal(got["affine"], affine)
    np.testing.assert_array_equal(got["original_affine"], affine)
    assert "spacing" not in got  # derived from the affine, never stored twice
    (tmp_path / "bad.nii.gz").write_bytes(b"nope")
    with pytest.raises(SampleError, match="sample 'bad', op ReadNifti"):
        ops.ReadNifti(path=str(tmp_path / "bad.nii.gz"))(sample("bad"))


def _nifti(tmp_path, name, sform, s_code, qform, q_code, shape=(3, 4, 5)):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros(shape, np.float32), None)
    img.set_sform(sform, code=s_code)
    img.set_qform(qform, code=q_code)
    nib.save(img, tmp_path / name)
    return str(tmp_path / name)


def test_nifti_sform_first_then_qform_and_a_disagreement_named(tmp_path, recwarn):
    s_aff, q_aff = np.diag([2.0, 2.0, 2.0, 1.0]), np.diag([1.0, 1.0, 1.0, 1.0])
    s_aff[:3, 3] = [10, 0, 0]
    both = _nifti(tmp_path, "both.nii", s_aff, 1, q_aff, 1)
    with pytest.warns(
        UserWarning, match=r"both\.nii: sform \(scanner\) and qform \(scanner\) place .* using the sform"
    ):
        got = ops.ReadNifti(path=both)(sample("b"))["data"]["input"]["affine"]
    np.testing.assert_array_equal(got, s_aff)
    q_only = _nifti(tmp_path, "q.nii", s_aff, 0, q_aff, 1)
    np.testing.assert_array_equal(ops.ReadNifti(path=q_only)(sample("q"))["data"]["input"]["affine"], q_aff)
    same = _nifti(tmp_path, "same.nii", s_aff, 2, s_aff, 1)
    ops.ReadNifti(path=same)(sample("s"))
    assert not [w for w in recwarn if "same.nii" in str(w.message)]


def test_nifti_without_sform_or_qform_is_an_error(tmp_path):
    path = _nifti(tmp_path, "none.nii", np.eye(4), 0, np.eye(4), 0)
    with pytest.raises(
        SampleError, match=r"sample 'n', op ReadNifti, key 'data.input.img': .*none\.nii: neither sform nor qform"
    ):
        ops.ReadNifti(path=path)(sample("n"))


def test_mask_on_another_grid_is_named_with_the_distance(tmp_path):
    img_aff = np.diag([0.8, 0.8, 2.5, 1.0])
    moved = img_aff.copy()
    moved[2, 3] = 1.25  # half a slice off
    img = _nifti(tmp_path, "img.nii", img_aff, 1, img_aff, 1)
    good = _nifti(tmp_path, "seg.nii", img_aff + 1e-5 * (np.arange(16).reshape(4, 4) % 2), 1, img_aff, 1)
    bad = _nifti(tmp_path, "bad.nii", moved, 1, moved, 1)
    read = ops.ReadNifti(path=img)
    s = ops.ReadNifti(key="data.gt.mask", path=good, check_affine_key="data.input.affine")(read(sample("c")))
    assert s["data"]["gt"]["mask"].shape == (1, 3, 4, 5)
    np.testing.assert_allclose(s["data"]["input"]["affine"], img_aff, atol=1e-6)  # the image's grid is kept
    with pytest.raises(
        SampleError,
        match=r"sample 'c', op ReadNifti, key 'data.gt.mask': the grid of .*bad\.nii is not the grid at "
        r"'data.input.affine': the same voxel lies 1\.25 mm apart \(tolerance 0\.001 mm\)",
    ):
        ops.ReadNifti(key="data.gt.mask", path=bad, check_affine_key="data.input.affine")(read(sample("c")))
    loose = ops.ReadNifti(key="data.gt.mask", path=bad, check_affine_key="data.input.affine", affine_tolerance=2.0)
    assert loose(read(sample("c")))["data"]["gt"]["mask"].shape == (1, 3, 4, 5)


def test_nifti_4d_volumes_become_channels(tmp_path):
    import nibabel as nib

    vol = np.random.default_rng(1).random((3, 4, 5, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "t.nii")
    out = ops.ReadNifti(path=str(tmp_path / "t.nii"))(sample("t"))["data"]["input"]
    np.testing.assert_array_equal(out["img"], np.moveaxis(vol, -1, 0))
    assert out["original_shape"] == (3, 4, 5)


def test_missing_optional_dependency_is_named(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` raise ImportError
    with pytest.raises(FusefnError, match=r"pip install 'fusefn\[dicom\]'"):
        ops.ReadDicom(path=str(tmp_path / "x.dcm"))(sample("x"))


def test_readers_compose_with_chain(tmp_path):
    np.save(tmp_path / "a.npy", np.full((4, 4), 3.0))
    prep = chain(
        ops.ReadNpy(path=str(tmp_path / "{sample_id}.npy"), add_channel=True),
        ops.AsType(keys="data.input.img", dtype="float32"),
    )
    assert prep(sample("a"))["data"]["input"]["img"].dtype == np.float32
    frame = pl.DataFrame({"sample_id": ["a"], "path": [str(tmp_path / "a.npy")]})
    assert DataSource.from_frame(frame).ids == ["a"]


def test_npz_members_are_kept_per_op_outside_its_configuration(tmp_path):
    import os
    import pickle

    from fusefn.core import fingerprint
    from fusefn.data.ops import read

    path = tmp_path / "a.npz"
    np.savez(path, images=np.zeros((2, 3, 3), np.float32))
    op = ops.ReadNpz(array="images", path=str(path), index_key="data.source.index")
    before = fingerprint(op)
    assert op(sample("a", index=1))["data"]["input"]["img"].sum() == 0
    assert fingerprint(op) == before
    np.savez(path, images=np.ones((2, 3, 3), np.float32))
    os.utime(path, ns=(1, 1))
    assert op(sample("a", index=1))["data"]["input"]["img"].sum() == 9  # a changed file is read again
    again = pickle.loads(pickle.dumps(op))
    assert again == op and again(sample("a", index=0))["data"]["input"]["img"].sum() == 9
    for i in range(read._NPZ_KEPT + 3):
        np.savez(tmp_path / f"m{i}.npz", images=np.full((1, 2, 2), i, np.float32))
    many = ops.ReadNpz(array="images", path=str(tmp_path / "{sample_id}.npz"), index_key="data.source.index")
    for i in range(read._NPZ_KEPT + 3):
        assert many(sample(f"m{i}", index=0))["data"]["input"]["img"][0, 0] == i
    assert len(many._memo) == read._NPZ_KEPT
