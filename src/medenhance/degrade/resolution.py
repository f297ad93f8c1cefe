"""Loss of resolution: optical/detector blur and down-sampling by an integer factor.

Down-sampling follows the super-resolution literature: ``"bicubic"`` is Pillow's anti-aliased
bicubic resize (the same kernel as MATLAB ``imresize``), ``"area"`` averages ``scale x scale``
blocks (what a detector with larger pixels records). The output has ``floor(H / scale)`` rows.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import DegradationError
from ._frames import as_float, check, per_frame

METHODS = ("bicubic", "area")


def blur(x: np.ndarray, *, sigma: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Gaussian point-spread function of standard deviation ``sigma`` pixels (0 = identity)."""
    sigma = check("sigma", sigma, 0.0)
    arr = as_float(x)
    if sigma == 0:
        return arr.copy()
    return per_frame(lambda f: ndimage.gaussian_filter(f, sigma, mode="reflect"), arr)


def resize(frame: np.ndarray, size: tuple[int, int], method: str = "bicubic") -> np.ndarray:
    """Resize one 2-D frame to ``size = (H, W)`` with Pillow's float ("F" mode) filters."""
    filters = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
               "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
               "area": Image.Resampling.BOX}
    if method not in filters:
        raise DegradationError(f"unknown resize method {method!r}; choose from {sorted(filters)}")
    im = Image.fromarray(np.asarray(frame, dtype=np.float32), mode="F")
    return np.asarray(im.resize((size[1], size[0]), filters[method]), dtype=np.float64)


def downsample(x: np.ndarray, *, scale: int, method: str = "bicubic",
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Reduce each side by the integer ``scale`` (2, 3 or 4 in practice)."""
    if int(scale) != scale or scale < 1:
        raise DegradationError(f"scale must be a positive integer, got {scale}")
    if method not in METHODS:
        raise DegradationError(f"unknown down-sampling method {method!r}; choose from {METHODS}")
    scale = int(scale)
    arr = as_float(x)
    h, w = arr.shape[-2] // scale, arr.shape[-1] // scale
    if h < 1 or w < 1:
        raise DegradationError(f"image of {arr.shape[-2:]} pixels is too small for scale {scale}")
    if scale == 1:
        return arr.copy()
    if method == "area":
        crop = arr[..., : h * scale, : w * scale]
        return crop.reshape(*crop.shape[:-2], h, scale, w, scale).mean(axis=(-3, -1))
    return per_frame(lambda f: resize(f, (h, w), "bicubic"), arr)


def blur_downsample(x: np.ndarray, *, scale: int, sigma: float = 0.0, method: str = "bicubic",
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Blur with a Gaussian PSF of ``sigma`` pixels, then down-sample by ``scale``."""
    return downsample(blur(x, sigma=sigma), scale=scale, method=method)


__all__ = ["METHODS", "blur", "blur_downsample", "downsample", "resize"]
