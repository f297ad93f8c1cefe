"""DICOM read/write: stored values round-trip, derived attributes, dciodvfy, pydicom's corpus."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medenhance as me
from medenhance.errors import ImageReadError, MedEnhanceError, UnsupportedImageError

from ..conftest import SAMPLES, SHARED

DICOMS = sorted(SAMPLES.glob("*.dcm")) + sorted((SHARED / "dicom-samples").rglob("*.dcm"))
CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.mark.parametrize("path", DICOMS, ids=lambda p: p.name[:30])
def test_roundtrip_keeps_stored_values(path: Path, tmp_path: Path) -> None:
    image = me.read_image(path)
    assert image.pixels.dtype == np.float32
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    out = me.write_image(image.with_pixels(image.pixels, "identity"), tmp_path / "out.dcm")
    src, dst = pydicom.dcmread(path), pydicom.dcmread(out)
    np.testing.assert_array_equal(src.pixel_array, dst.pixel_array)
    # A lossless compression the encoders can write is kept (RLE, JPEG 2000 lossless).
    from medenhance.io.dicom import KEPT_SYNTAXES

    syntax = src.file_meta.TransferSyntaxUID
    assert dst.file_meta.TransferSyntaxUID == (syntax if syntax in KEPT_SYNTAXES
                                               else ExplicitVRLittleEndian)
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "PhotometricInterpretation", "Rows", "Columns", "StudyInstanceUID",
                    "PatientID", "Modality"):
        assert dst.get(keyword) == src.get(keyword), keyword


def test_derived_attributes(samples: Path, tmp_path: Path) -> None:
    src_path = samples / "mr_head_MR1_JPLL.dcm"
    image = me.read_image(src_path)
    out = me.write_image(image.with_pixels(image.pixels * 0.5, "halved for a test"),
                         tmp_path / "d.dcm")
    src, dst = pydicom.dcmread(src_path), pydicom.dcmread(out)
    assert dst.SOPInstanceUID != src.SOPInstanceUID
    assert dst.SeriesInstanceUID != src.SeriesInstanceUID
    # Numbered apart from its source, as scanners number derived series.
    assert int(src.SeriesNumber) > 0 and dst.SeriesNumber == int(src.SeriesNumber) + 1000
    assert dst.file_meta.MediaStorageSOPInstanceUID == dst.SOPInstanceUID
    assert list(dst.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "halved for a test" in dst.DerivationDescription
    assert dst.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert dst.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dst.PixelSpacing == src.PixelSpacing
    # Halving on the [0, 1] scale halves the distance to the window's low end, in stored units.
    low = float(src.pixel_array.min())
    expected = np.rint(low + (src.pixel_array.astype(np.float64) - low) / 2)
    np.testing.assert_allclose(dst.pixel_array, expected, atol=1)


def test_monochrome1_is_inverted_and_restored(samples: Path, tmp_path: Path) -> None:
    path = samples / "cr_chest_RG1_J2KI.dcm"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = me.read_image(path)
    stored = ds.pixel_array
    # MONOCHROME1: the smallest stored value is displayed white, so it must become pixel 1.
    assert image.pixels.flat[np.argmin(stored)] == pytest.approx(1.0)
    assert image.pixels.flat[np.argmax(stored)] == pytest.approx(0.0)
    out = me.write_image(image, tmp_path / "cr.dcm")
    back = pydicom.dcmread(out)
    assert back.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_array_equal(back.pixel_array, stored)


def test_rescale_is_applied_and_undone(shared: Path, tmp_path: Path) -> None:
    path = shared / "dicom-samples" / "wg04" / "CT1_RLE.dcm"
    ds = pydicom.dcmread(path)
    image = me.read_image(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # float32 pixels carry ~7 significant digits: far below the 0.5 needed to round back exactly
    np.testing.assert_allclose(image.values(), hu, atol=1e-2)
    assert image.meta.window.low == hu.min() and image.meta.window.high == hu.max()
    back = pydicom.dcmread(me.write_image(image, tmp_path / "ct.dcm"))
    np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)


def _multiframe(path: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4096, size=(3, 32, 48), dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "OT", "P1"
    ds.set_pixel_data(frames, "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=True)
    return frames


def test_multiframe_roundtrip(tmp_path: Path) -> None:
    frames = _multiframe(tmp_path / "mf.dcm")
    image = me.read_image(tmp_path / "mf.dcm")
    assert image.shape == (3, 32, 48)
    out = me.write_image(image, tmp_path / "mf_out.dcm")
    back = pydicom.dcmread(out)
    assert int(back.NumberOfFrames) == 3
    np.testing.assert_array_equal(back.pixel_array, frames)


def test_colour_dicom_is_refused_with_reason() -> None:
    with pytest.raises(UnsupportedImageError, match="colour image"):
        me.read_image(CORPUS / "SC_rgb_rle.dcm")


@pytest.mark.parametrize("name,reason", [
    ("MR_truncated.dcm", "truncated"),
    ("rtplan.dcm", "no pixel data"),
    ("reportsi.dcm", "no pixel data"),
])
def test_bad_files_get_one_line_reasons(name: str, reason: str) -> None:
    with pytest.raises(ImageReadError, match=reason) as info:
        me.inspect_image(CORPUS / name)
    assert str(CORPUS / name) in str(info.value)
    assert "\n" not in str(info.value)


def test_not_dicom(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"hello, not a dicom file at all" * 10)
    with pytest.raises(ImageReadError, match="x.dcm"):
        me.read_image(bad)


def test_whole_pydicom_corpus_prints_or_fails_cleanly() -> None:
    """Every bundled pydicom test file is either described or refused with MedEnhanceError."""
    files = [p for p in sorted(CORPUS.rglob("*")) if p.is_file()]
    assert len(files) > 50
    described = refused = 0
    for path in files:
        try:
            info = me.inspect_image(path)
        except MedEnhanceError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            refused += 1
        else:
            assert info.rows > 0 and info.columns > 0 and info.frames >= 1
            described += 1
    assert described >= 40 and refused >= 10


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("path", DICOMS, ids=lambda p: p.name[:30])
def test_derived_dicom_passes_dciodvfy_as_well_as_source(path: Path, tmp_path: Path) -> None:
    image = me.read_image(path)
    out = me.write_image(image.with_pixels(np.sqrt(image.pixels), "sqrt for a test"),
                         tmp_path / "d.dcm")

    def errors(p: Path) -> list[str]:
        run = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True, check=False)
        return [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]

    assert len(errors(out)) <= len(errors(path)), errors(out)


def test_truncated_dicom_says_so(samples: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes((samples / "cr_chest_RG1_J2KI.dcm").read_bytes()[:4000])
    with pytest.raises(ImageReadError, match="probably truncated"):
        me.read_image(cut)


def test_pixel_spacing_is_kept_exactly_and_scaled_precisely(shared: Path, tmp_path: Path) -> None:
    source = shared / "dicom-samples" / "mr_jpeg2000_lossless" / "fMRI_MB_int" / "jp2k1.dcm"
    image = me.read_image(source)
    same = pydicom.dcmread(me.write_image(image, tmp_path / "same.dcm"))
    assert [str(v) for v in same.PixelSpacing] == ["2.6976745128632"] * 2
    frames = image.pixels
    half = image.with_pixels(frames.reshape(*frames.shape[:-2], frames.shape[-2] // 2, 2,
                                            frames.shape[-1] // 2, 2).mean((-3, -1)), "halve")
    halved = pydicom.dcmread(me.write_image(half, tmp_path / "half.dcm"))
    np.testing.assert_allclose([float(v) for v in halved.PixelSpacing], [2 * 2.6976745128632] * 2,
                               rtol=1e-12)


def test_dicom_to_nifti_keeps_the_pixel_spacing(shared: Path, tmp_path: Path) -> None:
    import nibabel as nib

    source = shared / "dicom-samples" / "mr_jpeg2000_lossless" / "fMRI_MB_int" / "jp2k1.dcm"
    out = me.write_image(me.read_image(source), tmp_path / "o.nii.gz")
    np.testing.assert_allclose(nib.load(out).header.get_zooms()[:2], [2.6976745128632] * 2,
                               rtol=1e-6)


def test_slices_of_one_series_stay_one_derived_series(samples: Path, tmp_path: Path) -> None:
    """Each slice file used to get a series of its own: a 12-slice series became 12 series."""
    source = pydicom.dcmread(samples / "mr_head_MR1_JPLL.dcm")
    image = me.read_image(samples / "mr_head_MR1_JPLL.dcm")
    written = {}
    for name, series, step in (("a", "1.2.3.1", "denoise, noise level 3.1/255"),
                               ("b", "1.2.3.1", "denoise, noise level 7.6/255"),
                               ("c", "1.2.3.2", "denoise, noise level 3.1/255"),
                               ("d", "1.2.3.1", "jpeg(quality=40)")):
        image.meta.header.SeriesInstanceUID = series
        out = me.write_image(image.with_pixels(image.pixels, step), tmp_path / f"{name}.dcm")
        written[name] = pydicom.dcmread(out).SeriesInstanceUID
    assert written["a"] == written["b"]          # one series, whatever the slice's noise
    assert len({written["a"], written["c"], written["d"], "1.2.3.1"}) == 4
    assert source.SeriesInstanceUID not in written.values()


def test_enhanced_objects_keep_image_type_value_2_and_mark_frames_derived(tmp_path: Path
                                                                          ) -> None:
    _multiframe(tmp_path / "mf.dcm")
    ds = pydicom.dcmread(tmp_path / "mf.dcm")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    shared = Dataset()
    shared.CTImageFrameTypeSequence = [frame_type]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.save_as(tmp_path / "enh.dcm", enforce_file_format=True)
    out = pydicom.dcmread(me.write_image(me.read_image(tmp_path / "enh.dcm"),
                                         tmp_path / "out.dcm"))
    assert list(out.ImageType) == ["DERIVED", "PRIMARY", "AXIAL", "NONE"]
    frames = out.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0]
    assert list(frames.FrameType) == ["DERIVED", "PRIMARY", "AXIAL", "NONE"]


def _padded_ct(shared: Path, path: Path, far: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The NEMA CT slice in HU with noise, and -2000 (Pixel Padding Value) outside a circle;
    returns the clean HU and the padding mask. ``far``: stored unsigned with intercept -1024
    and padded with 63536, far above the picture (as a user's scanner wrote it)."""
    src = pydicom.dcmread(shared / "dicom-samples" / "wg04" / "CT1_RLE.dcm")
    clean = np.clip(src.pixel_array.astype(np.float64) * float(src.RescaleSlope)
                    + float(src.RescaleIntercept), -1024, 3071)[128:384, 128:384]
    noisy = np.rint(clean + np.random.default_rng(0).normal(0, 25, clean.shape))
    yy, xx = np.mgrid[:256, :256]
    outside = (yy - 128) ** 2 + (xx - 128) ** 2 > 120 ** 2
    noisy[outside] = -2000
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = src.SOPClassUID, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "P1"
    if far:
        stored = np.where(outside, 63536, noisy + 1024).astype(np.uint16)
        ds.set_pixel_data(stored, "MONOCHROME2", 16)
        ds.RescaleSlope, ds.RescaleIntercept, ds.PixelPaddingValue = 1, -1024, 63536
    else:
        ds.set_pixel_data(noisy.astype(np.int16), "MONOCHROME2", 16)
        ds.RescaleSlope, ds.RescaleIntercept, ds.PixelPaddingValue = 1, 0, -2000
    ds.save_as(path, enforce_file_format=True)
    return clean, outside


def test_padding_far_beyond_the_picture_does_not_squash_it(shared: Path, tmp_path: Path) -> None:
    """An unsigned CT padded with 63536 kept its tissue on the lowest 3 % of the window: the
    denoiser estimated a noise of 0.1/255, left a checkerboard and moved soft tissue by -49 HU.
    The picture is now processed over its own range, as the same slice padded with -2000 is."""
    from medenhance.degrade import Pipeline, degrade_image
    from medenhance.inference.enhance import enhance_image

    clean, outside = _padded_ct(shared, tmp_path / "near.dcm")
    _padded_ct(shared, tmp_path / "far.dcm", far=True)
    near, far = me.read_image(tmp_path / "near.dcm"), me.read_image(tmp_path / "far.dcm")
    np.testing.assert_allclose(near.values()[~outside], far.values()[~outside], atol=1e-3)
    written = {}
    for name, image in (("near", near), ("far", far)):
        out = enhance_image(image, "xray-denoise")
        ds = pydicom.dcmread(me.write_image(out, tmp_path / f"{name}-out.dcm"))
        written[name] = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept)
        assert (ds.pixel_array[outside] == image.meta.extra["padding"][0]).all()
    inside = ~outside
    assert np.abs(written["far"][inside] - written["near"][inside]).max() <= 1
    error = lambda v: np.sqrt(np.mean((v[inside] - clean[inside]) ** 2))  # noqa: E731
    assert error(written["far"]) < 0.8 * error(far.values())
    assert abs(np.mean(written["far"][inside] - clean[inside])) < 3         # HU; was -49
    # Degradation's noise levels are on the picture's scale too: the same noise in HU.
    noise = {name: degrade_image(image, Pipeline.from_preset("gaussian-25"), seed=0)[0]
             .values()[inside] - image.values()[inside] for name, image in (("near", near),
                                                                            ("far", far))}
    assert np.std(noise["far"]) == pytest.approx(np.std(noise["near"]), rel=0.01)


def test_pixel_padding_is_left_out_and_written_back(shared: Path, tmp_path: Path) -> None:
    """The padding outside a CT's field of view was denoised as tissue: viewers no longer hid
    it, and the ring inside the edge came out worse than the noisy input."""
    from medenhance.degrade import Pipeline, degrade_image
    from medenhance.inference.enhance import enhance_image
    from medenhance.io.padding import padding_mask

    clean, outside = _padded_ct(shared, tmp_path / "pad.dcm")
    image = me.read_image(tmp_path / "pad.dcm")
    np.testing.assert_array_equal(padding_mask(image), outside)
    out = pydicom.dcmread(me.write_image(enhance_image(image, "xray-denoise"),
                                         tmp_path / "out.dcm"))
    assert (out.pixel_array[outside] == -2000).all()
    yy, xx = np.mgrid[:256, :256]
    ring = ~outside & ((yy - 128) ** 2 + (xx - 128) ** 2 > 100 ** 2)
    error = lambda v: np.sqrt(np.mean((v[ring] - clean[ring]) ** 2))  # noqa: E731
    assert error(out.pixel_array.astype(np.float64)) < 0.9 * error(image.values())
    degraded, _ = degrade_image(image, Pipeline.from_preset("gaussian-blind"), seed=0)
    np.testing.assert_array_equal(degraded.values()[outside], -2000)
    assert not np.array_equal(degraded.values()[~outside], image.values()[~outside])


def test_two_models_of_one_name_make_two_series(samples: Path, tmp_path: Path) -> None:
    """Outputs of runs/…/best.safetensors and of the bundled model of the same card name, or of
    two noise levels, shared one series: a PACS would have merged them."""
    import shutil

    from medenhance.inference.enhance import EnhanceOptions, enhance_image
    from medenhance.models.card import bundled_dir

    for suffix in (".safetensors", ".json"):
        shutil.copyfile(bundled_dir() / f"mri-denoise{suffix}", tmp_path / f"copy{suffix}")
    image = me.read_image(samples / "mr_head_MR1_JPLL.dcm")
    image = image.with_pixels(image.pixels[:64, :64], "cropped for speed")
    series = {}
    for name, model, level in (("bundled", "mri-denoise", None), ("again", "mri-denoise", None),
                               ("copy", tmp_path / "copy.safetensors", None),
                               ("level", "mri-denoise", 5 / 255)):
        out = enhance_image(image, model, EnhanceOptions(noise_level=level))
        series[name] = pydicom.dcmread(me.write_image(out, tmp_path / f"{name}.dcm"))\
            .SeriesInstanceUID
    assert series["bundled"] == series["again"]
    assert len({series["bundled"], series["copy"], series["level"]}) == 3


def test_padding_survives_resizing_and_noise_does_not_turn_tissue_into_padding(
        shared: Path, tmp_path: Path) -> None:
    from medenhance.degrade import Pipeline, degrade_image

    _, outside = _padded_ct(shared, tmp_path / "pad.dcm")
    image = me.read_image(tmp_path / "pad.dcm")
    small, _ = degrade_image(image, Pipeline.from_preset("sr-x2"), seed=0)
    stored = pydicom.dcmread(me.write_image(small, tmp_path / "small.dcm")).pixel_array
    assert stored.shape == (128, 128)
    np.testing.assert_array_equal(stored == -2000, outside[1::2, 1::2])  # nearest to centres
    noisy, _ = degrade_image(image, Pipeline.from_preset("gaussian-50"), seed=0)
    stored = pydicom.dcmread(me.write_image(noisy, tmp_path / "noisy.dcm")).pixel_array
    np.testing.assert_array_equal(stored == -2000, outside)      # no tissue pixel on -2000
    # Noise is clipped at the picture's lowest value, as it is at the window of an image
    # without padding (padding far below the picture does not widen the scale).
    assert stored[~outside].min() == round(image.values()[~outside].min()) > -2000


def test_degrading_does_not_spread_padding_into_the_field_of_view(shared: Path,
                                                                   tmp_path: Path) -> None:
    """Blurs and resampling mixed the -2000 HU padding into the tissue at the edge: pixels far
    darker than air appeared inside the field of view."""
    from medenhance.degrade import Pipeline, degrade_image

    _, outside = _padded_ct(shared, tmp_path / "pad.dcm")
    image = me.read_image(tmp_path / "pad.dcm")
    darkest = image.values()[~outside].min()
    for preset in ("xray-motion", "xray-scatter", "sr-x2"):
        out, _ = degrade_image(image, Pipeline.from_preset(preset), seed=0)
        inside = out.values()[out.values() > -2000]
        assert inside.min() > darkest - 40, (preset, inside.min())


def test_tissue_is_moved_off_a_padding_value_at_the_top_of_the_window(tmp_path: Path) -> None:
    from medenhance.degrade import Pipeline, degrade_image

    rng = np.random.default_rng(0)
    stored = rng.integers(100, 3000, (64, 64)).astype(np.uint16)
    stored[:, :8] = 4095                                    # padding, the brightest value
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "OT"
    ds.set_pixel_data(stored, "MONOCHROME2", 16)
    ds.PixelPaddingValue = 4095
    ds.save_as(tmp_path / "top.dcm", enforce_file_format=True)
    noisy, _ = degrade_image(me.read_image(tmp_path / "top.dcm"),
                             Pipeline.from_preset("gaussian-50"), seed=0)
    back = pydicom.dcmread(me.write_image(noisy, tmp_path / "out.dcm")).pixel_array
    np.testing.assert_array_equal(back == 4095, stored == 4095)


def test_a_big_endian_file_is_written_little_endian(tmp_path: Path) -> None:
    """Explicit VR Big Endian (retired, still in archives) was read, then failed at writing:
    pydicom refused to convert between byte orders."""
    from pydicom.uid import ExplicitVRBigEndian

    values = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 3) % 4096
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"         # CR Image Storage
    ds.SOPInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.SeriesInstanceUID, ds.Modality, ds.PatientName = generate_uid(), "CR", "Test^Big"
    ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept = [0.2, 0.3], 2, -100
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 64, 48, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = values.astype(">u2").tobytes()
    ds.add_new(0x60000010, "US", 2)                       # an overlay: words kept as bytes
    ds.add_new(0x60000011, "US", 16)
    ds.add_new(0x60003000, "OW", np.array([0x1234, 0x00FF], ">u2").tobytes())
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    pydicom.dcmwrite(tmp_path / "big.dcm", ds, little_endian=False, implicit_vr=False,
                     enforce_file_format=True)
    image = me.read_image(tmp_path / "big.dcm")
    np.testing.assert_allclose(image.values(), values * 2.0 - 100, atol=1e-3)
    out = pydicom.dcmread(me.write_image(image, tmp_path / "out.dcm"))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(out.pixel_array, values)
    assert (str(out.PatientName), [float(v) for v in out.PixelSpacing]) == ("Test^Big",
                                                                             [0.2, 0.3])
    assert (float(out.RescaleSlope), float(out.RescaleIntercept)) == (2.0, -100.0)
    assert np.frombuffer(out[0x60003000].value, "<u2").tolist() == [0x1234, 0x00FF]


def test_enhanced_objects_give_their_spacing_from_the_functional_groups() -> None:
    """`info` showed no spacing for an Enhanced MR image: it keeps Pixel Spacing in its
    functional groups, not at the top level."""
    from pydicom.sequence import Sequence

    from medenhance.io.dicom import _spacing

    def measures(spacing: list[float]) -> Dataset:
        item, group = Dataset(), Dataset()
        item.PixelSpacing = spacing
        group.PixelMeasuresSequence = Sequence([item])
        return group

    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = Sequence([measures([0.8, 0.9])])
    assert _spacing(ds) == (0.8, 0.9)
    ds = Dataset()
    ds.PerFrameFunctionalGroupsSequence = Sequence([measures([0.5, 0.5]), measures([0.6, 0.6])])
    assert _spacing(ds) == (0.5, 0.5)
    ds.PixelSpacing = [0.4, 0.4]                   # the top level first, as before
    assert _spacing(ds) == (0.4, 0.4)
    assert _spacing(Dataset()) is None


def test_the_source_derivation_is_kept_before_ours(samples: Path, tmp_path: Path) -> None:
    """A lossy-compressed radiograph's "JPEG 2000 irreversible (lossy) 10:1" was replaced by
    the enhancement's description."""
    from medenhance.io.dicom import _derivation_text

    image = me.read_image(samples / "cr_chest_RG1_J2KI.dcm")
    out = pydicom.dcmread(me.write_image(image.with_pixels(image.pixels, "copied for a test"),
                                         tmp_path / "d.dcm"))
    assert out.DerivationDescription.startswith("JPEG 2000 irreversible (lossy) 10:1; copied "
                                                "for a test (medenhance ")
    long = _derivation_text(["ours"], "x" * 2000)      # ST: 1024 characters, ours kept whole
    assert len(long) == 1024 and long.endswith("not for diagnosis)") and "...; ours" in long


def test_a_dicom_file_without_preamble_or_suffix_is_found_and_read(tmp_path: Path) -> None:
    """PS3.10 lets old files leave out the preamble and file meta; without a suffix such a file
    was skipped as "not recognised", so a worklist left its study out."""
    values = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 7) % 4096
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID, ds.Modality = generate_uid(), "CR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 40, 30, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation, ds.PixelData = "MONOCHROME2", values.tobytes()
    pydicom.dcmwrite(tmp_path / "IM00001", ds, implicit_vr=True, little_endian=True)
    assert (tmp_path / "IM00001").read_bytes()[:2] == b"\x08\x00"      # no preamble
    ds.SpecificCharacterSet = ""              # an empty first element (length 0)
    pydicom.dcmwrite(tmp_path / "IM00002", ds, implicit_vr=True, little_endian=True)
    (tmp_path / "notes").write_bytes(b"\x08\x00\x05\x00" + bytes(range(200)))   # odd length
    (tmp_path / "blob").write_bytes(np.random.default_rng(0).bytes(500))
    # Raw 16-bit samples that begin 2, 5, 10, 0 (looked like (0002,0005), length 10).
    raw = np.r_[[2, 5, 10, 0], np.random.default_rng(1).integers(300, 4000, 500)]
    (tmp_path / "scan.raw").write_bytes(raw.astype("<u2").tobytes())
    assert me.find_images([tmp_path]) == [tmp_path / "IM00001", tmp_path / "IM00002"]
    np.testing.assert_allclose(me.read_image(tmp_path / "IM00001").values(), values, atol=1e-3)
