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
