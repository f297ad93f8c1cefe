"""PNG, JPEG and TIFF at their full bit depth (Pillow for PNG/JPEG, tifffile for TIFF).

16-bit stays 16-bit and float TIFF stays float. Gray stored as RGB(A) with equal channels is read
losslessly as gray; a genuinely coloured image is converted to luminance (ITU-R 601) with a warning
in the log, and written back as gray. Multi-page TIFFs become frames ``(N, H, W)``. TIFF keeps the
pixel spacing as its resolution in pixels per centimetre.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from ..errors import ImageReadError, ImageWriteError
from ..image import ImageMeta, MedicalImage, choose_window

logger = logging.getLogger(__name__)


def _to_gray(path: Path, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Collapse a trailing channel axis; returns (gray, was_colour)."""
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
        return arr, False
    channels = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
    if all(np.array_equal(channels[..., 0], channels[..., c]) for c in range(channels.shape[-1])):
        return channels[..., 0], False
    warnings.warn(f"{path}: colour image converted to gray (luminance)", stacklevel=3)
    gray = channels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return (np.rint(gray).astype(arr.dtype) if arr.dtype.kind in "ui" else gray.astype(arr.dtype)), True


def _check_numeric(path: Path, arr: np.ndarray) -> None:
    if arr.dtype.kind not in "uif" or arr.dtype == np.bool_:
        raise ImageReadError(path, f"unsupported sample type {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ImageReadError(path, "image contains NaN or infinite values")
    if arr.size == 0 or min(arr.shape[-2:]) < 1:
        raise ImageReadError(path, f"empty image (shape {arr.shape})")


def _bits_of(arr: np.ndarray, pil_mode: str | None = None) -> int | None:
    if arr.dtype.kind == "f":
        return None
    if pil_mode == "1":
        return 1
    return arr.dtype.itemsize * 8


def _make(path: Path, arr: np.ndarray, fmt: str, extra: dict) -> MedicalImage:
    _check_numeric(path, arr)
    bits = _bits_of(arr, extra.get("pil_mode"))
    if bits == 1:
        arr = arr.astype(np.uint8)
        window = choose_window(arr, integer_bits=1)
    else:
        window = choose_window(arr, integer_bits=bits, signed=arr.dtype.kind == "i")
    meta = ImageMeta(source_format=fmt, window=window, stored_dtype=arr.dtype.name,
                     bits_stored=bits, source_path=str(path), extra=extra)
    return MedicalImage(window.to_unit(arr), meta)


def read_pil(path: str | Path, fmt: str) -> MedicalImage:
    """Read a PNG or JPEG file."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in ("LA", "PA"):
                im = im.convert("RGBA")
            elif mode == "CMYK" or mode == "YCbCr":
                im = im.convert("RGB")
            arr = np.array(im)
            dpi = im.info.get("dpi")
    except FileNotFoundError:
        raise ImageReadError(p, "no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(p, f"not a readable {fmt.upper()} file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(p, f"damaged or truncated {fmt.upper()} file ({exc})") from None
    if arr.dtype == np.int32 and mode in ("I", "I;16"):
        # Pillow widens some 16-bit grayscale PNGs to int32; the values still fit 16 bits.
        if arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)
    arr, colour = _to_gray(p, arr)
    extra = {"pil_mode": mode, "colour_converted": colour}
    if dpi:
        extra["dpi"] = dpi
    return _make(p, arr, fmt, extra)


def read_tiff(path: str | Path) -> MedicalImage:
    """Read a (multi-page) TIFF at full bit depth, float included."""
    p = Path(path)
    try:
        with tifffile.TiffFile(p) as tif:
            arr = tif.asarray()
            pages = [page.shape for page in tif.pages]
            if len(pages) > 1 and np.ndim(arr) == len(pages[0]) and len(set(pages)) == 1:
                # Pages written one by one are series of their own, and asarray gave the first
                # only: frames of one size are read together (thumbnails of another size not).
                arr = tif.asarray(key=slice(None))
            photometric = tif.pages[0].photometric
            spacing = _tiff_spacing(tif.pages[0])
            separate_planes = int(tif.pages[0].planarconfig) == 2     # RR..GG..BB..
            compression = int(tif.pages[0].compression)
    except FileNotFoundError:
        raise ImageReadError(p, "no such file") from None
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, ...
        raise ImageReadError(p, f"not a readable TIFF file ({exc})") from None
    arr = np.asarray(arr)
    if photometric is not None and int(photometric) in (2, 6) and arr.ndim >= 3:  # RGB, YCbCr
        if separate_planes:      # the colour samples come before the rows, not after columns
            arr = np.moveaxis(arr, -3, -1)
        arr, colour = _to_gray(p, arr)
    else:
        colour = False
    if arr.ndim > 3:
        raise ImageReadError(p, f"unsupported TIFF layout with shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    invert = photometric is not None and int(photometric) == 0  # MINISWHITE, like MONOCHROME1
    image = _make(p, arr, "tiff", {"colour_converted": colour, "tiff_photometric":
                                   int(photometric) if photometric is not None else None,
                                   **({"tiff_compression": compression}
                                      if compression in LOSSLESS_TIFF else {})})
    image.meta.pixel_spacing = spacing
    if invert:
        w = image.meta.window
        image.meta.window = type(w)(w.low, w.high, True)
        image.pixels = 1.0 - image.pixels
        image.meta.photometric = "MONOCHROME1"
    return image


#: TIFF compressions that lose nothing (LZW, deflate, PackBits, LZMA, Zstandard): an output
#: is written with its input's, as a file of the same kind (a lossy one is written uncompressed).
LOSSLESS_TIFF = frozenset({5, 8, 32946, 32773, 34925, 50000})

#: Millimetres per TIFF resolution unit that states a physical length (centimetre, and the
#: millimetre and micrometre of tifffile's extension). Inches are left out: most inch
#: resolutions are a program's default 72 dpi, not the size of a pixel.
_MM_PER_UNIT = {3: 10.0, 4: 1.0, 5: 1e-3}


def _tiff_spacing(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """(row, column) pixel spacing in mm from a page's resolution, where its unit is a length."""
    try:
        unit = int(page.resolutionunit)
        x_per_unit, y_per_unit = (float(v) for v in page.resolution)
    except (TypeError, ValueError):
        return None
    if unit not in _MM_PER_UNIT or not (x_per_unit > 0 and y_per_unit > 0):
        return None
    return (_MM_PER_UNIT[unit] / y_per_unit, _MM_PER_UNIT[unit] / x_per_unit)


def stored_values(image: MedicalImage, dtype: np.dtype) -> np.ndarray:
    """Pixels mapped back to stored values of ``dtype`` (rounded and clipped for integers)."""
    values = image.values()
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


def _output_dtype(image: MedicalImage, fmt: str) -> tuple[np.dtype, MedicalImage]:
    """Choose the stored type for ``fmt``; images from other formats are rescaled to it."""
    meta = image.meta
    dtype = np.dtype(meta.stored_dtype)
    # A NumPy array's own integers (from_array, .npy) are kept where the type can hold them:
    # a uint8 array of 100s came back as a 16-bit PNG of 25700s.
    own_values = meta.source_format == "npy" and dtype.kind in "ui" and (
        np.iinfo(dtype).min <= meta.window.low and meta.window.high <= np.iinfo(dtype).max)
    if meta.source_format in ("png", "jpeg", "tiff") or own_values:
        if fmt == "tiff" or (fmt == "png" and dtype in (np.uint8, np.uint16)) or (
                fmt == "jpeg" and dtype == np.uint8):
            if meta.window.invert and fmt != "tiff":
                # Only TIFF can say "min is white": elsewhere store the picture as it is seen.
                window = type(meta.window)(meta.window.low, meta.window.high, False)
                return dtype, MedicalImage(image.pixels, dataclasses.replace(meta, window=window))
            return dtype, image
    # Cross-format (e.g. DICOM -> PNG): write pixels with a full-range window of the target type.
    target = np.dtype(np.uint8) if fmt == "jpeg" else np.dtype(np.uint16)
    if fmt == "tiff" and dtype.kind == "f":
        target = np.dtype(np.float32)
    peak = 1.0 if target.kind == "f" else float(np.iinfo(target).max)
    converted = MedicalImage(image.pixels, type(meta)(
        source_format=fmt, window=type(meta.window)(0.0, peak, False), stored_dtype=target.name,
        bits_stored=None if target.kind == "f" else target.itemsize * 8, history=meta.history,
        pixel_spacing=meta.pixel_spacing))
    return target, converted


def write_raster(image: MedicalImage, tmp_path: Path, target: Path, fmt: str) -> None:
    """Write PNG/JPEG/TIFF in the input's type and units where possible (16-bit otherwise)."""
    source_bits = image.meta.bits_stored
    dtype, image = _output_dtype(image, fmt)
    if fmt == "jpeg" and (source_bits is None or source_bits > 8):
        warnings.warn(f"{target}: JPEG holds 8 bits and loses detail: the "
                      f"{f'{source_bits}-bit' if source_bits else 'floating-point'} image is "
                      "written at 8 bits, compressed with loss; write PNG or TIFF to keep it",
                      stacklevel=3)
    arr = stored_values(image, dtype)
    if fmt == "tiff":
        photometric = "miniswhite" if image.meta.window.invert else "minisblack"
        spacing = image.meta.pixel_spacing     # as pixels per centimetre, x (columns) first
        resolution = {"resolution": (10.0 / spacing[1], 10.0 / spacing[0]),
                      "resolutionunit": "CENTIMETER"} if spacing else {}
        compression = image.meta.extra.get("tiff_compression")
        tifffile.imwrite(tmp_path, arr, photometric=photometric,
                         description=None, metadata=None, **resolution,
                         **({"compression": compression} if compression in LOSSLESS_TIFF
                            else {}))
        return
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise ImageWriteError(target, f"{fmt.upper()} holds one frame but the image has "
                                          f"{arr.shape[0]}; write TIFF, NIfTI or .npy instead")
        arr = arr[0]
    if fmt == "jpeg":
        Image.fromarray(arr.astype(np.uint8)).save(tmp_path, format="JPEG", quality=95)
    else:
        Image.fromarray(arr).save(tmp_path, format="PNG")
