"""Down-sampling shapes and values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medenhance.degrade import blur_downsample, downsample
from medenhance.errors import DegradationError


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("method", ["bicubic", "area"])
def test_shapes_and_flat_images(scale: int, method: str) -> None:
    flat = np.full((2, 50, 61), 0.25)
    out = downsample(flat, scale=scale, method=method)
    assert out.shape == (2, 50 // scale, 61 // scale)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_area_is_block_mean() -> None:
    x = np.arange(36, dtype=np.float64).reshape(6, 6)
    np.testing.assert_allclose(downsample(x, scale=3, method="area"),
                               [[7.0, 10.0], [25.0, 28.0]])


def test_bicubic_matches_pillow() -> None:
    x = np.random.default_rng(0).uniform(0, 1, (40, 40)).astype(np.float32)
    ref = np.asarray(Image.fromarray(x, mode="F").resize((20, 20), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(downsample(x, scale=2), ref, atol=1e-6)


def test_blur_then_downsample_smooths_more() -> None:
    x = np.random.default_rng(1).uniform(0, 1, (64, 64))
    assert blur_downsample(x, scale=2, sigma=1.5).std() < downsample(x, scale=2).std()


def test_bad_scale() -> None:
    with pytest.raises(DegradationError, match="positive integer"):
        downsample(np.zeros((8, 8)), scale=1.5)
    with pytest.raises(DegradationError, match="too small"):
        downsample(np.zeros((3, 3)), scale=4)
