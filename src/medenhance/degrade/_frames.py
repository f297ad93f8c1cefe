"""Helpers so that every degradation accepts ``(H, W)`` and ``(N, H, W)`` arrays alike."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import DegradationError


def per_frame(func: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Apply a 2-D function to each frame of ``x``."""
    arr = np.asarray(x)
    if arr.ndim == 2:
        return func(arr)
    if arr.ndim == 3:
        return np.stack([func(frame) for frame in arr])
    raise DegradationError(f"expected an (H, W) or (N, H, W) array, got shape {arr.shape}")


def as_float(x: np.ndarray) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DegradationError(f"expected a numeric array, got {type(x).__name__}") from None
    if arr.ndim not in (2, 3):
        raise DegradationError(f"expected an (H, W) or (N, H, W) array, got shape {arr.shape}")
    # NaN passed every range check (comparisons with it are false) and spread through blurs.
    if np.isnan(arr).any():
        raise DegradationError(f"the image holds {int(np.isnan(arr).sum())} NaN value(s); "
                               "fill them first (read_image does, for NIfTI and .npy)")
    return arr


def generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """``rng`` as a numpy Generator: one, a seed (a whole number >= 0), or None (fresh)."""
    if rng is None or isinstance(rng, np.random.Generator) or (
            isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0):
        return np.random.default_rng(rng)
    raise DegradationError(f"rng must be a numpy Generator or a seed (a whole number >= 0), "
                           f"got {rng!r}")


def check(name: str, value: float, low: float, high: float = float("inf"),
          hint: str = "") -> float:
    """Range check with a message naming the parameter (and ``hint``, in brackets)."""
    v = float(value)
    if not np.isfinite(v) or v < low or v > high:
        bound = f"[{low}, {high}]" if np.isfinite(high) else f">= {low}"
        raise DegradationError(f"{name} must be {bound}, got {value}"
                               + (f" ({hint})" if hint else ""))
    return v
