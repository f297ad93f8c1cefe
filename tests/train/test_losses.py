"""Training losses agree with the metrics (and so with scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from medenhance.errors import ConfigError
from medenhance.train.losses import build_loss, ssim


def test_ssim_matches_skimage() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((64, 64))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ours = float(ssim(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]))
    assert ours == pytest.approx(structural_similarity(a, b, data_range=1.0), abs=1e-6)


def test_weighted_sum() -> None:
    x, y = torch.zeros(1, 1, 16, 16), torch.full((1, 1, 16, 16), 0.5)
    loss = build_loss({"mse": 2.0, "l1": 1.0, "ssim": 0.0})
    assert float(loss(x, y)) == pytest.approx(2 * 0.25 + 0.5)
    with pytest.raises(ConfigError, match="unknown term"):
        build_loss({"perceptual": 1.0})
    with pytest.raises(ConfigError, match="all weights are zero"):
        build_loss({"mse": 0})


def test_psnr_loss_is_minus_the_mean_per_sample_psnr() -> None:
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(1)
    clean = rng.random((3, 1, 32, 32))
    # Three samples at very different noise levels: each counts equally, unlike in the MSE.
    noisy = clean + rng.normal(0, 1, clean.shape) * np.array([0.01, 0.05, 0.2])[:, None, None, None]
    ours = float(build_loss({"psnr": 1.0})(torch.from_numpy(noisy), torch.from_numpy(clean)))
    ref = np.mean([peak_signal_noise_ratio(c[0], n[0], data_range=1.0)
                   for c, n in zip(clean, noisy)])
    assert ours == pytest.approx(-ref, abs=1e-5)
