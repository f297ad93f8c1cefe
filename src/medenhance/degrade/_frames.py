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
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise DegradationError(f"expected an (H, W) or (N, H, W) array, got shape {arr.shape}")
    return arr


def check(name: str, value: float, low: float, high: float = float("inf"),
          hint: str = "") -> float:
    """Range check with a message naming the parameter (and ``hint``, in brackets)."""
    v = float(value)
    if not np.isfinite(v) or v < low or v > high:
        bound = f"[{low}, {high}]" if np.isfinite(high) else f">= {low}"
        raise DegradationError(f"{name} must be {bound}, got {value}"
                               + (f" ({hint})" if hint else ""))
    return v
