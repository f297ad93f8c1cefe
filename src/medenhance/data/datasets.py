"""Torch datasets for training: random patches of prepared images, degraded on the fly.

Every patch is a pure function of ``(seed, epoch, index)``: which image, where, which augmentation
and which degradation (a :class:`~medenhance.degrade.pipeline.DegradationRecord`) are all drawn from
one generator, so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..degrade.pipeline import Pipeline, apply_record
from ..errors import DatasetError, DegradationError
from ..io import read_image
from .prepare import read_manifest


class DegradationMixture:
    """Pick one pipeline per sample, with probability proportional to its weight."""

    def __init__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self.pipelines: list[Pipeline] = []
        weights = []
        for i, entry in enumerate(entries):
            try:
                pipeline = (Pipeline.from_preset(entry["preset"]) if "preset" in entry
                            else Pipeline.from_file(entry["file"]))
            except DegradationError as exc:      # which entry of the config
                raise DegradationError(f"data.degradations[{i}]: {exc}") from None
            self.pipelines.append(pipeline)
            weights.append(float(entry.get("weight", 1.0)))
        if not self.pipelines or min(weights) < 0 or sum(weights) <= 0:
            raise DatasetError("degradations: need at least one pipeline with a positive weight")
        self.p = np.asarray(weights) / sum(weights)

    def degrade(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pipeline = self.pipelines[int(rng.choice(len(self.pipelines), p=self.p))]
        return apply_record(x, pipeline.sample(rng))


def load_split(manifest: str | Path, split: str) -> list[np.ndarray]:
    """The frames of one split as float32 arrays in [0, 1]."""
    root = Path(manifest)
    root = root if root.is_dir() else root.parent
    rows = read_manifest(manifest, split)
    if not rows:
        raise DatasetError(f"{manifest}: no images in split {split!r}")
    images = []
    for row in rows:
        path = root / row["path"]
        # Prepared .npy frames are already on [0, 1]; other formats go through the readers.
        try:
            pixels = np.load(path) if path.suffix == ".npy" else read_image(path).pixels
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: {exc}") from None
        images.append(np.asarray(pixels, dtype=np.float32).reshape(pixels.shape[-2:]))
    return images


def _augment(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 flips/rotations of the square (anatomy has no preferred orientation here)."""
    k = int(rng.integers(8))
    patch = np.rot90(patch, k % 4)
    return np.ascontiguousarray(patch[:, ::-1] if k >= 4 else patch)


class PatchDataset(Dataset):
    """``patches_per_epoch`` random ``(degraded, clean)`` patch pairs, each ``(1, P, P)``.

    ``extra`` adds other image sets, each ``(images, share)``: that share of the patches comes from
    it, the rest from ``images``. Within a set, larger images give proportionally more patches.
    """

    def __init__(self, images: Sequence[np.ndarray], degradations: DegradationMixture, *,
                 patch_size: int, patches_per_epoch: int, augment: bool = True,
                 seed: int = 0, extra: Sequence[tuple[Sequence[np.ndarray], float]] = ()
                 ) -> None:
        self.sets: list[list[np.ndarray]] = []
        self.set_p: list[np.ndarray] = []
        for group in [images, *(imgs for imgs, _ in extra)]:
            usable = [im for im in group if min(im.shape) >= patch_size]
            if not usable:
                raise DatasetError(f"data.patch_size {patch_size}: no training image is at least "
                                   f"{patch_size} pixels on each side"
                                   + (" in an extra_train set" if self.sets else ""))
            areas = np.array([im.size for im in usable], dtype=np.float64)
            self.sets.append(usable)
            self.set_p.append(areas / areas.sum())
        shares = [float(share) for _, share in extra]
        self.share = np.array([1.0 - sum(shares), *shares])
        self.degradations = degradations
        self.patch_size, self.length = patch_size, patches_per_epoch
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        # Without extra sets no draw is spent here, so older runs see exactly the same patches.
        which = int(rng.choice(len(self.sets), p=self.share)) if len(self.sets) > 1 else 0
        group = self.sets[which]
        image = group[int(rng.choice(len(group), p=self.set_p[which]))]
        p = self.patch_size
        top = int(rng.integers(image.shape[0] - p + 1))
        left = int(rng.integers(image.shape[1] - p + 1))
        clean = image[top: top + p, left: left + p]
        if self.augment:
            clean = _augment(clean, rng)
        noisy = self.degradations.degrade(clean, rng)
        return torch.from_numpy(noisy)[None], torch.from_numpy(np.ascontiguousarray(clean))[None]


def validation_pairs(images: Sequence[np.ndarray], degradations: DegradationMixture, *,
                     crop: int, limit: int, multiple: int = 8, seed: int = 0
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed ``(degraded, clean)`` centre crops, ``(1, 1, h, w)``; the same every epoch."""
    pairs = []
    for i, image in enumerate(images[:limit]):
        h = min(crop, image.shape[0]) // multiple * multiple
        w = min(crop, image.shape[1]) // multiple * multiple
        if h == 0 or w == 0:
            continue
        top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        clean = np.ascontiguousarray(image[top: top + h, left: left + w])
        noisy = degradations.degrade(clean, np.random.default_rng([seed, 10**6, i]))
        pairs.append((torch.from_numpy(noisy)[None, None],
                      torch.from_numpy(clean)[None, None]))
    if not pairs:
        raise DatasetError(f"no usable validation image (data.val_images {limit}, "
                           f"{len(images)} image(s) in the validation split)")
    return pairs
