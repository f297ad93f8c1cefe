"""Is a study of the kind a triage model was trained on? A check that does not depend on its score.

A triage model's own out-of-distribution limit is a distance in its score's feature space. For a
one-class model that is the distance to the *normal* images, whose validation percentiles are set
by the abnormal studies: a chest radiograph given to the brain MRI model lay no farther from its
normal slices than a tumour did, and only 10 % of them were marked. This check asks a simpler
question of every frame, with both labels alike: do its grey levels, their layout and their
sharpness look like the training images'? The descriptor is deliberately coarse: a 16-bin
histogram of grey levels, the mean grey level in 4 x 4 cells of the network input, and the mean
absolute difference of neighbouring pixels at 1, 2 and 4 px (log). A head on a dark background
and a chest on a grey one lie far apart, and pure noise lies far from a radiograph (not always
from an MR slice). A thumbnail blown up to the model's size does not: that is
:func:`.data.too_small`'s to catch.

The Gaussian is fitted to the training images and to copies of them as another site might have
acquired them, whatever the model's own config says: 2 acquisition-changed copies of each (gamma
0.6-1.6, and at random blur, lower resolution, noise up to sigma 0.04) and zoomed copies (up to
1.25), so that another exposure, sharpness, noise or framing of the same anatomy stays inside
(without the copies, noise of sigma 0.03 carried every validation radiograph of the classifier
beyond the limit). The limit is the 99th percentile of the validation studies' distances, all
labels, so about 1 % of studies like the validation split's lie beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError

#: What :func:`describe` computes, as recorded in model cards (a change of descriptor needs a new
#: name: a card's Gaussian only fits the descriptor it was fitted with).
DESCRIPTOR = ("grey-level histogram (16 bins, square root) + mean in 4x4 cells + log mean "
              "absolute neighbour difference at 1, 2, 4 px")
HISTOGRAM_BINS = 16
CELLS = 4
#: Steps (pixels) at which neighbouring pixels are compared, down and across.
STEPS = (1, 2, 4)
DIMENSIONS = HISTOGRAM_BINS + CELLS * CELLS + 2 * len(STEPS)
#: The copies of the training images the check is fitted to, besides them (see above).
FIT_ZOOM, FIT_CHANGES = 1.25, 2
#: Frames described at a time.
CHUNK = 256
#: Validation percentile of the distance beyond which a study is out of distribution.
PERCENTILE = 99.0
#: Names of its tensors in the weights file (see :func:`medenhance.models.card.save_checkpoint`).
MEAN, PRECISION = "domain_check.mean", "domain_check.precision"


def describe(frames: np.ndarray) -> np.ndarray:
    """``(N, DIMENSIONS)`` descriptors of ``(N, H, W)`` network inputs in [0, 1]: the square root
    of each frame's grey-level histogram (shares of its pixels; the root makes a Euclidean
    distance between histograms the Hellinger distance), its mean in 4 x 4 cells, and the log of
    the mean absolute difference between pixels :data:`STEPS` apart, down and across (sharpness
    and noise; a log, so that a frame twice as sharp is as far as one half as sharp)."""
    least = max(CELLS, 2 * max(STEPS))
    if np.ndim(frames) != 3 or min(np.shape(frames)[1:]) < least:
        raise ValueError(f"frames of shape {np.shape(frames)}: (N, H, W) with H, W >= {least} "
                         "needed")
    if len(frames) > CHUNK:     # in float64 a whole training set (with copies) can be gigabytes
        return np.concatenate([describe(frames[i: i + CHUNK])
                               for i in range(0, len(frames), CHUNK)])
    frames = np.asarray(frames, dtype=np.float64)
    n, h, w = frames.shape
    bins = np.clip((frames * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
    counts = np.stack([np.bincount(b.ravel(), minlength=HISTOGRAM_BINS) for b in bins])
    rows, cols = np.linspace(0, h, CELLS + 1).astype(int), np.linspace(0, w, CELLS + 1).astype(int)
    cells = np.stack([frames[:, rows[i]: rows[i + 1], cols[j]: cols[j + 1]].mean(axis=(1, 2))
                      for i in range(CELLS) for j in range(CELLS)], axis=1)
    steps = [np.log(np.abs(np.diff(frames[:, ::k, ::k], axis=axis)).mean(axis=(1, 2)) + 1e-4)
             for k in STEPS for axis in (1, 2)]
    return np.concatenate([np.sqrt(counts / (h * w)), cells, np.stack(steps, axis=1)], axis=1)


@dataclass
class DomainCheck:
    """A Gaussian of the training images' descriptors and the distance beyond which a frame is
    not of their kind."""

    mean: np.ndarray
    precision: np.ndarray
    limit: float

    @classmethod
    def fit(cls, fit_frames: np.ndarray, val_frames: np.ndarray) -> DomainCheck:
        """Fitted to ``fit_frames``, its limit set on ``val_frames`` (network inputs)."""
        from sklearn.covariance import ledoit_wolf

        features = describe(fit_frames)
        cov, _ = ledoit_wolf(features)
        # A floor under the variances: a bin no training image reaches (a histogram of 8-bit
        # levels spread over 16 bins, frames of one value) must not make the matrix singular.
        cov += 1e-6 * np.eye(len(cov))
        check = cls(features.mean(0), np.linalg.inv(cov), float("inf"))
        check.limit = float(np.percentile(check.distances(val_frames), PERCENTILE))
        return check

    def distances(self, frames: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each frame's descriptor to the training images'."""
        d = describe(frames) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def card_entry(self) -> dict:
        return {"descriptor": DESCRIPTOR, "limit": self.limit, "percentile": PERCENTILE}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {MEAN: torch.from_numpy(self.mean).float(),
                PRECISION: torch.from_numpy(self.precision).float()}

    @classmethod
    def of(cls, info: dict, tensors: dict[str, torch.Tensor], source: str = "model"
           ) -> DomainCheck | None:
        """The check a model card's ``triage`` entry and its weights file's tensors hold; ``None``
        for models saved before it existed. A card whose check cannot be used (another
        descriptor, from a newer version; its tensors missing, a card beside other weights) is
        refused with :class:`ConfigError`: scoring without it would pass what it should mark."""
        entry = info.get("domain_check")
        if entry is None:
            return None
        if not isinstance(entry, dict) or entry.get("descriptor") != DESCRIPTOR \
                or not isinstance(entry.get("limit"), (int, float)):
            raise ConfigError(f"{source}: its check of what it was trained on (domain_check "
                              "in its card) is not one this version can use; use the version "
                              "that wrote it")
        if MEAN not in tensors or PRECISION not in tensors:
            raise ConfigError(f"{source}: its card has a check of what it was trained on, but "
                              "its weights file lacks the check's tensors (a card beside "
                              "another model's weights?)")
        d = tensors[MEAN].numel()
        if d != DIMENSIONS or tuple(tensors[PRECISION].shape) != (d, d):
            raise ConfigError(f"{source}: the check of what it was trained on has tensors of "
                              f"the wrong shape ({tuple(tensors[PRECISION].shape)})")
        return cls(tensors[MEAN].double().numpy(), tensors[PRECISION].double().numpy(),
                   float(entry["limit"]))
