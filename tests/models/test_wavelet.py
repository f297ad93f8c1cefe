"""The fixed Gabor-wavelet features of one-class triage (models/wavelet.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from medenhance.models import create_model
from medenhance.models.wavelet import MODULUS_FLOOR, gabor_kernel


def test_gabor_kernel_is_zero_mean_and_normalised() -> None:
    for wavelength in (4, 8, 16, 32):
        kernel = gabor_kernel(wavelength, math.pi / 3)
        assert abs(kernel.sum()) < 1e-12          # a flat image gives no response
        assert float(kernel.abs().sum()) == pytest.approx(1.0)
        assert kernel.shape[0] % 2 == 1 and kernel.shape[0] <= 81


def test_responses_agree_with_scipy_convolution() -> None:
    model = create_model("wavelet_features")
    rng = np.random.default_rng(0)
    frame = rng.random((64, 80)).astype(np.float32)
    ours = model.response_moduli(torch.from_numpy(frame)[None, None])[0].numpy()
    pad = min(48, 63)
    padded = np.pad(frame.astype(np.float64), pad, mode="reflect")
    for c in (0, 7, 23):
        kernel = model.kernels[c].numpy()
        ref = np.abs(fftconvolve(padded, kernel, mode="same"))[pad:-pad, pad:-pad]
        np.testing.assert_allclose(ours[c], ref, atol=2e-5)


def test_a_grating_answers_most_to_its_own_wavelength_and_orientation() -> None:
    model = create_model("wavelet_features")
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float64)
    for wavelength, angle_index in ((8, 0), (16, 2), (4, 4)):
        angle = math.pi * angle_index / 6
        grating = 0.5 + 0.4 * np.cos(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle))
                                     / wavelength)
        moduli = model.response_moduli(torch.from_numpy(grating).float()[None, None])[0]
        strongest = int(moduli[:, 32:96, 32:96].mean((1, 2)).argmax())
        assert strongest == model.wavelengths.index(wavelength) * 6 + angle_index


def test_features_shape_flat_frames_and_contrast() -> None:
    model = create_model("wavelet_features", grid=2)
    assert model.density_dim == 4 * 6 * 2 * 2
    flat = torch.full((2, 1, 64, 64), 0.7)
    np.testing.assert_allclose(model.density_features(flat).numpy(), math.log(MODULUS_FLOOR),
                               atol=1e-3)
    # The logarithm turns a change of contrast into a shift of every feature by its log.
    x = torch.rand(1, 1, 64, 64)
    a, b = model.response_moduli(x), model.response_moduli(0.5 * x)
    torch.testing.assert_close(b, 0.5 * a, atol=1e-6, rtol=1e-4)


def test_distance_and_its_map_follow_the_fitted_gaussian() -> None:
    model = create_model("wavelet_features", grid=2)
    x = torch.rand(3, 1, 64, 64)
    f = model.density_features(x)
    model.feature_mean.copy_(f[0])
    weights = torch.rand(model.density_dim) + 0.5
    model.feature_precision.copy_(torch.diag(weights))
    expected = torch.sqrt((((f - f[0]) ** 2) * weights).sum(1))
    torch.testing.assert_close(model(x), expected)
    assert float(model(x)[0]) == pytest.approx(0.0, abs=1e-5)
    shares = model.distance_map(x)
    assert shares.shape == (3, 2, 2)
    torch.testing.assert_close(shares.sum((1, 2)), expected ** 2, rtol=1e-4, atol=1e-4)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="wavelengths"):
        create_model("wavelet_features", wavelengths=[1])
