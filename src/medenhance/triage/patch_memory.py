"""The memory of normal patch features behind the one-class ``patch-nn`` score (PatchCore-style).

Every location of every normal training image gives a patch feature
(:meth:`~medenhance.models.classifier.SmallResNet.patch_features`): far more than a bundled model
should carry. A greedy k-centre coreset (Roth et al., "Towards total recall in industrial anomaly
detection", CVPR 2022) keeps the ``size`` of them that cover the rest best: each step adds the
feature farthest from those already kept, so rare normal patches are kept and common ones thinned.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

#: Patch features that the coreset is chosen from (a random subset, the same number per image,
#: beyond it; at least one per image): the greedy search costs this many distances per kept one.
MAX_CANDIDATES = 65536


def candidate_patches(patch_features: Callable[[torch.Tensor], torch.Tensor],
                      images: np.ndarray, seed: int, batch: int = 16) -> torch.Tensor:
    """``(M, D)`` patch features of ``(N, H, W)`` images, at most :data:`MAX_CANDIDATES` (or
    one per image, where there are more images)."""
    gen = torch.Generator().manual_seed(seed)
    kept = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i: i + batch]))[:, None]
            f = patch_features(x).float().cpu()                # (n, locations, D)
            per_image = min(f.shape[1], max(1, MAX_CANDIDATES // len(images)))
            for patches in f:
                pick = torch.randperm(len(patches), generator=gen)[:per_image]
                kept.append(patches[pick] if per_image < len(patches) else patches)
    return torch.cat(kept)


def greedy_coreset(features: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of ``size`` rows of ``features`` chosen by greedy k-centre (all when there are
    fewer rows; fewer when the rest would only repeat features already kept)."""
    n = len(features)
    if size >= n:
        return torch.arange(n)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    nearest = (features - features[first]).square().sum(1)   # squared distance to the kept set
    for _ in range(size - 1):
        i = int(torch.argmax(nearest))
        if nearest[i] == 0:      # every feature is already kept
            break
        chosen.append(i)
        nearest = torch.minimum(nearest, (features - features[i]).square().sum(1))
    return torch.tensor(chosen)
