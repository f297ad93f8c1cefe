"""DRUNet-like residual U-Net with a noise-level input channel.

K. Zhang, Y. Li, W. Zuo, L. Zhang, L. Van Gool, R. Timofte, "Plug-and-Play Image Restoration with
Deep Denoiser Prior", IEEE TPAMI 44(10), 2022. doi:10.1109/TPAMI.2021.3088914

Four scales of residual blocks (no batch norm), strided-convolution down-sampling, transposed-
convolution up-sampling and additive skips. The input is the image plus a constant noise-level map
(non-blind when ``sigma`` is given, estimated otherwise). The output is the clean image; a global
skip (``x +``) makes the identity easy so that the network only removes what it recognises as noise.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import noise_map
from .registry import register_model


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DRUNet(nn.Module):
    """Residual U-Net; ``widths`` per scale, ``blocks`` residual blocks per scale."""

    scale = 1
    uses_sigma = True

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256),
                 blocks: int = 2) -> None:
        super().__init__()
        self.size_multiple = 2 ** (len(widths) - 1)
        self.head = nn.Conv2d(in_channels + 1, widths[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            self.down.append(nn.Sequential(*[ResBlock(a) for _ in range(blocks)],
                                           nn.Conv2d(a, b, 2, stride=2, bias=False)))
        self.body = nn.Sequential(*[ResBlock(widths[-1]) for _ in range(blocks)])
        self.up = nn.ModuleList()
        for a, b in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
            self.up.append(nn.Sequential(nn.ConvTranspose2d(a, b, 2, stride=2, bias=False),
                                         *[ResBlock(b) for _ in range(blocks)]))
        self.tail = nn.Conv2d(widths[0], in_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        h = self.head(torch.cat([x, noise_map(x, sigma, x.shape[-2:])], dim=1))
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        h = self.body(h)
        for up in self.up:
            h = up(h) + skips.pop()
        return x + self.tail(h)


@register_model
def drunet(**kwargs: object) -> DRUNet:
    """CPU-sized DRUNet: widths 32-64-128-256, two residual blocks per scale."""
    return DRUNet(**kwargs)  # type: ignore[arg-type]
