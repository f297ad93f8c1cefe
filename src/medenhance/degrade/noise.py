"""Noise models on the [0, 1] scale.

* :func:`gaussian` - additive white Gaussian noise (the denoising literature's sigma/255).
* :func:`poisson_gaussian` - X-ray quantum noise: Poisson photon counts plus Gaussian electronic
  noise, with the dose given as a photon count. In ``log_domain`` mode (default) pixel values are
  treated as attenuation line integrals, as in a log-transformed radiograph: a ray of value ``x``
  reaches the detector with ``photons * exp(-mu_max * x)`` expected quanta, so dense (bright) regions
  get fewer photons and more noise, as in real low-dose images.
* :func:`rician` - noise of magnitude MRI: complex Gaussian noise on the real and imaginary channels,
  then the modulus (Gudbjartsson & Patz 1995).
* :func:`low_field` - the SNR loss of going from e.g. 3 T to 1.5 T: SNR grows roughly linearly with
  field strength (exponent 1; up to ~1.65 reported), so the noise standard deviation is multiplied by
  ``(from / to) ** exponent`` by adding the missing complex noise.
"""

from __future__ import annotations

import warnings

import numpy as np
from skimage.restoration import estimate_sigma

from ..errors import DegradationError
from ._frames import as_float, check, generator

#: Said when a noise sigma is out of range: a sigma in grey levels (30) turned half of an image
#: black and half white without a word.
SIGMA_SCALE = "on the image's [0, 1] scale: 25 grey levels of 255 is 0.098"


def gaussian(x: np.ndarray, *, sigma: float, rng: np.random.Generator | int | None = None
             ) -> np.ndarray:
    """Add N(0, sigma^2) noise; ``sigma`` on the [0, 1] scale (25/255 ~ 0.098). ``rng``: a
    numpy Generator, or a seed (as for every noise here)."""
    sigma = check("sigma", sigma, 0.0, 1.0, SIGMA_SCALE)
    arr = as_float(x)
    rng = generator(rng)
    return arr + rng.normal(0.0, sigma, arr.shape) if sigma > 0 else arr.copy()


def poisson_gaussian(x: np.ndarray, *, photons: float, electronic_sigma: float = 0.0,
                     log_domain: bool = True, mu_max: float = 4.0,
                     rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Quantum (Poisson) plus electronic (Gaussian) noise at a dose of ``photons`` per pixel.

    Parameters
    ----------
    photons : float
        Expected detected quanta per pixel for an unattenuated ray (``log_domain``) or for a
        pixel of value 1 (linear). Lower = lower dose = noisier. ``inf`` gives no noise.
    electronic_sigma : float
        Standard deviation of the detector's electronic noise, in quanta.
    log_domain : bool
        Treat pixels as attenuation ``x`` with transmission ``exp(-mu_max * x)`` (radiographs,
        MONOCHROME2 polarity: bright = dense); otherwise pixels are proportional to counts.
    mu_max : float
        Attenuation (in units of ln) of a pixel of value 1; 4.0 means the densest pixel passes
        ``exp(-4) = 1.8 %`` of the photons.
    """
    if photons == float("inf") or photons is None:
        return as_float(x).copy()
    photons = check("photons", photons, 1e-3)
    electronic_sigma = check("electronic_sigma", electronic_sigma, 0.0)
    arr = as_float(x)
    rng = generator(rng)
    if log_domain:
        mu_max = check("mu_max", mu_max, 1e-3)
        expected = photons * np.exp(-mu_max * arr)
    else:
        expected = photons * np.clip(arr, 0.0, None)
    counts = rng.poisson(expected).astype(np.float64)
    if electronic_sigma > 0:
        counts += rng.normal(0.0, electronic_sigma, arr.shape)
    if not log_domain:
        return counts / photons
    # Fewer than ~0.5 quanta cannot be log-transformed; detectors clip the same way.
    return -np.log(np.maximum(counts, 0.5) / photons) / mu_max


def rician(x: np.ndarray, *, sigma: float, rng: np.random.Generator | int | None = None
           ) -> np.ndarray:
    """Magnitude of ``x + n_re + i n_im`` with ``n ~ N(0, sigma^2)`` on each channel."""
    sigma = check("sigma", sigma, 0.0, 1.0, SIGMA_SCALE)
    arr = as_float(x)
    if sigma == 0:
        return arr.copy()
    rng = generator(rng)
    real = arr + rng.normal(0.0, sigma, arr.shape)
    imag = rng.normal(0.0, sigma, arr.shape)
    return np.hypot(real, imag)


def estimate_noise_sigma(x: np.ndarray) -> float:
    """Gaussian noise sigma of an image, averaged over frames: the wavelet MAD estimator of
    Donoho & Johnstone (as :func:`skimage.restoration.estimate_sigma`) on the 2x2 blocks with no
    pixel clipped at 0 or 1, the rule of :func:`medenhance.models.common.estimate_sigma`."""
    arr = as_float(x)
    frames = arr if arr.ndim == 3 else arr[None]
    return float(np.mean([_clip_aware_sigma(f) for f in frames]))


def _clip_aware_sigma(frame: np.ndarray) -> float:
    h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
    t = frame[:h, :w]
    blocks = np.stack([t[0::2, 0::2], t[0::2, 1::2], t[1::2, 0::2], t[1::2, 1::2]])
    hh = np.abs(blocks[0] - blocks[1] - blocks[2] + blocks[3]) / 2
    inside = (blocks.min(axis=0) > 0) & (blocks.max(axis=0) < 1)
    if inside.sum() * 16 < inside.size:  # mostly clipped: use every block
        return float(estimate_sigma(frame))
    return float(np.median(hh[inside]) / 0.6745)


def low_field(x: np.ndarray, *, field_from: float = 3.0, field_to: float = 1.5,
              snr_exponent: float = 1.0, source_sigma: float | None = None,
              rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Simulate acquisition at ``field_to`` tesla of an image acquired at ``field_from``.

    The noise sigma rises from ``source_sigma`` (estimated from the image when ``None``) to
    ``source_sigma * (field_from / field_to) ** snr_exponent``; the difference is added as complex
    (Rician) noise, so the result has the noise statistics of a magnitude image at the lower field.
    """
    field_from = check("field_from", field_from, 1e-3)
    field_to = check("field_to", field_to, 1e-3, field_from)
    snr_exponent = check("snr_exponent", snr_exponent, 0.0)
    arr = as_float(x)
    s0 = estimate_noise_sigma(arr) if source_sigma is None else check("source_sigma",
                                                                        source_sigma, 0.0)
    if s0 == 0 and field_to < field_from and source_sigma is None:
        # It multiplies the noise there is: none on a noise-free phantom.
        warnings.warn("low_field: the image has no noise to scale (estimated sigma 0), so "
                      "nothing is added; pass source_sigma for the noise of the acquisition it "
                      "stands for", stacklevel=2)
    target = s0 * (field_from / field_to) ** snr_exponent
    added = float(np.sqrt(max(target**2 - s0**2, 0.0)))
    if added > 1.0:      # said in the user's own parameters, not as rician's sigma
        raise DegradationError(f"field_from {field_from:g} T -> field_to {field_to:g} T "
                               f"multiplies the noise (sigma {s0:.3g}) by "
                               f"{target / s0 if s0 else float('inf'):.3g}: more noise than "
                               "the image's whole range")
    return rician(arr, sigma=added, rng=rng)


__all__ = ["estimate_noise_sigma", "gaussian", "low_field", "poisson_gaussian",
           "rician"]
