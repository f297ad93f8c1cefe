"""The Python API as a notebook user meets it: stored values kept, misuse named in one line.

Each case below once returned a white picture, wrote other numbers than it was given, or ended
in an AttributeError/TypeError from deep inside.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import medenhance as me
from medenhance.degrade import Pipeline, degrade_image
from medenhance.errors import (ConfigError, DegradationError, ImageReadError, ImageWriteError,
                               InvalidImageError, MedEnhanceError)
from medenhance.inference.enhance import EnhanceOptions, enhance_array, enhance_image
from medenhance.models.card import load_model


def test_stored_values_off_the_unit_scale_are_refused() -> None:
    raw = (np.random.default_rng(0).random((64, 64)) * 4000).astype(np.uint16)
    with pytest.raises(InvalidImageError, match="must lie in \\[0, 1\\].*from_array"):
        enhance_array(raw, load_model("mri-denoise"))
    with pytest.raises(InvalidImageError, match="must lie in \\[0, 1\\]"):
        Pipeline.from_preset("gaussian-25")(raw, seed=0)
    with pytest.raises(InvalidImageError, match="got 200 to 200"):
        me.MedicalImage(np.full((4, 4), 200, np.uint8), me.from_array(np.zeros((4, 4))).meta)
    # The same numbers through from_array are mapped to [0, 1] and run.
    out, _ = enhance_array(me.from_array(raw).pixels, load_model("mri-denoise"))
    assert 0.0 <= out.min() and out.max() <= 1.0 and 0.2 < out.mean() < 0.8


def test_arrays_of_your_own_keep_their_values_in_png_and_tiff(tmp_path: Path) -> None:
    me.write_image(me.from_array(np.full((40, 50), 100, np.uint8)), tmp_path / "u8.png")
    stored = np.asarray(Image.open(tmp_path / "u8.png"))
    assert stored.dtype == np.uint8 and (stored == 100).all()       # was uint16 25700
    values = np.random.default_rng(1).integers(1000, 1200, (40, 50)).astype(np.uint16)
    for name in ("u16.png", "u16.tif"):
        me.write_image(me.from_array(values), tmp_path / name)
        back = (np.asarray(Image.open(tmp_path / name)) if name.endswith(".png")
                else tifffile.imread(tmp_path / name))
        assert back.dtype == np.uint16 and np.array_equal(back, values), name
    # What a PNG cannot hold (negative numbers) is still spread over its 16 bits.
    signed = np.arange(-100, 100, dtype=np.int16).reshape(10, 20)
    me.write_image(me.from_array(signed), tmp_path / "i16.png")
    back = np.asarray(Image.open(tmp_path / "i16.png"))
    assert back.min() == 0 and back.max() == 65535


def test_from_array_checks_its_arguments() -> None:
    with pytest.raises(InvalidImageError, match="looks like a colour image"):
        me.from_array(np.random.default_rng(0).random((40, 40, 3)))
    with pytest.raises(InvalidImageError, match="pixel_spacing must be \\(row, column\\)"):
        me.from_array(np.zeros((8, 8)), pixel_spacing=0.5)
    with pytest.raises(InvalidImageError, match="must be positive"):
        me.from_array(np.zeros((8, 8)), pixel_spacing=(0.5, 0))
    image = me.from_array(np.zeros((8, 8)), pixel_spacing=[0.5, 0.7])
    assert image.meta.pixel_spacing == (0.5, 0.7)


def test_wrong_objects_are_named_in_one_line(tmp_path: Path, samples: Path) -> None:
    image = me.read_image(samples / "mri_brain_glioma_Te-gl_0063.png")
    cases = [
        (lambda: enhance_image(image.pixels, "mri-denoise"), "takes a MedicalImage"),
        (lambda: enhance_image(image, "mri-denoise", {"noise_level": 0.1}),
         "options must be EnhanceOptions"),
        (lambda: me.write_image(image.pixels, tmp_path / "x.png"), "takes a MedicalImage"),
        (lambda: degrade_image(image, "gaussian-25", seed=0), "Pipeline.from_preset"),
        (lambda: degrade_image(image.pixels, Pipeline.from_preset("gaussian-25"), seed=0),
         "takes a MedicalImage"),
        (lambda: me.read_image(None), "takes a file path"),
        (lambda: me.inspect_image(tmp_path), "is a folder"),
    ]
    for call, match in cases:
        with pytest.raises(MedEnhanceError, match=match):
            call()
    for seed in ("abc", 1.5, -1, True):
        with pytest.raises(DegradationError, match="seed must be a whole number"):
            degrade_image(image, Pipeline.from_preset("gaussian-25"), seed=seed)
    with pytest.raises(ImageReadError):
        me.read_image(tmp_path / "missing.png")
    me.write_image(image, tmp_path / "twice.png")
    with pytest.raises(ImageWriteError, match="overwrite=True"):    # not only the CLI's flag
        me.write_image(image, tmp_path / "twice.png")


def test_enhance_options_are_checked_before_any_work(samples: Path) -> None:
    image = me.read_image(samples / "mri_brain_glioma_Te-gl_0063.png")
    # Only the tile given: the overlap follows it (it failed blaming the default 64).
    small = enhance_image(image, "mri-denoise", EnhanceOptions(tile=100))
    whole = enhance_image(image, "mri-denoise", EnhanceOptions(tile=0))
    assert EnhanceOptions(tile=100).tile_overlap == 42
    assert np.abs(small.pixels - whole.pixels).max() < 0.02
    for options, match in [(EnhanceOptions(tile=100, overlap=64), "overlap must be 0 to 42"),
                           (EnhanceOptions(device="gpu"), "device must be 'cpu' or 'cuda'"),
                           (EnhanceOptions(tile="big"), "EnhanceOptions.tile"),
                           (EnhanceOptions(batch_size=0), "batch_size")]:
        with pytest.raises(ConfigError, match=match):
            enhance_image(image, "mri-denoise", options)
    assert enhance_image(image, "mri-denoise", EnhanceOptions(tile=0)).shape == image.shape


def test_a_suffixless_dicom_is_written_back_as_dicom(tmp_path: Path, samples: Path) -> None:
    import pydicom

    image = me.read_image(samples / "mr_head_MR1_JPLL.dcm")
    written = me.write_image(image, tmp_path / "1.2.840.99")
    assert written.name == "1.2.840.99" and pydicom.dcmread(written).Modality == "MR"
    assert np.allclose(me.read_image(written).pixels, image.pixels, atol=1e-6)
    with pytest.raises(ImageWriteError, match="unknown output suffix"):
        me.write_image(me.read_image(samples / "mri_brain_glioma_Te-gl_0063.png"),
                       tmp_path / "noext")


def test_triage_scores_a_folder_given_from_python(samples: Path) -> None:
    from medenhance.triage.score import TriageScorer

    scorer = TriageScorer("mri-triage")
    from_folder = scorer.score_files(samples)          # it failed with "is a folder"
    from_files = scorer.score_files(me.find_images([samples]))
    assert [(r.path, r.score) for r in from_folder] == [(r.path, r.score) for r in from_files]
    assert len(from_folder) == 4


def test_the_api_refuses_what_would_give_meaningless_numbers(samples: Path) -> None:
    """A helper's notebook session: each of these returned a number (or NaN) without a word, or
    failed with an AttributeError from deep inside."""
    from medenhance import metrics

    x = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    for test, match in [(x * 255, "test's values span"), ((x * 65535).astype(np.uint16),
                                                          "the test uint16")]:
        with pytest.raises(InvalidImageError, match=match):      # -43 dB and -91 dB
            metrics.psnr(x, test)
    assert metrics.psnr(x, np.clip(x + 0.3, 0, None)) < 20       # noise past [0, 1] is fine
    rgb = np.random.default_rng(1).random((64, 64, 3))
    with pytest.raises(InvalidImageError, match="looks like a colour image"):
        metrics.psnr(rgb, rgb)                     # was an array of 64 PSNRs
    for call, match in [(lambda: metrics.psnr(x, x, mask=np.ones((3, 3), bool)), "mask shape"),
                        (lambda: metrics.ssim(x, x, win_size="7"), "odd integer"),
                        (lambda: metrics.ssim(x, x, win_size=7.0), "odd integer"),
                        (lambda: metrics.psnr(np.zeros((0, 0)), np.zeros((0, 0))), "empty"),
                        (lambda: me.MedicalImage(x, None), "takes an ImageMeta"),
                        (lambda: me.from_array(x, modality=5), "modality must be")]:
        with pytest.raises(InvalidImageError, match=match):
            call()
    assert metrics.ssim(x, x, win_size=np.int64(7)) == 1.0
    nan = np.full((32, 32), 0.5)
    nan[0, 0] = np.nan
    for preset in ("gaussian-25", "sr-x2"):            # 1 and 9 NaN out before
        with pytest.raises(InvalidImageError, match="1 NaN value"):
            Pipeline.from_preset(preset)(nan, 0)
    with pytest.raises(DegradationError, match="1 NaN value"):
        me.degrade.estimate_noise_sigma(nan)
    # A seed where a Generator is expected, as Pipeline takes one.
    assert np.array_equal(me.degrade.gaussian(x, sigma=0.1, rng=3),
                          me.degrade.gaussian(x, sigma=0.1, rng=np.random.default_rng(3)))
    with pytest.raises(DegradationError, match="rng must be"):
        me.degrade.rician(x, sigma=0.1, rng="seed")
    with pytest.warns(UserWarning, match="no noise to scale"):   # it added nothing, silently
        me.degrade.low_field(np.tile(np.linspace(0, 1, 64), (64, 1)), rng=0)
    # enhance_array takes a name as enhance_image does; options are checked.
    image = me.read_image(samples / "mri_brain_glioma_Te-gl_0063.png")
    by_name, _ = enhance_array(image.pixels, "mri-denoise")
    assert np.array_equal(by_name, enhance_array(image.pixels, load_model("mri-denoise"))[0])
    with pytest.raises(ConfigError, match="options must be EnhanceOptions"):
        enhance_array(image.pixels, "mri-denoise", {"tile": 0})


def test_triage_from_python_takes_generators_and_images_in_memory(samples: Path) -> None:
    from medenhance.triage.score import TriageScorer

    scorer = TriageScorer("mri-triage")
    files = me.find_images([samples])
    listed = [r.score for r in scorer.score_files(files)]
    assert [r.score for r in scorer.score_files(p for p in files)] == listed   # was []
    assert [r.score for r in scorer.score_files(map(str, files))] == listed
    mri = samples / "mri_brain_glioma_Te-gl_0063.png"
    image = me.read_image(mri)
    one = scorer.score_image(image)
    # (to float32 rounding: a batch's size moves the 8th digit)
    assert one.score == pytest.approx(listed[files.index(mri)], rel=1e-6)
    assert one.path == f"image 0 ({mri})"
    # A denoised copy in memory, beside its file: two studies, not one repeat of the other.
    denoised = enhance_image(image, "mri-denoise")
    both = scorer.score_files([mri, denoised])
    assert len(both) == 2 and both[0].score == pytest.approx(one.score, rel=1e-6)
    assert both[1].path.startswith("image 1")
    # ... also by study: a copy keeps its source's Study Instance UID, and was merged into it.
    dicom = samples / "mr_head_MR1_JPLL.dcm"
    copy = me.read_image(dicom)
    copy = copy.with_pixels(copy.pixels * 0.9, "darker for a test")
    studies = scorer.score_files([dicom, copy], by_study=True)
    assert [r.files for r in studies] == [1, 1]
    # Named by its place in the list given, not after the folder's files.
    assert scorer.score_files([samples, copy])[-1].path == f"image 1 ({dicom})"
    for bad, match in [(None, "got NoneType"), ([3], "got int"), (image.pixels, "got ndarray")]:
        with pytest.raises(ConfigError, match=match):
            scorer.score_files(bad)
    with pytest.raises(ConfigError, match="score_image takes a MedicalImage"):
        scorer.score_image(files[0])
    # Network inputs of another size or scale: refused (a 256-pixel frame scored 0.947 where
    # its file scored 0.685; frames x 255 scored 1.0).
    size = scorer.info["size"]
    for frames in (image.pixels[None], np.zeros((size, size), np.float32),
                   np.full((1, size, size), 255.0, np.float32)):
        with pytest.raises(InvalidImageError):
            scorer.score_frames(frames)


def test_small_misuses_are_named_for_what_they_are(tmp_path: Path) -> None:
    wide = me.from_array((np.random.default_rng(0).random((32, 32)) * 4000).astype(np.uint16))
    with pytest.warns(UserWarning, match="JPEG holds 8 bits"):     # silently 8-bit and lossy
        me.write_image(wide, tmp_path / "wide.jpg")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # 8-bit data: nothing lost
        me.write_image(me.from_array(np.full((32, 32), 7, np.uint8)), tmp_path / "u8.jpg")
    # An unknown kind of range was reported as an empty range.
    with pytest.raises(DegradationError, match="unknown range kind 'normal'"):
        Pipeline([{"op": "gaussian", "params": {"sigma": {"normal": [0.1, 0.02]}}}])
