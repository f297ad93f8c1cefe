"""A small residual CNN that maps an image to one "abnormal" logit, plus its pooled features.

Four stages of two residual blocks (3x3 conv, batch norm, ReLU), stride-2 between stages, global
average pooling and a linear head: ~0.3 M parameters with the default widths, trainable on a CPU
at 128x128 in minutes. ``features(x)`` returns the pooled feature vector that the out-of-
distribution check and the one-class scorer use; ``patch_distance(x)`` scores an image by its
least familiar place against a memory of normal patch features (PatchCore-style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

#: Rotations by 0/90/180/270 degrees, then the same mirrored: the views a one-class network
#: learns to tell apart, and that its anomaly distance is averaged over.
N_VIEWS = 8


def transform8(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Apply view ``k`` in 0..7 (rotation k % 4 x 90 deg, flipped when k >= 4) per image."""
    out = torch.empty_like(x)
    for t in range(N_VIEWS):
        sel = k == t
        if sel.any():
            y = torch.rot90(x[sel], t % 4, dims=(-2, -1))
            out[sel] = torch.flip(y, dims=(-1,)) if t >= 4 else y
    return out


def all_views(x: torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` -> ``(8 N, ...)``: every image in each of the 8 views, view-major."""
    rotations = [torch.rot90(x, t, dims=(-2, -1)) for t in range(4)]
    return torch.cat(rotations + [torch.flip(r, dims=(-1,)) for r in rotations])


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(c_out)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class SmallResNet(nn.Module):
    """``widths`` per stage; input ``(N, 1, H, W)`` in [0, 1]; output ``(N,)`` logits, or
    ``(N, num_outputs)`` for a multi-class (self-supervised) head.

    ``feature_mean`` / ``feature_precision`` are buffers for a Gaussian fitted to the features of
    the training images (saved with the weights): the Mahalanobis distance to it is the one-class
    anomaly score and the out-of-distribution check. ``patch_memory`` (``memory_size`` rows, 0:
    none) holds patch features of normal images for :meth:`patch_distance`.
    """

    scale = 1
    size_multiple = 16
    uses_sigma = False
    task = "classify"
    #: Stored in the checkpoint's parameter precision (float16 when bundled): thousands of
    #: feature vectors, compared by distance, where half precision costs little.
    bulky_buffers = ("patch_memory",)

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128),
                 dropout: float = 0.2, num_outputs: int = 1, memory_size: int = 0) -> None:
        super().__init__()
        widths = tuple(widths)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1,
                                            bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            stages += [_Block(c, w, 1 if i == 0 else 2), _Block(w, w, 1)]
            c = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_outputs))
        self.feature_dim = c
        # The density model sees the last two stages: mid-level texture as well as the
        # semantics the head uses, which separates unfamiliar input better than either alone.
        self.density_dim = widths[-1] + (widths[-2] if len(widths) > 1 else 0)
        self.register_buffer("feature_mean", torch.zeros(self.density_dim))
        self.register_buffer("feature_precision", torch.zeros(self.density_dim, self.density_dim))
        # Patches: every stage after the first (the first is too close to the pixels), at the
        # second stage's resolution (1/4 of the input).
        self.patch_dim = sum(widths[1:])
        if memory_size and not self.patch_dim:
            raise ValueError("a patch memory needs at least two stages")
        # None (not in the state dict) without one, so networks saved before it load as they were.
        self.register_buffer("patch_memory", torch.zeros(memory_size, self.patch_dim)
                             if memory_size else None)

    def _stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Centre the [0, 1] input so that batch norm starts from a sensible scale.
        h = self.stem(x - 0.5)
        outs = []
        for i, block in enumerate(self.stages):
            h = block(h)
            if i % 2 == 1:  # two blocks per stage
                outs.append(h)
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled last-stage features, the head's input, ``(N, feature_dim)``."""
        return self._stage_outputs(x)[-1].mean(dim=(-2, -1))

    def density_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of the last two stages, ``(N, density_dim)``, for the Gaussian."""
        return torch.cat([h.mean(dim=(-2, -1)) for h in self._stage_outputs(x)[-2:]], dim=1)

    def forward(self, x: torch.Tensor, sigma: object = None) -> torch.Tensor:
        out = self.head(self.features(x))
        return out.squeeze(1) if out.shape[1] == 1 else out

    def location_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head applied at every last-stage location before pooling, ``(N, h, w)``: where in
        the image the evidence is (one output only)."""
        linear = self.head[-1]
        h = self._stage_outputs(x)[-1].permute(0, 2, 3, 1)
        return (h @ linear.weight.T + linear.bias)[..., 0]

    def anomaly_logit(self, x: torch.Tensor) -> torch.Tensor:
        """Image score of a model trained on synthetic local anomalies: its most abnormal place."""
        return self.location_logits(x).flatten(1).amax(1)

    def view_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance averaged over the 8 rotated/flipped views of each image, ``(N,)``.

        For a network trained to recognise those views, with the Gaussian fitted to the features
        of all views of the normal images (as in GOAD, Bergman & Hoshen, ICLR 2020): an image
        has to look normal from every side to score low.
        """
        d = self.mahalanobis(self.density_features(all_views(x)))
        return d.view(N_VIEWS, len(x)).mean(0)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, locations, patch_dim)``: at every location of the second stage, the features of
        the later stages there (upsampled), averaged over the 3x3 neighbourhood (as PatchCore,
        Roth et al., CVPR 2022, so that a patch feature describes a little more than one cell)."""
        return self._patch_grid(x).flatten(2).transpose(1, 2)

    def _patch_grid(self, x: torch.Tensor) -> torch.Tensor:
        outs = self._stage_outputs(x)[1:]
        size = outs[0].shape[-2:]
        f = torch.cat([F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                       for o in outs], dim=1)
        return F.avg_pool2d(f, 3, stride=1, padding=1)

    def patch_distance_map(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of every patch to its nearest patch in ``patch_memory``, ``(N, h, w)`` on
        the second stage's grid: where an image looks unlike the normal ones."""
        if self.patch_memory is None:
            raise RuntimeError("this network has no patch memory")
        grid = self._patch_grid(x)
        patches = grid.flatten(2).transpose(1, 2)
        return torch.stack([torch.cdist(p, self.patch_memory).amin(1) for p in patches]
                           ).view(len(x), *grid.shape[-2:])

    def patch_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of each image's least familiar patch to its nearest patch in
        ``patch_memory``, ``(N,)``: a tumour is one unfamiliar place in a familiar image."""
        return self.patch_distance_map(x).flatten(1).amax(1)

    def mahalanobis(self, features: torch.Tensor) -> torch.Tensor:
        """Distance of ``(N, D)`` features to the fitted Gaussian, ``(N,)``."""
        d = features - self.feature_mean
        return torch.sqrt(torch.clamp(((d @ self.feature_precision) * d).sum(1), min=0.0))


@register_model
def small_resnet(**kwargs: object) -> SmallResNet:
    """Widths 16/32/64/128: the bundled triage classifiers' architecture."""
    return SmallResNet(**kwargs)  # type: ignore[arg-type]
