"""Stitched output equals the predictor applied to the whole image (no trained model needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medenhance.errors import ConfigError
from medenhance.inference import TiledInferer, tiled_apply


@pytest.mark.parametrize("shape", [(1, 1, 100, 77), (2, 1, 64, 64), (1, 1, 20, 300)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_pointwise_predictors_are_reproduced(shape, overlap, blend) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    for predictor in (lambda t: t + 1, lambda t: 2 * t):
        out = tiled_apply(x, predictor, tile=32, overlap=overlap, blend=blend, batch_size=3)
        torch.testing.assert_close(out, predictor(x), atol=1e-5, rtol=1e-5)


def test_size_multiple_and_scale() -> None:
    x = torch.rand(1, 1, 45, 51)

    def upsample(t: torch.Tensor) -> torch.Tensor:
        assert t.shape[-1] % 4 == 0 and t.shape[-2] % 4 == 0
        return F.interpolate(t, scale_factor=3, mode="nearest")

    out = tiled_apply(x, upsample, tile=16, overlap=0.5, size_multiple=4, scale=3)
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=3, mode="nearest"))


def test_local_filter_matches_whole_image_away_from_seams() -> None:
    """A 3x3 blur only differs at window edges; Gaussian blending keeps that tiny."""
    x = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    kernel = torch.full((1, 1, 3, 3), 1 / 9)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), kernel)

    whole = blur(x)
    tiled = tiled_apply(x, blur, tile=64, overlap=0.5, blend="gaussian")
    assert (tiled - whole).abs().max() < 0.01
    assert (tiled - whole).abs().mean() < 2e-3


def test_tile_zero_runs_whole_image_with_padding() -> None:
    x = torch.rand(1, 1, 30, 31)
    out = tiled_apply(x, lambda t: t * 3, tile=0, size_multiple=8)
    torch.testing.assert_close(out, x * 3)


def test_inferer_object_and_bad_settings() -> None:
    x = torch.rand(1, 1, 40, 40)
    torch.testing.assert_close(TiledInferer(tile=16)(x, lambda t: t - 1), x - 1)
    with pytest.raises(ConfigError, match="overlap"):
        tiled_apply(x, lambda t: t, overlap=1.0)
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        tiled_apply(x[0], lambda t: t)
