"""X-ray scatter: a low-frequency haze that lowers contrast.

Scattered photons reach the detector far from their primary ray, so they add a heavily blurred copy
of the image (the scatter kernel is broad, tens of millimetres). With a scatter fraction ``f``:
``y = (1 - f) * x + f * G_sigma(x)``. Flat regions are unchanged; edges and small structures lose
contrast by the factor ``1 - f``, as in radiographs taken without an anti-scatter grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._frames import as_float, check, per_frame


def scatter(x: np.ndarray, *, fraction: float, sigma: float = 40.0,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """Mix a fraction ``fraction`` of a Gaussian-blurred (``sigma`` pixels) copy into ``x``."""
    fraction = check("fraction", fraction, 0.0, 1.0)
    sigma = check("sigma", sigma, 0.0)
    arr = as_float(x)
    if fraction == 0:
        return arr.copy()
    haze = per_frame(lambda f: ndimage.gaussian_filter(f, sigma, mode="reflect"), arr)
    return (1.0 - fraction) * arr + fraction * haze
