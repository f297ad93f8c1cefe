"""DnCNN: residual learning of the noise with batch normalisation.

K. Zhang, W. Zuo, Y. Chen, D. Meng, L. Zhang, "Beyond a Gaussian Denoiser: Residual Learning of Deep
CNN for Image Denoising", IEEE TIP 26(7), 2017. doi:10.1109/TIP.2017.2662206

The network predicts the noise ``n`` and returns ``x - n``: the noise is simpler to learn than the
image, and an identity is the easy default, so the model does not invent structure. With
``noise_map=True`` (FDnCNN) a noise-level channel is concatenated to the input, making the model
non-blind when ``sigma`` is given (and blind with an estimated map when it is not).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import noise_map as make_noise_map
from .common import plain_conv_stack
from .registry import register_model


class DnCNN(nn.Module):
    """DnCNN with ``depth`` 3x3 convolutions of ``width`` channels (BN on the middle ones)."""

    scale = 1
    size_multiple = 1

    def __init__(self, in_channels: int = 1, width: int = 64, depth: int = 17,
                 batch_norm: bool = True, noise_map: bool = False) -> None:
        super().__init__()
        self.uses_sigma = noise_map
        c_in = in_channels + (1 if noise_map else 0)
        self.body = plain_conv_stack(c_in, in_channels, width, depth, batch_norm)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        inp = x
        if self.uses_sigma:
            inp = torch.cat([x, make_noise_map(x, sigma, x.shape[-2:])], dim=1)
        return x - self.body(inp)


@register_model
def dncnn(**kwargs: object) -> DnCNN:
    """DnCNN-S: 17 layers, 64 channels (the paper's blind Gaussian model)."""
    return DnCNN(**{"depth": 17, "width": 64, **kwargs})  # type: ignore[arg-type]


@register_model
def dncnn_small(**kwargs: object) -> DnCNN:
    """A CPU-sized DnCNN: 12 layers, 32 channels."""
    return DnCNN(**{"depth": 12, "width": 32, **kwargs})  # type: ignore[arg-type]
