"""Pieces shared by several architectures: noise-level maps and a blind noise estimate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def estimate_sigma(x: torch.Tensor) -> torch.Tensor:
    """Gaussian noise sigma per image, ``(N,)``, from the finest diagonal Haar band (MAD / 0.6745).

    The same estimator as :func:`skimage.restoration.estimate_sigma` (Donoho & Johnstone 1994),
    so a blind model can feed a noise map to a network trained non-blind.
    """
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    t = x[..., :h, :w]
    hh = (t[..., 0::2, 0::2] - t[..., 0::2, 1::2] - t[..., 1::2, 0::2] + t[..., 1::2, 1::2]) / 2
    return hh.flatten(1).abs().median(dim=1).values / 0.6745


def noise_map(x: torch.Tensor, sigma: float | torch.Tensor | None, size: tuple[int, int]
              ) -> torch.Tensor:
    """A constant ``(N, 1, *size)`` map of ``sigma`` (estimated from ``x`` when ``None``)."""
    n = x.shape[0]
    if sigma is None:
        level = estimate_sigma(x)
    else:
        level = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if level.numel() == 1:
            level = level.expand(n)
    return level.view(n, 1, 1, 1).expand(n, 1, *size).to(x.dtype)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Reflect-pad so both sides are multiples of ``multiple``; returns the padding added."""
    ph = (-x.shape[-2]) % multiple
    pw = (-x.shape[-1]) % multiple
    if ph or pw:
        mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, ph, pw


def plain_conv_stack(c_in: int, c_out: int, width: int, depth: int,
                     batch_norm: bool) -> nn.Sequential:
    """``depth`` 3x3 convolutions: conv+ReLU, (conv+BN+ReLU) x (depth - 2), conv (DnCNN body)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(depth - 2):
        layers.append(nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Conv2d(width, c_out, 3, padding=1))
    return nn.Sequential(*layers)
