"""NIfTI volumes and .npy arrays."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medenhance as me
from medenhance.errors import ImageReadError
from medenhance.io import display_frames


def test_nifti_int16_with_scaling_roundtrip(tmp_path: Path) -> None:
    raw = np.random.default_rng(0).integers(-500, 3000, size=(20, 24, 5), dtype=np.int16)
    img = nib.Nifti1Image(raw, np.diag([0.9, 0.8, 3.0, 1.0]))
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, -10.0)
    nib.save(img, tmp_path / "v.nii.gz")
    image = me.read_image(tmp_path / "v.nii.gz")
    assert image.shape == (5, 24, 20)  # slices, rows (y), columns (x)
    assert image.meta.pixel_spacing == pytest.approx((0.8, 0.9))
    np.testing.assert_allclose(image.values()[2], (raw[:, :, 2] * 0.5 - 10.0).T, atol=1e-3)
    out = me.write_image(image, tmp_path / "w.nii.gz")
    back = nib.load(out)
    np.testing.assert_array_equal(back.dataobj.get_unscaled(), raw)
    assert (back.dataobj.slope, back.dataobj.inter) == (0.5, -10.0)
    np.testing.assert_allclose(back.affine, img.affine)


def test_nifti_float_roundtrip(tmp_path: Path) -> None:
    vol = np.random.default_rng(1).uniform(0, 1, size=(8, 9, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "f.nii")
    image = me.read_image(tmp_path / "f.nii")
    assert image.meta.window.low == 0.0 and image.meta.window.high == 1.0
    back = nib.load(me.write_image(image, tmp_path / "g.nii")).get_fdata()
    np.testing.assert_allclose(back, vol, atol=1e-7)


def test_npy_float_in_unit_range_is_used_as_is(tmp_path: Path) -> None:
    arr = np.random.default_rng(2).uniform(0, 1, size=(10, 12)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    image = me.read_image(tmp_path / "a.npy")
    np.testing.assert_array_equal(image.pixels, arr)
    np.testing.assert_array_equal(np.load(me.write_image(image, tmp_path / "b.npy")), arr)


def test_npy_int_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(3).integers(-1000, 2000, size=(2, 10, 12)).astype(np.int16)
    np.save(tmp_path / "a.npy", arr)
    back = np.load(me.write_image(me.read_image(tmp_path / "a.npy"), tmp_path / "b.npy"))
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("arr,match", [
    (np.array([[np.inf, 1.0], [0.0, 0.5]]), "infinite"),
    (np.full((4, 4), np.nan), "only NaN"),
    (np.array([[-1e308, 1e308], [0.0, 0.5]]), "wider than floating-point"),   # overflowed
    (np.zeros(5), "2-D or 3-D"),
    (np.array([["a", "b"]]), "numeric"),
    (np.zeros((64, 48, 3), np.float32), "colour image"),
])
def test_npy_bad_arrays(tmp_path: Path, arr: np.ndarray, match: str) -> None:
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(ImageReadError, match=match):
        me.read_image(tmp_path / "bad.npy")


@pytest.mark.parametrize("axes, top_left, top_right, shape", [
    # Voxel axes run towards R, A, S (RAS; axial slices): the right anterior corner is the last
    # voxel along both in-plane axes.
    (np.eye(3), (-1, -1), (0, -1), (24, 20)),
    # L, P, S (how DICOM orders them; axial): the right anterior corner is the first voxel.
    (np.diag([-1.0, -1.0, 1.0]), (0, 0), (-1, 0), (24, 20)),
    # A, S, R (sagittal slices): the anterior superior corner is the last voxel of both.
    (np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]), (-1, -1), (0, -1), (24, 20)),
    # S, R, A (coronal slices, in-plane axes swapped): superior is the first voxel axis,
    # right the second, so the frames are transposed.
    (np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]), (-1, -1), (-1, 0), (20, 24)),
])
def test_nifti_frames_are_turned_to_the_radiological_view(
        tmp_path: Path, axes: np.ndarray, top_left: tuple[int, int], top_right: tuple[int, int],
        shape: tuple[int, int]) -> None:
    """Axial and coronal: the patient's right on the left, anterior (axial) or superior
    (coronal) up; sagittal: anterior on the left, superior up. So a mark at the right (or
    anterior) and anterior (or superior) corner shows at the top left, and one at the left (or
    posterior) and anterior (or superior) corner at the top right, however the voxels were
    stored."""
    volume = np.zeros((20, 24, 5))
    volume[top_left[0], top_left[1], :] = 1000
    volume[top_right[0], top_right[1], :] = 500
    affine = np.eye(4)
    affine[:3, :3] = axes
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), tmp_path / "v.nii.gz")
    frames = display_frames(me.read_image(tmp_path / "v.nii.gz"))
    assert frames.shape == (5, *shape)
    for frame in frames:
        assert frame[0, 0] == 1.0 and frame[0, -1] == 0.5 and frame.sum() == 1.5


def test_raster_frames_are_kept_as_stored(samples: Path) -> None:
    image = me.read_image(samples / "xray_chest_nih_00009128_000.png")
    np.testing.assert_array_equal(display_frames(image), image.frames())


def test_prepare_writes_nifti_slices_as_viewers_show_them(tmp_path: Path) -> None:
    """An axial volume stored R, A, S: the right anterior corner is its last voxel in-plane (the
    bottom right in voxel order); prepared slices have it at the top left."""
    from medenhance.data.prepare import PrepareOptions, prepare_dataset

    volume = np.full((20, 24, 2), 100)
    volume[-1, -1, :] = 1000
    nib.save(nib.Nifti1Image(volume.astype(np.int16), np.eye(4)), tmp_path / "v.nii.gz")
    result = prepare_dataset([tmp_path / "v.nii.gz"], tmp_path / "out",
                             PrepareOptions(min_foreground=0.0))
    for row in result.kept:
        frame = me.read_image(tmp_path / "out" / row["path"]).frames()[0]
        assert frame.shape == (24, 20) and frame[0, 0] == frame.max() > frame[-1, -1]


def test_nan_outside_a_mask_is_kept_out_and_written_back(tmp_path: Path) -> None:
    """SPM/FSL volumes with NaN outside the brain were refused, even by `info`."""
    from medenhance.degrade import Pipeline, degrade_image
    from medenhance.inference.enhance import enhance_image
    from medenhance.io.padding import padding_mask

    rng = np.random.default_rng(0)
    volume = (200 + 50 * rng.random((48, 40, 3))).astype(np.float32)
    volume[:10] = np.nan
    affine = np.diag([0.9, 1.1, 3.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "masked.nii.gz")
    image = me.read_image(tmp_path / "masked.nii.gz")
    assert np.isfinite(image.pixels).all()
    assert padding_mask(image).sum() == np.isnan(volume).sum()
    back = nib.load(me.write_image(image, tmp_path / "same.nii.gz")).get_fdata()
    np.testing.assert_array_equal(np.isnan(back), np.isnan(volume))
    np.testing.assert_allclose(back[10:], volume[10:], rtol=1e-6)
    for name, processed in (
            ("enhanced", enhance_image(image, "mri-denoise")),
            ("degraded", degrade_image(image, Pipeline.from_preset("gaussian-blind"), seed=0)[0])):
        out = nib.load(me.write_image(processed, tmp_path / f"{name}.nii.gz")).get_fdata()
        np.testing.assert_array_equal(np.isnan(out), np.isnan(volume))
        assert not np.allclose(out[10:], volume[10:]), name
    small, _ = degrade_image(image, Pipeline.from_preset("sr-x2"), seed=0)
    out = nib.load(me.write_image(small, tmp_path / "small.nii.gz")).get_fdata()
    assert out.shape == (24, 20, 3)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(volume)[1::2, 1::2])
    assert me.inspect_image(tmp_path / "masked.nii.gz").frames == 3
    only_nan = np.full((8, 8, 2), np.nan, np.float32)
    nib.save(nib.Nifti1Image(only_nan, affine), tmp_path / "empty.nii.gz")
    with pytest.raises(ImageReadError, match="only NaN"):
        me.read_image(tmp_path / "empty.nii.gz")


def test_nan_in_an_npy_array_is_kept_out_and_written_back(tmp_path: Path) -> None:
    """Masked arrays saved as .npy were refused, though NIfTI's NaN were handled."""
    from medenhance.degrade import Pipeline, degrade_image
    from medenhance.inference.enhance import enhance_image
    from medenhance.io.padding import padding_mask

    rng = np.random.default_rng(1)
    frames = (200 + 50 * rng.random((2, 40, 48))).astype(np.float32)
    frames[:, :10] = np.nan
    np.save(tmp_path / "masked.npy", frames)
    image = me.read_image(tmp_path / "masked.npy")
    assert np.isfinite(image.pixels).all()
    assert padding_mask(image).sum() == np.isnan(frames).sum()
    back = np.load(me.write_image(image, tmp_path / "same.npy"))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(back), np.isnan(frames))
    np.testing.assert_allclose(back[:, 10:], frames[:, 10:], rtol=1e-6)
    for name, processed in (
            ("enhanced", enhance_image(image, "mri-denoise")),
            ("degraded", degrade_image(image, Pipeline.from_preset("gaussian-blind"), seed=0)[0])):
        out = np.load(me.write_image(processed, tmp_path / f"{name}.npy"))
        np.testing.assert_array_equal(np.isnan(out), np.isnan(frames))
        assert not np.allclose(out[:, 10:], frames[:, 10:]), name


def test_nifti_modality_survives_model_names_in_the_history(tmp_path: Path) -> None:
    """A CT enhanced by `mri-denoise`, written as NIfTI, read back as MR ("mr" in the text)."""
    ct = me.from_array(np.random.default_rng(0).random((2, 16, 16)), modality="CT")
    ct = ct.with_pixels(ct.pixels, "denoise with model mri-denoise, noise level 3/255")
    assert me.read_image(me.write_image(ct, tmp_path / "ct.nii.gz")).meta.modality == "CT"
    for text, modality in [("T1 MRI 3D", "MR"), ("MR; TE=30", "MR"), ("smrt", None), ("", None)]:
        image = nib.Nifti1Image(np.zeros((8, 8, 2), np.int16), np.eye(4))
        image.header["descrip"] = text.encode()
        nib.save(image, tmp_path / "x.nii")
        assert me.read_image(tmp_path / "x.nii").meta.modality == modality, text


def test_integer_sources_are_written_to_nifti_as_integers(samples: Path, tmp_path: Path) -> None:
    """A 16-bit PNG stays uint16 in NIfTI, values equal; a DICOM keeps its integer values (they
    were float32)."""
    from PIL import Image

    arr = np.random.default_rng(3).integers(0, 65535, size=(20, 30), dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    nii = nib.load(me.write_image(me.read_image(tmp_path / "a.png"), tmp_path / "a.nii.gz"))
    assert nii.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asarray(nii.dataobj)[:, :, 0].T, arr)
    dicom = me.read_image(samples / "mr_head_MR1_JPLL.dcm")
    nii = nib.load(me.write_image(dicom, tmp_path / "mr.nii.gz"))
    assert nii.get_data_dtype().kind in "ui"
    np.testing.assert_array_equal(np.asarray(nii.dataobj)[:, :, 0].T,
                                  np.rint(dicom.values()[0] if dicom.values().ndim == 3
                                          else dicom.values()))
    # A float source stays float.
    floats = me.from_array(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    assert nib.load(me.write_image(floats, tmp_path / "f.nii.gz")).get_data_dtype() == np.float32
