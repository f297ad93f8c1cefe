"""Dataset preparation: filtering, orientation, sizing and the patient-level split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medenhance.data import PrepareOptions, foreground_fraction, prepare_dataset, read_manifest
from medenhance.errors import DatasetError


def _make_tree(root: Path, patients: int = 12, per_patient: int = 3) -> None:
    rng = np.random.default_rng(0)
    for p in range(patients):
        label = "NORMAL" if p % 2 else "PNEUMONIA"
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_patient):
            img = rng.integers(60, 255, size=(40, 60), dtype=np.uint8)  # landscape, bright
            Image.fromarray(img).save(folder / f"person{p}_img{k}.png")
    dark = np.zeros((40, 40), np.uint8)
    dark[:10, :10] = 200  # 6 % foreground
    Image.fromarray(dark).save(root / "NORMAL" / "person99_dark.png")
    (root / "NORMAL" / "person98_broken.png").write_bytes(b"not a png")


def test_foreground_fraction() -> None:
    x = np.zeros((10, 10))
    x[:5] = 0.5
    assert foreground_fraction(x) == 0.5


def test_prepare_filters_rotates_resizes_and_splits_by_patient(tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    opts = PrepareOptions(size=(32, 24), rotate_portrait=True, seed=3,
                          patient_regex=r"(person\d+)_", split=(0.5, 0.25, 0.25))
    result = prepare_dataset([tmp_path / "src"], tmp_path / "out", opts)
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 36 == len(result.kept)
    reasons = {Path(r["source"]).name: r["reason"] for r in result.excluded}
    assert "foreground" in reasons["person99_dark.png"]
    assert "person98_broken.png" in reasons
    for r in rows:
        arr = np.load(tmp_path / "out" / r["path"])
        assert arr.shape == (32, 24) and arr.dtype == np.float32
        assert r["rotated"] == "1" and r["label"] in ("NORMAL", "PNEUMONIA")
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    counts = result.counts()
    assert counts["train"] == 18 and counts["val"] + counts["test"] == 18


def test_same_seed_same_split_other_seed_differs(tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")

    def split(seed: int, out: str) -> dict[str, str]:
        opts = PrepareOptions(seed=seed, patient_regex=r"(person\d+)_")
        prepare_dataset([tmp_path / "src"], tmp_path / out, opts)
        return {r["patient_id"]: r["split"] for r in read_manifest(tmp_path / out)}

    first = split(1, "a")
    assert split(1, "b") == first
    assert split(2, "c") != first


def test_patient_ids_from_csv_and_crop(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        Image.fromarray(np.full((50, 30), 128 + i, np.uint8)).save(src / f"{i:03d}.png")
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image Index", "Patient ID"])
        for i in range(6):
            w.writerow([f"{i:03d}.png", f"P{i // 2}"])
    opts = PrepareOptions(size=(20, 20), fit="crop", patient_csv=tmp_path / "labels.csv")
    prepare_dataset([src], tmp_path / "out", opts)
    rows = read_manifest(tmp_path / "out")
    assert {r["patient_id"] for r in rows} == {"P0", "P1", "P2"}
    assert len({(r["patient_id"], r["split"]) for r in rows}) == 3


def test_existing_manifest_is_kept(tmp_path: Path) -> None:
    _make_tree(tmp_path / "src", patients=2)
    prepare_dataset([tmp_path / "src"], tmp_path / "out", PrepareOptions())
    before = (tmp_path / "out" / "manifest.csv").read_bytes()
    with pytest.raises(DatasetError, match="exists"):
        prepare_dataset([tmp_path / "src"], tmp_path / "out", PrepareOptions())
    assert (tmp_path / "out" / "manifest.csv").read_bytes() == before


@pytest.mark.parametrize("opts,match", [
    (PrepareOptions(split=(0.5, 0.5, 0.5)), "sum"),
    (PrepareOptions(min_foreground=2), "min_foreground"),
    (PrepareOptions(patient_regex="person"), "group"),
    (PrepareOptions(fit="zoom"), "fit"),
    (PrepareOptions(size=(100000, 100000)), r"size \(--size\) must be .* of 8 to 8192"),
    (PrepareOptions(output_format="jpg"), r"output_format \(--format\)"),
])
def test_bad_options(tmp_path: Path, opts: PrepareOptions, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        prepare_dataset([tmp_path], tmp_path / "out", opts)


def test_everything_excluded_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "src" / "black.png")
    with pytest.raises(DatasetError, match="no image kept"):
        prepare_dataset([tmp_path / "src"], tmp_path / "out", PrepareOptions())


def test_nih_patient_split_from_labels(shared: Path, tmp_path: Path) -> None:
    nih = shared / "xray-chest-nih14-1024"
    files = sorted((nih / "images").glob("*.png"))[:6]
    opts = PrepareOptions(size=(64, 64), patient_csv=nih / "labels.csv", min_foreground=0.3)
    result = prepare_dataset(files, tmp_path / "out", opts)
    assert all(r["patient_id"] for r in result.kept)
    assert len(result.kept) + len(result.excluded) == 6


def test_a_dicom_missing_from_the_patient_csv_keeps_its_own_patient_id(samples: Path,
                                                                      tmp_path: Path) -> None:
    import pydicom

    src = tmp_path / "src"
    src.mkdir()
    (src / "mr.dcm").write_bytes((samples / "mr_head_MR1_JPLL.dcm").read_bytes())
    Image.fromarray(np.full((50, 30), 128, np.uint8)).save(src / "000.png")
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["Image Index", "Patient ID"], ["000.png", "P0"]])
    opts = PrepareOptions(patient_csv=tmp_path / "labels.csv", min_foreground=0)
    prepare_dataset([src], tmp_path / "out", opts)
    ids = {Path(r["source"]).name: r["patient_id"] for r in read_manifest(tmp_path / "out")}
    assert ids == {"000.png": "P0",
                   "mr.dcm": str(pydicom.dcmread(src / "mr.dcm").PatientID).strip()}
