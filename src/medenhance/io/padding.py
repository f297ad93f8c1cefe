"""Pixels that are not part of the picture, and are kept out of processing.

* DICOM (0028,0120) *Pixel Padding Value* (up to (0028,0121) *Pixel Padding Range Limit*): the
  area outside a CT's field of view, say. It is read as stored values (``meta.extra["padding"]``).
* NaN voxels of a floating-point NIfTI volume: the outside of a brain mask in SPM or FSL output.
  They are read as the lowest finite value and remembered (``meta.extra["nan_mask"]``); the
  NIfTI writer puts NaN back.

Enhancement and degradation leave these pixels as they were, so that viewers still hide them and
the edge of the field of view is not a step for a network to smooth.
"""

from __future__ import annotations

import numpy as np

from ..image import MedicalImage


def padding_mask(image: MedicalImage) -> np.ndarray | None:
    """Where ``image`` holds padding or NaN (see the module docstring), or ``None``."""
    extra = image.meta.extra
    mask = None
    nan = extra.get("nan_mask")
    if nan is not None and np.shape(nan) == image.pixels.shape:
        mask = np.asarray(nan, dtype=bool)
    padding = extra.get("padding")
    if padding:
        slope, intercept = extra.get("rescale", (1.0, 0.0))
        stored = np.rint((image.values() - intercept) / slope)
        padded = (stored >= padding[0]) & (stored <= padding[1])
        mask = padded if mask is None else mask | padded
    return mask if mask is not None and mask.any() else None


def keep_padding(image: MedicalImage, pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (a processed copy of ``image``'s) with ``image``'s padding put back."""
    mask = padding_mask(image)
    if mask is None or pixels.shape != image.pixels.shape:
        return pixels
    return np.where(mask, image.pixels, pixels)
