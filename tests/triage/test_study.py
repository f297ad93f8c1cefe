"""Studies of several frames or files: display orientation, frames with anatomy, grouping."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
from scipy.special import logit
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medenhance.io import read_image
from medenhance.models.card import ModelCard
from medenhance.triage.data import MAX_FRAMES, triage_frame, triage_frames
from medenhance.triage.score import TriageScorer
from medenhance.triage.study import frames_with_anatomy, thumbnail


def _nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), path)
    return path


def _head(n_slices: int = 41, size: int = 64) -> np.ndarray:
    """A ball (the head) in dark noise: slices (Z, Y, X)."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:n_slices, 0:size, 0:size]
    radius = 0.45 * size
    inside = ((z - n_slices // 2) * size / n_slices) ** 2 + (y - size / 2) ** 2 + \
        (x - size / 2) ** 2 < radius ** 2
    return 0.05 * rng.random(z.shape) + 0.7 * inside


def test_the_slices_that_show_the_anatomy_are_the_middle_ones() -> None:
    """Of a ball, the slices whose disc covers at least half the largest one's area: those
    within radius / sqrt(2) of the centre (give or take a slice, the discs being pixelated)."""
    volume = _head()
    kept = frames_with_anatomy(np.stack([thumbnail(f) for f in volume]))
    distance = np.abs(np.arange(41) - 20) * 64 / 41               # from the centre, in pixels
    expected = np.nonzero(distance <= 0.45 * 64 / np.sqrt(2))[0]
    assert abs(len(kept) - len(expected)) <= 2
    assert set(kept) >= set(expected[1:-1]) and set(kept) <= set(range(expected[0] - 1,
                                                                       expected[-1] + 2))
    # One frame: always scored; only noise: every frame.
    assert list(frames_with_anatomy(volume[:1])) == [0]
    assert len(frames_with_anatomy(np.zeros((3, 32, 32)))) == 3


class _MeanScorer(TriageScorer):
    """Scores a frame by how dark its centre is (so that empty end slices would win if they
    counted); every frame is at distance 1 from the training images, except all-dark ones at 9."""

    def __init__(self) -> None:
        self.info = {"kind": "oneclass", "size": 32, "threshold": 0.6, "ood_distance": 5.0}
        self.model = SimpleNamespace(card=ModelCard("mean", "none", task="triage"))
        self.domain = None

    def score_logits(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dark = 1.0 - frames[:, 12:20, 12:20].mean(axis=(1, 2), dtype=np.float64)
        return logit(dark), np.where(frames.max(axis=(1, 2)) < 0.2, 9.0, 1.0)


def test_a_volume_scores_by_its_most_abnormal_slice_with_anatomy(tmp_path: Path) -> None:
    volume = _head()
    volume[23, 24:40, 24:40] = 0.3        # a dark lesion in a slice just off the middle
    path = _nifti(tmp_path / "head.nii.gz", np.transpose(volume, (2, 1, 0)) * 1000, np.eye(4))
    scorer = _MeanScorer()
    (result,) = scorer.score_files([path])
    _, frames = triage_frames(read_image(path), 32)
    kept = frames_with_anatomy(np.stack([thumbnail(f) for f in frames]))
    scores, _ = scorer.score_frames(frames[kept])
    assert result.frame == 23 and result.frames == len(kept) < 41 and result.files == 1
    assert result.score == pytest.approx(scores.max()) and result.flag == int(scores.max() >= 0.6)
    # The dark end slices (distance 9) are not counted: the median distance is in the head.
    assert result.distance == 1.0 and result.ood == 0
    # Training reads the middle slice, the same as scoring reads it.
    np.testing.assert_array_equal(triage_frame(read_image(path), 32),
                                  triage_frames(read_image(path), 32, index=[20])[1][0])


def test_long_series_are_sampled_evenly(tmp_path: Path) -> None:
    volume = np.zeros((8, 8, MAX_FRAMES + 100))
    path = _nifti(tmp_path / "long.nii", volume, np.eye(4))
    index, frames = triage_frames(read_image(path), 16)
    assert len(index) == MAX_FRAMES == len(frames) and index[0] == 0
    assert index[-1] == MAX_FRAMES + 99 and np.all(np.diff(index) >= 1)


def _dicom(path: Path, pixels: np.ndarray, study: str, modality: str = "OT") -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"        # Secondary Capture
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.PatientID = modality, "P1"
    ds.set_pixel_data((pixels * 4095).astype(np.uint16), "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_files_of_one_study_make_one_worklist_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    study_a, study_b = generate_uid(), generate_uid()
    body = 0.2 + 0.6 * (np.hypot(*np.mgrid[-16:16, -16:16]) < 14)
    dark = body.copy()
    dark[10:20, 10:20] = 0.25
    files = [_dicom(tmp_path / "a1.dcm", body + 0.01 * rng.random(body.shape), study_a),
             _dicom(tmp_path / "b1.dcm", body, study_b),
             _dicom(tmp_path / "a2.dcm", dark, study_a)]
    assert pydicom.dcmread(files[2]).StudyInstanceUID == study_a
    scorer = _MeanScorer()
    by_file = scorer.score_files(files)
    by_study = scorer.score_files(files, by_study=True)
    assert [r.path for r in by_file] == [str(f) for f in files]
    assert [(r.study, r.files, r.frames) for r in by_study] == [(study_a, 2, 2), (study_b, 1, 1)]
    # Study a scores by its darker file, a2.
    assert by_study[0].path == str(files[2])
    assert by_study[0].score == max(by_file[0].score, by_file[2].score) == by_file[2].score
    assert by_study[1].score == by_file[1].score


def test_triage_cli_groups_a_study_unless_told_otherwise(tmp_path: Path) -> None:
    import csv

    from typer.testing import CliRunner

    from medenhance.cli import app

    study = generate_uid()
    body = 0.2 + 0.6 * (np.hypot(*np.mgrid[-32:32, -32:32]) < 28)
    files = [str(_dicom(tmp_path / f"s{i}.dcm", np.roll(body, 3 * i, axis=1), study))
             for i in range(3)]
    runner = CliRunner()
    out = runner.invoke(app, ["triage", *files, "-m", "mri-triage", "-o",
                              str(tmp_path / "studies.csv")])
    assert out.exit_code == 0, out.output
    assert "1 study (3 files) scored with mri-triage" in out.output
    (row,) = list(csv.DictReader(open(tmp_path / "studies.csv")))
    assert row["study"] == study and row["files"] == "3" and row["path"] in files
    out = runner.invoke(app, ["triage", *files, "-m", "mri-triage", "--by-file", "-o",
                              str(tmp_path / "files.csv")])
    assert out.exit_code == 0 and "3 studies scored" in out.output
    rows = list(csv.DictReader(open(tmp_path / "files.csv")))
    assert sorted(r["path"] for r in rows) == files and {r["study"] for r in rows} == {study}
    # The study's score is that of its highest-scored file.
    assert float(row["score"]) == max(float(r["score"]) for r in rows)
    # A copy of the series elsewhere was counted again: 6 files, frames 6, without a word.
    copies = tmp_path / "copy"
    copies.mkdir()
    for f in files:
        (copies / Path(f).name).write_bytes(Path(f).read_bytes())
    out = runner.invoke(app, ["triage", *files, str(copies), "-m", "mri-triage", "-o",
                              str(tmp_path / "copies.csv")])
    assert out.exit_code == 0 and "1 study (3 files)" in out.output, out.output
    assert "3 file(s) repeat an image already read and were counted once" in out.output
    (again,) = list(csv.DictReader(open(tmp_path / "copies.csv")))
    assert again["score"] == row["score"] and again["frames"] == row["frames"]


def test_triage_cli_guards_its_inputs_and_outputs(tmp_path: Path) -> None:
    import csv

    from typer.testing import CliRunner

    from medenhance.cli import app

    body = 0.2 + 0.6 * (np.hypot(*np.mgrid[-32:32, -32:32]) < 28)
    images = tmp_path / "in"
    images.mkdir()
    files = [_dicom(images / f"s{i}.dcm", np.roll(body, 3 * i, axis=0), generate_uid())
             for i in range(3)]
    runner = CliRunner()

    def triage(*args: object):
        return runner.invoke(app, ["triage", "-m", "mri-triage", *map(str, args)])

    # The worklist never replaces an input, even with --overwrite; -o takes a file name.
    before = files[0].read_bytes()
    out = triage(images, "-o", files[0], "--overwrite")
    assert out.exit_code == 1 and "is one of the input images" in out.output
    assert files[0].read_bytes() == before
    # A folder, existing or written with a trailing slash, gets worklist.csv; - is stdout.
    (tmp_path / "lists").mkdir()
    for given, written in [(tmp_path / "lists", tmp_path / "lists" / "worklist.csv"),
                           (f"{tmp_path / 'new'}/", tmp_path / "new" / "worklist.csv")]:
        out = triage(images, "-o", given)
        assert out.exit_code == 0 and f"worklist{written}" in "".join(out.output.split())
        assert len(list(csv.DictReader(open(written)))) == 3
    assert not (tmp_path / "new").is_file()
    out = triage(images, "-o", "-")
    assert out.exit_code == 0, out.output
    assert "worklist on standard output" in out.stderr and "scored" not in out.stdout
    rows = list(csv.DictReader(out.stdout.splitlines()))
    assert len(rows) == 3 and rows[0]["rank"] == "1" and not (Path.cwd() / "-").exists()
    # Heatmaps never go among the inputs, and a rerun leaves only its own pictures.
    out = triage(images, "-o", tmp_path / "w.csv", "--heatmaps", images, "--overwrite")
    assert out.exit_code == 1 and "holds input images" in out.output
    heat = tmp_path / "heat"
    heat.mkdir()
    (heat / "0099_old_study.png").write_bytes(b"stale")
    out = triage(images, images / "s1.dcm", "-o", tmp_path / "w.csv", "--heatmaps", heat,
                 "--overwrite")
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(open(tmp_path / "w.csv", newline="")))
    assert len(rows) == 3 and {r["frames"] for r in rows} == {"1"}   # s1 given twice: once
    assert "\r" not in (tmp_path / "w.csv").read_text()
    pngs = sorted(p.name for p in heat.glob("*.png"))
    assert "0099_old_study.png" not in pngs
    assert len(pngs) == sum(r["flag"] == "1" for r in rows)
    # Nothing readable: no worklist, and the summary says so.
    empty = tmp_path / "empty"
    empty.mkdir()
    out = triage(empty, "-o", tmp_path / "none.csv")
    assert out.exit_code == 1 and "no worklist written" in out.output
    assert not (tmp_path / "none.csv").exists()


def test_an_empty_volume_is_said_to_be_empty(tmp_path: Path) -> None:
    """An all-zero volume was "out of distribution" with frames 10, like a real outlier."""
    empty = _nifti(tmp_path / "zeros.nii.gz", np.zeros((32, 32, 10)), np.eye(4))
    head = _nifti(tmp_path / "head.nii.gz", np.transpose(_head(), (2, 1, 0)) * 1000, np.eye(4))
    results = {Path(r.path).name: r for r in TriageScorer("mri-triage").score_files([empty, head])}
    assert results["zeros.nii.gz"].empty and results["zeros.nii.gz"].ood == 1
    assert not results["head.nii.gz"].empty


def test_files_of_another_modality_do_not_count_in_a_study_of_the_models_own(
        tmp_path: Path) -> None:
    """One CT file in an MR study put the whole study out of distribution and still counted."""
    study, alone = generate_uid(), generate_uid()
    body = 0.2 + 0.6 * (np.hypot(*np.mgrid[-32:32, -32:32]) < 28)
    mr = _dicom(tmp_path / "mr.dcm", body, study, "MR")
    ct = _dicom(tmp_path / "ct.dcm", body[::-1] * 0.3, study, "CT")
    ct_alone = _dicom(tmp_path / "ct2.dcm", body, alone, "CT")
    scorer = TriageScorer("mri-triage")
    mixed, only_ct = scorer.score_files([mr, ct, ct_alone], by_study=True)
    (mr_alone,) = scorer.score_files([mr])
    assert mixed.files == 2 and mixed.foreign_modality == "" and mixed.path == str(mr)
    assert mixed.score == pytest.approx(mr_alone.score, abs=1e-6) and mixed.ood == mr_alone.ood
    assert only_ct.foreign_modality == "CT" and only_ct.ood == 1


def test_dicom_objects_without_an_image_are_skipped_with_a_note(tmp_path: Path) -> None:
    """A dose report in an MR study headed the worklist as "unreadable", with exit status 1."""
    import csv

    from typer.testing import CliRunner

    from medenhance.cli import app

    study = generate_uid()
    body = 0.2 + 0.6 * (np.hypot(*np.mgrid[-32:32, -32:32]) < 28)
    _dicom(tmp_path / "mr.dcm", body, study, "MR")
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"      # X-Ray Radiation Dose SR
    report.SOPInstanceUID, report.StudyInstanceUID = generate_uid(), study
    report.Modality = "SR"
    report.save_as(tmp_path / "dose.dcm", enforce_file_format=True)
    out = CliRunner().invoke(app, ["triage", str(tmp_path), "-m", "mri-triage", "-o",
                                   str(tmp_path / "w.csv")])
    assert out.exit_code == 0, out.output
    assert "1 DICOM object(s) without an image" in " ".join(out.output.split())
    rows = list(csv.DictReader(open(tmp_path / "w.csv")))
    assert [Path(r["path"]).name for r in rows] == ["mr.dcm"]
    # Only a report this time: the worklist is rewritten empty, not left from the last run.
    out = CliRunner().invoke(app, ["triage", str(tmp_path / "dose.dcm"), "-m", "mri-triage",
                                   "-o", str(tmp_path / "w.csv"), "--overwrite"])
    assert out.exit_code == 0 and list(csv.DictReader(open(tmp_path / "w.csv"))) == []


def test_noisy_end_slices_do_not_count_with_frames_on_their_own_range(tmp_path: Path) -> None:
    """Spreading each frame over its own range made the noise of a volume's empty end slices
    as bright as anatomy: the study was scored on its noise slices only (a reviewer's case)."""
    from medenhance.triage.score import TriageScorer

    rng = np.random.default_rng(0)
    disk = np.hypot(*np.mgrid[-48:48, -48:48]) < 36
    volume = rng.normal(200, 10, (12, 96, 96))
    volume[3:9] += 1500 * disk
    np.save(tmp_path / "vol.npy", volume.astype(np.uint16))
    scorer = TriageScorer("mri-triage")
    scorer.info = {**scorer.info, "frame_range": "own"}
    (result,) = scorer.score_files([tmp_path / "vol.npy"])
    assert result.frames == 6 and 3 <= result.frame <= 8


def test_a_thumbnail_in_a_study_does_not_count_and_a_study_of_thumbnails_is_marked(
        tmp_path: Path) -> None:
    """Files too small for the model (here under 16 px, half its input) are left out of their
    study's score, as files of another modality are; a study of only those is out of
    distribution, with their size."""
    body = 0.2 + 0.6 * (np.hypot(*np.mgrid[-16:16, -16:16]) < 14)
    thumb = np.full((12, 12), 0.8)
    thumb[3:9, 3:9] = 0.1             # dark in the centre: the highest score, if it counted
    mixed, alone = generate_uid(), generate_uid()
    files = [_dicom(tmp_path / "full.dcm", body, mixed),
             _dicom(tmp_path / "thumb.dcm", thumb, mixed),
             _dicom(tmp_path / "only.dcm", thumb, alone)]
    scorer = _MeanScorer()
    study, only = scorer.score_files(files, by_study=True)
    (full,) = scorer.score_files(files[:1])
    assert study.files == 2 and study.path == str(files[0]) and study.score == full.score
    assert study.ood == 0 and study.too_small == ""
    assert only.ood == 1 and only.too_small == "12x12"
    assert only.reading_note("MR").startswith("too small (12x12 pixels)")
    # A study of thumbnails of several sizes names each size once.
    several = generate_uid()
    sizes = [_dicom(tmp_path / f"t{i}.dcm", np.pad(thumb, pad), several)
             for i, pad in enumerate([0, ((0, 0), (1, 1)), 0])]
    (mixed_sizes,) = scorer.score_files(sizes, by_study=True)
    assert mixed_sizes.ood == 1 and mixed_sizes.too_small == "12x12, 12x14"


def test_one_picture_gets_one_score_whichever_batch_it_is_scored_in(tmp_path: Path) -> None:
    """A float32 network's score depends (in its last digits) on the batch it is scored in;
    copies of one picture must not sort apart by it, so each distinct input is scored once."""
    rng = np.random.default_rng(3)
    picture = rng.random((32, 32))
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}-copy.npy")
        np.save(paths[-1], picture)
        paths.append(tmp_path / f"{i}-other.npy")
        np.save(paths[-1], rng.random((32, 32)))
    paths.append(tmp_path / "last-copy.npy")          # in the last batch, of 2 files
    np.save(paths[-1], picture)
    calls: list[int] = []

    class BatchSensitive(_MeanScorer):
        def score_logits(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            calls.append(len(frames))
            dark, dist = super().score_logits(frames)
            return dark + 1e-5 * len(frames), dist      # as a batch's size moves float32 sums

    results = BatchSensitive().score_files(paths, batch=3)
    copies = {r.score for r in results if r.path.endswith("-copy.npy")}
    assert len(copies) == 1 and len(results) == 11
    assert sum(calls) == 6          # the picture once, the five others once each
