"""FFDNet-style fast denoiser working at half resolution with a noise-level map.

K. Zhang, W. Zuo, L. Zhang, "FFDNet: Toward a Fast and Flexible Solution for CNN-Based Image
Denoising", IEEE TIP 27(9), 2018. doi:10.1109/TIP.2018.2839891

The image is pixel-unshuffled into four half-resolution channels, joined by a noise-level map, and
processed by plain 3x3 convolutions at a quarter of the pixel count, which is what makes it the
fastest model here on a CPU; a pixel shuffle restores full resolution. Unlike the original it
predicts the noise (residual) for the same reason as DnCNN. Blind when ``sigma`` is ``None`` (the
map is estimated from the image), non-blind otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import noise_map, plain_conv_stack
from .registry import register_model


class FFDNet(nn.Module):
    """Pixel-unshuffle x2, ``depth`` conv layers of ``width`` channels, pixel-shuffle back."""

    scale = 1
    size_multiple = 2
    uses_sigma = True

    def __init__(self, in_channels: int = 1, width: int = 64, depth: int = 12,
                 batch_norm: bool = True) -> None:
        super().__init__()
        c = in_channels * 4
        self.body = plain_conv_stack(c + 1, c, width, depth, batch_norm)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        small = F.pixel_unshuffle(x, 2)
        level = noise_map(x, sigma, small.shape[-2:])
        noise = F.pixel_shuffle(self.body(torch.cat([small, level], dim=1)), 2)
        return x - noise


@register_model
def ffdnet(**kwargs: object) -> FFDNet:
    """12 layers of 64 channels at half resolution."""
    return FFDNet(**kwargs)  # type: ignore[arg-type]


@register_model
def ffdnet_small(**kwargs: object) -> FFDNet:
    """10 layers of 48 channels at half resolution: the fast CPU default."""
    return FFDNet(**{"depth": 10, "width": 48, **kwargs})  # type: ignore[arg-type]
