"""PNG/JPEG/TIFF at full bit depth, colour handling, safe writing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import medenhance as me
from medenhance.errors import ImageReadError, ImageWriteError


def test_png16_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(100, 60000, size=(40, 30), dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    image = me.read_image(tmp_path / "a.png")
    assert image.meta.stored_dtype == "uint16"
    assert image.meta.window.low == arr.min() and image.meta.window.high == arr.max()
    out = me.write_image(image, tmp_path / "b.png")
    back = np.array(Image.open(out))
    np.testing.assert_array_equal(back, arr)


def test_png8_uses_full_type_range(samples: Path, tmp_path: Path) -> None:
    path = samples / "mri_brain_glioma_Te-gl_0063.png"
    raw = np.array(Image.open(path))
    image = me.read_image(path)
    np.testing.assert_allclose(image.pixels, raw / 255.0, atol=1e-7)
    back = np.array(Image.open(me.write_image(image, tmp_path / "m.png")))
    np.testing.assert_array_equal(back, raw)
    assert back.dtype == np.uint8


def test_float_and_multipage_tiff_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(2).normal(100, 30, size=(2, 16, 24)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", arr)
    image = me.read_image(tmp_path / "f.tif")
    assert image.shape == (2, 16, 24)
    out = me.write_image(image, tmp_path / "g.tif")
    np.testing.assert_allclose(tifffile.imread(out), arr, rtol=1e-6, atol=1e-4)


def test_gray_stored_as_rgb_is_lossless_and_colour_warns(tmp_path: Path) -> None:
    gray = np.random.default_rng(3).integers(0, 256, size=(20, 20), dtype=np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "g.png")
    np.testing.assert_allclose(me.read_image(tmp_path / "g.png").pixels, gray / 255.0, atol=1e-7)
    colour = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.warns(UserWarning, match="converted to gray"):
        me.read_image(tmp_path / "c.png")
    # `info` says so too (it said MONOCHROME2, as of a grey picture).
    with pytest.warns(UserWarning):
        assert me.inspect_image(tmp_path / "c.png").photometric == \
            "MONOCHROME2 (colour, read as grey)"
    assert me.inspect_image(tmp_path / "g.png").photometric == "MONOCHROME2"


def test_existing_output_is_not_overwritten(samples: Path, tmp_path: Path) -> None:
    image = me.read_image(samples / "mri_brain_glioma_Te-gl_0063.png")
    target = tmp_path / "t.png"
    target.write_bytes(b"precious")
    with pytest.raises(ImageWriteError, match="exists"):
        me.write_image(image, target)
    assert target.read_bytes() == b"precious"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_failed_write_leaves_nothing(samples: Path, tmp_path: Path) -> None:
    image = me.read_image(samples / "mri_brain_glioma_Te-gl_0063.png")
    stack = me.MedicalImage(np.stack([image.pixels] * 2), image.meta)
    with pytest.raises(ImageWriteError, match="one frame"):
        me.write_image(stack, tmp_path / "two.png")
    assert list(tmp_path.iterdir()) == []


def test_input_file_is_never_overwritten(samples: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes((samples / "mri_brain_glioma_Te-gl_0063.png").read_bytes())
    image = me.read_image(src)
    with pytest.raises(ImageWriteError, match="input file"):
        me.write_image(image, src, overwrite=True)


@pytest.mark.parametrize("content,match", [(b"", "PNG"), (b"\x89PNG\r\n\x1a\n garbage", "PNG")])
def test_damaged_png(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ImageReadError, match=match):
        me.read_image(tmp_path / "bad.png")


def test_unknown_suffix_and_missing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ImageReadError, match="unknown file type"):
        me.read_image(tmp_path / "a.txt")
    with pytest.raises(ImageReadError, match="no such file"):
        me.read_image(tmp_path / "missing.png")
    image = me.from_array(np.zeros((8, 8), np.float32))
    with pytest.raises(ImageWriteError, match=r"unknown output suffix \.bmp"):
        me.write_image(image, tmp_path / "x.bmp")


def test_dicom_to_png_is_16_bit(samples: Path, tmp_path: Path) -> None:
    image = me.read_image(samples / "mr_head_MR1_JPLL.dcm")
    back = np.array(Image.open(me.write_image(image, tmp_path / "mr.png")))
    assert back.dtype == np.uint16
    np.testing.assert_allclose(back / 65535.0, image.pixels, atol=1 / 65535)


def test_a_broken_link_in_a_folder_is_listed_with_its_reason(tmp_path: Path) -> None:
    import os

    from medenhance.errors import ImageReadError
    from medenhance.io import find_images, read_image

    me.write_image(me.from_array(np.zeros((8, 8), np.uint8)), tmp_path / "ok.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    files = find_images([tmp_path])
    assert [f.name for f in files] == ["broken.png", "ok.png"]
    with pytest.raises(ImageReadError, match="broken link"):
        read_image(files[0])


@pytest.mark.parametrize("target", ["o.png", "o.nii.gz", "o.npy", "o.tif"])
def test_minimum_is_white_sources_keep_their_picture_in_every_format(
        samples: Path, tmp_path: Path, target: str) -> None:
    """MONOCHROME1 DICOM and min-is-white TIFF: only DICOM and TIFF can say so, so the others
    must store the picture as displayed (it came out as a negative in NIfTI and PNG)."""
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "w.tif", (rng.random((32, 32)) * 60000).astype(np.uint16),
                     photometric="miniswhite")
    for source in (samples / "cr_chest_RG1_J2KI.dcm", tmp_path / "w.tif"):
        image = me.read_image(source)
        assert image.meta.window.invert
        out = tmp_path / f"{source.stem}-{target}"
        me.write_image(image, out)
        back = me.read_image(out).pixels
        assert np.corrcoef(image.pixels.ravel(), back.ravel())[0, 1] > 0.999, source.name


def test_single_paths_are_not_read_as_lists_of_characters(samples: Path) -> None:
    assert me.find_images(samples) == me.find_images([samples])
    assert me.find_images(str(samples)) == me.find_images([samples])
    one = samples / "mri_brain_glioma_Te-gl_0063.png"          # reached twice, listed once
    repeated: list[Path] = []
    assert me.find_images([samples, one, samples / "." / one.name],
                          repeated=repeated) == me.find_images(samples)
    assert repeated == [one, samples / "." / one.name]       # for the caller to say so


def test_two_links_to_one_file_are_two_images(samples: Path, tmp_path: Path) -> None:
    """git-annex and DataLad keep identical images as links to one object: each is an image of
    its own, though a file reached twice by one name is read once."""
    store = tmp_path / "store.png"
    store.write_bytes((samples / "mri_brain_glioma_Te-gl_0063.png").read_bytes())
    (tmp_path / "ds").mkdir()
    for name in ("slice_001.png", "slice_002.png"):
        (tmp_path / "ds" / name).symlink_to(store)
    (tmp_path / "ds" / "notes.txt").write_text("x")
    skipped: list[Path] = []
    found = me.find_images([tmp_path / "ds", tmp_path / "ds" / "slice_001.png", tmp_path / "ds"],
                           skipped=skipped)
    assert [f.name for f in found] == ["slice_001.png", "slice_002.png"]
    assert skipped == [tmp_path / "ds" / "notes.txt"]                  # once, not twice
    from medenhance.triage.score import TriageScorer

    scored = TriageScorer("mri-triage").score_files(found)
    assert sorted(Path(r.path).name for r in scored) == ["slice_001.png", "slice_002.png"]
    # An annex's objects in .git are not the dataset's images a second time.
    (tmp_path / "ds" / ".git" / "objects").mkdir(parents=True)
    (tmp_path / "ds" / ".git" / "objects" / "KEY.png").write_bytes(store.read_bytes())
    assert [f.name for f in me.find_images(tmp_path / "ds")] == ["slice_001.png",
                                                                  "slice_002.png"]


def test_colour_tiff_with_separate_planes_is_read_like_interleaved(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = (rng.random((20, 24)) * 255).astype(np.uint8)
    planes = np.stack([gray, gray, gray])               # R, G and B one after another
    tifffile.imwrite(tmp_path / "one.tif", planes, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "two.tif", np.stack([planes, planes]), photometric="rgb",
                     planarconfig="separate")
    one, two = me.read_image(tmp_path / "one.tif"), me.read_image(tmp_path / "two.tif")
    assert one.pixels.shape == (20, 24) and two.pixels.shape == (2, 20, 24)
    np.testing.assert_allclose(one.values(), gray, atol=1e-3)
    np.testing.assert_allclose(two.values()[1], gray, atol=1e-3)


def test_linked_folders_are_searched_and_a_link_loop_ends(samples: Path, tmp_path: Path) -> None:
    site = tmp_path / "elsewhere"
    site.mkdir()
    for name in ("a.png", "b.png"):
        (site / name).write_bytes((samples / "mri_brain_glioma_Te-gl_0063.png").read_bytes())
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "site2").symlink_to(site, target_is_directory=True)
    (site / "loop").symlink_to(inputs, target_is_directory=True)
    found = me.find_images(inputs)
    assert sorted(p.name for p in found) == ["a.png", "b.png"]
    assert all(p.parent == inputs / "site2" for p in found)


def test_files_that_are_not_images_are_reported_as_skipped(samples: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medenhance.cli import app

    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "a.png").write_bytes((samples / "mri_brain_glioma_Te-gl_0063.png").read_bytes())
    for name in ("README.txt", "sub/labels.csv", ".DS_Store", ".git/config"):
        (tmp_path / name).write_text("not an image")
    skipped: list[Path] = []
    assert me.find_images(tmp_path, skipped=skipped) == [tmp_path / "a.png"]
    assert skipped == [tmp_path / "README.txt", tmp_path / "sub" / "labels.csv"]
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 0
    assert ("2 file(s) in the input folders are not recognised as images (no known suffix, "
            "and not DICOM) and were skipped") in " ".join(result.output.split())
    assert "README.txt" in result.output and ".DS_Store" not in result.output
    # An earlier run's records inside the output folder are not listed as skipped inputs.
    out = tmp_path / "pairs"
    first = CliRunner().invoke(app, ["degrade", str(tmp_path), "-p", "jpeg", "-o", str(out)])
    assert first.exit_code == 0 and any((out / "records").glob("*.json"))
    again = CliRunner().invoke(app, ["degrade", str(tmp_path), "-p", "jpeg", "-o", str(out),
                                     "--overwrite"])
    assert again.exit_code == 0 and "2 file(s) in the input folders" in again.output
    # A file given again inside its folder is read once, and the user told so.
    twice = CliRunner().invoke(app, ["info", str(tmp_path), str(tmp_path / "a.png")])
    said = " ".join(twice.output.split())
    assert twice.exit_code == 0 and "1 file(s) were given more than once" in said
    assert f"are read once: {tmp_path / 'a.png'}" in said


def test_info_says_a_signed_nifti_is_signed(tmp_path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.arange(-300, 300, dtype=np.int16).reshape(20, 30), np.eye(4)),
             tmp_path / "v.nii.gz")
    assert me.inspect_image(tmp_path / "v.nii.gz").bits_stored == "16 signed"


def test_writing_goes_through_links_and_never_replaces_a_pipe_or_device(tmp_path: Path) -> None:
    """`-o link.csv` replaced the link by a file; `-o fifo` and `-o /dev/stdout` replaced the
    pipe or the file behind fd 1."""
    import os

    from medenhance.io._files import atomic_write

    def write(text: str):
        return lambda tmp: Path(tmp).write_text(text)

    (tmp_path / "real.txt").write_text("old")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    atomic_write(tmp_path / "link.txt", write("new"), overwrite=True)
    assert (tmp_path / "link.txt").is_symlink() and (tmp_path / "real.txt").read_text() == "new"
    (tmp_path / "to-stdout").symlink_to("/dev/stdout")      # led through /dev: refused too
    (tmp_path / "fdd").symlink_to("/dev/fd")                 # ... also through a linked folder
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    with pytest.raises(ImageWriteError, match="leads in a loop"):
        atomic_write(tmp_path / "loop-a", write("x"), overwrite=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "later.txt")
    atomic_write(tmp_path / "dangling", write("made"))
    assert (tmp_path / "dangling").is_symlink() and (tmp_path / "later.txt").read_text() == "made"
    os.mkfifo(tmp_path / "fifo")
    for special in (tmp_path / "fifo", Path("/dev/stdout"), tmp_path / "to-stdout",
                    tmp_path / "fdd" / "1", tmp_path):
        with pytest.raises(ImageWriteError, match="not a regular file"):
            atomic_write(special, write("x"), overwrite=True)
    with pytest.raises(ImageWriteError, match="lies under /dev or /proc"):     # not there yet
        atomic_write(Path("/proc/medenhance-nothing.csv"), write("x"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(ImageWriteError, match="is a file, not a folder"):
        atomic_write(tmp_path / "afile" / "out.txt", write("x"))
    long_name = tmp_path / ("L" * 250 + ".txt")          # the temporary name must stay short
    atomic_write(long_name, write("long"))
    assert long_name.read_text() == "long"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    (tmp_path / "loop-a").unlink()
    (tmp_path / "loop-b").unlink()


def test_an_unreadable_file_is_said_to_be_unreadable(samples: Path, monkeypatch) -> None:
    """A file without read permission was called "damaged or truncated" (as root every file is
    readable, so the permission is taken away by the stand-in)."""
    import os

    path = samples / "mri_brain_glioma_Te-gl_0063.png"
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == path else real(p, mode))
    with pytest.raises(ImageReadError, match="cannot be read .permission denied."):
        me.read_image(path)


@pytest.mark.parametrize("name", ["empty.dcm", "empty.png", "empty.nii.gz", "empty.npy",
                                  "empty.tif"])
def test_an_empty_file_is_said_to_be_empty(tmp_path: Path, name: str) -> None:
    """A 0-byte file was "not a DICOM file" or "not a readable PNG file"."""
    (tmp_path / name).write_bytes(b"")
    for read in (me.read_image, me.inspect_image):
        with pytest.raises(ImageReadError, match=r"empty\.[a-z.]+: empty file \(0 bytes\)$"):
            read(tmp_path / name)


def test_a_file_named_for_another_format_says_what_it_holds(samples: Path, tmp_path: Path) -> None:
    png = samples / "mri_brain_glioma_Te-gl_0063.png"
    (tmp_path / "png.dcm").write_bytes(png.read_bytes())
    (tmp_path / "dicom.png").write_bytes((samples / "mr_head_MR1_JPLL.dcm").read_bytes())
    (tmp_path / "text.npy").write_text("hello\n")
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:3000])
    for name, holds in (("png.dcm", "it holds a PNG file (name it .png to read it), not DICOM"),
                        ("dicom.png", "it holds a DICOM file (name it .dcm to read it), not PNG"),
                        ("text.npy", "it holds text, not NPY")):
        with pytest.raises(ImageReadError, match=re.escape(holds)):
            me.read_image(tmp_path / name)
    with pytest.raises(ImageReadError, match=re.escape(holds)):
        me.inspect_image(tmp_path / "text.npy")
    with pytest.raises(ImageReadError, match="truncated") as cut:   # a PNG, only damaged
        me.read_image(tmp_path / "cut.png")
    assert "it holds" not in str(cut.value)


def test_a_cds_dicomdir_is_not_an_input(samples: Path, tmp_path: Path) -> None:
    """Every exported CD holds a DICOMDIR (a DICOM file without an image): a folder of one
    failed in info, enhance and degrade with exit status 1."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    (tmp_path / "IMAGES").mkdir()
    (tmp_path / "IMAGES" / "IM0").write_bytes((samples / "mr_head_MR1_JPLL.dcm").read_bytes())
    index = Dataset()
    index.file_meta = FileMetaDataset()
    index.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    index.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"   # Media Storage Directory
    index.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    index.save_as(tmp_path / "DICOMDIR", enforce_file_format=True)
    skipped: list[Path] = []
    assert me.find_images(tmp_path, skipped=skipped) == [tmp_path / "IMAGES" / "IM0"]
    assert skipped == []


def test_tiff_keeps_the_pixel_spacing(samples: Path, tmp_path: Path) -> None:
    """DICOM -> TIFF -> TIFF keeps the spacing (as pixels per centimetre); a TIFF that states
    its resolution in inches (72 dpi, a program's default) has no spacing."""
    source = me.read_image(samples / "mr_head_MR1_JPLL.dcm")
    assert source.meta.pixel_spacing is not None
    first = me.read_image(me.write_image(source, tmp_path / "a.tif"))
    np.testing.assert_allclose(first.meta.pixel_spacing, source.meta.pixel_spacing, rtol=1e-6)
    unequal = me.from_array(np.zeros((6, 8), np.uint16), pixel_spacing=(0.5, 0.25))
    with tifffile.TiffFile(me.write_image(unequal, tmp_path / "u.tif")) as tif:
        assert tif.pages[0].resolution == pytest.approx((40.0, 20.0))   # x: 10 mm / 0.25 mm
    again = me.read_image(me.write_image(me.read_image(tmp_path / "u.tif"), tmp_path / "v.tif"))
    assert again.meta.pixel_spacing == pytest.approx((0.5, 0.25))
    tifffile.imwrite(tmp_path / "dpi.tif", np.zeros((4, 4), np.uint8), resolution=(72, 72),
                     resolutionunit="INCH")
    assert me.read_image(tmp_path / "dpi.tif").meta.pixel_spacing is None


def test_overwrite_must_be_a_bool(samples: Path, tmp_path: Path) -> None:
    image = me.read_image(samples / "mri_brain_glioma_Te-gl_0063.png")
    me.write_image(image, tmp_path / "a.png")
    with pytest.raises(ImageWriteError, match="overwrite must be True or False, got 'no'"):
        me.write_image(image, tmp_path / "a.png", overwrite="no")


def test_a_read_only_file_system_is_named_as_such(tmp_path: Path, monkeypatch) -> None:
    """A read-only mount was reported as "permission denied" (root cannot mount one in a test:
    both answers of the operating system are stood in)."""
    import os
    from types import SimpleNamespace

    from medenhance.io._files import atomic_write

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=os.ST_RDONLY))
    with pytest.raises(ImageWriteError, match=r"cannot write in .* \(a read-only file system\)"):
        atomic_write(tmp_path / "out.csv", lambda tmp: Path(tmp).write_text("x"))
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_flag=0))
    with pytest.raises(ImageWriteError, match=r"\(permission denied\)"):
        atomic_write(tmp_path / "out.csv", lambda tmp: Path(tmp).write_text("x"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate"])
def test_compressed_tiffs_are_read_and_written_back_compressed(tmp_path: Path,
                                                               compression: str) -> None:
    """An LZW TIFF, the commonest compression, could not be read ("requires the 'imagecodecs'
    package"), and a deflate TIFF was written back uncompressed."""
    values = (np.random.default_rng(0).integers(0, 40, (64, 80)) * 1000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "in.tif", compression=compression)
    image = me.read_image(tmp_path / "in.tif")
    written = me.write_image(image, tmp_path / "out.tif")
    with tifffile.TiffFile(written) as tif:
        assert tif.pages[0].compression == {"tiff_lzw": 5, "tiff_adobe_deflate": 8}[compression]
        np.testing.assert_array_equal(tif.asarray(), values)


def test_pages_written_one_by_one_are_all_read(tmp_path: Path) -> None:
    """A TIFF written a page at a time holds a series per page; only the first was read."""
    frames = (np.random.default_rng(0).random((5, 32, 40)) * 4000).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as writer:
        for frame in frames:
            writer.write(frame)
    image = me.read_image(tmp_path / "pages.tif")
    assert image.shape == (5, 32, 40)
    np.testing.assert_allclose(image.values(), frames, atol=1e-3)
