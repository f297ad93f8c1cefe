"""The fixed Gabor-wavelet features of one-class triage (models/wavelet.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from medenhance.models import create_model
from medenhance.models.wavelet import BORDER, MODULUS_FLOOR, gabor_kernel


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
    padded = np.pad(frame.astype(np.float64), BORDER, mode="reflect")
    for c in (0, 7, 23):
        kernel = model.kernels[c].numpy()
        ref = np.abs(fftconvolve(padded, kernel, mode="same"))[BORDER:-BORDER, BORDER:-BORDER]
        np.testing.assert_allclose(ours[c], ref, atol=2e-5)


@pytest.mark.parametrize("side", [20, 32])
def test_small_frames_are_bordered_without_wrapping(side: int) -> None:
    """Frames smaller than the longest filter: mirrored as far as they can be, then their edge
    repeated, never wrapped around (a circular convolution would add the opposite edge)."""
    model = create_model("wavelet_features")
    frame = np.random.default_rng(1).random((side, side))
    ours = model.response_moduli(torch.from_numpy(frame).float()[None, None])[0].numpy()
    padded = np.pad(np.pad(frame, side - 1, mode="reflect"), BORDER - side + 1, mode="edge")
    crop = slice(BORDER, BORDER + side)
    for c in (5, 23):           # 4 and 32 px wavelengths
        ref = np.abs(fftconvolve(padded, model.kernels[c].numpy(), mode="same"))[crop, crop]
        np.testing.assert_allclose(ours[c], ref, atol=2e-5)


def test_filters_follow_the_frame_shape() -> None:
    """One model on frames of several shapes gives what a fresh model gives on each."""
    model = create_model("wavelet_features")
    frames = [torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 80), torch.rand(1, 1, 96, 64),
              torch.rand(2, 1, 64, 96)]
    for x in frames:
        torch.testing.assert_close(model.density_features(x),
                                   create_model("wavelet_features").density_features(x))


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
    # The responses are linear in the frame: the logarithm turns a change of contrast into a
    # shift of the features (by log 0.5, where the responses stand well above the floor).
    blocks = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    x = blocks.repeat_interleave(8, -2).repeat_interleave(8, -1)      # 8-px black/white blocks
    a, b = model.response_moduli(x), model.response_moduli(0.5 * x)
    torch.testing.assert_close(b, 0.5 * a, atol=1e-6, rtol=1e-4)
    fa, fb = model.density_features(x), model.density_features(0.5 * x)
    strong = fa > math.log(100 * MODULUS_FLOOR)
    assert strong.any()
    torch.testing.assert_close(fb[strong] - fa[strong], torch.full_like(fa[strong], math.log(0.5)),
                               atol=0.02, rtol=0)


def test_relative_features_ignore_what_acts_on_a_whole_scale() -> None:
    """``relative``: each wavelength's features less their mean over cells and orientations, so
    a change that scales one wavelength's responses over the whole frame (here a change of
    contrast, which scales them all) moves none of them, while a change in one place does."""
    plain = create_model("wavelet_features", grid=2)
    relative = create_model("wavelet_features", grid=2, relative=True)
    assert relative.card_arguments["relative"] is True and "relative" not in plain.card_arguments
    generator = torch.Generator().manual_seed(0)

    def blocks(n: int) -> torch.Tensor:        # random black/white blocks of 64 / n px
        b = (torch.rand(1, 1, n, n, generator=generator) > 0.5).float()
        return b.repeat_interleave(64 // n, -2).repeat_interleave(64 // n, -1)

    x = 0.2 + 0.3 * blocks(16) + 0.3 * blocks(4)       # responses at every wavelength
    f = relative.density_features(x)
    per_scale = plain.density_features(x).view(1, 4, -1)
    torch.testing.assert_close(f, (per_scale - per_scale.mean(2, keepdim=True)).view(1, -1))
    torch.testing.assert_close(f.view(1, 4, -1).mean(2), torch.zeros(1, 4), atol=1e-5, rtol=0)
    # Half the contrast: every plain feature moves by about log 0.5, no relative one by more than
    # the floor under the moduli allows (the weakest cell's mean modulus is 0.011).
    assert (plain.density_features(0.5 * x) - plain.density_features(x)).abs().min() > 0.6
    torch.testing.assert_close(relative.density_features(0.5 * x), f, atol=0.05, rtol=0)
    spot = x.clone()
    spot[..., 4:20, 4:20] = 1.0                 # a bright patch in one quarter
    assert (relative.density_features(spot) - f).abs().max() > 0.1


def test_second_order_features_filter_the_first_order_again() -> None:
    """``second_order``: for each shorter/longer pair of wavelengths, the orientation-averaged
    first-order moduli at the shorter one, filtered as a frame is at the longer one, relative to
    their own mean in each cell; after the first order's features, which do not change."""
    import torch.nn.functional as F

    from medenhance.models.wavelet import LEVEL_FLOOR

    plain = create_model("wavelet_features", grid=2)
    model = create_model("wavelet_features", grid=2, second_order=True)
    assert model.pairs == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert model.density_dim == (24 + 6 * 6) * 4 and model.card_arguments["second_order"] is True
    generator = torch.Generator().manual_seed(2)
    x = 0.2 + 0.6 * F.interpolate(torch.rand(2, 1, 16, 16, generator=generator), 64,
                                  mode="bilinear")
    f = model.density_features(x).view(2, -1, 2, 2)
    torch.testing.assert_close(f[:, :24], plain.density_features(x).view(2, -1, 2, 2))
    per_scale = plain.response_moduli(x).view(2, 4, 6, 64, 64).mean(2)
    for k, (i, j) in enumerate(model.pairs):
        again = plain.response_moduli(per_scale[:, i: i + 1])[:, 6 * j: 6 * j + 6]
        level = F.adaptive_avg_pool2d(per_scale[:, i: i + 1], 2) + LEVEL_FLOOR
        expected = torch.log(F.adaptive_avg_pool2d(again, 2) / level + MODULUS_FLOOR)
        torch.testing.assert_close(f[:, 24 + 6 * k: 30 + 6 * k], expected, atol=1e-4, rtol=1e-4)
    # Half the contrast halves both moduli: the second order barely moves (the floors aside),
    # while the first order moves by about log 2.
    half = model.density_features(0.5 * x).view(2, -1, 2, 2)
    assert (half[:, 24:] - f[:, 24:]).abs().max() < 0.05
    assert (half[:, :24] - f[:, :24]).abs().min() > 0.4
    assert model.distance_map(x).shape == (2, 2, 2)


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


def test_the_map_puts_each_share_in_its_own_cell() -> None:
    """A bright spot in one cell of a flat frame: with a Gaussian of the flat frame's features,
    only the spot's cell departs from it (features are channel-major: channel, row, column)."""
    model = create_model("wavelet_features", wavelengths=[4], orientations=2, grid=2)
    flat = torch.full((1, 1, 64, 64), 0.5)
    model.feature_mean.copy_(model.density_features(flat)[0])
    model.feature_precision.copy_(torch.eye(model.density_dim))
    spot = flat.clone()
    spot[..., 40:48, 8:16] = 1.0              # lower left: row 1, column 0
    shares = model.distance_map(spot)[0]
    assert float(shares[1, 0]) > 0 and float(shares.sum() - shares[1, 0]) == pytest.approx(0)
    # Only one channel's features of the upper right cell weigh: that cell alone lights up.
    model.feature_precision.zero_()
    index = 0 * 4 + 0 * 2 + 1                  # channel 0, row 0, column 1
    model.feature_precision[index, index] = 1.0
    other = flat.clone()
    other[..., 4:12, 40:48] = 1.0
    shares = model.distance_map(other)[0]
    assert float(shares[0, 1]) > 0 and float(shares.sum() - shares[0, 1]) == pytest.approx(0)


def test_a_card_records_the_filter_bank() -> None:
    model = create_model("wavelet_features", grid=3)
    assert model.card_arguments == {"wavelengths": [4.0, 8.0, 16.0, 32.0], "orientations": 6,
                                    "grid": 3}
    assert create_model("wavelet_features", **model.card_arguments).density_dim == 24 * 9


@pytest.mark.parametrize("arguments, message", [
    ({"wavelengths": [1]}, "wavelengths >= 2 px"), ({"wavelengths": 8}, "a list of numbers"),
    ({"grid": 200}, "grid: a whole number from 1 to 16"), ({"grid": "two"}, "grid: a whole"),
    ({"orientations": 2.5}, "orientations: a whole number"),
    ({"relative": "yes"}, "relative: true or false"),
    ({"second_order": 1}, "second_order: true or false"),
    ({"second_order": True, "wavelengths": [8]}, "second_order: needs two different")])
def test_bad_arguments_are_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("wavelet_features", **arguments)
    assert create_model("wavelet_features", grid=np.int64(2)).grid == 2


def test_frames_of_another_shape_are_refused() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 1, H, W\), got \(1, 64, 64\)"):
        create_model("wavelet_features").density_features(torch.rand(1, 64, 64))


@pytest.mark.parametrize("name, sample, distance, extra", [
    ("mri-triage", "mri_brain_glioma_Te-gl_0063.png", 39.59977, {}),
    ("xray-triage", "xray_chest_nih_00009128_000.png", 40.54522, {"second_order": True})])
def test_bundled_models_keep_their_features(samples, name: str, sample: str,
                                            distance: float, extra: dict) -> None:
    """The bundled wavelet models were fitted to features of this code: their cards name the
    filter bank, and a change of it (or of how responses are computed) that moved the features
    would silently move every score; the distances recorded here, at bundling, catch it."""
    from medenhance.io import read_image
    from medenhance.triage.data import model_inputs, triage_frame
    from medenhance.triage.score import TriageScorer

    scorer = TriageScorer(name)
    assert scorer.model.card.arguments == scorer.model.network.card_arguments == {
        "wavelengths": [4.0, 8.0, 16.0, 32.0], "orientations": 6, "grid": 4, **extra}
    frame = model_inputs(triage_frame(read_image(samples / sample), 128)[None], scorer.info)
    _, measured = scorer.score_frames(frame)
    assert measured[0] == pytest.approx(distance, rel=1e-4)
