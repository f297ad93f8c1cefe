"""Stitched output equals the predictor applied to the whole image (no trained model needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medenhance.errors import ConfigError
from medenhance.inference import TiledInferer, tiled_apply
from medenhance.inference.tiling import axis_windows


@pytest.mark.parametrize("shape", [(1, 1, 100, 77), (2, 1, 64, 64), (1, 1, 20, 300)])
@pytest.mark.parametrize("overlap", [0, 5, 8])
@pytest.mark.parametrize("blend", ["constant", "ramp"])
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

    out = tiled_apply(x, upsample, tile=16, overlap=4, size_multiple=4, scale=3)
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=3, mode="nearest"))


def test_local_filter_is_reproduced_exactly_when_the_overlap_covers_it() -> None:
    """A 5x5 blur sees 2 pixels past a window edge; the ramp gives the outer quarter of a
    16-pixel overlap (4 pixels) zero weight, so the padding never reaches the result."""
    x = torch.rand(1, 1, 130, 121, generator=torch.Generator().manual_seed(1))
    kernel = torch.full((1, 1, 5, 5), 1 / 25)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (2, 2, 2, 2), mode="reflect"), kernel)

    whole = blur(x)
    torch.testing.assert_close(tiled_apply(x, blur, tile=48, overlap=16), whole)
    # Equal weights keep the padded window edges, so the same tiling is visibly wrong there.
    assert (tiled_apply(x, blur, tile=48, overlap=16, blend="constant") - whole).abs().max() > 0.01


@pytest.mark.parametrize(("length", "count", "window"), [(1024, 3, 392), (512, 1, 512),
                                                         (520, 2, 296), (4096, 10, 480)])
def test_windows_are_balanced_and_overlap_enough(length, count, window) -> None:
    size, starts = axis_windows(length, 512, 64, 8)
    assert (len(starts), size) == (count, window)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(s % 8 == 0 for s in starts)
    assert all(a + size - b >= 64 for a, b in zip(starts, starts[1:]))


def test_tile_zero_runs_whole_image_with_padding() -> None:
    x = torch.rand(1, 1, 30, 31)
    out = tiled_apply(x, lambda t: t * 3, tile=0, size_multiple=8)
    torch.testing.assert_close(out, x * 3)


def test_inferer_object_and_bad_settings() -> None:
    x = torch.rand(1, 1, 40, 40)
    torch.testing.assert_close(TiledInferer(tile=16, overlap=4)(x, lambda t: t - 1), x - 1)
    with pytest.raises(ConfigError, match="overlap"):
        tiled_apply(x, lambda t: t, tile=32, overlap=16)
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        tiled_apply(x[0], lambda t: t)
