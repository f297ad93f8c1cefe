"""Reading and writing images: the only part of medenhance that touches files.

``read_image(path)`` returns a :class:`~medenhance.image.MedicalImage` for DICOM, PNG, JPEG, TIFF,
NIfTI and ``.npy``; ``write_image(image, path)`` writes it back in the format named by ``path``'s
suffix, in the input's own units and bit depth when the formats match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageReadError, ImageWriteError, MedEnhanceError, UnsupportedImageError
from ..image import MedicalImage
from ._files import (SUFFIX_FORMATS, atomic_write, detect_format, find_images, full_suffix,
                     sniff_format, stem)
from .dicom import inspect_dicom, read_dicom, write_dicom
from .nifti import display_frames, read_nifti, write_nifti
from .numpy import read_npy, write_npy
from .raster import read_pil, read_tiff, write_raster

__all__ = ["ImageInfo", "SUFFIX_FORMATS", "detect_format", "display_frames", "find_images",
           "full_suffix", "inspect_image", "read_image", "stem", "write_image", "default_suffix"]

#: Suffix written for each source format when the caller gives only a folder.
_DEFAULT_SUFFIX = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg", "tiff": ".tif",
                   "nifti": ".nii.gz", "npy": ".npy"}


def default_suffix(image: MedicalImage) -> str:
    """The suffix that keeps ``image`` in its input format."""
    return _DEFAULT_SUFFIX[image.meta.source_format]


def _check_exists(p: Path) -> None:
    if p.is_symlink() and not p.exists():
        raise ImageReadError(p, f"broken link (to {os.readlink(p)}, which does not exist)")
    if not p.exists():
        raise ImageReadError(p, "no such file")
    if p.is_file() and not os.access(p, os.R_OK):   # else called "damaged" by the decoders
        raise ImageReadError(p, "cannot be read (permission denied)")
    if p.is_file() and p.stat().st_size == 0:       # else "not a DICOM file", "not a PNG"
        raise ImageReadError(p, "empty file (0 bytes)")


def read_image(path: str | os.PathLike[str]) -> MedicalImage:
    """Read any supported image file.

    Parameters
    ----------
    path : str or PathLike
        DICOM (``.dcm``, ``.dicom``, ``.ima``, or no suffix and DICOM's first bytes), PNG, JPEG,
        TIFF, NIfTI (``.nii``, ``.nii.gz``) or NumPy ``.npy``.

    Returns
    -------
    MedicalImage
        float32 pixels in [0, 1], shape ``(H, W)`` or ``(N, H, W)``.

    Raises
    ------
    ImageReadError
        Missing, unreadable, damaged or unsupported file; the message names the file and reason.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ImageReadError(Path(str(path)), f"read_image takes a file path, got "
                                              f"{type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        raise ImageReadError(p, "is a folder, not a file")
    _check_exists(p)
    fmt = detect_format(p)
    try:
        if fmt == "dicom":
            return read_dicom(p)
        if fmt in ("png", "jpeg"):
            return read_pil(p, fmt)
        if fmt == "tiff":
            return read_tiff(p)
        if fmt == "nifti":
            return read_nifti(p)
        return read_npy(p)
    except UnsupportedImageError:
        raise
    except ImageReadError as exc:
        raise _explained(p, fmt, exc) from None


def _explained(p: Path, fmt: str, exc: ImageReadError) -> ImageReadError:
    """``exc``, or, for a file named for one format but holding another (a PNG renamed .dcm),
    an error that says what it holds instead of the decoder's complaint."""
    kind = sniff_format(p)
    if kind is None or kind == fmt:
        return exc
    suffix = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm", "npy": ".npy",
              "nifti": ".nii"}.get(kind)
    what = f"a {kind.upper()} file (name it {suffix} to read it)" if suffix else kind
    return ImageReadError(p, f"{exc.reason.split(' (')[0]}: it holds {what}, not {fmt.upper()}")


def write_image(image: MedicalImage, path: str | os.PathLike[str], *,
                overwrite: bool = False) -> Path:
    """Write ``image`` to ``path`` (format from the suffix), atomically.

    The file is written to a temporary name in the target folder and renamed into place, so an
    interrupted run never leaves half a file; the input file is never overwritten.

    Raises
    ------
    ImageWriteError
        Target exists (and not ``overwrite``), is the input file, or the format cannot hold the image.
    """
    if not isinstance(image, MedicalImage):
        raise ImageWriteError(Path(path), f"write_image takes a MedicalImage (from read_image "
                                          f"or from_array), got {type(image).__name__}")
    if not isinstance(overwrite, (bool, np.bool_)):   # "no" would have counted as true
        raise ImageWriteError(Path(path), f"overwrite must be True or False, got {overwrite!r}")
    target = Path(path)
    fmt = SUFFIX_FORMATS.get(full_suffix(target))
    if fmt is None and full_suffix(target) == "" and image.meta.source_format == "dicom":
        fmt = "dicom"          # PACS exports name DICOM files by UID, without a suffix
    if fmt is None:
        raise ImageWriteError(target, f"unknown output suffix {target.suffix or '(none)'}; "
                                      "use .dcm, .png, .jpg, .tif, .nii.gz or .npy")
    source = image.meta.source_path
    if source is not None and target.exists() and os.path.samefile(source, target):
        raise ImageWriteError(target, "refusing to overwrite the input file")

    def write(tmp: Path) -> None:
        if fmt == "dicom":
            write_dicom(image, tmp, target)
        elif fmt in ("png", "jpeg", "tiff"):
            write_raster(image, tmp, target, fmt)
        elif fmt == "nifti":
            write_nifti(image, tmp, target)
        else:
            write_npy(image, tmp, target)

    try:
        return atomic_write(target, write, overwrite=overwrite)
    except MedEnhanceError:
        raise
    except OSError as exc:
        raise ImageWriteError(target, exc.strerror or str(exc)) from None


@dataclass
class ImageInfo:
    """What ``medenhance info`` shows for one file."""

    path: str
    format: str
    modality: str
    rows: int
    columns: int
    frames: int
    bits_stored: str
    photometric: str
    pixel_spacing: str
    transfer_syntax: str


def inspect_image(path: str | os.PathLike[str]) -> ImageInfo:
    """Describe a file after checking that its pixels decode (colour DICOM is described too)."""
    p = Path(path)
    if p.is_dir():
        raise ImageReadError(p, "is a folder, not a file")
    _check_exists(p)
    fmt = detect_format(p)
    if fmt == "dicom":
        try:
            d = inspect_dicom(p)
        except UnsupportedImageError:
            raise
        except ImageReadError as exc:
            raise _explained(p, fmt, exc) from None
        spacing = f"{d.pixel_spacing[0]:g} x {d.pixel_spacing[1]:g} mm" if d.pixel_spacing else "-"
        return ImageInfo(str(p), "DICOM", d.modality, d.rows, d.columns, d.frames,
                         f"{d.bits_stored}{' signed' if d.signed else ''}", d.photometric, spacing,
                         d.transfer_syntax)
    image = read_image(p)
    meta = image.meta
    h, w = image.pixels.shape[-2:]
    spacing = (f"{meta.pixel_spacing[0]:g} x {meta.pixel_spacing[1]:g} mm"
               if meta.pixel_spacing else "-")
    signed = " signed" if np.dtype(meta.stored_dtype).kind == "i" else ""
    bits = f"{meta.bits_stored}{signed}" if meta.bits_stored else meta.stored_dtype
    photometric = meta.photometric + (" (colour, read as grey)"
                                      if meta.extra.get("colour_converted") else "")
    return ImageInfo(str(p), fmt.upper() if fmt != "nifti" else "NIfTI", meta.modality or "-",
                     h, w, image.n_frames, bits, photometric, spacing, "-")
