"""Labelled images for triage: folders ``ROOT/<label>/...``, or a dataset made by ``medenhance
prepare`` (its ``manifest.csv``: path, label, patient and split of every image); normal labels -> 0,
others -> 1.

Every image is read with the foundation's readers (any format), its middle frame (a volume's in
display orientation) resized to ``size`` x ``size`` on the [0, 1] scale. Patient ids, for splits
that keep a patient's images together, come from a regular expression on the file name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import exposure
from skimage.filters import threshold_otsu

from ..degrade.resolution import resize
from ..errors import ConfigError, DatasetError, MedEnhanceError
from ..image import MedicalImage
from ..io import display_frames, find_images, read_image


#: Most frames of one file that triage scores (a cine loop or a long series is sampled evenly).
MAX_FRAMES = 256


def _squared(frame: np.ndarray) -> np.ndarray:
    """A non-square frame centred in a square of its background (1st percentile, as
    :func:`crop_to_content` fills), so that resizing keeps the anatomy's proportions."""
    h, w = frame.shape
    if h == w:
        return frame
    side = max(h, w)
    square = np.full((side, side), np.percentile(frame, 1), dtype=frame.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    square[top: top + h, left: left + w] = frame
    return square


def _sized(frame: np.ndarray, size: int, keep_aspect: bool = False) -> np.ndarray:
    if keep_aspect:
        frame = _squared(frame)
    if frame.shape != (size, size):
        frame = resize(frame, (size, size), "area" if min(frame.shape) > size else "bicubic")
    return np.clip(frame, 0.0, 1.0).astype(np.float32)


def triage_frame(image: MedicalImage, size: int, keep_aspect: bool = False) -> np.ndarray:
    """The frame a triage model is trained on, as float32 ``(size, size)`` in [0, 1]: the middle
    one (of a volume, in display orientation); the model's own preprocessing
    (:func:`model_inputs`) comes after. A non-square frame is squeezed into the square, as the
    Kermany radiographs were before they reached us, or with ``keep_aspect`` (models that crop
    to the content, :func:`keeps_aspect`) centred in a square of its background first, so that
    a rectangular matrix does not squash the head that the crop then finds."""
    frames = display_frames(image)
    return _sized(np.ascontiguousarray(frames[len(frames) // 2]), size, keep_aspect)


def triage_frames(image: MedicalImage, size: int, index: Sequence[int] | None = None,
                  keep_aspect: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, frames)``: every frame a triage model scores in ``image`` (all, or
    :data:`MAX_FRAMES` evenly spaced), or those at ``index``, each as :func:`triage_frame`."""
    frames = display_frames(image)
    if index is None:
        index = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_FRAMES)
                                      ).round().astype(int))
    index = np.asarray(index, dtype=int)
    return index, np.stack([_sized(np.ascontiguousarray(frames[k]), size, keep_aspect)
                            for k in index])


def keeps_aspect(info: dict) -> bool:
    """Whether a triage model (its card's ``triage`` settings) reads frames keeping their aspect
    ratio: the models that crop to the content."""
    return bool(info.get("crop"))


def equalize_frame(frame: np.ndarray) -> np.ndarray:
    """Histogram-equalised frame (scikit-image, 1024 bins), float32 in [0, 1]: exposure and
    windowing, which differ between sites and scanners, no longer set the grey levels."""
    return exposure.equalize_hist(frame, nbins=1024).astype(np.float32)


#: Border kept around the content by :func:`crop_to_content`, as a fraction of its extent.
CROP_MARGIN = 0.04
#: A bright region smaller than this share of the frame's side is not the anatomy (a marker, a
#: hot pixel on a blank frame): :func:`crop_to_content` leaves such a frame as it is.
CROP_MIN_SIDE = 0.25


def crop_to_content(frame: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """The square around the largest bright region (the head, the body), resized to the frame's
    size: how much of the frame the anatomy fills then no longer depends on the scanner's field
    of view or the collimation.

    The region: the largest connected part of the lightly smoothed frame above half its Otsu
    threshold (half, so that dim tissue at the edge counts too). Where the square leaves the
    frame it is filled with the frame's 1st-percentile grey (the background), so anatomy that
    fills the frame is shrunk by the margin like any other: the anatomy always spans the same
    share of the output. A frame without such a region (blank, or only a small bright spot, see
    :data:`CROP_MIN_SIDE`) is returned unchanged. Frames are square in triage; another shape
    would be stretched to its own.
    """
    smooth = ndimage.gaussian_filter(frame.astype(np.float64), 1.5)
    if np.ptp(smooth) < 1e-6:
        return frame.astype(np.float32)
    labels, count = ndimage.label(smooth > 0.5 * threshold_otsu(smooth))
    if count == 0:
        return frame.astype(np.float32)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    rows = np.nonzero((labels == largest).any(axis=1))[0]
    cols = np.nonzero((labels == largest).any(axis=0))[0]
    extent = max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
    h, w = frame.shape
    if extent < CROP_MIN_SIDE * max(h, w):
        return frame.astype(np.float32)
    side = int(round(extent * (1 + 2 * margin)))
    top = int(round((rows[0] + rows[-1] + 1 - side) / 2))
    left = int(round((cols[0] + cols[-1] + 1 - side) / 2))
    square = np.full((side, side), np.percentile(frame, 1), np.float32)
    y0, y1, x0, x1 = max(top, 0), min(top + side, h), max(left, 0), min(left + side, w)
    square[y0 - top: y1 - top, x0 - left: x1 - left] = frame[y0:y1, x0:x1]
    if square.shape == frame.shape:
        return square
    method = "area" if side > max(h, w) else "bicubic"
    return np.clip(resize(square, (h, w), method), 0.0, 1.0).astype(np.float32)


def own_range(frames: np.ndarray) -> np.ndarray:
    """Each ``(N, H, W)`` frame spread over [0, 1] by its own lowest and highest value (a flat
    frame stays as it is)."""
    out = np.array(frames, dtype=np.float32)
    for frame in out:
        low, high = float(frame.min()), float(frame.max())
        if high - low > 1e-6:
            frame -= low
            frame /= high - low
    return out


#: ``frame_range`` values: ``own`` (lowest to highest value) or ``percentiles``
#: (:data:`RANGE_PERCENTILES`, :func:`percentile_range`).
FRAME_RANGES = ("own", "percentiles")
#: The percentiles that ``frame_range: percentiles`` maps to 0 and 1.
RANGE_PERCENTILES = (1.0, 99.0)


def percentile_range(frames: np.ndarray) -> np.ndarray:
    """Each ``(N, H, W)`` frame spread over [0, 1] by its :data:`RANGE_PERCENTILES` and clipped
    there: a burnt-in marker, a label or a collimator edge brighter or darker than the anatomy
    (under 1 % of the pixels, 164 of 16384 at 128 x 128) does not set the scale of its grey
    levels, as it does for :func:`own_range`. A frame whose percentiles meet falls back to its
    own range."""
    out = own_range(frames)
    for frame in out:
        low, high = (float(v) for v in np.percentile(frame, RANGE_PERCENTILES))
        if high - low > 1e-6:
            np.clip((frame - low) / (high - low), 0.0, 1.0, out=frame)
    return out


def model_inputs(frames: np.ndarray, info: dict) -> np.ndarray:
    """Frames as read (:func:`triage_frame`) -> what the network sees, by the preprocessing
    recorded in a triage model's card (``frame_range``, ``crop``, then ``equalize``).

    ``frame_range: own`` (models trained since it exists) spreads each frame over its own range
    first: the intensity contract keeps 8-bit data on 0..255 but stretches wider integers to
    their min..max, so one radiograph scored 0.335 as an 8-bit PNG and 0.203 as a 16-bit one,
    and a slice of a volume took the volume's range. Older cards keep the frames as read, as
    their models were trained. ``frame_range: percentiles``: :func:`percentile_range`."""
    if info.get("frame_range") == "own":
        frames = own_range(frames)
    elif info.get("frame_range") == "percentiles":
        frames = percentile_range(frames)
    elif info.get("frame_range") is not None:      # a card of a newer version: not guessed
        raise ConfigError(f"frame_range {info['frame_range']!r} is not known to this version "
                          f"(known: {', '.join(FRAME_RANGES)})")
    if info.get("crop"):
        frames = np.stack([crop_to_content(f) for f in frames])
    if info.get("equalize"):
        frames = np.stack([equalize_frame(f) for f in frames])
    return np.asarray(frames, dtype=np.float32)


@dataclass
class LabelledImages:
    images: np.ndarray                      # (N, size, size) float32
    labels: np.ndarray                      # (N,) 0 normal / 1 abnormal
    paths: list[Path]
    patients: list[str]
    classes: list[str]                      # the folder label of each image
    failures: list[str] = field(default_factory=list)
    #: The split of each image given by a prepared dataset's manifest (None for folders).
    splits: list[str] | None = None
    #: ``(path, reason)`` of readable images left out: empty, too small, another modality, a
    #: copy of an image already read (both, where the copies carry different labels).
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: The smallest side (pixels) of the frames as read, before sizing to the model's input, of
    #: all the images read (a subset keeps its folder's).
    smallest_side: int = 0

    def subset(self, index: np.ndarray) -> LabelledImages:
        return LabelledImages(self.images[index], self.labels[index],
                              [self.paths[i] for i in index], [self.patients[i] for i in index],
                              [self.classes[i] for i in index],
                              splits=None if self.splits is None else
                              [self.splits[i] for i in index], smallest_side=self.smallest_side)


@dataclass
class LabelledFile:
    path: Path
    label: str
    patient: str | None = None              # from the manifest; folders: from the file name
    split: str | None = None                # from the manifest


def manifest_of(source: str | Path) -> Path | None:
    """The manifest of a prepared dataset, when ``source`` is one (a ``.csv`` file, or a folder
    holding ``manifest.csv``); None for a folder of label sub-folders."""
    p = Path(source)
    if p.is_dir():
        return p / "manifest.csv" if (p / "manifest.csv").is_file() else None
    return p if p.suffix.lower() == ".csv" else None


def labelled_files(source: str | Path, splits: Sequence[str] | None = None,
                   unlabelled: list[Path] | None = None) -> list[LabelledFile]:
    """The labelled images of ``source``: ``ROOT/<label>/...`` (the label is the first folder
    below ``ROOT``), or the rows of a prepared dataset's manifest (``splits``: only these).
    Images that lie in ``ROOT`` itself have no label: they are added to ``unlabelled``."""
    base = Path(source)
    manifest = manifest_of(base)
    if manifest is None:
        if not base.exists():
            raise DatasetError(f"{base}: no such folder or file")
        if not base.is_dir():
            raise DatasetError(f"{base}: not a folder of label sub-folders nor a prepared "
                               "dataset (manifest.csv)")
        found = find_images([base])
        files = [LabelledFile(f, f.relative_to(base).parts[0]) for f in found
                 if len(f.relative_to(base).parts) >= 2]
        if unlabelled is not None:
            unlabelled += [f for f in found if len(f.relative_to(base).parts) < 2]
        if not files:
            raise DatasetError(f"{base}: no images in label sub-folders (expected "
                               "ROOT/LABEL/image)")
        return files
    from ..data.prepare import read_manifest

    rows = read_manifest(manifest)
    if rows and "label" not in rows[0]:
        raise DatasetError(f"{manifest}: no 'label' column; taken for the manifest of a dataset "
                           "made by `medenhance prepare`, which has one")
    unlabelled = sum(1 for r in rows if not r["label"])
    if unlabelled:
        raise DatasetError(f"{manifest}: {unlabelled} of {len(rows)} rows have no label (prepare "
                           "a folder whose images lie in one sub-folder per label)")
    files = [LabelledFile(manifest.parent / r["path"], r["label"], r.get("patient_id") or None,
                          r.get("split") or None)
             for r in rows if splits is None or r.get("split") in splits]
    if not files and splits and rows and "split" not in rows[0]:
        raise DatasetError(f"{manifest}: no 'split' column (train, val, test); `medenhance "
                           "prepare` writes one, split by patient")
    if not files:
        have = sorted({r.get("split") or "" for r in rows})
        raise DatasetError(f"{manifest}: no rows in the {'/'.join(splits or [])} split (it has "
                           f"{have})")
    return files


#: Frames smaller than this (either side) are not pictures a triage model should learn from.
MIN_TRAINING_SIDE = 32


def frame_side(image: MedicalImage) -> int:
    """The smaller side, in pixels, of the frames a triage model reads from ``image``."""
    return int(min(display_frames(image).shape[-2:]))


def too_small(side: int, info: dict) -> bool:
    """Whether frames of ``side`` pixels must be enlarged for a triage model (its card's
    ``triage`` settings) more than twice as much as the smallest image of its training folder
    (training and validation splits) was: a
    thumbnail blown up to the model's size is blurred as nothing it learnt from (its
    acquisition-change measure goes to half resolution, no further). Cards without
    ``smallest_side`` assume :data:`MIN_TRAINING_SIDE`."""
    return side < min(int(info["size"]), int(info.get("smallest_side", MIN_TRAINING_SIDE))) / 2


def _left_out(image: MedicalImage, modality: str) -> str | None:
    """Why a readable image must not be learnt from, or None."""
    from ..models.card import foreign_modality

    other = foreign_modality(modality, image.meta.modality)
    if other:
        return f"modality {other}, the model is for {modality}"
    frames = display_frames(image)
    middle = frames[len(frames) // 2]
    if min(middle.shape) < MIN_TRAINING_SIDE:
        return f"too small ({middle.shape[0]}x{middle.shape[1]} pixels)"
    if np.ptp(middle) <= 1e-6:
        return "empty (one value throughout)"
    return None


def picture_key(frames: np.ndarray) -> str:
    """The same picture, whatever the file: a digest of the ``(N, H, W)`` triage frames' grey
    levels, each on its own range at 12 bits (an 8-bit and a 16-bit file of one picture agree,
    except where enlarging a small picture to the frame size rounds them apart).
    Training (:func:`load_labelled`) and evaluation (:mod:`.evaluate`) find copies by it."""
    levels = np.round(own_range(frames).astype(np.float64) * 4095).astype(np.uint16)
    return "pixels:" + hashlib.sha1(levels.tobytes()).hexdigest()


def _copy_key(image: MedicalImage, frame: np.ndarray) -> str:
    """A DICOM SOP Instance UID, else :func:`picture_key`."""
    uid = getattr(image.meta.header, "SOPInstanceUID", None)
    if uid:
        return f"uid:{uid}"
    return picture_key(frame[None])


def load_labelled(root: str | Path, normal_labels: Sequence[str], size: int, *,
                  patient_regex: str | None = None,
                  progress: Callable[[list[Path]], Iterable[Path]] | None = None,
                  modality: str = "any", keep_aspect: bool = False) -> LabelledImages:
    """Read the labelled images of ``root`` (:func:`labelled_files`; of a prepared dataset, its
    train and val splits only: its test split is for evaluation).

    Readable images that must not be learnt from are left out and listed in ``skipped``:
    another DICOM modality than ``modality`` (``"CR/DX"``; ``"any"`` takes all), frames under
    :data:`MIN_TRAINING_SIDE` pixels, empty frames, and copies of an image already read (the
    same SOP Instance UID, or the same picture): a copy once, and both where the copies carry
    different labels (a copy on both sides of the split would also leak validation)."""
    base = Path(root)
    manifest = manifest_of(base)
    outside: list[Path] = []
    entries = labelled_files(base, splits=("train", "val") if manifest else None,
                             unlabelled=outside)
    pattern = re.compile(patient_regex) if patient_regex else None
    normal = {n.lower() for n in normal_labels}
    images, labels, paths, patients, classes, splits, failures = [], [], [], [], [], [], []
    sides: list[int] = []
    skipped = [(str(f), "not in a label sub-folder (ROOT/LABEL/image), so it has no label")
               for f in outside]
    first_of: dict[str, int] = {}         # copy key -> index of the first image with it
    conflicting: set[int] = set()
    by_path = {e.path: e for e in entries}
    for f in (progress(list(by_path)) if progress else list(by_path)):
        entry = by_path[f]
        try:
            image = read_image(f)
            reason = _left_out(image, modality)
            frame = None if reason else triage_frame(image, size, keep_aspect)
        except MedEnhanceError as exc:
            failures.append(str(exc))
            continue
        if reason:
            skipped.append((str(f), reason))
            continue
        key = _copy_key(image, frame)
        label = 0 if entry.label.lower() in normal else 1
        if key in first_of:
            j = first_of[key]
            if labels[j] != label:         # normal against abnormal (two abnormal classes agree)
                conflicting.add(j)
                skipped.append((str(f), f"the same image as {paths[j]}, which is labelled "
                                         f"{classes[j]}, not {entry.label}: both left out"))
            else:
                skipped.append((str(f), f"a copy of {paths[j]}"))
            continue
        first_of[key] = len(images)
        sides.append(frame_side(image))
        images.append(frame)
        labels.append(label)
        paths.append(f)
        classes.append(entry.label)
        splits.append(entry.split or "")
        match = pattern.search(f.name) if pattern and not entry.patient else None
        patients.append(entry.patient or (match.group(1) if match else f.stem))
    if conflicting:          # the first of each conflicting pair goes too
        keep = [i for i in range(len(images)) if i not in conflicting]
        skipped += [(str(paths[i]), "labelled otherwise in a copy of it: left out")
                    for i in sorted(conflicting)]
        images, labels, paths, patients, classes, splits, sides = (
            [seq[i] for i in keep]
            for seq in (images, labels, paths, patients, classes, splits, sides))
    if not images:
        raise DatasetError(f"{base}: no readable image"
                           + (f" to learn from ({len(skipped)} left out, e.g. {skipped[0][0]}: "
                              f"{skipped[0][1]})" if skipped else ""))
    found = {c.lower() for c in classes}
    if not normal & found:
        raise DatasetError(f"{base}: none of the normal labels {list(normal_labels)} is a "
                           f"{'label in the manifest' if manifest else 'sub-folder'} (found "
                           f"{sorted(set(classes))})")
    return LabelledImages(np.stack(images), np.asarray(labels), paths, patients, classes, failures,
                          splits=splits if manifest else None, skipped=skipped,
                          smallest_side=min(sides))


#: How the validation patients are chosen: at random, or the lowest-numbered patients of each id
#: series (a split in time where ids are given in order, as test splits often are).
VAL_SPLITS = ("random", "lowest-ids")


def _id_order(patient: str) -> tuple[str, tuple[int, ...]]:
    """``(series, numbers)`` of a patient id.

    ``NORMAL2-IM-0383`` -> ``("NORMAL#-IM-#", (2, 383))``.
    """
    return re.sub(r"\d+", "#", patient), tuple(int(n) for n in re.findall(r"\d+", patient))


def split_by_patient(data: LabelledImages, val_fraction: float, seed: int,
                     how: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, validation), no patient on both sides.

    ``how="lowest-ids"``: in each id series (the id with its digits masked, e.g. ``person#``,
    ``IM-#``), the ``val_fraction`` of patients with the lowest numbers; ``seed`` is unused.
    """
    ids = sorted(set(data.patients))
    if how == "random":
        rng = np.random.default_rng(seed)
        val_ids = set(rng.permutation(ids)[: max(1, round(val_fraction * len(ids)))].tolist())
    elif how == "lowest-ids":
        series: dict[str, list[str]] = {}
        for p in ids:
            series.setdefault(_id_order(p)[0], []).append(p)
        val_ids = set()
        for members in series.values():
            members.sort(key=lambda p: _id_order(p)[1])
            val_ids.update(members[: round(val_fraction * len(members))])
        if not val_ids:
            raise DatasetError(f"no patient id series has enough patients for a validation "
                               f"fraction of {val_fraction}")
    else:
        raise ValueError(f"how must be one of {VAL_SPLITS}, got {how!r}")
    is_val = np.array([p in val_ids for p in data.patients])
    return np.nonzero(~is_val)[0], np.nonzero(is_val)[0]


def train_val_split(data: LabelledImages, val_fraction: float, seed: int,
                    how: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, validation): the manifest's own split for a prepared dataset (made by
    patient there), otherwise :func:`split_by_patient`."""
    if data.splits is None:
        return split_by_patient(data, val_fraction, seed, how)
    splits = np.asarray(data.splits)
    return np.nonzero(splits == "train")[0], np.nonzero(splits == "val")[0]
