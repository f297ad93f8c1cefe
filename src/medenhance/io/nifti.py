"""NIfTI-1/2 volumes through nibabel, processed slice by slice.

A volume ``(X, Y, Z)`` becomes frames ``(Z, Y, X)``: frame ``k`` is the in-plane slice ``k``
transposed so that rows run along Y, still in voxel order (:func:`display_frames` turns them as
viewers show them). The header and affine are kept, and the writer restores the on-disk data type
and the (scl_slope, scl_inter) scaling exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import ImageReadError, ImageWriteError
from ..image import ImageMeta, MedicalImage, choose_window
from .padding import fill_nan, with_nan


def display_frames(image: MedicalImage) -> np.ndarray:
    """``(N, H, W)`` frames of ``image`` as a radiologist views them (a view, not a copy).

    DICOM and raster frames are stored that way. A NIfTI volume's frames follow its voxel axes
    (see the module docstring), so they are turned by its affine so that anterior (axial slices)
    or superior (coronal, sagittal) is up and the patient's right is on the left (anterior for
    sagittal slices), whatever order the voxels were stored in. Writing keeps the voxel order:
    use this to look at or learn from slices, not to process them for writing back.
    """
    frames = image.frames()
    affine = image.meta.extra.get("affine") if image.meta.source_format == "nifti" else None
    if affine is None:
        return frames
    # ornt[i] = (world axis R=0 / A=1 / S=2, +1 if voxel axis i runs towards R, A or S).
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    if np.isnan(ornt).any():            # a degenerate affine says nothing about orientation
        return frames
    # Frames are (Z, Y, X): rows run along voxel axis 1, columns along voxel axis 0.
    row_world, col_world = int(ornt[1, 0]), int(ornt[0, 0])
    want_row = {2: 1, 1: 2, 0: 2}[int(ornt[2, 0])]     # axial: A-P rows; otherwise S-I rows
    row_dir, col_dir = ornt[1, 1], ornt[0, 1]
    if row_world != want_row:
        frames = frames.transpose(0, 2, 1)
        row_world, col_world, row_dir, col_dir = col_world, row_world, col_dir, row_dir
    # Display rows run towards posterior or inferior, columns towards the patient's left or
    # posterior: against the world axis in every case.
    if row_dir > 0:
        frames = frames[:, ::-1]
    if col_dir > 0:
        frames = frames[:, :, ::-1]
    return frames


def _modality(descrip: object) -> str | None:
    """The modality our writer put first in the description, else MR where the description
    says MR or MRI as a word (scanner converters), else unknown."""
    text = descrip.tobytes() if isinstance(descrip, np.ndarray) else descrip
    text = text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)
    text = text.rstrip("\x00")
    if text.startswith("medenhance:"):
        ours = re.match(r"medenhance: \[([A-Za-z0-9]+)\]", text)
        return ours.group(1) if ours else None
    return "MR" if re.search(r"(?<![A-Za-z0-9])mri?(?![A-Za-z0-9])", text, re.I) else None


def read_nifti(path: str | Path) -> MedicalImage:
    """Read a 2-D or 3-D NIfTI image (a 4-D one only if its 4th axis has length 1)."""
    p = Path(path)
    try:
        img = nib.load(p)
        proxy = img.dataobj
        # Stored values before scl_slope/scl_inter, and the scaling the proxy applies to them.
        raw = proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy)
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    except FileNotFoundError:
        raise ImageReadError(p, "no such file") from None
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors, ...
        raise ImageReadError(p, f"not a readable NIfTI file ({exc})") from None
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    data = raw
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ImageReadError(p, f"only 2-D and 3-D volumes are supported, got shape {raw.shape}")
    if data.dtype.kind not in "uif":
        raise ImageReadError(p, f"unsupported NIfTI data type {data.dtype}")
    values = data.astype(np.float64) * slope + inter if (slope, inter) != (1.0, 0.0) else data
    values, nan = fill_nan(values, p, "volume")      # outside a mask (SPM, FSL)
    integer = (slope, inter) == (1.0, 0.0) and data.dtype.kind in "ui"
    window = choose_window(values, integer_bits=data.dtype.itemsize * 8 if integer else None,
                           signed=data.dtype.kind == "i")
    frames = np.transpose(values, (2, 1, 0))
    zooms = img.header.get_zooms()
    meta = ImageMeta(
        source_format="nifti", window=window, stored_dtype=data.dtype.name,
        bits_stored=data.dtype.itemsize * 8 if data.dtype.kind in "ui" else None,
        pixel_spacing=(float(zooms[1]), float(zooms[0])) if len(zooms) >= 2 else None,
        modality=_modality(img.header.get("descrip", b"")),
        header=img.header.copy(), source_path=str(p),
        extra={"affine": img.affine.copy(), "scaling": (slope, inter), "raw_shape": raw.shape,
               "nifti_class": type(img).__name__,
               **({"nan_mask": np.transpose(nan, (2, 1, 0))} if nan is not None else {})},
    )
    return MedicalImage(window.to_unit(frames), meta)


def _integer_valued(meta: ImageMeta) -> bool:
    """Whether the source stored integers in the units it is written in: a PNG, TIFF or array of
    integers, or integer DICOM pixels whose rescale (to HU, say) has integer slope and
    intercept."""
    if meta.stored_dtype is None or np.dtype(meta.stored_dtype).kind not in "ui":
        return False
    slope, intercept = meta.extra.get("rescale", (1.0, 0.0))
    return float(slope).is_integer() and float(intercept).is_integer()


def _in_integer_type(volume: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """``volume`` rounded, in the source's integer type where the window's range fits it (a
    uint16 radiograph stays uint16), else the narrowest of int16 and int32 that holds it (CT
    stored as uint16 with intercept -1024 is in HU)."""
    low, high = np.floor(meta.window.low), np.ceil(meta.window.high)
    for dtype in (np.dtype(meta.stored_dtype), np.dtype(np.int16), np.dtype(np.int32)):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.clip(np.rint(volume), info.min, info.max).astype(dtype)
    return volume.astype(np.float32)


def write_nifti(image: MedicalImage, tmp_path: Path, target: Path) -> None:
    """Write ``image`` as NIfTI, in the input's data type and scaling when it came from NIfTI."""
    meta = image.meta
    frames = image.values()
    if frames.ndim == 2:
        frames = frames[None]
    frames = with_nan(frames, meta.extra)
    volume = np.transpose(frames, (2, 1, 0))
    if meta.source_format == "nifti" and meta.header is not None:
        slope, inter = meta.extra.get("scaling", (1.0, 0.0))
        dtype = np.dtype(meta.stored_dtype)
        raw = (volume - inter) / slope
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            raw = np.clip(np.rint(raw), info.min, info.max)
        raw = raw.astype(dtype)
        raw_shape = tuple(meta.extra.get("raw_shape", raw.shape))
        if len(raw_shape) > 3 and raw.shape == raw_shape[:3]:
            raw = raw.reshape(raw_shape)
        elif len(raw_shape) == 2 and raw.shape[2] == 1:
            raw = raw[:, :, 0]
        header = meta.header.copy()
        cls = nib.Nifti2Image if meta.extra.get("nifti_class") == "Nifti2Image" else nib.Nifti1Image
        affine = meta.extra.get("affine")
        pixel_map = meta.extra.get("pixel_map")

        def resampled(old_affine: np.ndarray) -> np.ndarray:
            """In-plane resampling: the voxel axes scaled, voxel 0 moved. Frames are
            (Z, Y, X): rows run along voxel axis 1, columns along voxel axis 0."""
            row_scale, col_scale, row_offset, col_offset = pixel_map
            old = np.asarray(old_affine, dtype=np.float64)
            new = old.copy()
            new[:3, 0] = old[:3, 0] * col_scale
            new[:3, 1] = old[:3, 1] * row_scale
            new[:3, 3] = old[:3, 3] + old[:3, 0] * col_offset + old[:3, 1] * row_offset
            return new

        if pixel_map is not None:
            affine = resampled(affine)
        out = cls(raw, affine, header)
        if pixel_map is not None:
            # A new affine made nibabel rewrite the codes (qform 1 -> 0, sform 0 -> 2). Each
            # form keeps its own affine (scanner and registered space differ) and code.
            codes = int(header["qform_code"]), int(header["sform_code"])
            out.set_qform(resampled(header.get_qform()), code=codes[0])
            out.set_sform(resampled(header.get_sform()), code=codes[1])
        out.header.set_data_dtype(dtype)
        out.header.set_slope_inter(slope if (slope, inter) != (1.0, 0.0) else np.nan,
                                   inter if (slope, inter) != (1.0, 0.0) else np.nan)
    else:
        if meta.window.invert:
            # NIfTI has no "minimum is white" (MONOCHROME1): store the picture as it is seen,
            # bright where the source displays bright, in the source's range.
            volume = meta.window.low + meta.window.high - volume
        affine = np.eye(4)
        if meta.pixel_spacing is not None:      # voxel sizes; the orientation is not known here
            affine[0, 0], affine[1, 1] = meta.pixel_spacing[1], meta.pixel_spacing[0]
        out = nib.Nifti1Image(_in_integer_type(volume, meta) if _integer_valued(meta) else
                              volume.astype(np.float32), affine)
    # The modality first: NIfTI has no field for it, and the history's model and preset names
    # ("mri-denoise") made a CT read back as MR.
    said = f"[{meta.modality}] " if meta.modality and meta.modality.isalnum() else ""
    descrip = f"medenhance: {said}{'; '.join(meta.history)}"[:79]
    out.header["descrip"] = descrip.encode("ascii", "replace")
    try:
        nib.save(out, tmp_path)
    except Exception as exc:
        raise ImageWriteError(target, f"could not write NIfTI ({exc})") from None
