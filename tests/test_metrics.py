"""Metrics agree with scikit-image's reference implementations on real images.

Provenance: reference values are computed at test time by skimage.metrics (scikit-image 0.26.0),
peak_signal_noise_ratio and structural_similarity with their defaults and data_range=1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import metrics as sk

import medenhance as me
from medenhance import metrics as M
from medenhance.errors import InvalidImageError

from .conftest import SAMPLES

REAL = [SAMPLES / "xray_chest_nih_00009128_000.png", SAMPLES / "mri_brain_glioma_Te-gl_0063.png",
        SAMPLES / "mr_head_MR1_JPLL.dcm"]


def _pair(path: Path, sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    clean = me.read_image(path).pixels.astype(np.float64)
    rng = np.random.default_rng(seed)
    return clean, np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 1)


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_psnr_ssim_match_skimage(path: Path, sigma: float) -> None:
    ref, test = _pair(path, sigma)
    assert M.psnr(ref, test) == pytest.approx(
        sk.peak_signal_noise_ratio(ref, test, data_range=1.0), abs=1e-4)
    assert M.ssim(ref, test) == pytest.approx(
        sk.structural_similarity(ref, test, data_range=1.0), abs=1e-4)
    assert M.mse(ref, test) == pytest.approx(sk.mean_squared_error(ref, test), rel=1e-9)


def test_batched_equals_per_image() -> None:
    pairs = [_pair(SAMPLES / "mri_brain_glioma_Te-gl_0063.png", s, seed=i)
             for i, s in enumerate((0.03, 0.08))]
    refs = np.stack([p[0] for p in pairs])
    tests = np.stack([p[1] for p in pairs])
    for name, (func, _) in M.METRICS.items():
        batch = func(refs, tests)
        assert batch.shape == (2,)
        np.testing.assert_allclose(batch, [func(r, t) for r, t in zip(refs, tests)], rtol=1e-12,
                                   err_msg=name)


def test_identity_and_ordering() -> None:
    ref, mild = _pair(SAMPLES / "mri_brain_glioma_Te-gl_0063.png", 0.02)
    _, strong = _pair(SAMPLES / "mri_brain_glioma_Te-gl_0063.png", 0.1)
    assert M.ssim(ref, ref) == pytest.approx(1.0)
    assert M.ms_ssim(ref, ref) == pytest.approx(1.0)
    assert M.psnr(ref, ref) == np.inf
    for name in ("psnr", "ssim", "ms_ssim"):
        func = M.METRICS[name][0]
        assert func(ref, mild) > func(ref, strong), name


def test_psnr_of_known_mse() -> None:
    ref = np.zeros((16, 16))
    test = np.full((16, 16), 0.1)
    assert M.psnr(ref, test) == pytest.approx(20.0)
    assert M.psnr(ref * 255, test * 255, data_range=255) == pytest.approx(20.0)
    assert M.rmse(ref, test) == pytest.approx(0.1)
    assert M.mae(ref, test) == pytest.approx(0.1)


def test_mask_restricts_the_average() -> None:
    ref = np.zeros((32, 32))
    test = ref.copy()
    test[:, 16:] = 0.5
    mask = np.zeros((32, 32), bool)
    mask[:, :16] = True
    assert M.mse(ref, test, mask=mask) == 0.0
    assert M.mae(ref, test, mask=~mask) == pytest.approx(0.5)
    assert M.ssim(ref, test, mask=mask) > M.ssim(ref, test)


@pytest.mark.parametrize("kwargs,match", [
    ({"test": np.zeros((8, 9))}, "shapes differ"),
    ({"data_range": 0}, "data_range"),
    ({"test": np.full((8, 8), np.nan)}, "NaN"),
    ({"mask": np.zeros((8, 8), bool)}, "selects no pixel"),
])
def test_bad_input(kwargs: dict, match: str) -> None:
    args = {"reference": np.zeros((8, 8)), "test": np.zeros((8, 8)), **kwargs}
    with pytest.raises(InvalidImageError, match=match):
        M.mse(args.pop("reference"), args.pop("test"), **args)


def test_small_images_are_refused_with_advice() -> None:
    with pytest.raises(InvalidImageError, match="win_size"):
        M.ssim(np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(InvalidImageError, match="176"):
        M.ms_ssim(np.zeros((100, 100)), np.zeros((100, 100)))
    assert M.ms_ssim(np.ones((100, 100)), np.ones((100, 100)),
                     weights=(0.5, 0.5)) == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:Setting data_range based on")
@pytest.mark.parametrize("dtype,low", [(np.uint8, 0), (np.uint16, 0), (np.int16, -1000),
                                       (np.int16, 0)])
def test_integer_images_take_their_range_from_the_type_as_in_skimage(dtype, low: int) -> None:
    """uint8 images were scored on a range of 1.0 (PSNR -21 dB where scikit-image says 27);
    scikit-image's SSIM takes a signed type's whole span even without negative values."""
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    clean = rng.integers(low, min(info.max, 60000), (64, 64)).astype(dtype)
    noisy = np.clip(clean + rng.normal(0, 8, clean.shape), info.min, info.max).astype(dtype)
    assert M.psnr(clean, noisy) == pytest.approx(sk.peak_signal_noise_ratio(clean, noisy),
                                                 abs=1e-6)
    assert M.ssim(clean, noisy) == pytest.approx(
        sk.structural_similarity(clean, noisy), abs=1e-4)


def test_metrics_take_images_and_refuse_what_has_no_scale() -> None:
    rng = np.random.default_rng(4)
    clean = rng.random((32, 32))
    noisy = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1)
    as_images = M.psnr(me.from_array(clean), me.from_array(noisy))
    assert as_images == pytest.approx(M.psnr(clean, noisy), abs=1e-4)
    with pytest.raises(InvalidImageError, match="off the \\[0, 1\\] scale.*pass data_range"):
        M.psnr(clean * 4000, noisy * 4000)
    assert M.psnr(clean * 4000, noisy * 4000, data_range=4000) == pytest.approx(
        M.psnr(clean, noisy))
    with pytest.raises(InvalidImageError, match="positive number, got 'abc'"):
        M.ssim(clean, noisy, data_range="abc")
    with pytest.raises(InvalidImageError, match="got str"):
        M.mse("clean.png", "noisy.png")
    as_bytes = (clean * 255).astype(np.uint8)
    with pytest.raises(InvalidImageError, match="uint8 and the test float64: pass data_range"):
        M.psnr(as_bytes, noisy)
