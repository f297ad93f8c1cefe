"""Classical denoisers to compare against: non-local means (scikit-image) and BM3D (``bm3d``).

Both are Gaussian-noise methods. To be fair to them on the noise of real images, each call takes a
:class:`NoiseModel` (what the noise is, with its true parameters when they are known, as in a
benchmark) and wraps the Gaussian denoiser accordingly:

* ``gaussian``: run with ``sigma`` directly.
* ``poisson_gaussian`` (X-ray quantum noise, log domain as simulated by
  :func:`medenhance.degrade.noise.poisson_gaussian`): back to counts, generalised Anscombe
  transform (noise ~ N(0, 1)), denoise with sigma 1, the closed-form approximation of the exact
  unbiased inverse (Makitalo & Foi, IEEE TIP 22(1), 2013, doi:10.1109/TIP.2012.2202675), back to
  the log domain.
* ``rician`` (MR magnitude): denoise with ``sigma``, then remove the Rician bias,
  ``sqrt(max(D^2 - sigma^2, 0))`` (Gudbjartsson & Patz, MRM 34(6), 1995, doi:10.1002/mrm.1910340618).

BM3D is licensed for non-commercial use only: it is an optional extra (``pip install
medenhance[eval]``) used for evaluation, never by the product's own enhancement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..degrade.noise import estimate_noise_sigma

Denoiser = Callable[[np.ndarray, float], np.ndarray]


@dataclass(frozen=True)
class NoiseModel:
    """The noise a classical method is told about; all levels on the [0, 1] scale.

    ``sigma`` is the Gaussian (or Rician per-channel) standard deviation; ``None`` estimates it
    from the image. ``photons``, ``electronic_sigma`` and ``mu_max`` describe log-domain X-ray
    quantum noise (see ``poisson_gaussian``).
    """

    kind: str = "gaussian"
    sigma: float | None = None
    photons: float | None = None
    electronic_sigma: float = 0.0
    mu_max: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in ("gaussian", "poisson_gaussian", "rician"):
            raise ConfigError(f"noise kind must be gaussian, poisson_gaussian or rician, got "
                              f"{self.kind!r}")
        if self.kind == "poisson_gaussian" and not self.photons:
            raise ConfigError("poisson_gaussian noise needs the photon count")


def nlm_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image non-local means, fast mode, 5x5 patches, 13x13 search, ``h = 0.8 sigma``.

    The settings scikit-image's documentation recommends for fast mode with a known sigma.
    """
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(x, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5,
                            patch_distance=6)


def bm3d_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D (Dabov et al. 2007; the ``bm3d`` package), ``sigma_psd`` = noise std on ``x``'s scale."""
    try:
        import bm3d
    except ImportError:
        raise ConfigError("BM3D needs the optional `bm3d` package (non-commercial licence): "
                          "pip install 'medenhance[eval]'") from None
    return np.asarray(bm3d.bm3d(x, sigma_psd=sigma), dtype=np.float64)


def anscombe(counts: np.ndarray, electronic_sigma: float) -> np.ndarray:
    """Generalised Anscombe transform for Poisson + N(0, s^2) counts (unit gain, zero mean)."""
    return 2.0 * np.sqrt(np.maximum(counts + 3.0 / 8.0 + electronic_sigma**2, 0.0))


def inverse_anscombe(d: np.ndarray, electronic_sigma: float) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2011/2013)."""
    d = np.maximum(d, 1e-6)
    a = math.sqrt(1.5)
    out = 0.25 * d**2 + 0.25 * a / d - 11.0 / 8.0 / d**2 + 5.0 / 8.0 * a / d**3 - 1.0 / 8.0
    return np.maximum(out - electronic_sigma**2, 0.0)


def classical_denoise(x: np.ndarray, method: str, noise: NoiseModel | None = None) -> np.ndarray:
    """Denoise a 2-D frame in [0, 1] with ``"nlm"`` or ``"bm3d"`` under ``noise``; float32 [0, 1]."""
    denoisers: dict[str, Denoiser] = {"nlm": nlm_gaussian, "bm3d": bm3d_gaussian}
    if method not in denoisers:
        raise ConfigError(f"unknown classical method {method!r}; choose nlm or bm3d")
    if x.ndim != 2:
        raise ConfigError(f"classical denoisers take one 2-D frame, got shape {x.shape}")
    noise = noise or NoiseModel()
    denoise = denoisers[method]
    arr = np.asarray(x, dtype=np.float64)
    if noise.kind == "poisson_gaussian":
        n0, mu = float(noise.photons), noise.mu_max  # type: ignore[arg-type]
        counts = n0 * np.exp(-mu * arr)
        stabilised = anscombe(counts, noise.electronic_sigma)
        low, span = stabilised.min(), max(float(np.ptp(stabilised)), 1e-6)
        # Both methods are tuned for [0, 1]-scaled images; scale there and back.
        clean = denoise((stabilised - low) / span, 1.0 / span) * span + low
        counts = np.maximum(inverse_anscombe(clean, noise.electronic_sigma), 0.5)
        out = -np.log(counts / n0) / mu
    else:
        sigma = noise.sigma if noise.sigma is not None else estimate_noise_sigma(arr)
        out = denoise(arr, max(float(sigma), 1e-6))
        if noise.kind == "rician":
            out = np.sqrt(np.maximum(out**2 - float(sigma) ** 2, 0.0))
    return np.clip(out, 0.0, 1.0).astype(np.float32)
