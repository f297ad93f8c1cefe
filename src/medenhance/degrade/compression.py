"""Lossy JPEG compression (8-bit baseline, Pillow/libjpeg), as in re-saved or teleradiology images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ._frames import as_float, check, per_frame


def jpeg(x: np.ndarray, *, quality: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Quantise to 8 bits, encode as JPEG at ``quality`` (1-100) and decode back to [0, 1]."""
    quality = int(check("quality", quality, 1, 100))
    arr = as_float(x)

    def one(frame: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        img = Image.fromarray(np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8))
        img.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            return np.asarray(decoded, dtype=np.float64) / 255.0

    return per_frame(one, arr)
