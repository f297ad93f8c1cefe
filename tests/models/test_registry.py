"""Registry behaviour and the shared model interface of every architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.restoration import estimate_sigma as sk_estimate_sigma

from medenhance.errors import ConfigError
from medenhance.models import create_model, list_models
from medenhance.degrade.noise import estimate_noise_sigma
from medenhance.models.common import estimate_sigma


def test_list_and_unknown() -> None:
    assert {"autoencoder", "dncnn", "drunet", "ffdnet"} <= set(list_models())
    assert list_models("ffdnet*") == ["ffdnet", "ffdnet_small"]
    with pytest.raises(ConfigError, match="unknown model 'nope'; choose from"):
        create_model("nope")
    with pytest.raises(ConfigError, match="dncnn"):
        create_model("dncnn", colour=True)


def test_none_arguments_keep_defaults() -> None:
    model = create_model("dncnn", depth=None, width=8)
    assert len([m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]) == 17


RESTORERS = [n for n in list_models() if getattr(create_model(n), "task", "restore") != "classify"]


@pytest.mark.parametrize("name", RESTORERS)
@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (1, 1, 48, 64)])
def test_shapes_and_interface(name: str, shape: tuple[int, ...]) -> None:
    model = create_model(name).eval()
    assert model.scale == 1 and model.size_multiple >= 1
    x = torch.rand(shape)
    with torch.no_grad():
        y = model(x)
        y_sigma = model(x, sigma=0.1)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if model.uses_sigma:
        assert not torch.allclose(y, y_sigma)
    else:
        torch.testing.assert_close(y, y_sigma)


def test_blind_noise_estimate_matches_skimage() -> None:
    rng = np.random.default_rng(0)
    x = np.clip(0.5 + rng.normal(0, 0.08, (2, 64, 64)), 0, 1).astype(np.float32)
    ours = estimate_sigma(torch.from_numpy(x)[:, None]).numpy()
    ref = [sk_estimate_sigma(f) for f in x]
    np.testing.assert_allclose(ours, ref, rtol=0.02)


def test_blind_noise_estimate_leaves_out_clipped_pixels() -> None:
    # An MR-like frame: half black background, where noise is clipped at 0, half tissue.
    rng = np.random.default_rng(1)
    clean = np.zeros((256, 256), np.float32)
    clean[:, 128:] = 0.5
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    ours = float(estimate_sigma(torch.from_numpy(noisy)[None, None])[0])
    assert ours == pytest.approx(0.1, rel=0.05)
    assert sk_estimate_sigma(noisy) < 0.09  # the plain estimate is pulled down by the clipping
    # The numpy twin used by the classical baselines follows the same rule.
    assert estimate_noise_sigma(noisy) == pytest.approx(ours, rel=0.01)
    # A frame that is almost all clipped falls back to every block rather than failing.
    binary = (rng.random((64, 64)) > 0.5).astype(np.float32)
    assert float(estimate_sigma(torch.from_numpy(binary)[None, None])[0]) >= 0


def test_classifier_outputs_logits_features_and_distances() -> None:
    model = create_model("small_resnet", widths=[8, 8, 16, 16]).eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (3,)
        assert model.features(x).shape == (3, 16)
        f = model.density_features(x)
        assert f.shape == (3, 32)
        model.feature_mean.copy_(f[0])
        model.feature_precision.copy_(torch.eye(32))
        d = model.mahalanobis(f)
    torch.testing.assert_close(d, (f - f[0]).norm(dim=1), atol=1e-4, rtol=1e-4)
    assert create_model("small_resnet", num_outputs=8)(x).shape == (3, 8)


def test_fastunet_grows_deeper_without_changing_its_output() -> None:
    torch.manual_seed(0)
    small = create_model("fastunet", widths=(8, 16, 16), blocks=(1, 2, 2)).eval()
    for p in small.parameters():  # trained-looking weights, not the initial ones
        p.data.add_(0.05 * torch.randn_like(p))
    grown = create_model("fastunet", widths=(8, 16, 16), blocks=(2, 3, 5)).eval()
    grown.initialise_from(small)
    x = torch.rand(2, 1, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(grown(x, 0.1), small(x, 0.1), rtol=0, atol=1e-5)
        torch.testing.assert_close(grown(x), small(x), rtol=0, atol=1e-5)
    # The new convolutions are real parameters: perturbing one changes the output.
    with torch.no_grad():
        grown.middle[-2].weight.add_(0.1)
        assert (grown(x, 0.1) - small(x, 0.1)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cannot shrink middle from 5 to 2"):
        small.initialise_from(create_model("fastunet", widths=(8, 16, 16), blocks=(1, 2, 5)))
    with pytest.raises(RuntimeError, match="size mismatch"):
        grown.initialise_from(create_model("fastunet", widths=(8, 16, 32), blocks=(1, 2, 2)))


def test_view_distance_averages_the_eight_views() -> None:
    from medenhance.models.classifier import all_views, transform8

    model = create_model("small_resnet", widths=[8, 8, 16, 16]).eval()
    x = torch.rand(3, 1, 32, 32)
    views = all_views(x)
    for t in range(8):
        assert torch.equal(views[3 * t: 3 * t + 3], transform8(x, torch.full((3,), t)))
    with torch.no_grad():
        f = model.density_features(views)
        model.feature_mean.copy_(f.mean(0))
        model.feature_precision.copy_(torch.eye(32))
        d = model.view_distance(x)
        expected = model.mahalanobis(f).view(8, 3).mean(0)
        torch.testing.assert_close(d, expected)
        # The 8 views form a group: a rotated or mirrored image has the same score.
        torch.testing.assert_close(model.view_distance(torch.rot90(x, 1, (-2, -1))), d)
        torch.testing.assert_close(model.view_distance(torch.flip(x, (-2,))), d)
        assert not torch.allclose(model.mahalanobis(model.density_features(x.flip(-2))),
                                  model.mahalanobis(model.density_features(x)))
