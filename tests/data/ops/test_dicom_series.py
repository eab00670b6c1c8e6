"""DICOM series: order by position, per-slice rescale, the affine against the slices' own positions and
SimpleITK, and every way a folder fails to be one series."""

import os

import numpy as np
import polars as pl
import pytest

from fusefn import keys
from fusefn.data import DataSource, H5Cache
from fusefn.data.ops.dicom_series import DicomSeriesError, ReadDicomSeries, read_dicom_series, slice_affine
from fusefn.errors import SampleError

pydicom = pytest.importorskip("pydicom")

LPS = np.diag([-1.0, -1.0, 1.0])


def rotation(a, b, c):
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_slice(stored, *, iop, ipp, spacing, slope=1.0, intercept=0.0, series="1.2.3", instance=1, **tags):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, instance
    ds.ImageOrientationPatient = [f"{x:.10f}" for x in iop]
    ds.ImagePositionPatient = [f"{x:.6f}" for x in ipp]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    return ds


def oblique_series(folder, *, n=12, shape=(10, 14), seed=0, series="1.2.3.4", tilt=(0.0, 0.0)):
    """A shuffled oblique series: anisotropic spacing, per-slice rescale, InstanceNumber against the position.

    Returns the expected volume (slice, row, column), the slices' LPS positions in slice order and
    the directions (row, col, normal) and spacings (slice, row, column).
    """
    g = np.random.default_rng(seed)
    r = rotation(0.3, -0.5, 0.8)
    row, col = r[:, 0], r[:, 1]
    normal = np.cross(row, col)
    spacing = (2.7, 0.6, 0.9)  # slice, between rows, between columns
    origin = np.array([-120.5, 33.25, 410.0])
    stored = g.integers(-1000, 3000, (n, *shape)).astype(np.int16)
    slopes = g.choice([1.0, 0.5, 2.0, 0.25], n)
    intercepts = g.choice([-1024.0, 0.0, -10.5], n)
    expected = (stored * slopes[:, None, None] + intercepts[:, None, None]).astype(np.float32)
    shift = tilt[0] * row + tilt[1] * col  # a tilted gantry moves each slice in-plane too
    positions = origin + np.arange(n)[:, None] * (spacing[0] * normal + shift)
    os.makedirs(folder, exist_ok=True)
    perm = g.permutation(n)
    for name_index, k in enumerate(perm):
        ds = make_slice(
            stored[k],
            iop=np.concatenate([row, col]),
            ipp=positions[k],
            spacing=spacing[1:],
            slope=slopes[k],
            intercept=intercepts[k],
            series=series,
            instance=int((k * 7) % n) + 1,  # deliberately not the slice order
        )
        ds.save_as(os.path.join(folder, f"IMG{name_index:03d}"), enforce_file_format=True)
    return expected, positions, (row, col, normal), spacing


def test_shuffled_oblique_series_reads_back_in_place(tmp_path):
    expected, positions, (row, col, normal), spacing = oblique_series(tmp_path / "s")
    vol, affine, info = read_dicom_series(tmp_path / "s")
    assert vol.shape == (1, *expected.shape) and vol.dtype == np.float32
    np.testing.assert_array_equal(vol[0], expected)
    # physics: voxel (k, 0, 0) is slice k's ImagePositionPatient, LPS -> RAS
    for k, p in enumerate(positions):
        np.testing.assert_allclose((affine @ [k, 0, 0, 1])[:3], LPS @ p, atol=1e-4)
    # one step along a row is PixelSpacing[1] along the first direction of ImageOrientationPatient
    np.testing.assert_allclose(affine[:3, 2], LPS @ (row * spacing[2]), atol=1e-6)
    np.testing.assert_allclose(affine[:3, 1], LPS @ (col * spacing[1]), atol=1e-6)
    np.testing.assert_allclose(affine[:3, 0], LPS @ (normal * spacing[0]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), spacing, rtol=1e-6)
    assert info["n_slices"] == 12 and info["series_uid"] == "1.2.3.4"
    assert info["slice_spacing"] == pytest.approx(2.7)
    along = [np.array(pydicom.dcmread(f).ImagePositionPatient, float) @ normal for f in info["files"]]
    assert np.all(np.diff(along) > 0)  # the files in slice order: ascending along the normal
    single = read_dicom_series(tmp_path / "s", threads=1)
    np.testing.assert_array_equal(single[0], vol)
    np.testing.assert_array_equal(single[1], affine)


def test_matches_simpleitk_series_reader(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    oblique_series(tmp_path / "s", seed=3)
    vol, affine, _ = read_dicom_series(tmp_path / "s")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    img = reader.Execute()
    np.testing.assert_allclose(vol[0], sitk.GetArrayFromImage(img), atol=1e-3)
    lps = LPS @ affine[:3]
    direction = np.array(img.GetDirection()).reshape(3, 3)
    sx, sy, sz = img.GetSpacing()
    np.testing.assert_allclose(lps[:, 3], img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(lps[:, 2], direction[:, 0] * sx, atol=1e-5)  # x: along a row
    np.testing.assert_allclose(lps[:, 1], direction[:, 1] * sy, atol=1e-5)  # y: down a column
    np.testing.assert_allclose(lps[:, 0], direction[:, 2] * sz, atol=1e-4)  # z: slice to slice


def test_gantry_tilt_gives_the_sheared_affine_of_the_positions(tmp_path):
    expected, positions, _, _ = oblique_series(tmp_path / "s", tilt=(0.4, -0.2))
    vol, affine, _ = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol[0], expected)
    for k, p in enumerate(positions):
        np.testing.assert_allclose((affine @ [k, 0, 0, 1])[:3], LPS @ p, atol=1e-4)


def test_op_writes_the_affine_and_the_original_grid(tmp_path):
    oblique_series(tmp_path / "case7", n=5)
    frame = pl.DataFrame({"sample_id": ["case7"], "folder": [str(tmp_path / "case7")]})
    row = DataSource.from_frame(frame).rows()[0]
    sid = row.pop("sample_id")
    out = ReadDicomSeries(path_key="data.source.folder")({"data": {"sample_id": sid, "source": row}})["data"]["input"]
    assert out["img"].shape == (1, 5, 10, 14)
    assert out["affine"].shape == (4, 4) and out["affine"].dtype == np.float64
    np.testing.assert_array_equal(out["original_affine"], out["affine"])
    assert out["original_shape"] == (5, 10, 14)


def test_two_series_are_listed_and_series_uid_chooses(tmp_path):
    oblique_series(tmp_path / "s", n=4, series="1.2.840.1")
    expected, _, _, _ = oblique_series(tmp_path / "other", n=3, series="1.2.840.2", seed=1)
    for f in os.listdir(tmp_path / "other"):
        os.rename(tmp_path / "other" / f, tmp_path / "s" / f"b{f}")
    with pytest.raises(DicomSeriesError, match=r"2 series in one folder \(1\.2\.840\.1: 4 file\(s\); 1\.2\.840\.2: 3"):
        read_dicom_series(tmp_path / "s")
    vol, _, info = read_dicom_series(tmp_path / "s", series_uid="1.2.840.2")
    np.testing.assert_array_equal(vol[0], expected)
    assert info["n_slices"] == 3
    with pytest.raises(DicomSeriesError, match="no series '9.9'"):
        read_dicom_series(tmp_path / "s", series_uid="9.9")
    op = ReadDicomSeries(path=str(tmp_path / "s"), series_uid="{uid}")
    got = op({"data": {"sample_id": "a", "source": {"uid": "1.2.840.2"}}})
    assert got["data"]["input"]["img"].shape[1] == 3


def test_missing_slice_is_named(tmp_path):
    _, _, _, _ = oblique_series(tmp_path / "s", n=8)
    files = read_dicom_series(tmp_path / "s")[2]["files"]
    os.remove(files[4])
    with pytest.raises(DicomSeriesError, match=r"missing slices: 1 gap.* 5\.4 mm .*\(~1 missing\)"):
        read_dicom_series(tmp_path / "s")


def test_irregular_spacing_and_duplicate_positions(tmp_path):
    iop, stored = [1, 0, 0, 0, 1, 0], np.zeros((4, 4), np.int16)
    (tmp_path / "irr").mkdir()
    for k, z in enumerate([0.0, 2.0, 4.0, 6.0, 7.4, 10.0]):
        make_slice(stored, iop=iop, ipp=[0, 0, z], spacing=(1, 1)).save_as(
            tmp_path / "irr" / f"{k}.dcm", enforce_file_format=True
        )
    with pytest.raises(DicomSeriesError, match="irregular slice positions"):
        read_dicom_series(tmp_path / "irr")
    (tmp_path / "dup").mkdir()
    for k, z in enumerate([0.0, 1.0, 1.0, 2.0]):
        make_slice(stored, iop=iop, ipp=[0, 0, z], spacing=(1, 1)).save_as(
            tmp_path / "dup" / f"{k}.dcm", enforce_file_format=True
        )
    with pytest.raises(DicomSeriesError, match="share a position"):
        read_dicom_series(tmp_path / "dup")


def test_non_image_and_non_dicom_files_are_named(tmp_path):
    oblique_series(tmp_path / "s", n=3)
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"  # grayscale presentation state
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ps = pydicom.Dataset()
    ps.file_meta = meta
    ps.SOPClassUID, ps.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ps.SeriesInstanceUID = "1.2.3.4"
    ps.save_as(tmp_path / "s" / "pstate", enforce_file_format=True)
    with pytest.raises(DicomSeriesError, match=r"1 DICOM object\(s\) are not images \(no pixel data: pstate"):
        read_dicom_series(tmp_path / "s")
    os.remove(tmp_path / "s" / "pstate")
    (tmp_path / "s" / "notes.txt").write_text("not a slice")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\0\0")  # hidden files are skipped
    with pytest.raises(DicomSeriesError, match=r"1 file\(s\) are not readable DICOM \(notes.txt\)"):
        read_dicom_series(tmp_path / "s")
    os.remove(tmp_path / "s" / "notes.txt")
    assert read_dicom_series(tmp_path / "s")[0].shape == (1, 3, 10, 14)


def test_mixed_sizes_and_orientations(tmp_path):
    iop = [1, 0, 0, 0, 1, 0]
    (tmp_path / "size").mkdir()
    make_slice(np.zeros((4, 4), np.int16), iop=iop, ipp=[0, 0, 0], spacing=(1, 1)).save_as(
        tmp_path / "size" / "a", enforce_file_format=True
    )
    make_slice(np.zeros((4, 5), np.int16), iop=iop, ipp=[0, 0, 1], spacing=(1, 1)).save_as(
        tmp_path / "size" / "b", enforce_file_format=True
    )
    with pytest.raises(DicomSeriesError, match=r"mixed image sizes \(Rows, Columns\) in one series: \(4, 4\): 1"):
        read_dicom_series(tmp_path / "size")
    (tmp_path / "orient").mkdir()
    make_slice(np.zeros((4, 4), np.int16), iop=iop, ipp=[0, 0, 0], spacing=(1, 1)).save_as(
        tmp_path / "orient" / "a", enforce_file_format=True
    )
    tilted = [1, 0, 0, 0, np.cos(0.2), np.sin(0.2)]
    make_slice(np.zeros((4, 4), np.int16), iop=tilted, ipp=[0, 0, 1], spacing=(1, 1)).save_as(
        tmp_path / "orient" / "b", enforce_file_format=True
    )
    with pytest.raises(DicomSeriesError, match="mixed orientations"):
        read_dicom_series(tmp_path / "orient")
    (tmp_path / "ps").mkdir()
    make_slice(np.zeros((4, 4), np.int16), iop=iop, ipp=[0, 0, 0], spacing=(1, 1)).save_as(
        tmp_path / "ps" / "a", enforce_file_format=True
    )
    make_slice(np.zeros((4, 4), np.int16), iop=iop, ipp=[0, 0, 1], spacing=(1, 2)).save_as(
        tmp_path / "ps" / "b", enforce_file_format=True
    )
    with pytest.raises(DicomSeriesError, match="mixed PixelSpacing"):
        read_dicom_series(tmp_path / "ps")


def test_slices_without_position_are_refused(tmp_path):
    ds = make_slice(np.zeros((4, 4), np.int16), iop=[1, 0, 0, 0, 1, 0], ipp=[0, 0, 0], spacing=(1, 1))
    del ds.ImagePositionPatient
    (tmp_path / "s").mkdir()
    ds.save_as(tmp_path / "s" / "a", enforce_file_format=True)
    with pytest.raises(DicomSeriesError, match=r"have no ImagePositionPatient \(a\).*ReadDicom"):
        read_dicom_series(tmp_path / "s")


def test_bits_above_bits_stored_are_masked_like_pydicom(tmp_path):
    stored = np.array([[0x0FFF, 0x0800], [0x07FF, 0x0001]], dtype=np.uint16) | 0xF000  # junk in the high bits
    (tmp_path / "s").mkdir()
    for signed in (0, 1):
        ds = make_slice(stored.view(np.int16), iop=[1, 0, 0, 0, 1, 0], ipp=[0, 0, 0], spacing=(1, 1))
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, signed
        ds.save_as(tmp_path / "s" / "a", enforce_file_format=True)
        np.testing.assert_array_equal(
            read_dicom_series(tmp_path / "s")[0][0, 0], pydicom.dcmread(tmp_path / "s" / "a").pixel_array
        )


def test_rle_compressed_series_is_decoded(tmp_path):
    from pydicom.uid import RLELossless

    expected, _, _, _ = oblique_series(tmp_path / "s", n=4)
    for f in os.listdir(tmp_path / "s"):
        ds = pydicom.dcmread(tmp_path / "s" / f)
        ds.compress(RLELossless)
        ds.save_as(tmp_path / "s" / f, enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s")[0][0], expected)


def test_compressed_without_a_decoder_names_the_extra(tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    oblique_series(tmp_path / "s", n=2)
    for f in os.listdir(tmp_path / "s"):
        ds = pydicom.dcmread(tmp_path / "s" / f)
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xd9"])
        ds.save_as(tmp_path / "s" / f, enforce_file_format=True)
    with pytest.raises(
        DicomSeriesError, match=r"compressed \(JPEG-LS Lossless.*pip install 'fusefn\[dicom-compressed\]'"
    ):
        read_dicom_series(tmp_path / "s")


def test_op_errors_name_sample_op_and_key(tmp_path):
    op = ReadDicomSeries(path=str(tmp_path / "{sample_id}"))
    with pytest.raises(SampleError, match=r"sample 'nope', op ReadDicomSeries, key 'data.input.img': folder not found"):
        op({"data": {"sample_id": "nope"}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(SampleError, match=r"sample 'empty', op ReadDicomSeries, key 'data.input.img': .*no files"):
        op({"data": {"sample_id": "empty"}})


def test_a_bad_folder_fails_alone_in_a_cache_build(tmp_path):
    for i in range(3):
        oblique_series(tmp_path / "dicom" / f"case{i}", n=4, seed=i, series=f"1.2.{i}")
    oblique_series(tmp_path / "dicom" / "case1", n=2, seed=9, series="1.2.99")  # a second series: unreadable
    cache = H5Cache(
        root=tmp_path / "cache", pipeline=ReadDicomSeries(path=str(tmp_path / "dicom" / "{sample_id}")), progress=False
    )
    report = cache.build(["case0", "case1", "case2"])
    assert (report.computed, report.failed) == (2, 1)
    (failure,) = report.failures
    assert failure["sample_id"] == "case1" and failure["op"] == "ReadDicomSeries"
    assert "2 series in one folder" in failure["error"]
    with cache.open() as reader:
        s = reader.read("case2")
        assert s["data"]["input"]["affine"].shape == (4, 4) and s["data"]["input"]["original_shape"] == (4, 10, 14)


def test_single_file_read_dicom_affine_agrees_with_the_series(tmp_path):
    from fusefn.data.ops import ReadDicom

    oblique_series(tmp_path / "s", n=3)
    _, affine, info = read_dicom_series(tmp_path / "s")
    first = pydicom.dcmread(info["files"][0])
    one = slice_affine(first)
    np.testing.assert_allclose(one[:, 1:], affine[:, 1:], atol=1e-6)  # same rows, columns and origin
    # no SpacingBetweenSlices or SliceThickness in these files: a 1 mm step along the normal
    np.testing.assert_allclose(one[:3, 0], affine[:3, 0] / 2.7, atol=1e-6)
    out = ReadDicom(path=info["files"][0], affine_key=keys.AFFINE)({"data": {"sample_id": "x"}})
    np.testing.assert_array_equal(out["data"]["input"]["affine"], one)
    del first.ImagePositionPatient
    first.save_as(tmp_path / "nopos.dcm", enforce_file_format=True)
    with pytest.raises(SampleError, match=r"op ReadDicom, key 'data.input.affine': .*no ImagePositionPatient"):
        ReadDicom(path=str(tmp_path / "nopos.dcm"), affine_key=keys.AFFINE)({"data": {"sample_id": "x"}})


def test_monochrome1_slices_read_like_read_dicom(tmp_path):
    from fusefn.data.ops import ReadDicom

    iop, g = [1, 0, 0, 0, 1, 0], np.random.default_rng(5)
    (tmp_path / "s").mkdir()
    for k in range(3):
        ds = make_slice(g.integers(0, 4000, (4, 6)).astype(np.int16), iop=iop, ipp=[0, 0, 2.0 * k], spacing=(1, 1))
        ds.PhotometricInterpretation, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = "MONOCHROME1", 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1 + k, -5.0 * k
        ds.save_as(tmp_path / "s" / f"{k}.dcm", enforce_file_format=True)
    vol = read_dicom_series(tmp_path / "s")[0]
    for k in range(3):
        one = ReadDicom(path=str(tmp_path / "s" / f"{k}.dcm"))({"data": {"sample_id": "x"}})["data"]["input"]["img"]
        np.testing.assert_array_equal(vol[0, k], one[0])
