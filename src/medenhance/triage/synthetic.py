"""Synthetic local anomalies made from normal images, for one-class training.

A one-class model that only ever sees normal images can still be trained as a classifier if it is
shown *altered* normal images as the "abnormal" class: a smooth, irregular region of the image gets
its intensity or texture changed (after DRAEM, Zavrtanik et al. ICCV 2021; Foreign Patch
Interpolation, Tan et al. 2020; Natural Synthetic Anomalies, Schlüter et al. ECCV 2022). The network
learns what normal anatomy looks like locally, without any real abnormal example and without
knowing which disease it will meet. The alterations are generic, not modelled on one disease:

* ``shift``: the region gets brighter or darker (a mass, an opacity, an effusion, a cavity);
* ``patch``: the region is blended with another place of another normal image (misplaced anatomy);
* ``smooth``: the region loses its fine texture (oedema, consolidation, a cyst);
* ``texture``: band-limited noise is added to the region (heterogeneous tissue).

Regions are unions of one to three random ellipses with softened edges, centred on the body
(pixels brighter than the image's 30th percentile), covering 0.5-10 % of the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("shift", "patch", "smooth", "texture")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def random_regions(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Soft masks ``(N, 1, H, W)`` in [0, 1] of random blob-shaped regions inside the body."""
    n, _, h, w = x.shape
    size = min(h, w)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    flat = x.reshape(n, -1)
    body = (flat > torch.quantile(flat, 0.3, dim=1, keepdim=True)).float() + 1e-6
    masks = torch.zeros(n, 1, h, w)
    for i in range(n):
        blobs = int(torch.randint(1, 4, (1,), generator=generator))
        centre = int(torch.multinomial(body[i], 1, generator=generator))
        cy, cx = divmod(centre, w)
        for _ in range(blobs):
            r = torch.rand(5, generator=generator)
            ry, rx = (0.04 + 0.12 * r[0]) * size, (0.04 + 0.12 * r[1]) * size
            angle = math.pi * float(r[2])
            # Later blobs sit near the first so that the region stays one irregular shape.
            oy, ox = (r[3] - 0.5) * 2 * ry, (r[4] - 0.5) * 2 * rx
            dy, dx = yy - (cy + oy), xx - (cx + ox)
            u = dx * math.cos(angle) + dy * math.sin(angle)
            v = -dx * math.sin(angle) + dy * math.cos(angle)
            masks[i, 0] = torch.maximum(masks[i, 0], ((u / rx) ** 2 + (v / ry) ** 2 <= 1).float())
    return _gaussian_blur(masks, 0.02 * size).clamp(0, 1)


def add_anomalies(x: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image of ``(N, 1, H, W)`` in [0, 1] with one random local anomaly, and its mask."""
    n, _, h, w = x.shape
    mask = random_regions(x, generator)
    kind = torch.randint(0, len(KINDS), (n,), generator=generator)
    r = torch.rand(n, 3, generator=generator)
    out = x.clone()
    # shift: +-(0.08-0.35) of the range, brighter twice as often as darker.
    sign = torch.where(r[:, 1] < 2 / 3, 1.0, -1.0)
    amount = (sign * (0.08 + 0.27 * r[:, 0])).view(n, 1, 1, 1)
    shifted = x + amount * mask
    # patch: another image of the batch, rolled by a random offset.
    other = torch.roll(x, 1, dims=0)
    dy, dx = (int(v) for v in torch.randint(-h // 4, h // 4 + 1, (2,), generator=generator))
    other = torch.roll(other, (dy, dx), dims=(-2, -1))
    alpha = (0.6 + 0.4 * r[:, 2]).view(n, 1, 1, 1)
    patched = x + alpha * mask * (other - x)
    # smooth: fine texture removed, local mean kept.
    smoothed = x + mask * (_gaussian_blur(x, 0.02 * min(h, w) + 1.0) - x)
    # texture: band-limited noise with a standard deviation of 0.05-0.15.
    noise = _gaussian_blur(torch.randn(x.shape, generator=generator), 1.5)
    noise = noise / noise.std(dim=(-2, -1), keepdim=True)
    textured = x + mask * noise * (0.05 + 0.1 * r[:, 0]).view(n, 1, 1, 1)
    for k, altered in enumerate((shifted, patched, smoothed, textured)):
        sel = kind == k
        out[sel] = altered[sel]
    return out.clamp(0, 1), mask
