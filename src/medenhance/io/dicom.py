"""DICOM reading and derived-image writing (pydicom, with the pylibjpeg decoder plugins).

Order of operations on read, as in PS3.3 C.11 (Modality LUT -> VOI LUT -> Presentation):

1. decode (0x7FE0,0010) *Pixel Data*, including JPEG, JPEG-LS, JPEG 2000 and RLE syntaxes;
2. apply the modality rescale, (0028,1053) *Rescale Slope* and (0028,1052) *Rescale Intercept*
   (PS3.3 C.11.1), so that values are in the modality's units (e.g. HU);
3. map to [0, 1] with the window of the intensity contract (:mod:`medenhance.image`), inverting
   (0028,0004) *Photometric Interpretation* MONOCHROME1 so that bright means dense.

The VOI LUT / window centre and width are display settings: they are left untouched and kept in the
header. The writer undoes step 3 and 2 exactly and writes a *derived* image: new SOP and Series
Instance UIDs, the source's (0020,0011) *Series Number* + 1000, (0008,0008) *Image Type*
DERIVED\\SECONDARY, a (0008,2111) *Derivation Description*,
a (0008,2112) *Source Image Sequence* pointing at the input, and the input's bit depth, photometric
interpretation and every other attribute kept. Pixel data is written uncompressed (Explicit VR
Little Endian).

The slices of one source series stay one series: every image derived in one process from the same
source series by the same derivation (:meth:`MedicalImage.with_pixels`: the same model file and
settings, or the same degradation pipeline, whatever per-slice values they drew or estimated) gets
the same new Series Instance UID. Enhanced (multi-frame functional group) objects keep
*Image Type* value 2, which their IODs fix to PRIMARY, and their *Frame Type* says DERIVED too.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.valuerep import DSfloat
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from .._version import __version__
from ..errors import ImageReadError, ImageWriteError, NotAnImageError, UnsupportedImageError
from ..image import ImageMeta, MedicalImage, choose_window

logger = logging.getLogger(__name__)

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


@dataclass
class DicomInfo:
    """What ``medenhance info`` prints about a DICOM file."""

    path: str
    modality: str
    rows: int
    columns: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    pixel_spacing: tuple[float, float] | None
    transfer_syntax: str
    sop_class: str


def _read_dataset(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            # Some valid files lack the 128-byte preamble and "DICM" prefix (PS3.10 7.1).
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
            if "SOPClassUID" not in ds and "PixelData" not in ds and "Rows" not in ds:
                raise ImageReadError(path, "not a DICOM file") from None
            if "TransferSyntaxUID" not in (getattr(ds, "file_meta", None) or {}):
                # Without file meta, the syntax is the one it was read in (needed to decode).
                implicit, little = ds.original_encoding
                if little:
                    if getattr(ds, "file_meta", None) is None:
                        ds.file_meta = FileMetaDataset()
                    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                                      else ExplicitVRLittleEndian)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not a file") from None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ImageReadError(path, f"not a readable DICOM file ({_short(exc)})") from None
    return ds


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    """Pixel spacing in mm: of the dataset, else (enhanced multi-frame objects keep it there)
    of its shared functional groups' or first frame's Pixel Measures."""
    places = [ds]
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        group = (ds.get(groups, None) or [None])[0]
        measures = group.get("PixelMeasuresSequence", None) if group is not None else None
        if measures:
            places.append(measures[0])
    for item in places:
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = item.get(keyword)
            if value is not None and len(value) == 2:
                row, col = float(value[0]), float(value[1])
                if row > 0 and col > 0:  # some files carry 0\0 for "unknown"
                    return (row, col)
    return None


def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _decode(path: Path, ds: Dataset) -> np.ndarray:
    if not _has_pixels(ds):
        meta = getattr(ds, "file_meta", None)
        sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
        name = str(getattr(sop, "name", "unknown SOP class"))
        if "Image Storage" in name or "Rows" in ds:
            # An image object without its pixels: the file ends early (a cut download or copy).
            raise ImageReadError(path, f"no pixel data in this {name} object: the file is "
                                       "probably truncated")
        raise NotAnImageError(path, f"no pixel data (not an image object: {name})")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise UnsupportedImageError(path, f"cannot decode pixel data in {name} ({_short(exc)})") \
            from None
    except Exception as exc:
        raise ImageReadError(path, f"pixel data cannot be decoded: damaged, truncated or "
                                   f"inconsistent header ({_short(exc)})") from None


def inspect_dicom(path: str | Path) -> DicomInfo:
    """Header summary of a DICOM image, after checking that its pixel data decodes.

    Raises
    ------
    ImageReadError
        Not DICOM, truncated, no pixel data, or undecodable pixel data (one line, naming the file).
    """
    p = Path(path)
    ds = _read_dataset(p)
    arr = _decode(p, ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    rows = int(ds.get("Rows", arr.shape[-2] if arr.ndim >= 2 else 0))
    cols = int(ds.get("Columns", arr.shape[-1] if arr.ndim >= 2 else 0))
    return DicomInfo(
        path=str(p), modality=str(ds.get("Modality", "?")), rows=rows, columns=cols, frames=frames,
        bits_allocated=int(ds.get("BitsAllocated", arr.dtype.itemsize * 8)),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", arr.dtype.itemsize * 8))),
        signed=bool(ds.get("PixelRepresentation", 0)),
        photometric=str(ds.get("PhotometricInterpretation", "?")),
        pixel_spacing=_spacing(ds),
        transfer_syntax=str(getattr(syntax, "name", syntax) or "unknown (no file meta)"),
        sop_class=str(getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID", "?"))),
    )


def read_dicom(path: str | Path) -> MedicalImage:
    """Read a grayscale DICOM image (single- or multi-frame) as a :class:`MedicalImage`.

    Returns
    -------
    MedicalImage
        float32 pixels in [0, 1], ``(H, W)`` or ``(N, H, W)``; ``meta.header`` is the dataset
        without its pixel data.

    Raises
    ------
    ImageReadError, UnsupportedImageError
        Not DICOM, no pixel data, damaged, colour, or a Modality LUT Sequence (not invertible).
    """
    p = Path(path)
    ds = _read_dataset(p)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in GRAYSCALE or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedImageError(p, f"colour image ({photometric}); medenhance processes "
                                       "grayscale (MONOCHROME1/MONOCHROME2) images only")
    if "ModalityLUTSequence" in ds:
        raise UnsupportedImageError(p, "(0028,3000) Modality LUT Sequence is not supported; only "
                                       "Rescale Slope/Intercept can be undone on write")
    arr = _decode(p, ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and arr.ndim == 2:  # a single frame declared as multi-frame
        arr = arr[None]
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    values = arr.astype(np.float64) * slope + intercept if (slope, intercept) != (1.0, 0.0) else arr
    bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    integer_lut = (slope, intercept) == (1.0, 0.0) and arr.dtype.kind in "ui"
    window = choose_window(values, integer_bits=bits_stored if integer_lut else None,
                           signed=arr.dtype.kind == "i", invert=photometric == "MONOCHROME1")
    if not integer_lut and window.low >= 0 and window.high <= 1:
        # A rescaled integer image is not "already on [0, 1]": keep its real range.
        window = type(window)(float(values.min()), float(values.max()), window.invert)
    header = copy.deepcopy(ds)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            del header[keyword]
    padding = _padding_range(ds, arr.dtype.kind == "i")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    meta = ImageMeta(
        source_format="dicom", window=window, stored_dtype=arr.dtype.name, bits_stored=bits_stored,
        photometric=photometric, pixel_spacing=_spacing(ds), modality=ds.get("Modality"),
        header=header, source_path=str(p),
        extra={"rescale": (slope, intercept), "transfer_syntax": str(syntax) if syntax else None,
               "bits_allocated": int(ds.get("BitsAllocated", arr.dtype.itemsize * 8)),
               "signed": arr.dtype.kind == "i",
               **({"padding": padding} if padding else {})},
    )
    return MedicalImage(window.to_unit(values), meta)


def _padding_range(ds: Dataset, signed: bool) -> tuple[int, int] | None:
    """Stored values that mark (0028,0120) *Pixel Padding Value* pixels (outside a CT's field
    of view, say), up to (0028,0121) *Pixel Padding Range Limit* when given."""
    if ds.get("PixelPaddingValue") is None:
        return None
    bits = int(ds.get("BitsAllocated", 16))

    def as_stored(v: object) -> int:
        v = int(v)  # type: ignore[call-overload]
        # Read without its VR (US or SS), a negative value can come back as unsigned.
        return v - 2**bits if signed and v >= 2 ** (bits - 1) else v

    first = as_stored(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    last = first if limit is None else as_stored(limit)
    return min(first, last), max(first, last)


def _stored_array(image: MedicalImage, target: Path) -> np.ndarray:
    meta = image.meta
    slope, intercept = meta.extra.get("rescale", (1.0, 0.0))
    stored = (image.values() - intercept) / slope
    bits = int(meta.bits_stored or 16)
    signed = bool(meta.extra.get("signed", False))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    allocated = int(meta.extra.get("bits_allocated", 16))
    if allocated not in (8, 16):
        raise ImageWriteError(target, f"cannot write (0028,0100) Bits Allocated {allocated}; "
                                      "only 8 and 16 are supported")
    dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}")
    return np.clip(np.rint(stored), lo, hi).astype(dtype)


def _derivation_text(history: list[str], earlier: str = "") -> str:
    """What medenhance did, after what the source says it was derived by (a lossy compression's
    "JPEG 2000 irreversible 10:1" must not be lost); our part is kept whole where the 1024
    characters of an ST run out."""
    steps = "; ".join(history) if history else "re-encoded"
    text = f"{steps} (medenhance {__version__}; research use only, not for diagnosis)"
    text = text if len(text) <= 1024 else text[:1021] + "..."  # ST holds 1024 characters
    earlier = earlier.strip()
    if not earlier:
        return text
    room = 1024 - len(text) - 2
    if room < 4:
        return text
    return (earlier if len(earlier) <= room else earlier[:room - 3] + "...") + "; " + text


#: Makes the derived series UIDs of this process differ from those of any other run.
_RUN_SALT = generate_uid()


def _derived_series_uid(source: Dataset, derivation: list[str]) -> str:
    """One new UID per source series and derivation (see the module docstring)."""
    series = str(source.get("SeriesInstanceUID", "") or "")
    if not series:
        return generate_uid()
    return generate_uid(entropy_srcs=[_RUN_SALT, series, *derivation])


#: Added to the source's Series Number, as scanners number the series they derive (a viewer
#: that lists a study's series by number then shows the derived one apart from its source).
DERIVED_SERIES_OFFSET = 1000


def _derived_series_number(source: Dataset) -> int | None:
    """The source's (0020,0011) *Series Number* + :data:`DERIVED_SERIES_OFFSET`, or None where
    the source has no usable one or the sum would not fit an IS value (it is then kept)."""
    try:
        number = int(source.get("SeriesNumber"))
    except (TypeError, ValueError):
        return None
    derived = number + DERIVED_SERIES_OFFSET
    return derived if -2 ** 31 <= derived < 2 ** 31 else None


def _mark_frames_derived(ds: Dataset) -> None:
    """Set value 1 of every *Frame Type* in the functional groups to DERIVED."""
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(group, None) or []:
            for element in item:
                if element.VR != "SQ" or not element.keyword.endswith("FrameTypeSequence"):
                    continue
                for frame_type in element.value:
                    values = list(frame_type.get("FrameType", []) or [])
                    if values:
                        frame_type.FrameType = ["DERIVED", *values[1:]]


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)  # as precise as a DS's 16 characters allow


def _resample_geometry(ds: Dataset, pixel_map: tuple[float, float, float, float]) -> None:
    """Pixel spacing and the first pixel's position of frames resampled by ``pixel_map`` (see
    ``MedicalImage.with_pixels``): top-level attributes and those of an enhanced object's
    functional groups. Image Position is the centre of the first pixel, so down-sampling moves
    it half an old pixel per unit of scale into the image, along the Image Orientation axes."""
    row_scale, col_scale, row_offset, col_offset = pixel_map

    def moved(position, orientation, spacing) -> list[DSfloat]:
        along_row = np.asarray(orientation[:3], float)     # the direction columns count in
        along_col = np.asarray(orientation[3:], float)
        shift = (col_offset * float(spacing[1]) * along_row
                 + row_offset * float(spacing[0]) * along_col)
        return [_ds(p + d) for p, d in zip((float(v) for v in position), shift, strict=True)]

    def first(item: Dataset | None, sequence: str) -> Dataset | None:
        inner = item.get(sequence) if item is not None else None
        return inner[0] if inner else None

    shared = first(ds, "SharedFunctionalGroupsSequence")
    shared_measures = first(shared, "PixelMeasuresSequence")
    shared_orientation = first(shared, "PlaneOrientationSequence")
    for frame in ds.get("PerFrameFunctionalGroupsSequence", None) or []:
        measures = first(frame, "PixelMeasuresSequence") or shared_measures
        orientation = first(frame, "PlaneOrientationSequence") or shared_orientation
        position = first(frame, "PlanePositionSequence")
        if (position is not None and measures is not None and orientation is not None
                and len(measures.get("PixelSpacing", None) or []) == 2
                and len(orientation.get("ImageOrientationPatient", None) or []) == 6
                and len(position.get("ImagePositionPatient", None) or []) == 3):
            position.ImagePositionPatient = moved(position.ImagePositionPatient,
                                                  orientation.ImageOrientationPatient,
                                                  measures.PixelSpacing)
    spacing = _spacing(ds)
    if (spacing is not None and len(ds.get("ImagePositionPatient", None) or []) == 3
            and len(ds.get("ImageOrientationPatient", None) or []) == 6
            and "PixelSpacing" in ds):
        ds.ImagePositionPatient = moved(ds.ImagePositionPatient, ds.ImageOrientationPatient,
                                        spacing)
    items = [ds, *(first(g, "PixelMeasuresSequence") for g in
                   [shared, *(ds.get("PerFrameFunctionalGroupsSequence", None) or [])])]
    done: set[int] = set()
    for item in items:
        if item is None or id(item) in done:
            continue
        done.add(id(item))
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = item.get(keyword)
            if value is not None and len(value) == 2 and float(value[0]) > 0:
                setattr(item, keyword, [_ds(float(value[0]) * row_scale),
                                        _ds(float(value[1]) * col_scale)])


#: Bytes per word of the VRs whose values pydicom keeps as raw bytes in the file's byte order.
_WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _to_little_endian(ds: Dataset) -> None:
    """Make a dataset read big endian (a retired syntax) write little endian: pydicom refused
    to convert, and the write failed. Numbers and text are decoded to values first; words kept
    as bytes (OW overlays and LUT data, private OW) are swapped, which pydicom does not do.
    (The pixel data is replaced by the caller.)"""
    for element in ds.iterall():
        size = _WORD_BYTES.get(str(element.VR))
        if size and isinstance(element.value, bytes) and len(element.value) % size == 0:
            words = np.frombuffer(element.value, dtype=f">u{size}")
            element.value = words.astype(f"<u{size}").tobytes()
    ds.set_original_encoding(False, True, ds.original_character_set)


def derived_dataset(image: MedicalImage, target: Path) -> Dataset:
    """The derived DICOM dataset for ``image`` (see the module docstring)."""
    source = image.meta.header
    if not isinstance(source, Dataset):
        raise ImageWriteError(target, "DICOM output needs a DICOM input (its header is copied); "
                                      "write PNG, TIFF, NIfTI or .npy instead")
    ds = copy.deepcopy(source)
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    if ds.original_encoding[1] is False:
        _to_little_endian(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    stored = _stored_array(image, target)
    ds.set_pixel_data(stored, image.meta.photometric, int(image.meta.bits_stored or 16),
                      generate_instance_uid=True)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "ExtendedOffsetTable",
                    "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    pixel_map = image.meta.extra.get("pixel_map")
    if pixel_map is not None:   # resized (unchanged frames keep the source's own strings)
        _resample_geometry(ds, pixel_map)
    source_sop = (source.get("SOPClassUID"), source.get("SOPInstanceUID"))
    ds.SeriesInstanceUID = _derived_series_uid(source, image.meta.extra.get("derivation", []))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.ImplementationVersionName = f"MEDENHANCE_{__version__}"[:16]
    old_type = list(source.get("ImageType", []) or [])
    if "SharedFunctionalGroupsSequence" in source or "PerFrameFunctionalGroupsSequence" in source:
        ds.ImageType = ["DERIVED", *(old_type[1:] or ["PRIMARY"])]
        _mark_frames_derived(ds)
    else:
        ds.ImageType = ["DERIVED", "SECONDARY", *old_type[2:]]
    ds.DerivationDescription = _derivation_text(
        image.meta.history, str(source.get("DerivationDescription", "") or ""))
    if any("jpeg(" in step for step in image.meta.history):
        ds.LossyImageCompression = "01"  # PS3.3 C.7.6.1.1.5: once lossy, always flagged
    if all(source_sop):
        ref = Dataset()
        ref.ReferencedSOPClassUID = source_sop[0]
        ref.ReferencedSOPInstanceUID = source_sop[1]
        ds.SourceImageSequence = Sequence([ref])
    description = str(source.get("SeriesDescription", "") or "")
    ds.SeriesDescription = (description + " medenhance").strip()[-64:]
    if (number := _derived_series_number(source)) is not None:
        ds.SeriesNumber = number
    now = _dt.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    software = [str(v) for v in (source.get("SoftwareVersions") or [])] if isinstance(
        source.get("SoftwareVersions"), (list, pydicom.multival.MultiValue)) else (
        [str(source.get("SoftwareVersions"))] if source.get("SoftwareVersions") else [])
    ds.SoftwareVersions = [*software, f"medenhance {__version__}"]
    return ds


#: Lossless syntaxes an output is written in again when its source was (the encoders come with
#: pydicom and pylibjpeg); other sources, lossy ones included, give Explicit VR Little Endian.
KEPT_SYNTAXES = ("1.2.840.10008.1.2.5",        # RLE Lossless
                 "1.2.840.10008.1.2.4.90")     # JPEG 2000 Lossless Only


def write_dicom(image: MedicalImage, tmp_path: Path, target: Path) -> None:
    """Write ``image`` as a derived DICOM file to ``tmp_path`` (renamed to ``target`` by caller)."""
    ds = derived_dataset(image, target)
    if image.meta.extra.get("transfer_syntax") in KEPT_SYNTAXES:
        # A losslessly compressed source stays so (an RLE CT came back 3 times its size). If
        # the encoder cannot take these pixels, they are written uncompressed, losing nothing.
        try:
            ds.compress(image.meta.extra["transfer_syntax"])
        except Exception:  # noqa: BLE001 - any encoder failure: the uncompressed dataset
            ds = derived_dataset(image, target)
    try:
        ds.save_as(tmp_path, enforce_file_format=True)
    except Exception as exc:
        raise ImageWriteError(target, f"could not encode DICOM ({_short(exc)})") from None

