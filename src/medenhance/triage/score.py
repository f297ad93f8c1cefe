"""Score images with a trained triage model and build a worklist.

``score`` = calibrated probability of "abnormal" (higher = read sooner); ``flag`` = 1 at or above
the operating point stored in the model card; ``ood`` = 1 when the image lies far outside what the
model was trained on (another modality, a photo, a blank frame, a thumbnail), by the model's own
features, by its grey levels, their layout and sharpness (:mod:`.domain`), or by its size: such a
score is not to be trusted and the study should be read as if flagged.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit

from ..errors import ConfigError, InvalidImageError, MedEnhanceError, NotAnImageError
from ..image import MedicalImage, check_unit_range
from ..io import display_frames, read_image
from ..io._files import _place
from ..models.card import LoadedModel, load_model
from .data import keeps_aspect, model_inputs, picture_key, too_small, triage_frames
from .domain import DomainCheck
from .study import FrameScore, study_key, summarise, thumbnail

NOTE = "research use only, not for diagnosis"
#: On every row of the CSV files written (no comma in it: it stays one cell for `cut -d,`); a
#: row copied out of the worklist still says it.
CSV_NOTE = "research use only (not for diagnosis)"


@dataclass
class TriageResult:
    """One study of the worklist. ``path`` and ``frame``: where its most abnormal frame is;
    ``distance``: the median feature distance of the frames that counted (:mod:`.study`)."""
    path: str
    score: float
    flag: int
    ood: int
    distance: float
    frame: int = 0
    frames: int = 1         # frames that took part in the score
    files: int = 1
    study: str = ""         # DICOM Study Instance UID, where the files have one
    #: A DICOM Modality the model was not trained on, when every file of the study has it (the
    #: study is then out of distribution; in a mixed study such files do not count).
    foreign_modality: str = ""
    #: Every frame holds one value (no picture at all; the study is then out of distribution).
    empty: bool = False
    #: Median distance of the counted frames' grey levels, layout and sharpness to the training
    #: images' (:mod:`.domain`; NaN for models saved without that check).
    domain_distance: float = float("nan")
    #: The study's files, in the order read.
    paths: tuple[str, ...] = ()
    #: ``HxW`` of its frames (each size once, comma-separated) when every file of the study is
    #: too small for the model (:func:`.data.too_small`; the study is then out of distribution).
    too_small: str = ""
    #: ``score`` as a logit (``score = expit(logit)``): it ranks studies whose scores round to
    #: 1.0 (None where not known).
    logit: float | None = None

    @property
    def rank_key(self) -> float:
        """What ranks the study: its logit, else its score (a logit of a score of 1.0 is
        infinite, and so would tie)."""
        return self.score if self.logit is None else self.logit

    def reading_note(self, trained_on: str) -> str:
        """What the worklist says of the study, for a model trained on modality ``trained_on``:
        why it is read as flagged when it is out of distribution, "likely abnormal" when it is
        flagged, else nothing."""
        if self.empty:
            return "empty (one value throughout): read as flagged"
        if self.foreign_modality:
            return (f"modality {self.foreign_modality} (model trained on {trained_on}): read as "
                    "flagged")
        if self.too_small:
            return (f"too small ({self.too_small} pixels) for the model: read as flagged")
        if self.ood:
            return "out of distribution: read as flagged"
        return "likely abnormal" if self.flag else ""


def threshold_text(score: float, logit: float | None = None) -> str:
    """A threshold as people read it: the score to 3 decimals, and its logit where the score
    rounds to 0 or 1 (a steep calibration), so that the number still says something."""
    text = f"{score:.3f}"
    if logit is not None and text in ("0.000", "1.000"):
        text += f" (logit {logit:.2f})"
    return text


def _check_settings(info: dict, source: str) -> None:
    """Refuse, in one line, a card's triage settings that would score nothing sensible (a
    hand-edited card, or one of another version): they failed with a traceback, or (a threshold
    of 1.5) flagged nothing without a word."""
    def number(value: object) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and bool(np.isfinite(value))

    problems = []
    if info.get("kind") not in ("supervised", "oneclass"):
        problems.append(f"kind {info.get('kind')!r} is neither supervised nor oneclass")
    if not number(info.get("threshold")) or not 0 <= info["threshold"] <= 1:
        problems.append(f"threshold {info.get('threshold')!r} is not a score from 0 to 1")
    if "threshold_logit" in info and not number(info["threshold_logit"]):
        problems.append(f"threshold_logit {info['threshold_logit']!r} is not a number")
    elif "threshold_logit" in info and number(info.get("threshold")) and not np.isclose(
            float(expit(info["threshold_logit"])), info["threshold"], rtol=0, atol=1e-9):
        # The logit decides the flag: an edited threshold would be ignored without a word.
        problems.append(f"threshold {info['threshold']!r} and threshold_logit "
                        f"{info['threshold_logit']!r} (a score of "
                        f"{float(expit(info['threshold_logit'])):.6g}) disagree: edit both, or "
                        "remove threshold_logit to flag by the threshold")
    # Cards before smallest_side have none (MIN_TRAINING_SIDE is assumed); every card a size.
    for key, least, missing in (("size", 8, None), ("smallest_side", 1, 1)):
        side = info.get(key, missing)
        if isinstance(side, bool) or not isinstance(side, int) or side < least:
            problems.append(f"{key} {side!r} is not a number of pixels")
    if not number(info.get("ood_distance")):
        problems.append(f"ood_distance {info.get('ood_distance')!r} is not a number")
    if info.get("kind") == "supervised" and not (number(info.get("temperature"))
                                                 and info["temperature"] > 0):
        problems.append(f"temperature {info.get('temperature')!r} is not a positive number")
    platt = info.get("platt")
    if info.get("kind") == "oneclass" and not (isinstance(platt, list) and len(platt) == 2
                                               and all(number(v) for v in platt)):
        problems.append(f"platt {platt!r} is not two numbers")
    if problems:
        raise ConfigError(f"{source}: its card's triage settings cannot be used: "
                          + "; ".join(problems))


class TriageScorer:
    """Scores images for "likely abnormal" with a triage model (a bundled name, a registered
    one or a checkpoint path): :meth:`score_files` gives one :class:`TriageResult` per file or
    DICOM study, with a calibrated score, the flag at the model card's threshold and an
    out-of-distribution mark. Research use only, not for diagnosis.

    Example::

        scorer = TriageScorer("mri-triage")
        results = worklist(scorer.score_files(find_images(["scans/"]), by_study=True))
    """

    def __init__(self, model: LoadedModel | str | os.PathLike[str]) -> None:
        self.model = model if isinstance(model, LoadedModel) else load_model(model, task="triage")
        self.info = self.model.card.extra.get("triage")
        if self.model.card.task != "triage" or not isinstance(self.info, dict):
            raise ConfigError(f"model {self.model.card.name!r} is not a triage model "
                              f"(task {self.model.card.task!r})")
        #: What the model was trained on, by grey levels, layout and sharpness (None: saved
        #: before it).
        self.domain = DomainCheck.of(self.info, self.model.aux, str(self.model.path))
        _check_settings(self.info, str(self.model.path))

    @property
    def threshold(self) -> float:
        """The card's threshold as a score (what the worklist and summaries print)."""
        return float(self.info["threshold"])

    @property
    def threshold_text(self) -> str:
        """The threshold as printed (:func:`threshold_text`)."""
        return threshold_text(self.threshold, self.info.get("threshold_logit"))

    def above_threshold(self, logits: np.ndarray | float) -> np.ndarray:
        """Whether calibrated logits (:meth:`score_logits`) reach the card's threshold. Cards
        since ``threshold_logit`` compare logits: a steep calibration rounds many scores, and
        so the threshold, to exactly 1.0, and every study at 1.0 was flagged. Older cards
        compare scores, as they were chosen."""
        logits = np.asarray(logits, dtype=np.float64)
        if "threshold_logit" in self.info:
            return logits >= float(self.info["threshold_logit"])
        return expit(logits) >= self.threshold

    @property
    def calibration_warning(self) -> str | None:
        """What training warned of a classifier's calibration (its temperature at a limit of
        the search: scores all close to one value, or pushed to 0 and 1), or None."""
        if self.info.get("kind") != "supervised":
            return None
        from .train import temperature_warning

        said = temperature_warning(float(self.info["temperature"]))
        return None if said is None else said.removeprefix("warning: ")

    def score_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated scores and feature distances of ``(N, size, size)`` network inputs
        (frames as read after :func:`.data.model_inputs`)."""
        logits, dist = self.score_logits(frames)
        return expit(logits), dist

    @torch.no_grad()
    def score_logits(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated scores as logits (``score = expit(logit)``), and the feature
        distances: a steep calibration rounds many scores to exactly 1.0 in float64, and a
        worklist or an AUROC must still rank them."""
        net = self.model.network
        frames = np.asarray(frames)
        size = int(self.info["size"])
        # Frames of another size or scale were scored without a word (a 256-pixel frame 0.947
        # where its file scored 0.685; frames x 255 scored 1.0).
        if frames.ndim != 3 or frames.shape[1:] != (size, size) or frames.dtype.kind not in "buif":
            raise InvalidImageError(
                f"expected network inputs of shape (N, {size}, {size}), got "
                f"{frames.dtype} of shape {frames.shape}; score_files and score_image read, "
                "resize and prepare files and images (one frame is frames[None])")
        if not np.isfinite(frames).all():       # a NaN score would never reach the threshold
            raise InvalidImageError("frames hold NaN or infinite values; files read with "
                                    "read_image never do (NaN outside a NIfTI mask is filled)")
        check_unit_range(frames, "score_logits")
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
        # The feature distance as in training: averaged over the 8 views where the Gaussian
        # was fitted to all of them (cards before "distance" was recorded: by their score).
        views = self.info.get("distance", "views" if self.info.get("score") ==
                              "mahalanobis-views" else "upright") == "views"
        dist = (net.view_distance(x) if views else
                net.mahalanobis(net.density_features(x))).numpy().astype(np.float64)
        if self.info["kind"] == "supervised":
            logits = net(x).numpy().astype(np.float64)
            return logits / float(self.info["temperature"]), dist
        # One-class: the logit of "altered" (synthetic-anomaly training), the least familiar
        # patch's distance to the normal patch memory, or the feature distance (averaged over
        # the 8 views for models that learnt to tell them apart).
        how = self.info.get("score")
        raw = (net.patch_distance(x).numpy().astype(np.float64) if how == "patch-nn" else
               net.anomaly_logit(x).numpy().astype(np.float64) if how == "logit" else dist)
        a, b = self.info["platt"]
        return a * (raw - b), dist

    @property
    def has_evidence_maps(self) -> bool:
        return (self.info.get("score") in ("patch-nn", "logit") or self.info["kind"] == "supervised"
                or self._distance_map is not None)

    @property
    def _distance_map(self):
        """The network's map of its feature distance (fixed wavelet features: each cell's share),
        where the score is that distance; else None."""
        if self.info.get("score") != "mahalanobis":
            return None
        return getattr(self.model.network, "distance_map", None)

    @torch.no_grad()
    def evidence_maps(self, frames: np.ndarray) -> np.ndarray:
        """Where in each network input (``(N, size, size)``, after :func:`.data.model_inputs`)
        the score comes from, ``(N, size, size)``, higher = more abnormal: the distance of each
        patch to the normal patch memory (``patch-nn``), the classifier's head applied at
        every location (supervised, synthetic anomalies), or each cell's share of the feature
        distance (fixed wavelet features). Models that score the pooled features of a learnt
        network have none."""
        net, how = self.model.network, self.info.get("score")
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
        if not self.has_evidence_maps:
            raise ConfigError(f"model {self.model.card.name!r} scores the pooled features of the "
                              "whole image, so it has no map of where its score comes from "
                              "(patch-nn, wavelet and supervised models have one)")
        grid = (net.patch_distance_map(x) if how == "patch-nn" else
                self._distance_map(x) if self._distance_map is not None else
                net.location_logits(x))
        return torch.nn.functional.interpolate(grid[:, None], size=x.shape[-2:],
                                               mode="bilinear", align_corners=False
                                               )[:, 0].numpy()

    def score_image(self, image: MedicalImage) -> TriageResult:
        """The result of one image in memory (from :func:`~medenhance.read_image`, or an
        enhanced one), read as :meth:`score_files` reads a file: resized and prepared for the
        model, scored by its most abnormal frame. Its ``path`` is ``"image 0"`` and the file it
        came from, if any."""
        if not isinstance(image, MedicalImage):
            raise ConfigError(f"score_image takes a MedicalImage (read_image, from_array), got "
                              f"{type(image).__name__}; files go to score_files")
        return self.score_files([image])[0]

    def score_files(self, paths: list[Path | MedicalImage] | str | os.PathLike[str],
                    failures: list[str] | None = None,
                    progress=None, batch: int = 32, by_study: bool = False,
                    repeats: list[str] | None = None,
                    unreadable: list[tuple[str, str]] | None = None,
                    not_images: list[str] | None = None,
                    copies: dict[str, str] | None = None,
                    same_picture: dict[str, str] | None = None) -> list[TriageResult]:
        """One result per file, or per DICOM study with ``by_study`` (files without a Study
        Instance UID stay studies of their own), in the order first read. ``paths``: files,
        folders (the images in them), or :class:`~medenhance.MedicalImage` objects, each a
        study of its own named ``"image N"`` by its place in the list. A file of several
        frames scores by its most abnormal frame that shows the anatomy (:mod:`.study`).

        A DICOM file with the SOP Instance UID of one already read (a copy) is left out, and
        named in ``repeats`` when given. With ``copies``, those and files showing the same
        picture as one read before (:func:`.data.picture_key`) are left out and added there,
        mapped to the file read first. With ``same_picture`` instead, files showing the same
        picture as one read before are scored as any other and mapped there to the file read
        first (a worklist lists both, and says so). A file that cannot be read raises, or, with
        ``failures``, adds its message there and ``(path, reason)`` to ``unreadable``; with
        ``not_images``, a DICOM object without an image (a dose report, a presentation state)
        is named there instead, as not a study to read."""
        if isinstance(paths, (str, os.PathLike, MedicalImage)):   # one, not its characters
            paths = [paths]
        try:
            paths = list(paths)           # a generator was used up by the folder check below
        except TypeError:
            raise ConfigError(f"score_files takes file paths or MedicalImage objects (a list, or "
                              f"one), got {type(paths).__name__}") from None
        if odd := [p for p in paths if not isinstance(p, (str, os.PathLike, MedicalImage))]:
            raise ConfigError(f"score_files takes file paths or MedicalImage objects, got "
                              f"{type(odd[0]).__name__}")
        # An image in memory is named by its place in the list given (and the file it came
        # from), before folders are expanded.
        names = {id(p): f"image {n}" + (f" ({p.meta.source_path})" if p.meta.source_path else "")
                 for n, p in enumerate(paths) if isinstance(p, MedicalImage)}
        if any(not isinstance(p, MedicalImage) and Path(p).is_dir() for p in paths):
            from ..io import find_images        # folders: the images in them

            paths = [*find_images([Path(p) for p in paths if not isinstance(p, MedicalImage)],
                                  errors=failures),
                     *(p for p in paths if isinstance(p, MedicalImage))]
        size = int(self.info["size"])
        studies: dict[str, list[FrameScore]] = {}
        uids: dict[str, str] = {}
        foreign_files: dict[str, str] = {}     # file -> its modality the model does not know
        pending: list[tuple[str, str, int, np.ndarray]] = []

        # Scores of the network inputs already scored, by their bytes: a batch's size changes a
        # float32 score in its 8th digit, so two copies of one picture scored in different
        # batches would sort apart.
        scored: dict[bytes, tuple[float, float, float]] = {}

        def flush() -> None:
            if not pending:
                return
            inputs = model_inputs(np.stack([f for *_, f in pending]), self.info)
            digests = [hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest() for x in inputs]
            first: dict[bytes, int] = {}        # each input not scored before -> where it is
            for i, d in enumerate(digests):
                if d not in scored:
                    first.setdefault(d, i)
            if first:
                fresh = inputs[list(first.values())]
                logit, dist = self.score_logits(fresh)
                domain = (self.domain.distances(fresh) if self.domain is not None else
                          np.full(len(fresh), np.nan))
                for d, *values in zip(first, logit, dist, domain, strict=True):
                    scored[d] = tuple(float(v) for v in values)
            for (key, path, k, frame), d in zip(pending, digests, strict=True):
                logit, distance, domain_distance = scored[d]
                studies[key].append(FrameScore(path, k, float(expit(logit)), distance,
                                               thumbnail(frame), domain_distance, logit))
            pending.clear()

        seen: set[Path] = set()     # places (io._files._place): two links to one file are two
        instances: dict[str, str] = {}      # SOP Instance UID -> the file read with it
        pictures: dict[str, str] = {}       # picture key -> the file read with it (copies)
        pictured: set[str] = set()          # files with a frame that is not one flat value
        small: dict[str, str] = {}          # files too small for the model -> their HxW
        for item in (progress(paths) if progress else paths):
            in_memory = isinstance(item, MedicalImage)
            path = names[id(item)] if in_memory else item
            if not in_memory and _place(Path(path)) in seen:   # a folder and its sub-folder
                continue
            if not in_memory:
                seen.add(_place(Path(path)))
            try:
                image = item if in_memory else read_image(path)
                index, frames = triage_frames(image, size, keep_aspect=keeps_aspect(self.info))
            except MedEnhanceError as exc:
                if isinstance(exc, NotAnImageError) and not_images is not None:
                    not_images.append(str(exc))
                    continue
                if failures is None:
                    raise
                failures.append(str(exc))
                if unreadable is not None:
                    unreadable.append((str(path), getattr(exc, "reason", str(exc))))
                continue
            # An image in memory (a denoised copy, say) may keep its source's UID in its header.
            sop = "" if in_memory else str(getattr(image.meta.header, "get",
                                                   lambda _k: "")("SOPInstanceUID") or "")
            if sop and sop in instances:
                if repeats is not None:
                    repeats.append(f"{path}: the same image (SOP Instance UID) as "
                                   f"{instances[sop]}")
                if copies is not None:
                    copies[str(path)] = instances[sop]
                continue
            if sop:
                instances[sop] = str(path)
            # Another instance, or an export, of the same picture (flat frames are no picture:
            # two blank files are not copies of each other).
            if (copies is not None or same_picture is not None) and \
                    any(frame.max() > frame.min() for frame in frames):
                key = picture_key(frames)
                if key in pictures and copies is not None:
                    copies[str(path)] = pictures[key]
                    continue
                if key in pictures and same_picture is not None:
                    same_picture[str(path)] = pictures[key]
                pictures.setdefault(key, str(path))
            uid = study_key(image)
            # An image in memory is a study of its own: a denoised copy keeps its source's UID.
            key = f"uid:{uid}" if uid and by_study and not in_memory else f"file:{path}"
            studies.setdefault(key, [])
            uids[key] = uid or ""
            if foreign := self.model.card.foreign_modality(image.meta.modality):
                foreign_files[str(path)] = foreign
            if any(frame.max() > frame.min() for frame in frames):
                pictured.add(str(path))
            height, width = display_frames(image).shape[-2:]
            if too_small(min(height, width), self.info):
                small[str(path)] = f"{height}x{width}"
            for k, frame in zip(index, frames, strict=True):
                pending.append((key, str(path), int(k), frame))
                if len(pending) >= batch:
                    flush()
        flush()
        results = []
        for key, frames in studies.items():
            # Files of another modality (a screen capture in an MR study) do not count while the
            # study has files of the model's own; a study of only those is out of distribution
            # whatever its features say (the NEMA CT slice lies within mri-triage's limit).
            # So do files too small for the model (a thumbnail beside the full-size series).
            own = [f for f in frames if f.path not in foreign_files]
            usable = [f for f in own or frames if f.path not in small]
            worst, distance, domain, counted = summarise(usable or own or frames)
            foreign = "" if own else foreign_files[frames[0].path]
            empty = not any(f.path in pictured for f in own or frames)
            tiny = not usable
            ood = (bool(foreign) or empty or tiny or distance > float(self.info["ood_distance"])
                   or (self.domain is not None and domain > self.domain.limit))
            results.append(TriageResult(
                worst.path, worst.score, int(self.above_threshold(worst.logit)), int(ood),
                distance,
                worst.index, counted, len({f.path for f in frames}), uids[key], foreign, empty,
                domain, tuple(dict.fromkeys(f.path for f in frames)),
                ", ".join(dict.fromkeys(small[f.path] for f in own or frames)) if tiny else "",
                worst.logit))
        return results


#: Fewest studies for :func:`population_shift` to judge a batch by.
SHIFT_MIN_STUDIES = 20


def population_shift(results: list[TriageResult], info: dict) -> float | None:
    """Share of the studies farther from the training images than 90 % of the validation studies
    were, when more than half are (``None`` otherwise, for fewer than
    :data:`SHIFT_MIN_STUDIES` studies, or for cards without ``distance_p90``).

    One study far out is flagged by ``ood``; a whole batch shifted (another hospital, age group
    or protocol) often is not, study by study, but half of a batch from the training population
    lies beyond the validation's 90th percentile only with vanishing probability (binomial,
    p = 0.1: below 1e-5 for 20 studies).
    """
    if len(results) < SHIFT_MIN_STUDIES or "distance_p90" not in info:
        return None
    share = float(np.mean([r.distance > float(info["distance_p90"]) for r in results]))
    return share if share > 0.5 else None


def worklist(results: list[TriageResult]) -> list[TriageResult]:
    """Most likely abnormal first; out-of-distribution studies go to the top with the flagged."""
    return sorted(results, key=lambda r: (-max(r.flag, r.ood), -r.score, -r.rank_key, r.path))
