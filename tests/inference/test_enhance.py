"""Enhancement with the bundled models: same format and units out, tiling, denoising strength."""

from __future__ import annotations

import nibabel as nib
import tifffile
import numpy as np
import pytest
import torch

import medenhance as me
from medenhance.degrade import noise
from medenhance.errors import ConfigError
from medenhance.inference.enhance import EnhanceOptions, enhance_array, enhance_image
from medenhance.metrics import psnr, ssim
from medenhance.models.card import load_model


@pytest.fixture(scope="module")
def xray_model():
    return load_model("xray-denoise")


@pytest.fixture(scope="module")
def radiograph(samples) -> np.ndarray:
    return me.read_image(samples / "xray_chest_nih_00009128_000.png").pixels


def test_tiled_matches_whole_image(xray_model, radiograph: np.ndarray) -> None:
    noisy = np.clip(noise.gaussian(radiograph, sigma=0.05, rng=np.random.default_rng(0)), 0, 1)
    noisy = noisy.astype(np.float32)
    assert noisy.shape == (1024, 1024)
    whole, _ = enhance_array(noisy, xray_model, EnhanceOptions(tile=0))
    tiled, _ = enhance_array(noisy, xray_model)  # the defaults: tiles <= 512, 64 px overlap
    assert np.abs(whole - tiled).max() <= 1e-3


@pytest.mark.parametrize(("name", "sample"), [("xray-denoise", "xray_chest_nih_00009128_000.png"),
                                              ("mri-denoise", "mri_brain_glioma_Te-gl_0063.png")])
def test_bundled_models_denoise_held_out_samples(name: str, sample: str, samples) -> None:
    # Both samples are held out: the NIH image is in the test split, the MRI is from Testing.
    clean = me.read_image(samples / sample).pixels.astype(np.float64)
    noisy = np.clip(noise.gaussian(clean, sigma=25 / 255, rng=np.random.default_rng(1)), 0, 1)
    out, sigmas = enhance_array(noisy.astype(np.float32), load_model(name))
    assert sigmas[0] == pytest.approx(25 / 255, rel=0.25)
    assert psnr(clean, out) > psnr(clean, noisy) + 6  # bench: +16.9 dB X-ray, +7.4 dB MRI
    assert ssim(clean, out) > ssim(clean, noisy) + 0.2


def test_clean_input_is_nearly_unchanged(xray_model, radiograph: np.ndarray) -> None:
    out, _ = enhance_array(radiograph, xray_model)
    assert psnr(radiograph, out) > 38


# The MR sample goes through the X-ray model on purpose.
@pytest.mark.filterwarnings("ignore::medenhance.errors.ModalityWarning")
def test_formats_and_units_are_kept(xray_model, samples, tmp_path) -> None:
    for path in me.find_images([samples]):
        image = me.read_image(path)
        out = enhance_image(image, xray_model)
        target = me.write_image(out, tmp_path / path.name)
        back = me.read_image(target)
        assert back.meta.source_format == image.meta.source_format
        assert back.meta.stored_dtype == image.meta.stored_dtype
        assert back.shape == image.shape
        assert "xray-denoise" in out.meta.history[-1]
    # A 16-bit NIfTI volume and a float TIFF come back in their own units and types.
    volume = (np.random.default_rng(0).random((48, 40, 3)) * 3000).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "vol.nii.gz")
    out = me.write_image(enhance_image(me.read_image(tmp_path / "vol.nii.gz"), xray_model),
                         tmp_path / "vol_out.nii.gz")
    back = me.read_image(out)
    assert back.shape == (3, 40, 48) and back.meta.stored_dtype == "int16"
    assert 0 <= back.values().min() and back.values().max() <= 3000
    ramp = np.linspace(-100.0, 400.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    tifffile.imwrite(tmp_path / "f.tiff", ramp)
    back = me.read_image(me.write_image(enhance_image(me.read_image(tmp_path / "f.tiff"),
                                                      xray_model), tmp_path / "f_out.tiff"))
    assert back.meta.stored_dtype == "float32"
    # Same units (-100..400): a clean ramp comes back nearly unchanged.
    assert np.abs(back.values() - ramp).mean() < 2.0 and back.values().min() >= -100.5
    arr = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    me.write_image(me.from_array(arr), tmp_path / "unit.npy")
    out = enhance_image(me.read_image(tmp_path / "unit.npy"), xray_model)
    me.write_image(out, tmp_path / "unit_out.npy")
    back = np.load(tmp_path / "unit_out.npy")
    assert back.dtype == np.float32 and 0 <= back.min() and back.max() <= 1


def test_noise_level_overrides_the_estimate(xray_model, radiograph: np.ndarray) -> None:
    crop = radiograph[:256, :256]
    _, sigmas = enhance_array(crop, xray_model, EnhanceOptions(noise_level=0.1))
    assert sigmas == [0.1]
    with pytest.raises(ConfigError, match="noise level"):
        enhance_array(crop, xray_model, EnhanceOptions(noise_level=2.0))
    with pytest.raises(ConfigError, match="tile"):
        enhance_array(crop, xray_model, EnhanceOptions(tile=5))


def test_nothing_to_remove_leaves_the_pixels_as_they_are(xray_model, radiograph: np.ndarray
                                                        ) -> None:
    """A flat frame (an empty slice) and a declared noise level of 0 come back unchanged; the
    network alone changed a flat frame by up to 0.02 and a clean one by ~1/255 on average."""
    crop = radiograph[:128, :128]
    flat = np.full((2, 64, 64), 0.0, np.float32)
    flat[1] = 0.7
    out, sigmas = enhance_array(flat, xray_model)
    np.testing.assert_array_equal(out, flat)
    assert sigmas == [None, None]                # no level was used on them
    out, sigmas = enhance_array(crop, xray_model, EnhanceOptions(noise_level=0.0))
    np.testing.assert_array_equal(out, crop)
    assert sigmas == [0.0]
    # An estimated level of 0 (quantised dark MR backgrounds give it) still runs the network.
    steps = np.repeat(np.linspace(0.2, 0.8, 16, dtype=np.float32), 8)
    blocky = np.add.outer(steps, steps) / 2
    out, sigmas = enhance_array(blocky, xray_model)
    assert sigmas == [0.0] and not np.array_equal(out, blocky)
    out, _ = enhance_array(crop, xray_model, EnhanceOptions(noise_level=1 / 255))
    assert np.abs(out - crop).max() > 0      # any level above 0 is the network's


def test_channels_last_inference_equals_a_plain_forward(xray_model, radiograph: np.ndarray) -> None:
    # enhance_array runs the network on channels-last tensors for speed; the numbers must not move.
    crop = np.ascontiguousarray(radiograph[256:512, 256:512], dtype=np.float32)
    out, sigmas = enhance_array(crop, xray_model, EnhanceOptions(tile=0))
    net = xray_model.network.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        plain = net(torch.from_numpy(crop)[None, None], sigmas[0])[0, 0].clamp(0, 1).numpy()
    assert np.abs(out - plain).max() <= 1e-5
    assert np.abs(out - crop).max() > 1e-3  # it did denoise something


def test_what_cannot_be_enhanced_is_refused_with_the_reason(xray_model, samples) -> None:
    from medenhance.errors import InvalidImageError
    from medenhance.models.card import bundled_dir

    for shape in ((1, 2000), (5, 40, 1)):
        with pytest.raises(InvalidImageError, match="too small to enhance"):
            enhance_image(me.from_array(np.full(shape, 0.5, np.float32)), xray_model)
    with pytest.raises(InvalidImageError, match="NaN"):
        enhance_array(np.full((32, 32), np.nan, np.float32), xray_model)
    image = me.read_image(samples / "mri_brain_glioma_Te-gl_0063.png")
    with pytest.raises(ConfigError, match="is a triage model"):
        enhance_image(image, "mri-triage")
    # A checkpoint given as a Path works like its string.
    by_path = enhance_image(image, bundled_dir() / "mri-denoise.safetensors")
    np.testing.assert_array_equal(by_path.pixels, enhance_image(image, "mri-denoise").pixels)


def test_an_image_of_another_modality_draws_a_warning_in_python(xray_model, samples) -> None:
    """The CLI noted an MR image given to an X-ray model; Python callers got no word."""
    import warnings

    from medenhance.errors import ModalityWarning

    mr = me.read_image(samples / "mr_head_MR1_JPLL.dcm")
    with pytest.warns(ModalityWarning, match="modality MR, but xray-denoise was trained on CR/DX"):
        enhance_image(mr, xray_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModalityWarning)
        enhance_image(me.read_image(samples / "cr_chest_RG1_J2KI.dcm"), xray_model)   # its own
        enhance_image(me.from_array(mr.pixels), xray_model)       # no modality known
