"""From scored frames to one worklist entry per study.

A study can be several frames: the slices of a volume, the frames of a multi-frame DICOM, or the
files of one DICOM study (same Study Instance UID, e.g. a series stored a slice per file). The
models were trained on single frames that show the anatomy, so a study scores by its most
abnormal frame among those that show it: the frames whose anatomy (the largest bright region)
covers at least half as much as in the frame where it covers most. The slices at the ends of a
volume (the skull's vertex, the neck, the air beside the body) would otherwise look abnormal to
every model. Its distances to the training images, for the out-of-distribution checks, are the
medians over those frames: the study is out of distribution when most of it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from ..degrade.resolution import resize
from ..image import MedicalImage

#: A frame takes part in its study's score when its anatomy covers at least this share of the
#: area it covers in the study's fullest frame.
MIN_ANATOMY_SHARE = 0.5
#: Side of the thumbnails the anatomy is measured on.
THUMBNAIL = 32


def study_key(image: MedicalImage) -> str | None:
    """The DICOM Study Instance UID of ``image``, if it has one."""
    header = image.meta.header if image.meta.source_format == "dicom" else None
    uid = str(getattr(header, "StudyInstanceUID", "") or "").strip()
    return uid or None


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A small ``(THUMBNAIL, THUMBNAIL)`` copy of a frame, enough to measure its anatomy by."""
    return resize(np.asarray(frame, dtype=np.float32), (THUMBNAIL, THUMBNAIL), "area")


def anatomy_areas(thumbnails: np.ndarray) -> np.ndarray:
    """Share of each ``(N, h, w)`` thumbnail covered by its largest region brighter than half the
    Otsu threshold of all of them together (one threshold per study, so that a dark end slice
    does not find "anatomy" in its own noise)."""
    smooth = np.stack([ndimage.gaussian_filter(t.astype(np.float64), 1.0) for t in thumbnails])
    if np.ptp(smooth) < 1e-6:
        return np.zeros(len(smooth))
    bright = smooth > 0.5 * threshold_otsu(smooth)
    areas = []
    for mask in bright:
        labels, count = ndimage.label(mask)
        areas.append(np.bincount(labels.ravel())[1:].max() / mask.size if count else 0.0)
    return np.asarray(areas)


def frames_with_anatomy(thumbnails: np.ndarray) -> np.ndarray:
    """Indices of the frames that take part in the study's score (see the module docstring);
    every frame when none shows anatomy, the only frame of a one-frame study."""
    if len(thumbnails) == 1:
        return np.zeros(1, dtype=int)
    areas = anatomy_areas(thumbnails)
    if areas.max() <= 0:
        return np.arange(len(thumbnails))
    return np.nonzero(areas >= MIN_ANATOMY_SHARE * areas.max())[0]


@dataclass
class FrameScore:
    """One scored frame: ``index`` is its frame number in ``path``."""
    path: str
    index: int
    score: float
    distance: float
    thumbnail: np.ndarray
    #: Distance of its grey levels, layout and sharpness to the training images' (:mod:`.domain`);
    #: NaN for models without that check.
    domain_distance: float = float("nan")
    #: ``score`` as a logit, which does not round to 1.0 (None where not known).
    logit: float | None = None


def summarise(frames: Sequence[FrameScore]) -> tuple[FrameScore, float, float, int]:
    """``(most abnormal frame, median distance, median domain distance, frames counted)`` of
    one study."""
    kept = [frames[i] for i in frames_with_anatomy(np.stack([f.thumbnail for f in frames]))]
    worst = max(kept, key=lambda f: (f.score, 0.0 if f.logit is None else f.logit))
    return (worst, float(np.median([f.distance for f in kept])),
            float(np.median([f.domain_distance for f in kept])), len(kept))
