"""NumPy ``.npy`` arrays: ``(H, W)`` or ``(N, H, W)``.

Float arrays already in [0, 1] are used as they are and come back in [0, 1]; other arrays follow the
intensity contract of :mod:`medenhance.image` and come back in their own dtype and units. NaN in a
float array (outside a mask) is kept out of processing and written back, as in NIfTI
(:mod:`.padding`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageReadError, InvalidImageError
from ..image import MedicalImage, from_array, looks_like_colour
from .padding import fill_nan, with_nan
from .raster import stored_values


def read_npy(path: str | Path) -> MedicalImage:
    """Read a ``.npy`` array (no pickles)."""
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise ImageReadError(p, "no such file") from None
    except Exception as exc:  # ValueError for pickles and damaged headers, EOFError, ...
        raise ImageReadError(p, f"not a readable .npy array ({exc})") from None
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "uif" or arr.size == 0:
        raise ImageReadError(p, f"expected a 2-D or 3-D numeric array, got dtype {arr.dtype} "
                                f"and shape {arr.shape}")
    if looks_like_colour(arr.shape):
        raise ImageReadError(p, f"shape {arr.shape} looks like a colour image (H, W, RGB); "
                                "medenhance reads grey images: (H, W) or frames (N, H, W)")
    arr, nan = fill_nan(arr, p, "array")      # outside a mask, as in a NIfTI volume
    try:
        image = from_array(arr)
    except InvalidImageError as exc:        # named after the file, as the checks above
        raise ImageReadError(p, str(exc)) from None
    image.meta.source_path = str(p)
    if nan is not None:
        image.meta.extra["nan_mask"] = nan
    return image


def write_npy(image: MedicalImage, tmp_path: Path, target: Path) -> None:
    """Write the stored values (input dtype for ``.npy`` inputs, float32 [0, 1] otherwise)."""
    if image.meta.source_format == "npy":
        arr = stored_values(image, np.dtype(image.meta.stored_dtype))
    else:
        arr = image.pixels.astype(np.float32)
    arr = with_nan(arr, image.meta.extra)
    with open(tmp_path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
