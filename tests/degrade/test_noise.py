"""Noise statistics on flat images against their closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from medenhance.degrade import estimate_noise_sigma, gaussian, low_field, poisson_gaussian, rician
from medenhance.errors import DegradationError

FLAT = np.full((256, 256), 0.5)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_gaussian_mean_and_std() -> None:
    y = gaussian(FLAT, sigma=25 / 255, rng=rng())
    assert abs(y.mean() - 0.5) < 3 * (25 / 255) / 256
    assert y.std() == pytest.approx(25 / 255, rel=0.01)


def test_poisson_gaussian_linear_variance() -> None:
    photons, e = 200.0, 3.0
    y = poisson_gaussian(FLAT, photons=photons, electronic_sigma=e, log_domain=False, rng=rng())
    # Var = (photons * x + e^2) / photons^2
    assert y.mean() == pytest.approx(0.5, abs=0.002)
    assert y.var() == pytest.approx((photons * 0.5 + e**2) / photons**2, rel=0.03)


def test_poisson_log_domain_follows_delta_method() -> None:
    photons, mu = 1000.0, 4.0
    y = poisson_gaussian(FLAT, photons=photons, mu_max=mu, rng=rng(1))
    expected_counts = photons * np.exp(-mu * 0.5)
    # Var[-log(N / N0) / mu] ~ 1 / (E[N] mu^2) for large counts.
    assert y.std() == pytest.approx(1 / (np.sqrt(expected_counts) * mu), rel=0.03)
    assert y.mean() == pytest.approx(0.5, abs=0.002)
    # Dense (bright) regions receive fewer photons, so they are noisier: the physics of X-ray.
    dense = poisson_gaussian(np.full((256, 256), 0.9), photons=photons, mu_max=mu, rng=rng(2))
    assert dense.std() > 1.5 * y.std()


def test_rician_moments() -> None:
    sigma = 0.05
    background = rician(np.zeros((256, 256)), sigma=sigma, rng=rng())
    assert background.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.01)  # Rayleigh
    a = 0.1
    y = rician(np.full((256, 256), a), sigma=sigma, rng=rng(1))
    x = -(a**2) / (2 * sigma**2)
    laguerre = np.exp(x / 2) * ((1 - x) * special.i0(-x / 2) - x * special.i1(-x / 2))
    assert y.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2) * laguerre, rel=0.01)
    assert (y**2).mean() == pytest.approx(a**2 + 2 * sigma**2, rel=0.01)


def test_low_field_doubles_noise_from_3t_to_1_5t() -> None:
    source_sigma = 0.01
    acquired = gaussian(FLAT, sigma=source_sigma, rng=rng(3))
    assert estimate_noise_sigma(acquired) == pytest.approx(source_sigma, rel=0.05)
    low = low_field(acquired, field_from=3.0, field_to=1.5, source_sigma=source_sigma, rng=rng(4))
    assert low.std() == pytest.approx(2 * source_sigma, rel=0.03)
    estimated = low_field(acquired, field_from=3.0, field_to=1.5, rng=rng(4))
    assert estimated.std() == pytest.approx(2 * source_sigma, rel=0.06)


@pytest.mark.parametrize("func,kwargs", [
    (gaussian, {"sigma": 0.0}), (rician, {"sigma": 0.0}),
    (poisson_gaussian, {"photons": float("inf")}),
    (low_field, {"field_from": 3.0, "field_to": 3.0}),
])
def test_zero_strength_is_identity(func, kwargs) -> None:
    x = np.random.default_rng(5).uniform(0, 1, (32, 32))
    np.testing.assert_allclose(func(x, **kwargs, rng=rng()), x, atol=1e-12)


def test_bad_parameters_name_themselves() -> None:
    with pytest.raises(DegradationError, match="sigma"):
        gaussian(FLAT, sigma=-1, rng=rng())
    with pytest.raises(DegradationError, match="field_to"):
        low_field(FLAT, field_from=1.5, field_to=3.0, rng=rng())
