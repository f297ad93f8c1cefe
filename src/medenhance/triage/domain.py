"""Is a study of the kind a triage model was trained on? A check that does not depend on its score.

A triage model's own out-of-distribution limit is a distance in its score's feature space. For a
one-class model that is the distance to the *normal* images, whose validation percentiles are set
by the abnormal studies: a chest radiograph given to the brain MRI model lay no farther from its
normal slices than a tumour did, and only 10 % of them were marked. This check asks a simpler
question of every frame, with both labels alike: do its grey levels and their layout look like the
training images'? The descriptor is deliberately coarse (a 16-bin histogram of grey levels and the
mean grey level in 4 x 4 cells of the network input): coarse enough that another exposure,
sharpness, noise or framing of the same anatomy stays inside, while a head on a dark background
and a chest on a grey one lie far apart. Measures of texture were left out: noise of sigma 0.03
moved most validation radiographs beyond the limit.

The Gaussian is fitted to the images the model's own Gaussian is fitted to (the training images
and, where the config asks, their zoomed and acquisition-changed copies); the limit is the 99th
percentile of the validation studies' distances, all labels, so about 1 % of studies like the
validation split's lie beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: What :func:`describe` computes, as recorded in model cards (a change of descriptor needs a new
#: name: a card's Gaussian only fits the descriptor it was fitted with).
DESCRIPTOR = "grey-level histogram (16 bins, square root) + mean in 4x4 cells"
HISTOGRAM_BINS = 16
CELLS = 4
#: Validation percentile of the distance beyond which a study is out of distribution.
PERCENTILE = 99.0
#: Names of its tensors in the weights file (see :func:`medenhance.models.card.save_checkpoint`).
MEAN, PRECISION = "domain_check.mean", "domain_check.precision"


def describe(frames: np.ndarray) -> np.ndarray:
    """``(N, 32)`` descriptors of ``(N, H, W)`` network inputs in [0, 1]: the square root of each
    frame's grey-level histogram (shares of its pixels; the root makes a Euclidean distance
    between histograms the Hellinger distance) followed by its mean in 4 x 4 cells."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or min(frames.shape[1:]) < CELLS:
        raise ValueError(f"frames of shape {frames.shape}: (N, H, W) with H, W >= {CELLS} needed")
    n, h, w = frames.shape
    bins = np.clip((frames * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
    counts = np.stack([np.bincount(b.ravel(), minlength=HISTOGRAM_BINS) for b in bins])
    rows, cols = np.linspace(0, h, CELLS + 1).astype(int), np.linspace(0, w, CELLS + 1).astype(int)
    cells = np.stack([frames[:, rows[i]: rows[i + 1], cols[j]: cols[j + 1]].mean(axis=(1, 2))
                      for i in range(CELLS) for j in range(CELLS)], axis=1)
    return np.concatenate([np.sqrt(counts / (h * w)), cells], axis=1)


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
    def of(cls, info: dict, tensors: dict[str, torch.Tensor]) -> DomainCheck | None:
        """The check a model card's ``triage`` entry and its weights file's tensors hold; ``None``
        for models saved without one (before it existed), or with another descriptor."""
        entry = info.get("domain_check")
        if not isinstance(entry, dict) or entry.get("descriptor") != DESCRIPTOR \
                or MEAN not in tensors or PRECISION not in tensors:
            return None
        return cls(tensors[MEAN].double().numpy(), tensors[PRECISION].double().numpy(),
                   float(entry["limit"]))
