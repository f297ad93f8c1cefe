"""Turn a folder tree of images into a training-ready dataset: filter, orient, resize, split.

Steps, per image (each frame of a multi-frame file or volume counts as one image; a NIfTI volume's
slices as viewers show them, see :func:`..io.display_frames`):

1. read it (any supported format) and map it to [0, 1] by the intensity contract;
2. drop it if its *foreground fraction* (pixels brighter than ``background_level``) is below
   ``min_foreground`` (default 60 %): mostly-black frames, empty slices, collimator borders;
3. optionally rotate landscape images to portrait (90 degrees counter-clockwise);
4. optionally resize (``fit="resize"``, aspect not kept) or scale-and-centre-crop
   (``fit="crop"``) to ``size = (H, W)``;
5. assign it to train / val / test **by patient**: every image of a patient lands in the same split.
   The patient id comes from a CSV column or a regular expression on the file name, and where
   they give none, from DICOM (0010,0020) *Patient ID*; images without one are their own patient
   (a warning says so). The split is a
   seeded permutation of the sorted patient ids: the same seed and files give the same split.

The output folder gets ``images/`` (float32 ``.npy`` on [0, 1], or 16-bit PNG), ``manifest.csv``
(one row per kept image) and ``excluded.csv`` (one row per dropped or unreadable file, with reason).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..degrade.resolution import resize
from ..errors import DatasetError, MedEnhanceError, NotAnImageError
from ..image import ImageMeta, IntensityWindow, MedicalImage
from ..io import display_frames, find_images, read_image, stem, write_image

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Largest image side `prepare` makes (a 16384-pixel square is 1 GiB of float32 per image).
MAX_SIZE = 8192


@dataclass
class PrepareOptions:
    """Settings of :func:`prepare_dataset` (see the module docstring)."""

    min_foreground: float = 0.6
    background_level: float = 0.04
    rotate_portrait: bool = False
    size: tuple[int, int] | None = None
    fit: str = "resize"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    patient_regex: str | None = None
    patient_csv: Path | None = None
    csv_file_column: str = "Image Index"
    csv_patient_column: str = "Patient ID"
    output_format: str = "npy"
    overwrite: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.min_foreground <= 1.0:
            raise DatasetError(f"min_foreground (--min-foreground) must be in [0, 1], got "
                               f"{self.min_foreground}")
        if not 0.0 <= self.background_level < 1.0:
            raise DatasetError(f"background_level (--background-level) must be in [0, 1), got "
                               f"{self.background_level}")
        if self.fit not in ("resize", "crop"):
            raise DatasetError(f"fit (--fit) must be 'resize' or 'crop', got {self.fit!r}")
        # The upper limit keeps a typo (100000) from filling the memory of a shared machine.
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 8
                                      or max(self.size) > MAX_SIZE):
            raise DatasetError(f"size (--size) must be (height, width) of 8 to {MAX_SIZE} pixels, "
                               f"got {self.size}")
        if len(self.split) != 3 or min(self.split) < 0 or not np.isclose(sum(self.split), 1.0):
            raise DatasetError(f"split (--split) must be three fractions summing to 1, got "
                               f"{self.split}")
        if self.output_format not in ("npy", "png"):
            raise DatasetError(f"output_format (--format) must be 'npy' or 'png', got "
                               f"{self.output_format!r}")
        if self.patient_regex is not None:
            try:
                pattern = re.compile(self.patient_regex)
            except re.error as exc:
                raise DatasetError(f"patient regex {self.patient_regex!r}: {exc}") from None
            if pattern.groups < 1:
                raise DatasetError(f"patient regex {self.patient_regex!r} needs a (group) "
                                   "that captures the patient id")


@dataclass
class PrepareResult:
    manifest: Path
    kept: list[dict[str, object]] = field(default_factory=list)
    excluded: list[dict[str, object]] = field(default_factory=list)
    #: Messages of the files that could not be read (also in ``excluded``, with the dropped).
    unreadable: list[str] = field(default_factory=list)
    #: DICOM objects without an image (a dose report, a presentation state; also in
    #: ``excluded``).
    not_images: list[str] = field(default_factory=list)
    #: Files read (readable or not).
    files: int = 0

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for r in self.kept if r["split"] == s) for s in SPLITS}


def foreground_fraction(pixels: np.ndarray, background_level: float = 0.04) -> float:
    """Fraction of pixels brighter than ``background_level`` (on the [0, 1] scale)."""
    return float(np.mean(np.asarray(pixels) > background_level))


def fit_to_size(frame: np.ndarray, size: tuple[int, int], fit: str) -> np.ndarray:
    """Resize (stretch) or scale-to-cover and centre-crop ``frame`` to ``size = (H, W)``."""
    h, w = frame.shape
    if fit == "resize":
        out = resize(frame, size, "bicubic")
    else:
        scale = max(size[0] / h, size[1] / w)
        new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
        scaled = resize(frame, new, "bicubic") if new != (h, w) else frame
        top, left = (new[0] - size[0]) // 2, (new[1] - size[1]) // 2
        out = scaled[top: top + size[0], left: left + size[1]]
    return np.clip(out, 0.0, 1.0)


def _csv_patients(options: PrepareOptions) -> dict[str, str]:
    if options.patient_csv is None:
        return {}
    path = Path(options.patient_csv)
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            for col in (options.csv_file_column, options.csv_patient_column):
                if col not in columns:
                    raise DatasetError(f"{path}: no column {col!r}; columns are {columns}")
            return {stem(row[options.csv_file_column]): row[options.csv_patient_column].strip()
                    for row in reader}
    except OSError as exc:
        raise DatasetError(f"{path}: {exc.strerror}") from None


def _patient_id(path: Path, image: MedicalImage, options: PrepareOptions,
                table: dict[str, str]) -> str | None:
    """The CSV's or the regular expression's id; where they have none, the DICOM Patient ID."""
    if options.patient_csv is not None and table.get(stem(path)):
        return table[stem(path)]
    if options.patient_regex is not None:
        match = re.search(options.patient_regex, path.name)
        if match:
            return match.group(1)
    header = image.meta.header
    if image.meta.source_format == "dicom" and header is not None:
        value = str(header.get("PatientID", "") or "").strip()
        return value or None
    return None


def split_patients(patients: dict[str, int], fractions: tuple[float, float, float],
                   seed: int) -> dict[str, str]:
    """Assign each patient (id -> image count) to a split; images, not patients, meet fractions."""
    ids = sorted(patients)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    total = sum(patients.values())
    bounds = np.cumsum(fractions) * total
    assignment: dict[str, str] = {}
    seen = 0
    for pid in order:
        # The split whose share of images the patient's midpoint falls into.
        mid = seen + patients[pid] / 2
        assignment[pid] = SPLITS[min(int(np.searchsorted(bounds, mid, side="right")), 2)]
        seen += patients[pid]
    return assignment


def prepare_dataset(sources: Iterable[str | Path], output: str | Path,
                    options: PrepareOptions | None = None,
                    progress: Callable[[list[Path]], Iterable[Path]] | None = None
                    ) -> PrepareResult:
    """Prepare a dataset from folders/files into ``output`` (see the module docstring).

    Raises
    ------
    DatasetError
        Bad options, no images found, an existing manifest (unless ``overwrite``), or every image
        excluded.
    """
    opts = options or PrepareOptions()
    opts.validate()
    out = Path(output)
    manifest = out / "manifest.csv"
    if manifest.exists() and not opts.overwrite:
        raise DatasetError(f"{manifest} exists; choose another output folder or pass --overwrite")
    roots = [Path(s) for s in sources]
    for root in roots:
        r, o = root.resolve(), out.resolve()
        if r == o or r in o.parents or o in r.parents:
            raise DatasetError(f"{out}: the output folder must not contain, or lie inside, the "
                               f"input {root}")
    skipped: list[Path] = []
    files = find_images(roots, skipped=skipped)
    table = _csv_patients(opts)
    kept: list[dict[str, object]] = []
    # Every file left out is listed, those that are no image to read too (notes.txt was not).
    excluded: list[dict[str, object]] = [
        {"source": str(f), "frame": "", "reason": "not recognised as an image (no known suffix, "
         "and not DICOM)"} for f in skipped]
    if manifest.exists():
        # --overwrite: the images of the dataset replaced go with it (39 stale files stayed
        # beside a new manifest of 1 row). Only what its manifest lists, inside the folder.
        try:
            earlier = read_manifest(manifest)
        except DatasetError:
            earlier = []
        for row in earlier:
            old = (out / row.get("path", "")).resolve()
            if out.resolve() in old.parents and old.is_file():
                old.unlink()
    unreadable: list[str] = []
    not_images: list[str] = []
    # Rows only: each frame is written as soon as it is ready, so memory does not grow with
    # the dataset (the output path does not depend on the split, which needs all patients).
    frames_out: list[dict[str, object]] = []
    used_names: set[str] = set()
    suffix = ".npy" if opts.output_format == "npy" else ".png"
    for path in (progress(files) if progress else files):
        root = next((r for r in roots if r.is_dir() and r in path.parents), path.parent)
        rel = path.relative_to(root)
        try:
            image = read_image(path)
        except MedEnhanceError as exc:
            excluded.append({"source": str(path), "frame": "", "reason": str(exc)})
            # A dose report in a PACS export is no fault of the batch.
            (not_images if isinstance(exc, NotAnImageError) else unreadable).append(str(exc))
            continue
        pid = _patient_id(path, image, opts, table)
        frames = display_frames(image)
        for k, frame in enumerate(frames):
            fg = foreground_fraction(frame, opts.background_level)
            if fg < opts.min_foreground:
                excluded.append({"source": str(path), "frame": k, "reason":
                                 f"foreground {fg:.1%} below {opts.min_foreground:.0%}"})
                continue
            rotated = False
            if opts.rotate_portrait and frame.shape[1] > frame.shape[0]:
                frame, rotated = np.rot90(frame), True
            if opts.size is not None:
                frame = fit_to_size(frame, opts.size, opts.fit)
            name = stem(rel) + (f"_f{k:03d}" if len(frames) > 1 else "")
            key = str(rel.parent / name)
            if key in used_names:  # a.png and a.dcm side by side: keep both, apart
                name = f"{name}_{(path.suffix or 'dcm').lstrip('.')}"
            used_names.add(str(rel.parent / name))
            rel_out = Path("images") / rel.parent / (name + suffix)
            meta = ImageMeta(source_format="npy" if suffix == ".npy" else "png",
                             window=IntensityWindow(0.0, 1.0 if suffix == ".npy" else 65535.0),
                             stored_dtype="float32" if suffix == ".npy" else "uint16",
                             modality=image.meta.modality)
            write_image(MedicalImage(frame.astype(np.float32), meta), out / rel_out,
                        overwrite=opts.overwrite)
            frames_out.append({
                # Absolute (links kept): evaluate-triage follows it from any folder.
                "path": rel_out.as_posix(), "source": str(path.absolute()), "frame": k,
                "patient_id": pid or "", "split": "",
                "label": rel.parent.name if rel.parent != Path(".") else "",
                "height": frame.shape[0], "width": frame.shape[1], "foreground": round(fg, 4),
                "rotated": int(rotated), "modality": image.meta.modality or ""})
    if not frames_out:
        _write_rows(out / "excluded.csv", excluded, ["source", "frame", "reason"])
        raise DatasetError(f"no image kept from {', '.join(map(str, roots))}: all {len(excluded)} "
                           f"were excluded (see {out / 'excluded.csv'})")
    missing = sum(1 for r in frames_out if not r["patient_id"])
    if missing:
        logger.warning("%d image(s) have no patient id; each is treated as its own patient", missing)
        for r in frames_out:
            if not r["patient_id"]:
                r["patient_id"] = f"file:{r['source']}"
    counts: dict[str, int] = {}
    for r in frames_out:
        counts[str(r["patient_id"])] = counts.get(str(r["patient_id"]), 0) + 1
    assignment = split_patients(counts, opts.split, opts.seed)
    for row in frames_out:
        row["split"] = assignment[str(row["patient_id"])]
        kept.append(row)
    _write_rows(manifest, kept, list(kept[0]))
    _write_rows(out / "excluded.csv", excluded, ["source", "frame", "reason"])
    return PrepareResult(manifest=manifest, kept=kept, excluded=excluded, unreadable=unreadable,
                         not_images=not_images, files=len(files))


def _write_rows(path: Path, rows: list[dict[str, object]], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def read_manifest(path: str | Path, split: str | None = None) -> list[dict[str, str]]:
    """Rows of a manifest written by :func:`prepare_dataset`, optionally of one split."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.csv"
    try:
        with open(p, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DatasetError(f"{p}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error):
        raise DatasetError(f"{p}: not a manifest (not a CSV text file)") from None
    missing = [c for c in ("path", *(("split",) if split is not None else ()))
               if rows and c not in rows[0]]
    if missing:
        raise DatasetError(f"{p}: not a medenhance manifest (no {', '.join(missing)} "
                           "column; make one with `medenhance prepare`)")
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    return rows
