"""Down-sampled images stay where they were in the patient: a bright spot's centre, in world
coordinates from the written file's own geometry, does not move.

The affine's origin and DICOM's Image Position used to be kept as they were while the spacing
grew, which put every down-sampled pixel half an old pixel per unit of scale off (0.4 mm at
0.8 mm voxels and x2), and area down-sampling of sizes that do not divide took the spacing of
the whole extent (x3.01) for the exact block size (x3).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medenhance as me
from medenhance.degrade import Pipeline, degrade_image

SPOT = (30.7, 20.3)           # (row, column) of the spot in the source pixels


def _spot(shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return 100 + 3000 * np.exp(-((rows - SPOT[0]) ** 2 + (cols - SPOT[1]) ** 2) / (2 * 3.0**2))


def _centroid(frame: np.ndarray) -> tuple[float, float]:
    weight = np.clip(frame - 100, 0, None)          # the background is 100
    rows, cols = np.mgrid[: frame.shape[0], : frame.shape[1]]
    return float((weight * rows).sum() / weight.sum()), float((weight * cols).sum() / weight.sum())


def _downsample(image: me.MedicalImage, scale: int, method: str) -> me.MedicalImage:
    pipe = Pipeline([{"op": "downsample", "params": {"scale": scale, "method": method}}])
    return degrade_image(image, pipe, seed=0)[0]


@pytest.mark.parametrize("scale,method", [(2, "bicubic"), (3, "area"), (4, "bicubic")])
def test_nifti_affine_keeps_the_spot_in_place(tmp_path: Path, scale: int, method: str) -> None:
    turn = np.deg2rad(30)
    affine = np.array([[0.8 * np.cos(turn), -0.9 * np.sin(turn), 0, -50.0],
                       [0.8 * np.sin(turn), 0.9 * np.cos(turn), 0, 20.0],
                       [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    # Voxel axis 0 is the frames' columns, axis 1 their rows; 61 rows do not divide by 2, 3, 4.
    volume = np.stack([_spot((61, 50)).T] * 2, axis=-1).astype(np.int16)
    registered = affine.copy()
    registered[:3, 3] += [5.0, -7.0, 3.0]     # another space (a template's) in the sform
    source = nib.Nifti1Image(volume, None)
    source.set_qform(affine, code=1)           # scanner
    source.set_sform(registered, code=4)       # MNI
    nib.save(source, tmp_path / "v.nii.gz")
    small = _downsample(me.read_image(tmp_path / "v.nii.gz"), scale, method)
    out = nib.load(me.write_image(small, tmp_path / "small.nii.gz"))
    # The codes were rewritten (qform 1 -> 0) on resampling, and then both forms were given
    # the registered affine under their own codes.
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 4)
    row, col = _centroid(np.asarray(out.dataobj)[..., 0].T.astype(float))
    for form, space in ((out.get_qform(), affine), (out.get_sform(), registered)):
        world = form @ [col, row, 0, 1]
        expected = space @ [SPOT[1], SPOT[0], 0, 1]
        assert np.linalg.norm(world[:3] - expected[:3]) < 0.1   # mm; it was 0.4 to 1.2 off
    if method == "area":
        assert out.header.get_zooms()[:2] == pytest.approx((0.8 * 3, 0.9 * 3))


def _ct(path: Path, enhanced: bool) -> np.ndarray:
    frame = _spot((61, 50)).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.SeriesInstanceUID, ds.Modality, ds.PatientID = generate_uid(), "CT", "P1"
    orientation = [0.0, 0.8, 0.6, 0.0, -0.6, 0.8]         # an oblique slice
    if enhanced:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
        ds.NumberOfFrames = 1
        shared, per_frame = Dataset(), Dataset()
        shared.PixelMeasuresSequence = [Dataset()]
        shared.PixelMeasuresSequence[0].PixelSpacing = [0.7, 0.9]
        shared.PlaneOrientationSequence = [Dataset()]
        shared.PlaneOrientationSequence[0].ImageOrientationPatient = orientation
        per_frame.PlanePositionSequence = [Dataset()]
        per_frame.PlanePositionSequence[0].ImagePositionPatient = [-100.0, 12.5, 40.0]
        ds.SharedFunctionalGroupsSequence = [shared]
        ds.PerFrameFunctionalGroupsSequence = [per_frame]
    else:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"    # CT Image
        ds.PixelSpacing, ds.ImageOrientationPatient = [0.7, 0.9], orientation
        ds.ImagePositionPatient = [-100.0, 12.5, 40.0]
    ds.set_pixel_data(frame, "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=True)
    return frame


def _geometry(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        spacing = shared.PixelMeasuresSequence[0].PixelSpacing
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        position = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]\
            .ImagePositionPatient
    else:
        spacing, orientation = ds.PixelSpacing, ds.ImageOrientationPatient
        position = ds.ImagePositionPatient
    return (np.asarray(position, float), np.asarray(orientation, float),
            np.asarray(spacing, float))


def _world(ds: Dataset, row: float, col: float) -> np.ndarray:
    position, orientation, spacing = _geometry(ds)
    return position + col * spacing[1] * orientation[:3] + row * spacing[0] * orientation[3:]


@pytest.mark.parametrize("enhanced", [False, True])
@pytest.mark.parametrize("scale,method", [(2, "bicubic"), (3, "area")])
def test_dicom_image_position_keeps_the_spot_in_place(tmp_path: Path, enhanced: bool,
                                                      scale: int, method: str) -> None:
    _ct(tmp_path / "ct.dcm", enhanced)
    source = pydicom.dcmread(tmp_path / "ct.dcm")
    small = _downsample(me.read_image(tmp_path / "ct.dcm"), scale, method)
    out = pydicom.dcmread(me.write_image(small, tmp_path / "small.dcm"))
    row, col = _centroid(out.pixel_array.astype(float))
    moved = np.linalg.norm(_world(out, row, col) - _world(source, *SPOT))
    assert moved < 0.1, moved                                       # mm
    if method == "area":
        np.testing.assert_allclose(_geometry(out)[2], [0.7 * 3, 0.9 * 3])
