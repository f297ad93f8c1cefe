"""The one object every stage hands to the next: :class:`MedicalImage`.

Pixels are float32 in [0, 1] with shape ``(H, W)`` or ``(N, H, W)``; ``meta`` records how they were
obtained from the stored values (the *intensity window*) so that a writer can map them back to the
input's own units and bit depth.

Intensity contract
------------------
Stored values (after the DICOM modality LUT, or the raw numbers of a PNG/TIFF/NumPy/NIfTI file) are
mapped linearly to [0, 1] by an :class:`IntensityWindow` chosen by :func:`choose_window`:

* integers of at most 8 bits: the full range of the type (0..255), as the restoration literature does,
  so that "sigma = 25/255" means what it says;
* wider integers (12-bit CT, 15-bit radiographs, 16-bit PNG): the image's own minimum and maximum.
  A 12-bit CT, a 15-bit radiograph and an 8-bit PNG therefore all reach a model spread over [0, 1];
  using the nominal bit depth instead would leave e.g. an MR image that uses 800 of 65536 levels
  almost black, and a model trained on 8-bit images would silently fail on it;
* floats already inside [0, 1] are used as they are; other floats use their minimum and maximum.

MONOCHROME1 images (bright = low attenuation) are inverted so that bright always means dense.
Noise levels (sigma) and metrics are stated on the [0, 1] scale.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidImageError


@dataclass(frozen=True)
class IntensityWindow:
    """Linear map between stored values and the [0, 1] processing scale.

    Parameters
    ----------
    low, high : float
        Stored value mapped to 0 and to 1 (in the input's own units, e.g. HU after rescale).
    invert : bool
        True for MONOCHROME1 data: 0 then maps to ``high`` so that bright means dense.
    """

    low: float
    high: float
    invert: bool = False

    @property
    def span(self) -> float:
        # A constant image has low == high; any non-zero span maps it to 0 and back exactly.
        return float(self.high - self.low) if self.high > self.low else 1.0

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """Stored values -> float32 pixels on the [0, 1] scale."""
        unit = (np.asarray(values, dtype=np.float64) - self.low) / self.span
        if self.invert:
            unit = 1.0 - unit
        return unit.astype(np.float32)

    def to_values(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels on the [0, 1] scale -> stored values (float64, not rounded)."""
        unit = np.asarray(pixels, dtype=np.float64)
        if self.invert:
            unit = 1.0 - unit
        return self.low + unit * self.span

    def as_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "invert": self.invert}


def choose_window(values: np.ndarray, *, integer_bits: int | None, signed: bool = False,
                  invert: bool = False) -> IntensityWindow:
    """Pick the window of the intensity contract (see the module docstring).

    Parameters
    ----------
    values : ndarray
        Stored values (after any modality LUT).
    integer_bits : int or None
        Bits per stored integer sample; ``None`` for floating-point data or data whose modality LUT
        made it non-integer.
    signed : bool
        Whether the stored integers are signed.
    invert : bool
        MONOCHROME1 polarity.
    """
    finite = np.asarray(values)
    if integer_bits is not None and integer_bits <= 8:
        if signed:
            return IntensityWindow(-(2 ** (integer_bits - 1)), 2 ** (integer_bits - 1) - 1, invert)
        return IntensityWindow(0.0, float(2**integer_bits - 1), invert)
    lo, hi = float(np.min(finite)), float(np.max(finite))
    if not np.isfinite(hi - lo):        # e.g. -1e308 to 1e308: the scale to [0, 1] overflows
        raise InvalidImageError(f"values span {lo:.3g} to {hi:.3g}, wider than floating-point "
                                "arithmetic can scale")
    if integer_bits is None and lo >= 0.0 and hi <= 1.0:
        return IntensityWindow(0.0, 1.0, invert)
    return IntensityWindow(lo, hi, invert)


def check_unit_range(pixels: np.ndarray, what: str = "pixels") -> None:
    """Refuse pixels off the [0, 1] scale of the intensity contract: raw stored values (0..4095,
    HU) given where pixels are expected came back all white or all black, without a word."""
    px = np.asarray(pixels)
    if px.size == 0 or px.dtype.kind == "b":
        return
    lo, hi = float(np.min(px)), float(np.max(px))
    if np.isnan(lo) or np.isnan(hi):      # passed the range check below: NaN compares false
        raise InvalidImageError(f"{what}: pixels hold {int(np.isnan(px).sum())} NaN value(s); "
                                "fill them first (read_image does, for NIfTI and .npy)")
    if lo < -UNIT_SLACK or hi > 1.0 + UNIT_SLACK:
        raise InvalidImageError(
            f"{what}: pixels must lie in [0, 1] (the intensity contract), got {lo:.6g} to "
            f"{hi:.6g}; wrap stored values with medenhance.from_array, which maps them there")


# Rounding in float32 arithmetic puts values a few ulps outside [0, 1]; anything beyond this is
# not rounding but another scale.
UNIT_SLACK = 1e-3


@dataclass
class ImageMeta:
    """What is needed to write pixels back faithfully, and to describe them.

    Attributes
    ----------
    source_format : str
        ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"``, ``"nifti"`` or ``"npy"``.
    window : IntensityWindow
        Map between stored values and [0, 1].
    stored_dtype : str
        NumPy dtype name of the stored samples (``"uint16"``, ``"float32"``, ...).
    bits_stored : int or None
        Significant bits per sample for integer data.
    photometric : str
        ``"MONOCHROME1"`` or ``"MONOCHROME2"`` (raster and array files are MONOCHROME2).
    pixel_spacing : tuple of float or None
        Row and column spacing in mm, if known.
    modality : str or None
        DICOM modality code (``"CR"``, ``"MR"``, ``"CT"``, ...), if known.
    header : object
        The original header (pydicom ``Dataset``, nibabel image header, ...) for faithful write-back.
    source_path : str or None
        Where the image was read from.
    history : list of str
        Human-readable record of every operation applied since reading.
    extra : dict
        Format-specific details (NIfTI affine, TIFF photometric, ...).
    """

    source_format: str
    window: IntensityWindow
    stored_dtype: str
    bits_stored: int | None = None
    photometric: str = "MONOCHROME2"
    pixel_spacing: tuple[float, float] | None = None
    modality: str | None = None
    header: Any = None
    source_path: str | None = None
    history: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MedicalImage:
    """Float32 pixels in [0, 1] plus the metadata needed to write them back.

    Parameters
    ----------
    pixels : ndarray
        float32, shape ``(H, W)`` or ``(N, H, W)`` (frames or slices).
    meta : ImageMeta
    """

    pixels: np.ndarray
    meta: ImageMeta

    def __post_init__(self) -> None:
        if not isinstance(self.meta, ImageMeta):
            raise InvalidImageError(f"MedicalImage takes an ImageMeta as meta, got "
                                    f"{type(self.meta).__name__} (medenhance.from_array makes "
                                    "one for an array)")
        px = np.asarray(self.pixels)
        if px.ndim not in (2, 3):
            raise InvalidImageError(
                f"{self.meta.source_path or 'image'}: pixels must have shape (H, W) or (N, H, W), "
                f"got {px.shape}")
        if not np.all(np.isfinite(px)):
            raise InvalidImageError(
                f"{self.meta.source_path or 'image'}: pixels contain NaN or infinite values")
        check_unit_range(px, self.meta.source_path or "image")
        self.pixels = px.astype(np.float32, copy=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    @property
    def n_frames(self) -> int:
        return 1 if self.pixels.ndim == 2 else int(self.pixels.shape[0])

    def frames(self) -> np.ndarray:
        """Pixels as ``(N, H, W)`` (a view; N = 1 for a 2-D image)."""
        return self.pixels[None] if self.pixels.ndim == 2 else self.pixels

    def values(self) -> np.ndarray:
        """Pixels in the input's own units (e.g. HU), float64, not rounded."""
        return self.meta.window.to_values(self.pixels)

    def with_pixels(self, pixels: np.ndarray, operation: str, derivation: str | None = None,
                    pixel_map: tuple[float, float, float, float] | None = None
                    ) -> MedicalImage:
        """A new image with other pixels, the same metadata and ``operation`` added to the history.

        If the frame size changed (super-resolution, down-sampling), the pixel spacing is scaled so
        that the field of view stays the same, and a mask of pixels outside the picture
        (``extra["nan_mask"]``) is resampled to the new size. ``pixel_map`` says where the new
        pixels lie: ``(row_scale, col_scale, row_offset, col_offset)``, the centre of new pixel
        ``(i, j)`` being old pixel ``(row_offset + row_scale * i, col_offset + col_scale * j)``.
        By default the new pixels cover the old extent (``scale = old / new`` and ``offset =
        scale / 2 - 0.5``, as Pillow and pixel-shuffle up-sampling place them). The map from the
        source file's pixels, composed over all resamplings, is ``extra["pixel_map"]``: the
        writers move the first pixel's position by it (NIfTI affine, DICOM Image Position).
        Pixels are clipped to [0, 1]: the write-back maps [0, 1] exactly onto the input's range,
        so values outside it have no stored representation.

        ``derivation`` names the operation without its per-image values (the model file and
        settings, the degradation pipeline): DICOM images derived from one series by the same
        derivations become one new series. Without it, the history with its numbers left out
        stands in.
        """
        new = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
        if new.ndim != self.pixels.ndim:
            raise InvalidImageError(
                f"{operation}: result has {new.ndim} dimensions, the input had {self.pixels.ndim}")
        extra = dict(self.meta.extra)
        extra["derivation"] = [*extra.get("derivation", []),
                               derivation or re.sub(r"[-+.0-9eE]+", "#", operation)]
        meta = dataclasses.replace(self.meta, history=[*self.meta.history, operation], extra=extra)
        old_hw, new_hw = self.pixels.shape[-2:], new.shape[-2:]
        if old_hw != new_hw or pixel_map is not None:
            if pixel_map is None:
                row_scale, col_scale = old_hw[0] / new_hw[0], old_hw[1] / new_hw[1]
                pixel_map = covering_map(row_scale, col_scale)
            extra["pixel_map"] = compose_pixel_maps(extra.get("pixel_map"), pixel_map)
            if meta.pixel_spacing is not None:
                meta.pixel_spacing = (meta.pixel_spacing[0] * pixel_map[0],
                                      meta.pixel_spacing[1] * pixel_map[1])
            if extra.get("nan_mask") is not None:
                extra["nan_mask"] = resize_nearest(extra["nan_mask"], new.shape)
        return MedicalImage(new, meta)


def covering_map(row_scale: float, col_scale: float) -> tuple[float, float, float, float]:
    """The pixel map (see ``with_pixels``) of new pixels ``scale`` old ones apart that cover
    the old extent: new pixel 0's centre lies ``scale / 2 - 0.5`` old pixels in."""
    return (row_scale, col_scale, row_scale / 2 - 0.5, col_scale / 2 - 0.5)


def compose_pixel_maps(first: tuple[float, ...] | None, then: tuple[float, ...]
                       ) -> tuple[float, float, float, float]:
    """The pixel map of resampling by ``first`` and then by ``then`` (see ``with_pixels``)."""
    if first is None:
        return tuple(float(v) for v in then)        # type: ignore[return-value]
    s_r, s_c, o_r, o_c = first
    t_r, t_c, p_r, p_c = then
    return (s_r * t_r, s_c * t_c, o_r + s_r * p_r, o_c + s_c * p_c)


def resize_nearest(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` (``(H, W)`` or ``(N, H, W)``) resampled to ``shape`` by the nearest pixel."""
    rows = np.minimum((np.arange(shape[-2]) + 0.5) * mask.shape[-2] / shape[-2],
                      mask.shape[-2] - 1).astype(int)
    cols = np.minimum((np.arange(shape[-1]) + 0.5) * mask.shape[-1] / shape[-1],
                      mask.shape[-1] - 1).astype(int)
    return mask[..., rows[:, None], cols[None, :]]


def looks_like_colour(shape: tuple[int, ...]) -> bool:
    """(H, W, 3) or (H, W, 4) is a colour picture, not 3 or 4 frames a few pixels wide (frames
    are the first axis)."""
    return len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4


def _spacing_pair(spacing: object) -> tuple[float, float] | None:
    if spacing is None:
        return None
    try:
        row, col = (float(v) for v in spacing)      # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidImageError(f"pixel_spacing must be (row, column) in mm, got "
                                f"{spacing!r}") from None
    if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
        raise InvalidImageError(f"pixel_spacing must be positive, got {spacing!r}")
    return row, col


def from_array(array: np.ndarray, *, modality: str | None = None,
               pixel_spacing: tuple[float, float] | None = None) -> MedicalImage:
    """Wrap an in-memory array (any dtype) as a :class:`MedicalImage` following the contract."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "uif" or arr.ndim not in (2, 3):
        raise InvalidImageError(
            f"expected a 2-D or 3-D numeric array, got dtype {arr.dtype} and shape {arr.shape}")
    if looks_like_colour(arr.shape):
        raise InvalidImageError(f"shape {arr.shape} looks like a colour image (H, W, RGB); "
                                "medenhance takes grey images: (H, W) or frames (N, H, W)")
    pixel_spacing = _spacing_pair(pixel_spacing)
    if modality is not None and not (isinstance(modality, str) and modality.strip()):
        raise InvalidImageError(f"modality must be a DICOM modality code such as 'CR', 'DX', "
                                f"'MR' or 'CT', got {modality!r}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InvalidImageError("array contains NaN or infinite values")
    if arr.size == 0:
        raise InvalidImageError(f"the array is empty (shape {arr.shape})")
    bits = arr.dtype.itemsize * 8 if arr.dtype.kind in "ui" else None
    window = choose_window(arr, integer_bits=bits, signed=arr.dtype.kind == "i")
    meta = ImageMeta(source_format="npy", window=window, stored_dtype=arr.dtype.name,
                     bits_stored=bits, modality=modality, pixel_spacing=pixel_spacing)
    return MedicalImage(window.to_unit(arr), meta)
