"""Pixels that are not part of the picture, and are kept out of processing.

* DICOM (0028,0120) *Pixel Padding Value* (up to (0028,0121) *Pixel Padding Range Limit*): the
  area outside a CT's field of view, say. It is read as stored values (``meta.extra["padding"]``).
* NaN voxels of a floating-point NIfTI volume (the outside of a brain mask in SPM or FSL output)
  or ``.npy`` array. They are read as the lowest finite value and remembered
  (``meta.extra["nan_mask"]``); the NIfTI and ``.npy`` writers put NaN back.

Enhancement and degradation leave these pixels as they were, so that viewers still hide them and
the edge of the field of view is not a step for a network to smooth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ..image import MedicalImage, resize_nearest


def _stored(image: MedicalImage, pixels: np.ndarray) -> np.ndarray:
    """DICOM stored values of ``pixels`` on ``image``'s scale (one frame at a time keeps a
    volume's float64 copies small)."""
    slope, intercept = image.meta.extra.get("rescale", (1.0, 0.0))
    return np.rint((image.meta.window.to_values(pixels) - intercept) / slope)


def _frames(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, *a.shape[-2:])


def fill_nan(values: np.ndarray, path: Path, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``values`` with NaN (outside a mask) set to the lowest value of the picture, and where
    they were (``None`` without NaN), for ``meta.extra["nan_mask"]``; infinite values and a
    ``what`` (array, volume) of NaN only are refused."""
    if values.dtype.kind != "f" or np.all(np.isfinite(values)):
        return values, None
    if np.isinf(values).any():
        raise ImageReadError(path, f"{what} contains infinite values")
    nan = np.isnan(values)
    if nan.all():
        raise ImageReadError(path, f"{what} holds only NaN")
    return np.where(nan, np.nanmin(values), values), nan


def with_nan(values: np.ndarray, extra: dict) -> np.ndarray:
    """Float ``values`` with NaN put back where ``extra["nan_mask"]`` says they were read."""
    nan = extra.get("nan_mask")
    if nan is None or np.shape(nan) != values.shape or values.dtype.kind != "f":
        return values
    return np.where(nan, np.nan, values).astype(values.dtype)


def padding_mask(image: MedicalImage) -> np.ndarray | None:
    """Where ``image`` holds padding or NaN (see the module docstring), or ``None``."""
    extra = image.meta.extra
    mask = np.zeros(image.pixels.shape, bool)
    nan = extra.get("nan_mask")
    if nan is not None and np.shape(nan) == image.pixels.shape:
        mask |= np.asarray(nan, dtype=bool)
    padding = extra.get("padding")
    if padding:
        for out, frame in zip(_frames(mask), _frames(image.pixels), strict=True):
            stored = _stored(image, frame)
            out |= (stored >= padding[0]) & (stored <= padding[1])
    return mask if mask.any() else None


def picture_span(image: MedicalImage, mask: np.ndarray | None) -> tuple[float, float] | None:
    """``(low, high)`` of the picture's pixels on ``image``'s [0, 1] scale, where the padding
    widened the window (the padding value lies far beyond the picture: an unsigned CT padded
    with 63536 keeps its tissue on the window's lowest 3 %), else None. Processing then
    stretches the picture over [0, 1] (:func:`to_picture`), as the intensity contract would have
    without the padding: a denoiser saw a picture of almost no contrast and noise, and left a
    checkerboard in it. 8-bit data keep their fixed 0..255 window, as without padding."""
    if mask is None or not image.meta.extra.get("padding") or mask.all() \
            or int(image.meta.bits_stored or 16) <= 8:
        return None
    picture = image.pixels[~mask]
    low, high = float(picture.min()), float(picture.max())
    if high <= low or (low <= 1e-6 and high >= 1 - 1e-6):
        return None
    return low, high


def to_picture(pixels: np.ndarray, span: tuple[float, float] | None) -> np.ndarray:
    """``pixels`` with the picture's ``span`` (:func:`picture_span`) stretched over [0, 1];
    padding beyond it is clipped (it is filled or kept apart anyway)."""
    if span is None:
        return pixels
    low, high = span
    return np.clip((pixels - low) / (high - low), 0.0, 1.0).astype(np.float32)


def from_picture(pixels: np.ndarray, span: tuple[float, float] | None) -> np.ndarray:
    """The inverse of :func:`to_picture` (for the picture's pixels)."""
    if span is None:
        return pixels
    low, high = span
    return (low + pixels * (high - low)).astype(np.float32)


def fill_from_nearest(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``pixels`` (``(H, W)`` or ``(N, H, W)``) with the ``mask`` pixels of each frame set to
    the nearest unmasked pixel's value: processing then sees no step at the edge of the field of
    view."""
    out = np.array(pixels, dtype=np.float32)
    from scipy.ndimage import distance_transform_edt

    for frame, hole in zip(_frames(out), _frames(np.asarray(mask, bool)), strict=True):
        if hole.any() and not hole.all():
            index = distance_transform_edt(hole, return_distances=False, return_indices=True)
            frame[...] = frame[tuple(index)]
    return out


def keep_padding(image: MedicalImage, pixels: np.ndarray,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """``pixels``, a processed copy of ``image``'s, with ``image``'s padding put back (resampled
    to the nearest pixel when the size changed), and no other pixel on a padding value: noise
    clipped at the window's low end would otherwise turn tissue into padding, which viewers
    hide and later processing leaves out. ``mask``: :func:`padding_mask` of ``image``, when the
    caller has it already."""
    mask = padding_mask(image) if mask is None else mask
    if mask is None:
        return pixels
    if pixels.shape == image.pixels.shape:
        out = np.where(mask, image.pixels, pixels).astype(np.float32)
    else:
        fill = image.pixels[mask].min()
        mask = resize_nearest(mask, pixels.shape)
        out = np.where(mask, fill, pixels).astype(np.float32)
    padding = image.meta.extra.get("padding")
    if padding:
        low, high = padding
        # The nearest stored value outside the padding range that the window can hold (values
        # beyond it are clipped back on writing).
        ends = _stored(image, np.array([0.0, 1.0]))
        moved = high + 1 if high + 1 <= ends.max() else low - 1
        slope, intercept = image.meta.extra.get("rescale", (1.0, 0.0))
        unit = image.meta.window.to_unit(np.array([moved * slope + intercept]))[0]
        for frame, keep in zip(_frames(out), _frames(mask), strict=True):
            stored = _stored(image, frame)
            frame[(stored >= low) & (stored <= high) & ~keep] = unit
    return out
