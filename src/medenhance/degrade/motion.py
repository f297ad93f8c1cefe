"""Patient motion.

* :func:`mri_motion` - rigid in-plane translations during a Cartesian MRI acquisition. k-space is
  filled one phase-encode line (row) after another; the patient moves ``n_movements`` times to a new
  random position, so each block of lines carries the phase ramp of its own shift (Fourier shift
  theorem). The inverse FFT shows the ghosting and blurring of real motion artefacts.
* :func:`xray_motion_blur` - linear motion during the exposure: convolution with a line PSF of
  ``length`` pixels at ``angle`` degrees.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._frames import as_float, check, generator, per_frame


def mri_motion(x: np.ndarray, *, max_shift: float, n_movements: int = 3,
               rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Ghosting from ``n_movements`` random translations of up to ``max_shift`` pixels."""
    max_shift = check("max_shift", max_shift, 0.0)
    n_movements = int(check("n_movements", n_movements, 0))
    arr = as_float(x)
    if max_shift == 0 or n_movements == 0:
        return arr.copy()
    rng = generator(rng)

    def one(frame: np.ndarray) -> np.ndarray:
        rows, cols = frame.shape
        k = np.fft.fftshift(np.fft.fft2(frame))
        ky = np.fft.fftshift(np.fft.fftfreq(rows))[:, None]
        kx = np.fft.fftshift(np.fft.fftfreq(cols))[None, :]
        # Movement times: the centre of k-space (lines around rows // 2) stays at the
        # reference position when no event falls before it, which is what makes ghosts faint.
        events = np.sort(rng.integers(0, rows, size=n_movements))
        shifts = rng.uniform(-max_shift, max_shift, size=(n_movements, 2))
        for start, end, (dy, dx) in zip(events, [*events[1:], rows], shifts, strict=True):
            ramp = np.exp(-2j * np.pi * (ky[start:end] * dy + kx * dx))
            k[start:end] = k[start:end] * ramp
        return np.abs(np.fft.ifft2(np.fft.ifftshift(k)))

    return per_frame(one, arr)


def line_psf(length: float, angle: float) -> np.ndarray:
    """Normalised line kernel of ``length`` pixels at ``angle`` degrees (bilinear splatting)."""
    r = int(np.ceil(length / 2))
    size = 2 * r + 1
    kernel = np.zeros((size + 1, size + 1))
    t = np.linspace(-length / 2, length / 2, max(int(np.ceil(length * 4)), 2))
    ys = r - t * np.sin(np.deg2rad(angle))
    xs = r + t * np.cos(np.deg2rad(angle))
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(kernel, (y0 + dy, x0 + dx), wy * wx)
    kernel = kernel[:size, :size]
    return kernel / kernel.sum()


def xray_motion_blur(x: np.ndarray, *, length: float, angle: float = 0.0,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Blur along a line of ``length`` pixels at ``angle`` degrees (0 = horizontal)."""
    length = check("length", length, 0.0)
    arr = as_float(x)
    if length < 1:
        return arr.copy()
    kernel = line_psf(length, angle)
    return per_frame(lambda f: ndimage.convolve(f, kernel, mode="reflect"), arr)


__all__ = ["line_psf", "mri_motion", "xray_motion_blur"]
