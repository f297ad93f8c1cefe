"""How a triage model's ranking holds up when the acquisition changes.

A labelled validation split drawn from the training folder shares its site, protocol and framing,
so it cannot tell a model that learnt the disease from one that also learnt how the abnormal
studies happened to be acquired. Here the frames of a labelled set are changed the way another
site or scanner would change them (exposure, contrast, sharpness, noise, resolution, field of
view) and the AUROC is measured three ways per change:

* ``all``: every study changed (a new site);
* ``normal_only`` / ``abnormal_only``: one class changed, the other not. A model that ranks by
  acquisition rather than anatomy (e.g. "tightly framed means pneumonia") loses here, as it would
  on a worklist where one batch of normal studies comes from another room.

Each image is scored once per change; the one-class AUROCs pair changed scores of one class with
unchanged scores of the other. ``robust_auroc`` is the mean of all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, zoom as nd_zoom

from ..io import read_image
from .data import LabelledImages, keeps_aspect, model_inputs, triage_frame
from .metrics import auroc
from .score import TriageScorer


def _zoom(frame: np.ndarray, factor: float) -> np.ndarray:
    """The central ``1/factor`` of the frame, enlarged back to its size (a tighter field of view)."""
    h, w = frame.shape
    ch, cw = round(h / factor), round(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = frame[top: top + ch, left: left + cw]
    return nd_zoom(crop, (h / ch, w / cw), order=1, mode="nearest", grid_mode=True)


def _half_resolution(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape
    small = frame[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    return nd_zoom(small, (h / small.shape[0], w / small.shape[1]), order=1, mode="nearest",
                   grid_mode=True)


def _noise(frame: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    return frame + sigma * np.random.default_rng(seed).standard_normal(frame.shape)


#: Simulated acquisition changes of a frame in [0, 1] (``seed``: for the noise).
SHIFTS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "gamma 0.6": lambda f, s: f ** 0.6,
    "gamma 1.6": lambda f, s: f ** 1.6,
    "contrast 0.7": lambda f, s: (f - 0.5) * 0.7 + 0.5,
    "blur 1 px": lambda f, s: gaussian_filter(f, 1.0, mode="nearest"),
    "noise 0.03": lambda f, s: _noise(f, 0.03, s),
    "half resolution": lambda f, s: _half_resolution(f),
    "zoom 1.15": lambda f, s: _zoom(f, 1.15),
    "zoom 1.3": lambda f, s: _zoom(f, 1.3),
}


def shift_frame(frame: np.ndarray, shift: str, seed: int = 0) -> np.ndarray:
    """``frame`` (float in [0, 1]) as acquired with ``shift`` (a key of :data:`SHIFTS`)."""
    return np.clip(SHIFTS[shift](frame.astype(np.float64), seed), 0.0, 1.0).astype(np.float32)


def shifted_aurocs(score: Callable[[np.ndarray], np.ndarray], frames: np.ndarray,
                   labels: np.ndarray, shifts: Sequence[str] = tuple(SHIFTS),
                   progress: Callable[[list[str]], Iterable[str]] | None = None
                   ) -> dict[str, object]:
    """AUROC of ``score`` (frames -> scores) on ``frames`` unchanged and under each shift."""
    labels = np.asarray(labels)
    clean = score(frames)
    normal, abnormal = labels == 0, labels == 1
    table: dict[str, dict[str, float]] = {}
    for name in (progress(list(shifts)) if progress else shifts):
        changed = score(np.stack([shift_frame(f, name, i) for i, f in enumerate(frames)]))
        table[name] = {"all": auroc(labels, changed),
                       "normal_only": auroc(labels, np.where(normal, changed, clean)),
                       "abnormal_only": auroc(labels, np.where(abnormal, changed, clean))}
    values = [v for row in table.values() for v in row.values()]
    return {"clean": auroc(labels, clean), "shifts": table,
            "robust_auroc": float(np.mean(values)) if values else float("nan")}


def frame_scores(scorer: TriageScorer) -> Callable[[np.ndarray], np.ndarray]:
    """Frames as read (before the model's own cropping or equalisation) -> calibrated scores,
    as logits (which rank as the scores do, without rounding to 1.0)."""

    def score(frames: np.ndarray) -> np.ndarray:
        frames = model_inputs(frames, scorer.info)
        return np.concatenate([scorer.score_logits(frames[i: i + 64])[0]
                               for i in range(0, len(frames), 64)])

    return score


def model_robustness(scorer: TriageScorer, paths: Sequence[Path], labels: np.ndarray,
                     progress: Callable[[list[str]], Iterable[str]] | None = None
                     ) -> dict[str, object]:
    """:func:`shifted_aurocs` of a triage model on image files; the changes come before the
    model's own cropping or equalisation, as a scanner's would. Each file is one frame here, its
    middle one (as in training), not its most abnormal as in :meth:`TriageScorer.score_files`."""
    size = int(scorer.info["size"])
    frames = np.stack([triage_frame(read_image(path), size, keeps_aspect(scorer.info))
                       for path in paths])
    return shifted_aurocs(frame_scores(scorer), frames, labels, progress=progress)


def rebuilt_split(card_config: dict) -> tuple[LabelledImages, np.ndarray, np.ndarray]:
    """The labelled images (frames as read) and the training and validation indices a triage
    model was trained with, rebuilt from the training config in its card (its training folder
    must be where the card says)."""
    from .data import load_labelled, train_val_split
    from .train import TriageConfig, oneclass_split

    fields = TriageConfig.__dataclass_fields__
    config = TriageConfig(**{k: v for k, v in card_config.items() if k in fields})
    data = load_labelled(config.data, config.normal_labels, config.size,
                         patient_regex=config.patient_regex, modality=config.modality,
                         keep_aspect=config.crop)
    train, val = train_val_split(data, config.val_fraction, config.patient_split_seed,
                                 config.val_split)
    if config.kind == "oneclass":
        train, val = oneclass_split(data, train, val, lambda line: None)
    return data, train, val


def validation_split(scorer: TriageScorer) -> tuple[np.ndarray, np.ndarray]:
    """Frames as read and labels of the validation split the model was trained with
    (:func:`rebuilt_split`)."""
    data, _, val = rebuilt_split(scorer.model.card.config)
    return data.images[val], data.labels[val]


def validation_robustness(scorer: TriageScorer) -> dict[str, object]:
    """:func:`shifted_aurocs` on the model's validation split (:func:`validation_split`)."""
    return shifted_aurocs(frame_scores(scorer), *validation_split(scorer))
