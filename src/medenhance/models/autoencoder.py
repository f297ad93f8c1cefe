"""Convolutional denoising autoencoder, as in the early medical denoising work.

L. Gondara, "Medical image denoising using convolutional denoising autoencoders", IEEE ICDMW 2016.
doi:10.1109/ICDMW.2016.0041

Encoder: blocks of 3x3 convolution + ReLU + 2x2 max-pool with growing filters (16 -> 128);
decoder: the mirror, with nearest up-sampling; a final 3x3 convolution and sigmoid give the clean
image directly (not a residual). ``filters=(16, 32, 64, 128)`` gives 9 convolutions; the depth is
set by the length of ``filters``. Kept as the baseline the project must beat.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class ConvAutoencoder(nn.Module):
    """Encoder-decoder without skip connections; predicts the clean image."""

    scale = 1
    uses_sigma = False

    def __init__(self, in_channels: int = 1, filters: tuple[int, ...] = (16, 32, 64, 128)
                 ) -> None:
        super().__init__()
        self.size_multiple = 2 ** len(filters)
        enc: list[nn.Module] = []
        c = in_channels
        for f in filters:
            enc += [nn.Conv2d(c, f, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = f
        dec: list[nn.Module] = []
        for f in reversed(filters):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, f, 3, padding=1),
                    nn.ReLU(inplace=True)]
            c = f
        dec += [nn.Conv2d(c, in_channels, 3, padding=1), nn.Sigmoid()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@register_model
def autoencoder(**kwargs: object) -> ConvAutoencoder:
    """Four levels, 16-32-64-128 filters."""
    return ConvAutoencoder(**kwargs)  # type: ignore[arg-type]
