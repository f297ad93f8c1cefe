"""The intensity contract: every kind of input reaches models on the same [0, 1] scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import medenhance as me
from medenhance.errors import InvalidImageError
from medenhance.image import IntensityWindow, choose_window

from .conftest import SAMPLES, SHARED


@pytest.mark.parametrize("path", [
    SHARED / "dicom-samples" / "wg04" / "CT1_RLE.dcm",    # 12-bit CT in HU (rescaled)
    SAMPLES / "cr_chest_RG1_J2KI.dcm",                    # 15-bit MONOCHROME1 radiograph
    SAMPLES / "mr_head_MR1_JPLL.dcm",                     # 16-bit signed MR
    SAMPLES / "xray_chest_nih_00009128_000.png",          # 8-bit PNG
    SAMPLES / "mri_brain_glioma_Te-gl_0063.png",
], ids=lambda p: p.name)
def test_every_input_spans_the_unit_range(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} not present")
    px = me.read_image(path).pixels
    assert px.dtype == np.float32
    assert px.min() >= 0.0 and px.max() <= 1.0
    # Whatever the bit depth, the image uses most of [0, 1]: a model sees comparable ranges.
    assert px.max() - px.min() > 0.6
    assert 0.05 < float(np.median(px)) < 0.95 or float(px.mean()) > 0.05


def test_window_rules() -> None:
    assert choose_window(np.array([3, 200], np.uint8), integer_bits=8) == IntensityWindow(0, 255)
    assert choose_window(np.array([100, 900]), integer_bits=12) == IntensityWindow(100, 900)
    assert choose_window(np.array([0.2, 0.7]), integer_bits=None) == IntensityWindow(0, 1)
    assert choose_window(np.array([-5.0, 7.0]), integer_bits=None) == IntensityWindow(-5, 7)
    w = IntensityWindow(10, 20, invert=True)
    np.testing.assert_allclose(w.to_values(w.to_unit(np.array([10, 15, 20]))), [10, 15, 20])
    assert w.to_unit(np.array([10]))[0] == 1.0


def test_constant_image_round_trips() -> None:
    image = me.from_array(np.full((4, 4), 700, np.uint16))
    np.testing.assert_array_equal(image.values(), 700)


def test_with_pixels_updates_spacing_and_history() -> None:
    image = me.from_array(np.zeros((10, 20), np.float32), pixel_spacing=(0.5, 0.5))
    bigger = image.with_pixels(np.zeros((20, 40)), "x2")
    assert bigger.meta.pixel_spacing == (0.25, 0.25)
    assert bigger.meta.history == ["x2"] and image.meta.history == []


def test_nan_pixels_are_refused() -> None:
    with pytest.raises(InvalidImageError, match="NaN"):
        me.from_array(np.array([[np.nan, 0.0]]))


def test_empty_arrays_are_refused() -> None:
    for empty in (np.zeros((0, 5)), np.zeros((3, 0, 4), np.uint16)):
        with pytest.raises(InvalidImageError, match="empty"):
            me.from_array(empty)
